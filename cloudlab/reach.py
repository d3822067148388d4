"""Reaching an instance: where a command runs, inside a network namespace or on a guest over SSH.

The CLI (``cloudlab ssh``), the client (``Instance.ssh``) and the benchmarks all run commands somewhere
the host cannot route to directly: the cloud's networks live in namespaces cloudlab creates. A
:class:`Remote` runs one shell command and returns the finished process (every call has a timeout);
:func:`instance_remote` finds how to reach an instance of a running cloud (its address, the cluster's
outside namespace, the private key the cloud holds for its key pair). It lives apart from the
benchmarks so that the client and the CLI can reach an instance without importing them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cloudlab.clc.keypairs import held_private_keys
from cloudlab.waiting import WaitTimeout, wait_until


class Unreachable(RuntimeError):
    """An instance cannot be reached (not running, no address, no key); the message says why."""


@runtime_checkable
class Remote(Protocol):
    name: str

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]: ...


def run_argv(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion; a timeout is a finished process with status 124 (as timeout(1) says)."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(argv, 124, out, err + f"\n[timed out after {timeout} s]")


def netns_argv(netns: str | None) -> list[str]:
    """The prefix that runs a program inside ``netns`` (nothing for the current namespace)."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--"] if netns else []


class NamespaceRemote:
    """Runs commands with ``nsenter --net=/run/netns/NS -- sh -c COMMAND``."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.name = netns

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_argv([*netns_argv(self.netns), "sh", "-c", command], timeout)

    def __repr__(self) -> str:
        return f"NamespaceRemote({self.netns!r})"


class SshRemote:
    """Runs commands on ``user@address`` with the OpenSSH client, started inside ``netns`` if given."""

    def __init__(
        self, address: str, key: Path, netns: str | None = None, user: str = "root", connect_timeout: int = 5
    ) -> None:
        self.address = address
        self.key = Path(key)
        self.netns = netns
        self.user = user
        self.connect_timeout = connect_timeout
        self.name = f"{user}@{address}" + (f" via {netns}" if netns else "")

    def argv(self, command: str | None) -> list[str]:
        """The OpenSSH command line (``command`` None: an interactive login shell)."""
        return [
            *netns_argv(self.netns),
            "ssh",
            "-i",
            str(self.key),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"ConnectTimeout={self.connect_timeout}",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=3",
            f"{self.user}@{self.address}",
            *([] if command is None else [command]),
        ]

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_argv(self.argv(command), timeout)

    def wait_ready(self, timeout: float = 60, interval: float = 1.0) -> None:
        """Retry ``true`` until SSH answers. Raises TimeoutError with the last error SSH gave."""

        def answers() -> bool:
            done = self.run("true", timeout=self.connect_timeout + 5)
            if done.returncode != 0:
                raise ConnectionError((done.stderr or done.stdout).strip())
            return True

        try:
            wait_until(answers, timeout, what=f"SSH to {self.name}", interval_s=interval, ignore=(ConnectionError,))
        except WaitTimeout as exc:
            raise TimeoutError(f"SSH to {self.name} did not answer within {timeout} s: {exc.last}") from None

    def __repr__(self) -> str:
        return f"SshRemote({self.address!r}, netns={self.netns!r})"


def instance_remote(
    cloud: Any, instance_id: str, key: Path | str | None = None, public: bool = False, user: str = "root"
) -> SshRemote:
    """Somewhere to run commands: ``instance_id`` over SSH from the cluster's outside namespace (the key:
    ``key``, else the held private key of the key pair it was launched with).

    ``cloud`` is anything with an ``ec2`` boto3 client and a ``layout`` (a ``cloudlab.client.Cloud``).
    """
    found = cloud.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    if not found or not found[0]["Instances"]:
        raise Unreachable(f"no instance {instance_id}")
    instance = found[0]["Instances"][0]
    if instance["State"]["Name"] != "running":
        raise Unreachable(f"{instance_id} is {instance['State']['Name']}, not running")
    address = instance.get("PublicIpAddress") if public else instance.get("PrivateIpAddress")
    namespace = cloud.layout.outside_namespace
    if address and not public and instance.get("VpcId"):
        # A VPC's addresses are reached from its router's namespace (VPCs' ranges may overlap), if it has one.
        namespace = _vpc_router(cloud, instance["VpcId"])
        address = address if namespace else None
    if not address:
        raise Unreachable(
            f"{instance_id} has no {'public' if public else 'private'} address:"
            " start the cloud with --network vde|direct"
        )
    if key is None:
        if not instance.get("KeyName"):
            raise Unreachable(f"{instance_id} was launched without a key pair: pass a private key (-i KEY)")
        keys = held_private_keys(cloud.layout.root, instance["KeyName"])
        if len(keys) != 1:
            raise Unreachable(
                f"the cloud holds {len(keys)} private keys named {instance['KeyName']!r}: pass one (-i KEY)"
            )
        key = keys[0]
    return SshRemote(address, Path(key), netns=namespace, user=user)


def _vpc_router(cloud: Any, vpc_id: str) -> str | None:
    """The namespace of ``vpc_id``'s router in the running cloud (None: no network plumbs its subnets)."""
    from cloudlab import servicectl

    status = servicectl.service_status(cloud.layout)
    for cluster in status.get("clusters", []):
        found = ((cluster.get("network_detail") or {}).get("vpc_routers") or {}).get(vpc_id)
        if found:
            return str(found)
    return None
