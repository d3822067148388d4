"""Workloads in running instances, over SSH from the cluster's outside namespace: iperf3 between two
instances, ping, a CPU burn. Results are pandas DataFrames (one row per run), with a progress bar.

The instances are reached as the cluster controller's host would reach them (``cloudlab exec``), with
the private key of the key pair they were launched with, which the cloud holds for pairs it created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cloudlab.bench.measure import cpu_burn, iperf, ping
from cloudlab.bench.remote import SshRemote
from cloudlab.clc.keypairs import held_private_keys


class WorkloadError(RuntimeError):
    """An instance cannot run a workload (no network, no address, no key); the message says why."""


def _describe(cloud: Any, instance_id: str) -> dict[str, Any]:
    found = cloud.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    if not found or not found[0]["Instances"]:
        raise WorkloadError(f"no instance {instance_id}")
    return found[0]["Instances"][0]


def instance_remote(
    cloud: Any, instance_id: str, key: Path | str | None = None, public: bool = False, user: str = "root"
) -> SshRemote:
    """Somewhere to run commands: ``instance_id`` over SSH from the cluster's outside namespace (the key:
    ``key``, else the held private key of the key pair it was launched with)."""
    instance = _describe(cloud, instance_id)
    if instance["State"]["Name"] != "running":
        raise WorkloadError(f"{instance_id} is {instance['State']['Name']}, not running")
    address = instance.get("PublicIpAddress") if public else instance.get("PrivateIpAddress")
    namespace = cloud.layout.outside_namespace
    if address and not public and instance.get("VpcId"):
        # A VPC's addresses are reached from its router's namespace (VPCs' ranges may overlap), if it has one.
        namespace = _vpc_router(cloud, instance["VpcId"])
        address = address if namespace else None
    if not address:
        raise WorkloadError(
            f"{instance_id} has no {'public' if public else 'private'} address:"
            " start the cloud with --network vde|direct"
        )
    if key is None:
        if not instance.get("KeyName"):
            raise WorkloadError(f"{instance_id} was launched without a key pair: pass a private key (-i KEY)")
        keys = held_private_keys(cloud.layout.root, instance["KeyName"])
        if len(keys) != 1:
            raise WorkloadError(
                f"the cloud holds {len(keys)} private keys named {instance['KeyName']!r}: pass one (-i KEY)"
            )
        key = keys[0]
    return SshRemote(address, Path(key), netns=namespace, user=user)


def _vpc_router(cloud: Any, vpc_id: str) -> str | None:
    """The namespace of ``vpc_id``'s router in the running cloud (None: no network plumbs its subnets)."""
    from cloudlab import control

    status = control.service_status(cloud.layout)
    for cluster in status.get("clusters", []):
        found = ((cluster.get("network_detail") or {}).get("vpc_routers") or {}).get(vpc_id)
        if found:
            return str(found)
    return None


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run", disable=not progress)


def iperf_between(
    cloud: Any,
    server_id: str,
    client_id: str,
    duration_s: float = 3,
    streams: int = 1,
    repeats: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """TCP throughput from ``client_id`` to ``server_id`` (iperf3), ``repeats`` times."""
    server, client = instance_remote(cloud, server_id), instance_remote(cloud, client_id)
    rows = []
    with _bar(repeats, f"iperf3 {client_id} -> {server_id}", progress) as bar:
        for repeat in range(repeats):
            result = iperf(server, client, server.address, duration_s=duration_s, streams=streams)
            rows.append({"server": server_id, "client": client_id, "repeat": repeat} | result)
            bar.update(1)
    return pd.DataFrame(rows)


def ping_between(cloud: Any, source_id: str, target_id: str, count: int = 5) -> pd.DataFrame:
    """Round-trip times from ``source_id`` to ``target_id``'s private address."""
    target = _describe(cloud, target_id).get("PrivateIpAddress")
    if not target:
        raise WorkloadError(f"{target_id} has no private address")
    result = ping(instance_remote(cloud, source_id), target, count=count)
    return pd.DataFrame([{"source": source_id, "target": target_id} | result])


def cpu_burn_on(cloud: Any, instance_ids: list[str], seconds: float = 2, progress: bool = True) -> pd.DataFrame:
    """A bounded CPU burn in each instance in turn (loop iterations per second: the guest's CPU speed)."""
    rows = []
    with _bar(len(instance_ids), "cpu burn", progress) as bar:
        for instance_id in instance_ids:
            rows.append({"instance_id": instance_id} | cpu_burn(instance_remote(cloud, instance_id), seconds=seconds))
            bar.update(1)
    return pd.DataFrame(rows)
