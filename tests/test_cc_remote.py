"""A cluster controller as a process of its own (``cloudlab cc --clc URL --pki DIR``), as on another host.

The cloud runs one in-service cluster (zone a, a node on libvirt's test driver: no boot is claimed there).
A second cluster is set up the way README's "add a cluster on another host" says: credentials issued with
``cloudlab cluster-credentials`` and ``cloudlab node-credentials`` into a folder of a second state folder
(the other "host"), then ``cloudlab cc`` and ``cloudlab nc`` started from there as separate processes, the
node on the embedded QEMU driver, so the instance placed in zone b is a real VM whose console shows its boot
marker. Killing the CC process (SIGKILL) makes zone b unavailable and a launch there refused with EC2's
InsufficientInstanceCapacity while zone a still launches; the instance's record stays; the CC started again
on the same address brings the zone back and the instance is reconciled as running (its console still read
through the new CC). ``cloudlab down`` then terminates it, the test ends the CC and NC processes it started,
and nothing of either state folder is left running.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudlab import contract as c
from cloudlab import processes, servicectl
from cloudlab.errors import CloudError
from cloudlab.paths import StateLayout
from cloudlab.rpc import HttpChannel
from cloudlab.security.ca import CertificateAuthority
from cloudlab.security.messages import controller_keys
from cloudlab.waiting import wait_until
from tests.clouds import (
    RunningCloud,
    cli,
    console,
    default_image,
    error_code,
    no_leftovers,
    start_cloud,
    vm_requirements,
    wait_states,
)

BOOT_TIMEOUT_S = 240  # a TCG boot on a loaded two-core machine
REMOTE = "cluster2"
NODE = "rnode1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RemoteSite:
    """The other "host": its own state folder, the credentials copied there, its CC and NC processes."""

    def __init__(self, root: Path, clc_url: str) -> None:
        self.layout = StateLayout(root)
        self.pki = root / "pki-from-cloud"
        self.clc_url = clc_url
        self.cc_port = free_port()
        self.cc_url = f"http://127.0.0.1:{self.cc_port}"
        self.cc: subprocess.Popen[bytes] | None = None
        self.nc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    def _spawn(self, log_name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.layout.root / log_name).open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "cloudlab.cli", "--state", str(self.layout.root), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def start_cc(self) -> None:
        self.cc = self._spawn(
            "cc.log", "cc", "--name", REMOTE, "--clc", self.clc_url, "--pki", str(self.pki),
            "--listen", f"127.0.0.1:{self.cc_port}", "--heartbeat-s", "0.2",
        )  # fmt: skip

    def start_nc(self, *options: str) -> None:
        self.nc = self._spawn("nc.log", "nc", "--name", NODE, "--cc", self.cc_url, "--pki", str(self.pki),
                              "--launch", "boot", *options)  # fmt: skip

    def credentials(self, cloud: RunningCloud) -> None:
        """What the other host needs, issued on the cloud's host as README says."""
        for command in ("cluster-credentials", REMOTE), ("node-credentials", NODE):
            made = cli(cloud, *command, "--out", str(self.pki))
            assert made.returncode == 0, made.stderr

    def log(self) -> str:
        return "".join(
            f"--- {name}\n{(self.layout.root / name).read_text(errors='replace')[-3000:]}\n"
            for name in ("cc.log", "nc.log")
            if (self.layout.root / name).exists()
        )

    def stop(self) -> None:
        for proc in (self.nc, self.cc):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in (self.nc, self.cc):
            if proc is not None:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[RunningCloud, RemoteSite]]:
    reason = vm_requirements()
    if reason:
        pytest.skip(reason)
    cloud = start_cloud(
        tmp_path / "state", hypervisor="test:///default", nodes=1, node_vcpus=4, node_memory_mb=4096, heartbeat_s=0.2
    )
    remote = RemoteSite(tmp_path / "other-host", cloud.status()["clc_url"])
    try:
        yield cloud, remote
    finally:
        servicectl.down(cloud.layout)  # terminates the instances of every zone whose CC answers
        remote.stop()


def booted(ec2: Any, instance_id: str) -> bool:
    """Whether the console shows the guest's boot marker (``cloudlab-boot: ok host=<id> ...``)."""
    lines = console(ec2, instance_id).splitlines()
    return any(line.startswith("cloudlab-boot:") and f"host={instance_id}" in line for line in lines)


def zone_states(ec2: Any) -> dict[str, str]:
    return {z["ZoneName"]: z["State"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}


def remote_node_up(cloud: RunningCloud) -> bool:
    clusters = {c["name"]: c for c in cloud.status()["clusters"]}
    found = clusters.get(REMOTE)
    return found is not None and [(n["name"], n["state"]) for n in found["nodes"]] == [(NODE, "up")]


@pytest.mark.vm
def test_a_cluster_controller_of_its_own_serves_a_zone_dies_and_comes_back(
    site: tuple[RunningCloud, RemoteSite],
) -> None:
    cloud, remote = site
    ec2 = cloud.ec2()
    image = default_image(ec2)
    region = cloud.status()["region"]
    zone_a, zone_b = f"{region}a", f"{region}b"

    # credentials for the other host, as README says: issued on the cloud's host, copied over
    made = cli(cloud, "cluster-credentials", REMOTE, "--out", str(remote.pki))
    assert made.returncode == 0, made.stderr
    assert f"cloudlab cc --name {REMOTE} --clc CLC_URL --pki {remote.pki}" in made.stdout
    remote.credentials(cloud)  # (again: a new certificate replaces the first)
    assert sorted(p.name for p in remote.pki.iterdir()) == [
        "ca.crt",
        f"cc-cc-{REMOTE}.crt",
        f"cc-cc-{REMOTE}.key",
        f"nc-{NODE}.crt",
        f"nc-{NODE}.key",
    ]  # fmt: skip  (no CA key leaves the cloud's host)
    assert oct((remote.pki / f"cc-cc-{REMOTE}.key").stat().st_mode & 0o777) == "0o600"

    remote.start_cc()
    remote.start_nc()
    wait_until(lambda: remote_node_up(cloud), 120, what=f"{REMOTE} and its node registered\n{remote.log()}",
               interval_s=0.5)  # fmt: skip
    assert zone_states(ec2) == {zone_a: "available", zone_b: "available"}
    shown = {c["name"]: c for c in cloud.status()["clusters"]}[REMOTE]
    assert shown["zone"] == zone_b and shown["remote"] and shown["cc_url"] == remote.cc_url

    # an instance in zone b is a real VM on the other site's node
    [far] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t2.micro",
                              Placement={"AvailabilityZone": zone_b})["Instances"]  # fmt: skip
    far_id = far["InstanceId"]
    running = wait_states(ec2, [far_id], "running", timeout=BOOT_TIMEOUT_S)[far_id]
    assert running["Placement"] == {**running["Placement"], "AvailabilityZone": zone_b, "HostId": NODE}
    wait_until(lambda: booted(ec2, far_id), BOOT_TIMEOUT_S,
               what=f"boot marker of {far_id}\n{remote.log()}", interval_s=1.0)  # fmt: skip
    assert len(servicectl.leftover_qemu(remote.layout)) == 1, "the instance is one QEMU of the other site"

    # the CC process is killed: zone b is unavailable, a launch there refused, zone a still launches
    assert remote.cc is not None
    os.kill(remote.cc.pid, signal.SIGKILL)
    remote.cc.wait(timeout=10)
    wait_until(lambda: zone_states(ec2) == {zone_a: "available", zone_b: "unavailable"},
               30, what="zone b unavailable", interval_s=0.3)  # fmt: skip
    with pytest.raises(ClientError) as excinfo:
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": zone_b})
    assert error_code(excinfo) == "InsufficientInstanceCapacity"
    assert f"({zone_b})" in excinfo.value.response["Error"]["Message"]
    [near] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": zone_a})[
        "Instances"
    ]
    wait_states(ec2, [near["InstanceId"]], "running")
    kept = wait_states(ec2, [far_id], "running")[far_id]  # the record is intact while its CC is away
    assert kept["Placement"]["AvailabilityZone"] == zone_b and kept["Placement"]["HostId"] == NODE
    assert remote.nc is not None and remote.nc.poll() is None  # the node and its VM live on
    assert len(servicectl.leftover_qemu(remote.layout)) == 1

    # the CC started again on the same address: the node registers again, zone b is back, the instance reconciled
    remote.start_cc()
    wait_until(lambda: remote_node_up(cloud) and zone_states(ec2)[zone_b] == "available", 60,
               what=f"zone b back\n{remote.log()}", interval_s=0.3)  # fmt: skip
    passes = cloud.status()["reconcile_passes"]
    wait_until(lambda: cloud.status()["reconcile_passes"] >= passes + 3, 30, what="reconcile passes", interval_s=0.2)
    back = wait_states(ec2, [far_id], "running")[far_id]
    assert back["Placement"]["HostId"] == NODE
    assert booted(ec2, far_id)  # relayed by the new CC to the same VM
    [again] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t2.micro",
                                Placement={"AvailabilityZone": zone_b})["Instances"]  # fmt: skip
    wait_states(ec2, [again["InstanceId"]], "running", timeout=BOOT_TIMEOUT_S)

    # down: the instances of both zones are terminated; the test ends the processes it started
    servicectl.down(cloud.layout)
    wait_until(lambda: servicectl.leftover_qemu(remote.layout, templates=True) == [], 60,
               what="the other site's VMs ended by down", interval_s=0.5)  # fmt: skip
    remote.stop()
    no_leftovers(cloud)
    left = [pid for pid, args in processes.command_lines() if str(remote.layout.root).encode() in b"\0".join(args)]
    assert left == [], f"processes of the other site left: {left}"


def test_a_cluster_controller_speaks_only_for_a_cluster_of_its_own(tmp_path: Path) -> None:
    """A CC certificate for an in-service cluster's name is refused, as is a URL where no CC answers as
    itself and a sender that is no CC at all (checked on the CLC's own signed endpoint)."""
    cloud = start_cloud(tmp_path / "state", hypervisor="test:///default", nodes=1)
    try:
        clc_url = cloud.status()["clc_url"]
        ca = CertificateAuthority.load_or_create(cloud.layout.pki)

        def register(name: str, role: str, url: str) -> Any:
            signer, verifier = controller_keys(ca.identity(name, role), ca.ca_certificate)
            return HttpChannel(None, "clc", signer, verifier, clc_url).ask(c.REGISTER_CLUSTER, c.RegisterNode(url=url))

        with pytest.raises(CloudError) as refused:
            register("cc-cluster1", "cc", cloud.status()["clusters"][0]["cc_url"])
        assert refused.value.code == "InvalidParameterValue" and "inside the cloud service" in refused.value.message
        with pytest.raises(CloudError) as refused:
            register("cc-cluster9", "cc", f"http://127.0.0.1:{free_port()}")
        assert refused.value.code == "InvalidParameterValue" and "does not answer as itself" in refused.value.message
        with pytest.raises(CloudError) as refused:
            register("node9", "nc", "http://127.0.0.1:1")
        assert refused.value.code == "MessageRejected"
        ec2 = cloud.ec2()
        assert [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]] == [
            f"{cloud.status()['region']}a"
        ]
    finally:
        servicectl.down(cloud.layout)


def test_a_restarted_cloud_follows_a_cluster_controller_of_its_own_at_once(tmp_path: Path) -> None:
    """The service killed (-9) and started again remembers where the remote cluster's CC registered: its zone
    is listed at once (unavailable while that CC is away too), and reconciles when the CC answers. Nodes on
    libvirt's test driver (no boot is claimed here)."""
    clc_port = free_port()
    config = {"hypervisor": "test:///default", "nodes": 1, "node_vcpus": 4, "node_memory_mb": 4096,
              "heartbeat_s": 0.2, "clc_port": clc_port}  # fmt: skip
    cloud = start_cloud(tmp_path / "state", **config)
    remote = RemoteSite(tmp_path / "other-host", cloud.status()["clc_url"])
    try:
        assert remote.clc_url == f"http://127.0.0.1:{clc_port}"
        remote.credentials(cloud)
        remote.start_cc()
        remote.start_nc("--hypervisor", "test:///default", "--vcpus", "4", "--memory", "4096")
        wait_until(lambda: remote_node_up(cloud), 120, what=f"{REMOTE} registered\n{remote.log()}", interval_s=0.5)
        ec2 = cloud.ec2()
        region = cloud.status()["region"]
        zone_b = f"{region}b"
        [far] = ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1,
                                  Placement={"AvailabilityZone": zone_b})["Instances"]  # fmt: skip
        far_id = far["InstanceId"]
        wait_states(ec2, [far_id], "running")

        os.kill(servicectl.service_pid(cloud.layout), signal.SIGKILL)
        wait_until(lambda: servicectl.service_pid(cloud.layout) is None, 10, what="the service to die")
        assert remote.cc is not None
        remote.cc.terminate()  # and the remote CC is away when the cloud comes back
        remote.cc.wait(timeout=30)
        cloud = start_cloud(tmp_path / "state", **config)
        ec2 = cloud.ec2()
        wait_until(lambda: zone_states(ec2) == {f"{region}a": "available", zone_b: "unavailable"}, 30,
                   what="zone b known and unavailable", interval_s=0.3)  # fmt: skip
        assert wait_states(ec2, [far_id], "running")[far_id]["Placement"]["AvailabilityZone"] == zone_b
        remote.start_cc()
        wait_until(lambda: remote_node_up(cloud) and zone_states(ec2)[zone_b] == "available", 60,
                   what=f"zone b back\n{remote.log()}", interval_s=0.3)  # fmt: skip
        passes = cloud.status()["reconcile_passes"]
        wait_until(lambda: cloud.status()["reconcile_passes"] >= passes + 3, 30, what="passes", interval_s=0.2)
        assert wait_states(ec2, [far_id], "running")[far_id]["Placement"]["HostId"] == NODE
        servicectl.down(cloud.layout)
        with sqlite3.connect(cloud.layout.database) as db:  # down terminated it through the remote CC
            row = db.execute("SELECT state FROM instances WHERE instance_id=?", (far_id,)).fetchone()
        assert row == ("terminated",)
    finally:
        servicectl.down(cloud.layout)
        remote.stop()
