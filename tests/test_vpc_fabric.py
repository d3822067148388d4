"""A VPC across clusters on VDE (issue 12's trade-off, the VDE side): real VMs, switches, cables and a NAT.

One cloud with two clusters (two zones) on ``vde`` with the VPC model, the second cluster's whole site behind
a masquerading NAT (``--nat-cluster cluster2``). One VPC, a subnet in each zone, an instance in each: they
reach each other on their private addresses over the cable that the NATed cluster dialled to the first
cluster's switch, through their VPC's one router (on the first cluster). The cable's process is killed: it is
dialled again, the status says so, and the instances reach each other again. ``cloudlab down`` leaves nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlab import servicectl
from cloudlab.bench.cloudpaths import open_ssh
from cloudlab.cc import fabric
from cloudlab.client import connect
from cloudlab.config import CloudConfig
from cloudlab.net import NetError, links, netns
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud, cli, default_image, network_requirements, no_leftovers, ssh, start_cloud


def test_nat_clusters_that_cannot_be_built_are_refused_with_the_reason() -> None:
    fabric.check_config(CloudConfig(network="vde", network_model="vpc", clusters=2, nat_clusters=["cluster2"]))
    cases = {
        "cluster7": ("vde", "vpc", 2, "is not a cluster of this cloud (cluster1, cluster2)"),
        "cluster1": ("vde", "vpc", 2, "cannot sit behind a NAT"),
        "cluster2": ("direct", "vpc", 2, "--nat-cluster needs clusters joined by VDE cables"),
    }
    for name, (network, model, clusters, message) in cases.items():
        config = CloudConfig(network=network, network_model=model, clusters=clusters, nat_clusters=[name])
        with pytest.raises(NetError, match=message.replace("(", r"\(").replace(")", r"\)")):
            fabric.check_config(config)
    with pytest.raises(NetError, match="overlaps the clusters' WAN 203.0.113.0/24"):
        fabric.check_config(CloudConfig(network="vde", network_model="vpc", clusters=2, public_pool="203.0.113.0/25"))
    fabric.check_config(CloudConfig(network="vde", public_pool="203.0.113.0/25"))  # one cluster: no WAN to overlap
    assert fabric.wanted(CloudConfig(network="vde", network_model="vpc", clusters=2))
    assert not fabric.wanted(CloudConfig(network="vde", network_model="classic", clusters=2))


def test_up_refuses_a_nat_cluster_it_cannot_build_before_starting_anything(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("cloudlab up checks a network as root")
    state = tmp_path / "state"
    argv = [sys.executable, "-m", "cloudlab.cli", "--state", str(state), "up", "--clusters", "2", "--network", "vde"]
    for extra, message in (
        (["--network-model", "vpc", "--nat-cluster", "cluster1"], "holds the VPC routers"),
        (["--network-model", "classic", "--nat-cluster", "cluster2"], "--nat-cluster needs clusters joined by VDE"),
    ):
        done = subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and message in done.stderr, done.stderr
    assert not (state / "cloud.json").exists()  # nothing saved, nothing started


@pytest.fixture(scope="module")
def fabric_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCloud]:
    reason = network_requirements()
    if reason:
        pytest.skip(reason)
    cloud = start_cloud(
        tmp_path_factory.mktemp("fabric") / "state",
        network="vde",
        network_model="vpc",
        clusters=2,
        nat_clusters=["cluster2"],
        node_vcpus=2,
        node_memory_mb=1024,
    )
    yield cloud
    servicectl.down(cloud.layout)


@pytest.fixture(scope="module")
def lab(fabric_cloud: RunningCloud) -> dict[str, Any]:
    ec2 = fabric_cloud.ec2()
    ec2.create_key_pair(KeyName="fabric", KeyType="ed25519")
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
    vpc = ec2.create_vpc(CidrBlock="10.90.0.0/16")["Vpc"]["VpcId"]
    open_ssh(ec2, vpc)  # the default group admits its members only; `cloudlab ssh` comes from the router
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.90.{n}.0/24", AvailabilityZone=zone)["Subnet"]["SubnetId"]
        for n, zone in ((1, zones[0]), (2, zones[1]))
    ]
    image = default_image(ec2)
    a, b = (
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, KeyName="fabric", SubnetId=s)["Instances"][0]
        for s in subnets
    )
    connect(str(fabric_cloud.layout.root)).wait_booted([a["InstanceId"], b["InstanceId"]], timeout=300)
    return {"ec2": ec2, "vpc": vpc, "zones": zones, "subnets": subnets, "a": a, "b": b}


def ssh_when_up(cloud: RunningCloud, instance_id: str, command: str) -> subprocess.CompletedProcess[str]:
    """``cloudlab ssh`` until sshd answers (it starts once the key came from the metadata service: at most
    90 s), then the command's own result."""
    result: list[subprocess.CompletedProcess[str]] = []

    def answered() -> bool:
        result[:] = [ssh(cloud, instance_id, command)]
        return result[0].returncode != 255

    wait_until(answered, 90, what=f"ssh to {instance_id}", interval_s=1)
    return result[0]


def reaches(cloud: RunningCloud, instance_id: str, address: str) -> subprocess.CompletedProcess[str]:
    """``instance_id`` pings ``address`` (a few rounds: a re-dialled cable's first ARP may be lost)."""
    result: list[subprocess.CompletedProcess[str]] = []

    def replied() -> bool:
        result[:] = [ssh_when_up(cloud, instance_id, f"ping -c 2 -W 2 {address}")]
        return result[0].returncode == 0

    wait_until(replied, 45, what=f"{instance_id} to reach {address}", interval_s=1)
    return result[0]


def network_of(cloud: RunningCloud, cluster: str) -> dict[str, Any]:
    found = [c for c in cloud.status()["clusters"] if c["name"] == cluster]
    return found[0]["network_detail"]


@pytest.mark.vm
@pytest.mark.slow
def test_one_vpc_in_two_zones_has_one_router_on_the_first_cluster(fabric_cloud: RunningCloud, lab: dict) -> None:
    a, b = lab["a"], lab["b"]
    assert (a["Placement"]["AvailabilityZone"], b["Placement"]["AvailabilityZone"]) == tuple(lab["zones"])
    assert b["Placement"]["HostId"].startswith("cluster2-node-")
    assert a["VpcId"] == b["VpcId"] == lab["vpc"]
    assert (a["PrivateIpAddress"], b["PrivateIpAddress"]) == ("10.90.1.4", "10.90.2.4")
    hub, nated = network_of(fabric_cloud, "cluster1"), network_of(fabric_cloud, "cluster2")
    assert list(hub["vpc_routers"]) == [lab["vpc"]] and nated["vpc_routers"] == {}
    assert hub["vlans"] == nated["vlans"] and len(hub["vlans"]) == 2  # both subnets' VLANs, on both clusters
    # the fabric trunks every VPC subnet over one cable: only vde_switch can, so it runs classic (the default
    # profile, fast, is not used here, and status says so)
    assert hub["vde_profile"] == nated["vde_profile"] == "classic"
    assert hub["edge"]["behind_nat"] is False and nated["edge"]["behind_nat"] is True
    roles = {p["role"]: p for p in nated["processes"]}
    assert roles["cluster cable cluster1"]["kind"] == "tcp-dialer" and roles["cluster cable cluster1"]["alive"]
    listener = {p["role"]: p for p in hub["processes"]}["cluster cable cluster2"]
    assert listener["kind"] == "tcp-listener" and listener["connected"]


@pytest.mark.vm
@pytest.mark.slow
def test_private_addresses_reach_each_other_across_the_clusters(fabric_cloud: RunningCloud, lab: dict) -> None:
    a, b = lab["a"], lab["b"]
    there = reaches(fabric_cloud, b["InstanceId"], a["PrivateIpAddress"])
    assert "2 packets received" in there.stdout and "ttl=63" in there.stdout  # routed once: by the VPC's router
    back = reaches(fabric_cloud, a["InstanceId"], b["PrivateIpAddress"])
    assert "2 packets received" in back.stdout
    # SSH to the NATed cluster's instance on its private address (from its VPC's router, over the cable), and
    # its metadata, served by that router too, is its own
    meta = ssh_when_up(
        fabric_cloud, b["InstanceId"], "wget -q -O - http://169.254.169.254/latest/meta-data/instance-id"
    )
    assert meta.stdout.strip() == b["InstanceId"], meta.stderr


@pytest.mark.vm
@pytest.mark.slow
def test_the_nated_cluster_dialled_out_and_nothing_dials_in(fabric_cloud: RunningCloud, lab: dict) -> None:
    hub, nated = network_of(fabric_cloud, "cluster1"), network_of(fabric_cloud, "cluster2")
    outside = hub["namespaces"]["outside"]
    seen = netns.run(outside, ["ss", "-Htn", "state", "established"]).stdout
    # the cable arrives from the NAT's public address (masqueraded), never from the cluster's own
    assert f"{nated['edge']['address']}:" in seen and nated["edge"]["private_address"] not in seen, seen
    inner = nated["edge"]["private_address"]
    route = ["ip", "route", "add", f"{inner}/32", "via", nated["edge"]["address"]]
    netns.run(outside, route)  # as if the WAN routed to the cluster's inside: the NAT still forwards nothing in
    try:
        assert links.ping(outside, nated["edge"]["address"], count=2) >= 1  # the NAT itself answers
        assert links.ping(outside, inner, count=3) == 0  # what lies behind it does not
    finally:
        netns.run(outside, ["ip", "route", "del", f"{inner}/32"])


@pytest.mark.vm
@pytest.mark.slow
def test_a_cut_cable_is_dialled_again_and_reported(fabric_cloud: RunningCloud, lab: dict) -> None:
    cable = {p["role"]: p for p in network_of(fabric_cloud, "cluster2")["processes"]}["cluster cable cluster1"]
    subprocess.run(["kill", "-9", str(cable["pid"])], check=True)

    def redialled() -> dict[str, Any] | None:
        procs = {p["role"]: p for p in network_of(fabric_cloud, "cluster2")["processes"]}
        now = procs["cluster cable cluster1"]
        return now if now["alive"] and now["restarts"] >= cable["restarts"] + 1 and now["pid"] != cable["pid"] else None

    wait_until(redialled, 30, what="the cable to be dialled again", interval_s=0.5)
    history = network_of(fabric_cloud, "cluster2")["history"]
    assert any("cluster cable cluster1 died; restarted" in event for event in history), history
    shown = cli(fabric_cloud, "status").stdout
    assert "cluster cable cluster1: running" in shown and "cluster cable cluster1 died; restarted" in shown, shown
    assert "behind the NAT" in shown
    again = reaches(fabric_cloud, lab["b"]["InstanceId"], lab["a"]["PrivateIpAddress"])
    assert "2 packets received" in again.stdout


@pytest.mark.vm
@pytest.mark.slow
def test_kill_9_of_the_service_spares_the_guests_and_joins_the_clusters_again(
    fabric_cloud: RunningCloud, lab: dict
) -> None:
    """The next ``up`` after a ``kill -9`` rebuilds the WAN, the NAT and the cable around the running guests."""
    a, b = lab["a"], lab["b"]
    boot_id = "cat /proc/sys/kernel/random/boot_id"
    before = {i["InstanceId"]: ssh_when_up(fabric_cloud, i["InstanceId"], boot_id).stdout for i in (a, b)}
    os.kill(servicectl.service_pid(fabric_cloud.layout), signal.SIGKILL)
    wait_until(lambda: servicectl.service_pid(fabric_cloud.layout) is None, 10, what="the service to die")
    up = cli(fabric_cloud, "up", timeout=240)
    assert up.returncode == 0 and "cloud up" in up.stdout, up.stdout + up.stderr
    fabric_cloud.info = servicectl.endpoint(fabric_cloud.layout)  # (a new endpoint port)
    after = {i: ssh_when_up(fabric_cloud, i, boot_id).stdout for i in before}
    assert after == before and all(after.values())  # the same guests, never rebooted
    nated = network_of(fabric_cloud, "cluster2")
    assert nated["edge"]["behind_nat"] and {p["role"] for p in nated["processes"]} >= {"cluster cable cluster1"}
    again = reaches(fabric_cloud, b["InstanceId"], a["PrivateIpAddress"])
    assert "2 packets received" in again.stdout


@pytest.mark.vm
@pytest.mark.slow
def test_down_leaves_nothing(fabric_cloud: RunningCloud, lab: dict) -> None:
    done = cli(fabric_cloud, "down", timeout=120)
    assert done.returncode == 0, done.stderr
    no_leftovers(fabric_cloud)
    assert not Path(f"/run/netns/{fabric_cloud.layout.network_prefix}-wan").exists()
