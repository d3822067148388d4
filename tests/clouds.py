"""The tests' one home for clouds, fixtures and helpers.

Real clouds started the way a user starts them (``cloudlab up``) in temp state folders (``sim_cloud``,
``vm_cloud``, ``cloud_factory``, and ``ec2``/``raw_ec2`` clients of the shared simulated cloud); a
:class:`LocalCloud` in the test's own process for the controllers' tests; and the helpers every API
test wants (``error_code``, ``default_image``, ``unique``, ``state_of``, ``console``, ``wait_states``,
all waiting through ``cloudlab.waiting.wait_until``).

Tests that need root, QEMU or the default image skip with a stated reason only where the tool is
truly absent; ``make test`` installs all of them first, so in CI nothing is skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.parsers import create_parser

from cloudlab import servicectl
from cloudlab.clc.users import User
from cloudlab.config import CloudConfig
from cloudlab.net import netns
from cloudlab.paths import StateLayout
from cloudlab.service import CloudService
from cloudlab.waiting import WaitTimeout, wait_until


@dataclass
class RunningCloud:
    layout: StateLayout
    info: dict[str, Any]

    @property
    def url(self) -> str:
        return self.info["url"]

    def credentials(self, user: str = "admin") -> dict[str, str]:
        return json.loads((self.layout.credentials / f"{user}.json").read_text())

    def ec2(self, user: str = "admin", **overrides: Any) -> Any:
        creds = self.credentials(user)
        kwargs = {
            "endpoint_url": self.url,
            "region_name": self.info["region"],
            "aws_access_key_id": creds["access_key"],
            "aws_secret_access_key": creds["secret_key"],
            "config": Config(retries={"max_attempts": 1}),
        }
        kwargs.update(overrides)
        return boto3.client("ec2", **kwargs)

    def status(self) -> dict[str, Any]:
        return servicectl.service_status(self.layout)

    def add_user(self, prefix: str) -> tuple[Any, Any]:
        """A fresh user of the running cloud, made in its state folder as ``cloudlab user add`` makes one (the
        service sees it at once): (User, access key)."""
        from cloudlab.clc.offline import open_state

        with open_state(self.layout) as admin:
            return admin.add_user(f"{prefix}-{secrets.token_hex(4)}")

    def create_user(self, prefix: str) -> tuple[Any, Any]:
        """A fresh user of the running cloud: (User, boto3 client)."""
        user, key = self.add_user(prefix)
        return user, self.ec2(aws_access_key_id=key.access_key, aws_secret_access_key=key.secret_key)

    def new_user(self, prefix: str) -> Any:
        """A boto3 client acting as a fresh user."""
        return self.create_user(prefix)[1]


def error_code(excinfo: pytest.ExceptionInfo[Any]) -> str:
    """The EC2 error code of a botocore ClientError."""
    return excinfo.value.response["Error"]["Code"]


def default_image(ec2: Any) -> str:
    """The id of the cloud's default image (``Name=cloudlab-default``)."""
    images = ec2.describe_images(Filters=[{"Name": "name", "Values": ["cloudlab-default"]}])["Images"]
    return images[0]["ImageId"]


def unique(prefix: str) -> str:
    """A name no other test (or earlier run on the shared cloud) has used: ``prefix-<10 hex>``."""
    return f"{prefix}-{secrets.token_hex(5)}"


def state_of(ec2: Any, instance_id: str) -> str:
    """The instance's EC2 state name, as DescribeInstances says now."""
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def console(ec2: Any, instance_id: str) -> str:
    """The instance's console output so far (empty before it has any)."""
    return ec2.get_console_output(InstanceId=instance_id).get("Output") or ""


#: The simulated nodes of a :class:`LocalCloud`: vCPUs and memory each.
NODE_VCPUS = 4
NODE_MEMORY_MB = 4096


class LocalCloud:
    """One CloudService in this process on a state folder, started as ``run()`` starts it (without the API
    and signals) on libvirt's test driver: the controllers' tests drive the CLC, CC and NCs directly."""

    def __init__(self, root: Path, nodes: int = 2, poll_s: float = 0.05) -> None:
        self.root = root
        self.layout = StateLayout(root / "state")
        self.config = CloudConfig(
            hypervisor="test:///default",
            nodes=nodes,
            node_vcpus=NODE_VCPUS,
            node_memory_mb=NODE_MEMORY_MB,
            heartbeat_s=poll_s,
        )
        self.service = CloudService(self.layout, self.config, reconcile_s=poll_s)
        self.service.start(api=False)
        self.clc = self.service.clc
        kernel, ramdisk = root / "vmlinuz", root / "initrd.img"
        kernel.write_bytes(b"a kernel the test driver never reads\n")
        ramdisk.write_bytes(b"an initramfs\n")
        self.image, _ = self.clc.images.register_default(kernel, ramdisk, "admin", "x")
        self.admin = self.clc.users.get("admin")
        self.stopped = False

    # -- helpers -------------------------------------------------------------------------------------------
    def run(self, user: User | None = None, count: int = 1, **kwargs: Any) -> list[str]:
        kwargs.setdefault("max_count", count)
        kwargs.setdefault("min_count", count)
        reservation = self.clc.run_instances(user or self.admin, self.image.image_id, **kwargs)
        return [i["instance_id"] for i in reservation["instances"]]

    def state(self, instance_id: str) -> str:
        return self.clc.instance(instance_id)["state"]

    def wait_state(self, ids: list[str], state: str, timeout: float = 15.0) -> None:
        wait_until(
            lambda: all(self.state(i) == state for i in ids),
            timeout,
            what=f"{ids} to be {state}",
            interval_s=0.02,
        )

    def passes(self, count: int = 3) -> None:
        """Wait until the reconciler has made ``count`` more passes over the cluster."""
        reconciler = self.clc.reconciler
        target = reconciler.passes + count
        wait_until(lambda: reconciler.passes >= target, 15.0, what=f"{count} reconcile passes", interval_s=0.02)

    def ledger(self, instance_id: str | None = None) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM ledger", ()
        if instance_id:
            sql, params = sql + " WHERE instance_id=?", (instance_id,)
        return [dict(r) for r in self.service.store.query(sql + " ORDER BY seq", params)]

    def events(self, instance_id: str) -> list[str]:
        return [row["event"] for row in self.ledger(instance_id)]

    def domains(self) -> dict[str, list[str]]:
        return {
            name: sorted(d.name() for d in node.conn.listAllDomains())
            for name, node in self.service.local_nodes.items()
        }

    def node_of(self, instance_id: str) -> Any:
        return self.service.local_nodes[self.clc.instance(instance_id)["node"]]

    def stop(self) -> None:
        """Stop without terminating anything (as a crash or kill would leave it), and release resources."""
        if self.stopped:
            return
        self.stopped = True
        self.service.clc.stop()
        self.service.cc.stop()
        for node in self.service.local_nodes.values():
            node.close()
        server = self.service.cc_server
        threading.Thread(target=lambda: (server.shutdown(), server.server_close()), daemon=True).start()
        self.service.store.close()


def described(ec2: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Instance id → what DescribeInstances says of it."""
    found = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return {i["InstanceId"]: i for r in found for i in r["Instances"]}


def wait_states(ec2: Any, ids: list[str], state: str, timeout: float = 20.0, interval_s: float = 0.2) -> dict[str, Any]:
    """Wait (``wait_until``) until every instance of ``ids`` is in ``state``; returns them as described.
    A timeout is a test failure that shows the states last seen."""
    seen: dict[str, str] = {}

    def settled() -> dict[str, Any] | None:
        found = described(ec2, ids)
        seen.update({k: v["State"]["Name"] for k, v in found.items()})
        return found if found and all(i["State"]["Name"] == state for i in found.values()) else None

    try:
        return wait_until(settled, timeout, what=f"{state} {ids}", interval_s=interval_s)
    except WaitTimeout:
        raise AssertionError(f"not all {state} within {timeout} s: {seen}") from None


def start_cloud(root: Path, **config: Any) -> RunningCloud:
    layout = StateLayout(root)
    info = servicectl.up(layout, CloudConfig(api_port=0, **config), timeout_s=120)
    return RunningCloud(layout, info)


@pytest.fixture
def cloud_factory(tmp_path: Path) -> Iterator[Callable[..., RunningCloud]]:
    """Start clouds on demand; every one is stopped (``cloudlab down``) after the test."""
    started: list[RunningCloud] = []

    def start(name: str = "state", **config: Any) -> RunningCloud:
        cloud = start_cloud(tmp_path / name, **config)
        started.append(cloud)
        return cloud

    yield start
    for cloud in started:
        servicectl.down(cloud.layout)


@pytest.fixture(scope="session")
def sim_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCloud]:
    """One cloud on libvirt's test driver (4 simulated nodes), shared by the API tests."""
    cloud = start_cloud(
        tmp_path_factory.mktemp("sim") / "state",
        hypervisor="test:///default",
        nodes=4,
        node_vcpus=8,
        node_memory_mb=4096,
    )
    yield cloud
    servicectl.down(cloud.layout)


@pytest.fixture(scope="module")
def ec2(sim_cloud: RunningCloud) -> Any:
    """A boto3 EC2 client of the shared simulated cloud, as its admin."""
    return sim_cloud.ec2()


@pytest.fixture(scope="module")
def raw_ec2(sim_cloud: RunningCloud) -> Any:
    """A client that sends what it is given (no parameter validation), so that the server's own checks are tested."""
    return sim_cloud.ec2(config=Config(retries={"max_attempts": 1}, parameter_validation=False))


# -- requests boto3 would never send ------------------------------------------------------------------------


class Answer:
    """What a hand-signed request got back: the HTTP status and the body."""

    def __init__(self, status: int, content: bytes) -> None:
        self.status, self.content = status, content


def raw_call(sim_cloud: RunningCloud, ec2: Any, params: dict[str, str], version: str | None = "2016-11-15") -> Any:
    """A hand-signed EC2 Query request (to send what boto3 never would); errors raised as boto3 raises them."""
    body = dict(params)
    if version is not None:
        body["Version"] = version
    request = AWSRequest(method="POST", url=sim_cloud.url, data=body)
    SigV4Auth(ec2._request_signer._credentials, "ec2", sim_cloud.info["region"]).add_auth(request)
    sent = urllib.request.Request(
        sim_cloud.url,
        data=request.body if isinstance(request.body, bytes) else request.body.encode(),
        headers=dict(request.headers),
    )
    try:
        with urllib.request.urlopen(sent, timeout=30) as response:
            return Answer(response.status, response.read())
    except urllib.error.HTTPError as exc:
        model = botocore.session.get_session().get_service_model("ec2")
        parsed = create_parser("ec2").parse(
            {"status_code": exc.code, "headers": dict(exc.headers), "body": exc.read()},
            model.operation_model(params["Action"]).output_shape,
        )
        raise ClientError(parsed, params["Action"]) from None


# -- clouds with a network: reach their instances as a user would (``cloudlab ssh``) ----------------------------

#: What the network tests' instances run at boot (so their user data is seen to have run).
USER_DATA = "#!/bin/sh\necho user-data-ran-$(hostname)\n"


def network_requirements() -> str | None:
    """Why a cloud with a network cannot run here (no root, QEMU, VDE, nft or ssh), or None."""
    reason = vm_requirements()
    if reason:
        return reason
    for tool in ("vde_switch", "vde_plug", "nft", "ssh"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            return f"{tool} is not installed (make test installs it)"
    return None


def cli(cloud: RunningCloud, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloudlab.cli", "--state", str(cloud.layout.root), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ssh(cloud: RunningCloud, instance_id: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return cli(cloud, "ssh", instance_id, "--", command, timeout=timeout)


def launch(ec2: Any, image: str, count: int, group_ids: list[str], key: str) -> list[dict[str, Any]]:
    reply = ec2.run_instances(
        ImageId=image,
        MinCount=count,
        MaxCount=count,
        KeyName=key,
        SecurityGroupIds=group_ids,
        UserData=USER_DATA,
    )
    return reply["Instances"]


def no_leftovers(cloud: RunningCloud) -> None:
    prefix = cloud.layout.network_prefix
    assert netns.names(prefix + "-") == []
    assert not Path(f"/sys/class/net/{prefix}").exists()
    assert servicectl.leftover_qemu(cloud.layout, (b"vde_switch", b"vde_plug", b"qemu-system")) == []


def vm_requirements() -> str | None:
    """Why real VMs cannot run here, or None."""
    if os.geteuid() != 0:
        return "booting VMs through the embedded QEMU driver needs root (CI runs as root)"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (make test installs it)"
    from cloudlab.images.cached import find_built_image

    if find_built_image() is None:
        return "the default image is not built (make test builds it: cloudlab image build)"
    return None


@pytest.fixture(scope="module")
def vm_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCloud]:
    """A cloud with one node on the embedded QEMU driver (TCG unless the KVM probe proved KVM)."""
    reason = vm_requirements()
    if reason:
        pytest.skip(reason)
    cloud = start_cloud(tmp_path_factory.mktemp("vm") / "state")
    yield cloud
    servicectl.down(cloud.layout)
