"""A VPC across clusters on VDE (issue 12's trade-off, the VDE side): real VMs, switches, cables and a NAT.

One cloud with two clusters (two zones) on ``vde`` with the VPC model, the second cluster's whole site behind
a masquerading NAT (``--nat-cluster cluster2``). One VPC, a subnet in each zone, an instance in each: they
reach each other on their private addresses over the cable that the NATed cluster dialled to the first
cluster's switch, through their VPC's one router (on the first cluster). The cable's process is killed: it is
dialled again, the status says so, and the instances reach each other again. ``cloudlab down`` leaves nothing.

Every test runs on both VDE profiles: ``fast`` (the default: a cable per VPC subnet segment and cluster, MTU 9000
in the guests, :mod:`cloudlab.cc.fabric_cables`) and ``classic`` (one cable per cluster, the VLANs tagged on it).
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
from cloudlab.usage_frames import fetch_usage
from cloudlab.waiting import wait_until
from tests.clouds import (
    RunningCloud,
    cli,
    default_image,
    network_requirements,
    no_leftovers,
    ssh,
    start_cloud,
    wait_states,
)


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


@pytest.fixture(scope="module", params=["fast", "classic"])
def fabric_cloud(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCloud]:
    reason = network_requirements()
    if reason:
        pytest.skip(reason)
    kwargs = {} if request.param == "fast" else {"vde_profile": request.param}  # fast: the default, unsaid
    cloud = start_cloud(
        tmp_path_factory.mktemp("fabric") / "state",
        network="vde",
        network_model="vpc",
        clusters=2,
        nat_clusters=["cluster2"],
        node_vcpus=2,
        node_memory_mb=1024,
        **kwargs,
    )
    cloud.profile = request.param  # type: ignore[attr-defined]
    yield cloud
    servicectl.down(cloud.layout)


def far_cable(cloud: RunningCloud, lab: dict) -> str:
    """The role of the NATed cluster's cable that carries its instance's subnet (fast: that segment's own)."""
    if cloud.profile == "classic":  # type: ignore[attr-defined]
        return "cluster cable cluster1"
    return f"cluster cable cluster1 vlan {lab['vlans'][1]}"


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
    vlans = sorted(network_of(fabric_cloud, "cluster1")["vlans"])  # the subnets' segments, in slot order
    return {"ec2": ec2, "vpc": vpc, "zones": zones, "subnets": subnets, "a": a, "b": b, "vlans": vlans}


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
    assert hub["vde_profile"] == nated["vde_profile"] == fabric_cloud.profile  # type: ignore[attr-defined]
    assert hub["edge"]["behind_nat"] is False and nated["edge"]["behind_nat"] is True
    roles = {p["role"]: p for p in nated["processes"]}
    hub_roles = {p["role"]: p for p in hub["processes"]}
    # classic: one cable, every subnet's VLAN tagged on it; fast: a cable per subnet segment, none shared
    suffixes = [""] if fabric_cloud.profile == "classic" else [f" vlan {v}" for v in hub["vlans"]]  # type: ignore[attr-defined]
    assert sorted(r for r in roles if r.startswith("cluster cable")) == [f"cluster cable cluster1{s}" for s in suffixes]
    for suffix in suffixes:
        dialer = roles[f"cluster cable cluster1{suffix}"]
        assert dialer["kind"] == "tcp-dialer" and dialer["alive"]
        listener = hub_roles[f"cluster cable cluster2{suffix}"]
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
    # the guests' MTU is the segment's (fast: 9000, from libvirt's <mtu>), and a frame that fills it crosses the
    # cable, the NAT and the router whole (ICMP payload = MTU - 28; busybox ping does not fragment below the MTU)
    mtu = 9000 if fabric_cloud.profile == "fast" else 1500  # type: ignore[attr-defined]
    for instance in (a, b):
        shown = ssh_when_up(fabric_cloud, instance["InstanceId"], "cat /sys/class/net/eth0/mtu").stdout.strip()
        assert shown == str(mtu), shown
    full = ssh_when_up(fabric_cloud, b["InstanceId"], f"ping -c 2 -W 2 -s {mtu - 28} {a['PrivateIpAddress']}")
    assert f"{mtu - 20} bytes from {a['PrivateIpAddress']}" in full.stdout, full.stdout + full.stderr


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
    role = far_cable(fabric_cloud, lab)
    cable = {p["role"]: p for p in network_of(fabric_cloud, "cluster2")["processes"]}[role]
    subprocess.run(["kill", "-9", str(cable["pid"])], check=True)

    def redialled() -> dict[str, Any] | None:
        procs = {p["role"]: p for p in network_of(fabric_cloud, "cluster2")["processes"]}
        now = procs[role]
        return now if now["alive"] and now["restarts"] >= cable["restarts"] + 1 and now["pid"] != cable["pid"] else None

    wait_until(redialled, 30, what="the cable to be dialled again", interval_s=0.5)
    history = network_of(fabric_cloud, "cluster2")["history"]
    assert any(f"{role} died; restarted" in event for event in history), history
    shown = cli(fabric_cloud, "status").stdout
    assert f"{role}: running" in shown and f"{role} died; restarted" in shown, shown
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
    assert nated["edge"]["behind_nat"] and {p["role"] for p in nated["processes"]} >= {far_cable(fabric_cloud, lab)}
    again = reaches(fabric_cloud, b["InstanceId"], a["PrivateIpAddress"])
    assert "2 packets received" in again.stdout


@pytest.mark.vm
@pytest.mark.slow
def test_the_nated_instances_bytes_reach_the_ledger(fabric_cloud: RunningCloud, lab: dict) -> None:
    """Accounting across the fabric: the NATed cluster's instance's NIC counters (its tap's, on either profile)
    become ledger bytes; it pinged across the cable in frames of the segment's MTU and served SSH sessions, so
    more than such a frame went each way."""
    ec2, b = fabric_cloud.ec2(), lab["b"]["InstanceId"]  # (the endpoint of the cloud started again above)
    ec2.terminate_instances(InstanceIds=[b])  # (its final counters go into the ledger)
    wait_states(ec2, [b], "terminated", 90, interval_s=0.5)
    creds = fabric_cloud.credentials()
    frame = fetch_usage(
        {"endpoint_url": fabric_cloud.url, "region_name": fabric_cloud.info["region"],
         "aws_access_key_id": creds["access_key"], "aws_secret_access_key": creds["secret_key"]},
        by="instance",
    ).set_index("instance")  # fmt: skip
    mtu = 9000 if fabric_cloud.profile == "fast" else 1500  # type: ignore[attr-defined]
    assert frame.loc[b, "net_rx_bytes"] > 2 * mtu and frame.loc[b, "net_tx_bytes"] > 2 * mtu, frame.loc[b]


@pytest.mark.vm
@pytest.mark.slow
def test_down_leaves_nothing(fabric_cloud: RunningCloud, lab: dict) -> None:
    done = cli(fabric_cloud, "down", timeout=120)
    assert done.returncode == 0, done.stderr
    no_leftovers(fabric_cloud)
    assert not Path(f"/run/netns/{fabric_cloud.layout.network_prefix}-wan").exists()
