"""Zones of a ``direct`` cloud reach each other through public addresses only (issue 12's trade-off, direct side).

A direct cloud keeps a VPC in one cluster, so two instances in different zones are in different VPCs with
nothing between their routers; their public sides (each cluster's outside namespace) are joined by a WAN
namespace (:mod:`cloudlab.cc.public_wan`) where each zone answers for the public addresses it translates. First
the routes and the guard on libvirt's test driver (real namespaces, no guests), then real VMs: one instance per
zone, each with an elastic address, ping and TCP (the other's sshd banner) to the other's elastic address; their
private addresses stay unreachable across zones, and an instance whose elastic address is taken away is neither
reached nor gets out. Every probe is bounded and goes only into cloudlab's namespaces.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from typing import Any

import pytest

from cloudlab import servicectl
from cloudlab.cc.public_wan import edge_address
from cloudlab.client import connect
from cloudlab.net import NetError, firewall, links, netns
from cloudlab.waiting import WaitTimeout, wait_until
from tests.clouds import RunningCloud, cli, default_image, network_requirements, no_leftovers, start_cloud, wait_states

POOL = "198.51.100.0/24"
OPEN_TO_ALL = [
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    {"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
]


def outsides(cloud: RunningCloud) -> list[str]:
    return [c["network_detail"]["namespaces"]["outside"] for c in cloud.status()["clusters"]]


def route_dev(ns: str, address: str) -> str | None:
    try:
        return links.route_get(ns, address)["dev"]
    except NetError:
        return None


def eventually(what: str, check: Any, timeout: float = 10.0) -> Any:
    return wait_until(check, timeout, what=what, interval_s=0.2)


def zone_b_vpc(ec2: Any, zone: str, cidr: str) -> tuple[str, str, str]:
    """A VPC of zone ``zone`` with a subnet, an internet gateway and a group open to ping and SSH from anywhere:
    (vpc, subnet, group)."""
    net = ipaddress.ip_network(cidr)
    vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=str(next(net.subnets(new_prefix=24))), AvailabilityZone=zone)
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    group = ec2.create_security_group(GroupName="open", Description="ping and ssh", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=OPEN_TO_ALL)
    return vpc, subnet["Subnet"]["SubnetId"], group


def test_zones_public_sides_share_a_wan_that_routes_each_public_address_to_its_zone(cloud_factory: Any) -> None:
    cloud = cloud_factory(
        hypervisor="test:///default", network="direct", network_model="vpc", clusters=2, nodes=1, node_vcpus=4
    )
    ec2 = cloud.ec2()
    region = cloud.info["region"]
    image = default_image(ec2)
    out_a, out_b = outsides(cloud)
    wan = f"{cloud.layout.network_prefix}-wan"
    assert netns.exists(wan)
    assert cloud.status()["clusters"][1]["network_detail"]["edge"]["address"] == edge_address(2)
    _, subnet_b, _ = zone_b_vpc(ec2, f"{region}b", "10.97.0.0/16")
    in_a = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    in_b = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet_b)["Instances"][0]["InstanceId"]
    eips = [ec2.allocate_address(Domain="vpc") for _ in range(2)]
    for eip, instance in zip(eips, (in_a, in_b), strict=True):
        ec2.associate_address(AllocationId=eip["AllocationId"], InstanceId=instance)
    shown = wait_states(ec2, [in_a, in_b], "running")
    ip_a, ip_b = (eip["PublicIp"] for eip in eips)
    assert shown[in_a]["PublicIpAddress"] == ip_a and shown[in_b]["PublicIpAddress"] == ip_b
    # each zone routes its own public address down to its router, and the other's onto the WAN
    eventually("zone a's address at its router", lambda: (route_dev(out_a, ip_a) or "").startswith("v"))
    eventually("zone b's address at its router", lambda: (route_dev(out_b, ip_b) or "").startswith("v"))
    assert route_dev(out_a, ip_b) == "wan0" and route_dev(out_b, ip_a) == "wan0"
    # private addresses have no route on either public side (no default route there either)
    assert route_dev(out_a, shown[in_b]["PrivateIpAddress"]) is None
    assert route_dev(out_b, shown[in_a]["PrivateIpAddress"]) is None
    # zone b answers for its address on the WAN (proxy ARP), so zone a learns zone b's edge as its next hop
    links.ping(out_a, ip_b, count=1, timeout=1.0)  # (no guest behind it answers: the test driver runs none)
    mac_b = json.loads(netns.run(out_b, ["ip", "-j", "link", "show", "wan0"]).stdout)[0]["address"]
    neighbours = netns.run(out_a, ["ip", "neigh", "show", ip_b, "dev", "wan0"]).stdout
    assert mac_b in neighbours, neighbours
    # the guard: the WAN reaches only the uplinks, and only for public addresses
    guard = firewall.listing(out_a)
    assert f'iifname "wan0" oifname "v*" ip daddr {POOL} accept' in guard and 'iifname "wan0" drop' in guard
    servicectl.down(cloud.layout)
    no_leftovers(cloud)  # the WAN goes with the cloud
    assert not netns.exists(wan)


# -- real VMs ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A direct cloud of two zones, one instance in each with an elastic address, both booted."""
    reason = network_requirements()
    if reason:
        pytest.skip(reason)
    cloud = start_cloud(
        tmp_path_factory.mktemp("zonepub") / "state",
        network="direct",
        network_model="vpc",
        clusters=2,
        nodes=1,
        node_vcpus=2,
        node_memory_mb=1024,
    )
    try:
        ec2 = cloud.ec2()
        region = cloud.info["region"]
        ec2.create_key_pair(KeyName="zones", KeyType="ed25519")
        image = default_image(ec2)
        default_vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
        group_a = ec2.create_security_group(GroupName="open", Description="ping and ssh", VpcId=default_vpc)
        ec2.authorize_security_group_ingress(GroupId=group_a["GroupId"], IpPermissions=OPEN_TO_ALL)
        _, subnet_b, group_b = zone_b_vpc(ec2, f"{region}b", "10.98.0.0/16")
        a = ec2.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, KeyName="zones", SecurityGroupIds=[group_a["GroupId"]]
        )["Instances"][0]
        b = ec2.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, KeyName="zones", SubnetId=subnet_b, SecurityGroupIds=[group_b]
        )["Instances"][0]
        eips = {}
        for instance in (a, b):
            eip = ec2.allocate_address(Domain="vpc")
            association = ec2.associate_address(AllocationId=eip["AllocationId"], InstanceId=instance["InstanceId"])
            eips[instance["InstanceId"]] = eip | {"AssociationId": association["AssociationId"]}
        connect(str(cloud.layout.root)).wait_booted([a["InstanceId"], b["InstanceId"]], timeout=300)
        yield {"cloud": cloud, "ec2": ec2, "a": a, "b": b, "eips": eips}
    finally:
        servicectl.down(cloud.layout)
    no_leftovers(cloud)


def in_guest(zones: dict[str, Any], instance_id: str, command: str) -> str:
    """``command``'s output in the guest, over SSH from its VPC's router (sshd may still be starting)."""
    found: list[str] = []

    def answered() -> bool:
        result = cli(zones["cloud"], "ssh", instance_id, "--", command)
        found[:] = [result.stdout]
        return result.returncode != 255

    wait_until(answered, 90, what=f"sshd of {instance_id}", interval_s=1.0)
    return found[0]


def pings(zones: dict[str, Any], source: str, address: str) -> bool:
    probe = f"ping -c 1 -W 2 {address} >/dev/null 2>&1 && echo REACHED || echo NOT"
    return in_guest(zones, source, probe).strip() == "REACHED"


def banner(zones: dict[str, Any], source: str, address: str) -> str:
    """The first bytes a TCP connection from ``source`` to ``address``:22 reads (bounded: 2 s), '' if none."""
    return in_guest(zones, source, f"busybox nc -w 2 {address} 22 </dev/null 2>/dev/null | head -c 4").strip()


def becomes(what: str, check: Any, timeout: float = 20.0) -> bool:
    try:
        return bool(wait_until(check, timeout, what=what, interval_s=0.5))
    except WaitTimeout:
        return False


@pytest.mark.vm
@pytest.mark.slow
def test_instances_in_two_zones_reach_each_other_through_their_elastic_addresses(zones: dict[str, Any]) -> None:
    a, b = zones["a"]["InstanceId"], zones["b"]["InstanceId"]
    assert zones["a"]["Placement"]["AvailabilityZone"] != zones["b"]["Placement"]["AvailabilityZone"]
    ip_a, ip_b = zones["eips"][a]["PublicIp"], zones["eips"][b]["PublicIp"]
    assert becomes("zone b's elastic address from zone a", lambda: pings(zones, a, ip_b))
    assert pings(zones, b, ip_a), "and back, from zone b to zone a's"
    assert banner(zones, a, ip_b) == "SSH-", "TCP through both translations: zone b's sshd answers"
    assert banner(zones, b, ip_a) == "SSH-"


@pytest.mark.vm
@pytest.mark.slow
def test_private_addresses_stay_within_their_zone(zones: dict[str, Any]) -> None:
    a, b = zones["a"]["InstanceId"], zones["b"]["InstanceId"]
    private_a, private_b = zones["a"]["PrivateIpAddress"], zones["b"]["PrivateIpAddress"]
    assert pings(zones, a, zones["eips"][b]["PublicIp"]), "the path by public address works meanwhile"
    assert not pings(zones, a, private_b)
    assert not pings(zones, b, private_a)
    assert banner(zones, a, private_b) == ""


@pytest.mark.vm
@pytest.mark.slow
def test_without_its_elastic_address_an_instance_is_cut_off_from_the_other_zone(zones: dict[str, Any]) -> None:
    ec2 = zones["ec2"]
    a, b = zones["a"]["InstanceId"], zones["b"]["InstanceId"]
    ip_a, ip_b = zones["eips"][a]["PublicIp"], zones["eips"][b]["PublicIp"]
    ec2.disassociate_address(AssociationId=zones["eips"][b]["AssociationId"])
    assert becomes("zone b's old address to go quiet", lambda: not pings(zones, a, ip_b))
    assert not pings(zones, b, ip_a), "a private address alone does not get out of zone b's VPC (EC2's rule)"
    association = ec2.associate_address(AllocationId=zones["eips"][b]["AllocationId"], InstanceId=b)
    zones["eips"][b]["AssociationId"] = association["AssociationId"]
    assert becomes("zone b reached again", lambda: pings(zones, a, ip_b))
    assert pings(zones, b, ip_a)
