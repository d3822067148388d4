"""Public addresses and the way out of a VPC (``network_model: vpc``): EC2's internet gateway, made real.

An instance of a VPC with an internet gateway and a public address (elastic, or auto-assigned by a subnet that
maps them on launch) reaches the cluster's public side (the outside namespace, where the classic model's elastic
addresses live: cloudlab's "internet", nothing beyond) and is reached there, translated 1:1 at its router; an
instance with only a private address does not get out, as on EC2 (it would need a NAT gateway). Without a
gateway nothing crosses, and an elastic address is refused (``Gateway.NotAttached``). A stopped instance gives
its auto-assigned address up; started, it gets a fresh one. First from the records to the routers (libvirt's
test driver: no guests, real namespaces), then with real VMs on direct and on vde: ping and SSH from the public
side, bounded.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudlab import servicectl
from cloudlab.client import connect
from cloudlab.net import NetError, firewall, links, netns
from cloudlab.net.vpc_edge import uplink_addresses
from cloudlab.waiting import WaitTimeout, wait_until
from tests.clouds import (
    RunningCloud,
    cli,
    default_image,
    described,
    network_requirements,
    no_leftovers,
    start_cloud,
    wait_states,
)

SYNC_BOUND_S = 10.0  # how long a change may take to reach the routers (promised: about a second)
POOL = ipaddress.ip_network("198.51.100.0/24")


def eventually(what: str, check: Any) -> Any:
    return wait_until(check, SYNC_BOUND_S, what=what, interval_s=0.2)


def becomes(what: str, check: Any) -> bool:
    try:
        return bool(wait_until(check, SYNC_BOUND_S, what=what, interval_s=0.5))
    except WaitTimeout:
        return False


def route_dev(cloud: RunningCloud, address: str) -> str | None:
    """The outside namespace's device towards ``address`` (None: no route; it has no default route)."""
    try:
        return links.route_get(cloud.layout.outside_namespace, address)["dev"]
    except NetError:
        return None


def router_of(cloud: RunningCloud, vpc_id: str) -> str:
    def found() -> str | None:
        return (cloud.status()["clusters"][0]["network_detail"] or {}).get("vpc_routers", {}).get(vpc_id)

    return eventually(f"the router of {vpc_id}", found)


def slot_of(router: str) -> int:
    return int(router.rsplit("-v", 1)[1])


def error_of(call: Any) -> str:
    with pytest.raises(ClientError) as excinfo:
        call()
    return excinfo.value.response["Error"]["Code"]


def test_public_addresses_reach_the_routers(cloud_factory: Any) -> None:
    cloud = cloud_factory(hypervisor="test:///default", network="direct", network_model="vpc", nodes=1, node_vcpus=4)
    ec2 = cloud.ec2()
    image = default_image(ec2)

    # the default subnet maps public addresses on launch, and the default VPC has its gateway
    auto_id = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    auto = described(ec2, [auto_id])[auto_id]
    auto_ip = auto["PublicIpAddress"]
    assert ipaddress.ip_address(auto_ip) in POOL
    assert auto["NetworkInterfaces"][0]["Association"]["PublicIp"] == auto_ip
    default_router = router_of(cloud, auto["VpcId"])
    uplink = f"v{slot_of(default_router)}"
    eventually("the auto-assigned address routed to its router", lambda: route_dev(cloud, auto_ip) == uplink)
    edge = firewall.listing(default_router)
    assert f"ip daddr {auto_ip} dnat to {auto['PrivateIpAddress']}" in edge
    let_out = f'oifname "up0" ip saddr {auto["PrivateIpAddress"]} accept'
    assert let_out in edge, "an instance with a public address gets out"
    assert "masquerade" not in edge, "no masquerade: without a public address nothing gets out, as on EC2"
    # an elastic address taken from the pool is never the auto-assigned one
    other = ec2.allocate_address(Domain="vpc")
    assert other["PublicIp"] != auto_ip
    # RunInstances' AssociatePublicIpAddress over the subnet's MapPublicIpOnLaunch
    declined = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": auto["SubnetId"], "AssociatePublicIpAddress": False}],
    )["Instances"][0]
    assert "PublicIpAddress" not in declined
    assert "Association" not in declined["NetworkInterfaces"][0]

    # a VPC without a gateway: no public address on launch, none associable, nothing through the uplink
    vpc = ec2.create_vpc(CidrBlock="10.86.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.86.1.0/24")["Subnet"]["SubnetId"]
    launched = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet)["Instances"][0]
    private_id = launched["InstanceId"]
    assert "PublicIpAddress" not in described(ec2, [private_id])[private_id]
    elastic = ec2.allocate_address(Domain="vpc")
    public_ip = elastic["PublicIp"]
    code = error_of(lambda: ec2.associate_address(AllocationId=elastic["AllocationId"], InstanceId=private_id))
    assert code == "Gateway.NotAttached"
    router = router_of(cloud, vpc)
    eventually("a closed uplink", lambda: 'oifname "up0" drop' in firewall.listing(router))
    assert "ct status dnat" not in firewall.listing(router)

    # with a gateway: the uplink opens for public addresses only, then the elastic address (named by the
    # interface) translated 1:1
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    eventually("the gateway's uplink", lambda: "ct status dnat accept" in firewall.listing(router))
    private_only = f"ip saddr {launched['PrivateIpAddress']} accept"
    assert private_only not in firewall.listing(router), "a private address alone does not get out"
    assert 'oifname "up0" drop' in firewall.listing(router)
    asked = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet, "AssociatePublicIpAddress": True}],
    )["Instances"][0]
    asked_ip = asked["PublicIpAddress"]
    assert asked_ip not in (auto_ip, other["PublicIp"], public_ip)
    eventually("the asked-for address routed", lambda: route_dev(cloud, asked_ip) == f"v{slot_of(router)}")
    ec2.terminate_instances(InstanceIds=[asked["InstanceId"]])
    eventually("its route to go with it", lambda: route_dev(cloud, asked_ip) is None)
    nic = launched["NetworkInterfaces"][0]["NetworkInterfaceId"]
    association = ec2.associate_address(AllocationId=elastic["AllocationId"], NetworkInterfaceId=nic)["AssociationId"]
    shown = described(ec2, [private_id])[private_id]
    assert shown["PublicIpAddress"] == public_ip
    assert shown["NetworkInterfaces"][0]["Association"]["PublicIp"] == public_ip
    eventually("the elastic address routed to its router", lambda: route_dev(cloud, public_ip) == f"v{slot_of(router)}")
    assert f"ip daddr {public_ip} dnat to {launched['PrivateIpAddress']}" in firewall.listing(router)
    assert private_only in firewall.listing(router), "with its elastic address it gets out"
    assert uplink_addresses(slot_of(router))[1] in links.addresses(router, "up0")[0]
    assert error_of(lambda: ec2.detach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)) == "DependencyViolation"

    # disassociated: the route and the translation go at once; detached: the uplink closes
    ec2.disassociate_address(AssociationId=association)
    eventually("the route to go", lambda: route_dev(cloud, public_ip) is None)
    assert public_ip not in firewall.listing(router)
    assert private_only not in firewall.listing(router)
    assert "PublicIpAddress" not in described(ec2, [private_id])[private_id]
    ec2.detach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    eventually("the uplink to close", lambda: "ct status dnat" not in firewall.listing(router))
    ec2.release_address(AllocationId=elastic["AllocationId"])

    # an elastic address over an auto-assigned one, and back
    association = ec2.associate_address(AllocationId=other["AllocationId"], InstanceId=auto_id)["AssociationId"]
    assert described(ec2, [auto_id])[auto_id]["PublicIpAddress"] == other["PublicIp"]
    eventually("the elastic address in place", lambda: route_dev(cloud, other["PublicIp"]) is not None)
    assert route_dev(cloud, auto_ip) is None
    ec2.disassociate_address(AssociationId=association)
    assert described(ec2, [auto_id])[auto_id]["PublicIpAddress"] == auto_ip
    eventually("the auto-assigned address back", lambda: route_dev(cloud, auto_ip) is not None)
    # terminated: its auto-assigned address is free again, and its route gone
    ec2.terminate_instances(InstanceIds=[auto_id])
    eventually("the terminated instance's route to go", lambda: route_dev(cloud, auto_ip) is None)


def test_stop_gives_up_the_auto_assigned_address_and_start_takes_a_fresh_one(cloud_factory: Any) -> None:
    """EC2's rule: a stopped instance has no public address but its elastic one; started, it gets a new one."""
    cloud = cloud_factory(hypervisor="test:///default", network="direct", network_model="vpc", nodes=1, node_vcpus=4)
    ec2 = cloud.ec2()
    image = default_image(ec2)
    auto_id, elastic_id = (
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"] for _ in range(2)
    )
    allocation = ec2.allocate_address(Domain="vpc")
    ec2.associate_address(AllocationId=allocation["AllocationId"], InstanceId=elastic_id)
    shown = wait_states(ec2, [auto_id, elastic_id], "running")
    old_ip, private_ip = shown[auto_id]["PublicIpAddress"], shown[auto_id]["PrivateIpAddress"]
    router = router_of(cloud, shown[auto_id]["VpcId"])
    uplink = f"v{slot_of(router)}"
    eventually("the auto-assigned address routed", lambda: route_dev(cloud, old_ip) == uplink)

    ec2.stop_instances(InstanceIds=[auto_id, elastic_id])
    stopped = wait_states(ec2, [auto_id, elastic_id], "stopped")
    assert "PublicIpAddress" not in stopped[auto_id]
    assert "Association" not in stopped[auto_id]["NetworkInterfaces"][0]
    assert stopped[auto_id]["PrivateIpAddress"] == private_ip, "the private address stays"
    assert stopped[elastic_id]["PublicIpAddress"] == allocation["PublicIp"], "an elastic address stays associated"
    eventually("the released address's route to go", lambda: route_dev(cloud, old_ip) is None)
    assert old_ip not in firewall.listing(router)
    assert route_dev(cloud, allocation["PublicIp"]) == uplink
    # the address is the pool's again: the next allocation (lowest free first) takes it
    taker = ec2.allocate_address(Domain="vpc")
    assert taker["PublicIp"] == old_ip

    ec2.start_instances(InstanceIds=[auto_id, elastic_id])
    started = wait_states(ec2, [auto_id, elastic_id], "running")
    new_ip = started[auto_id]["PublicIpAddress"]
    assert ipaddress.ip_address(new_ip) in POOL and new_ip not in (old_ip, allocation["PublicIp"])
    assert started[auto_id]["NetworkInterfaces"][0]["Association"]["PublicIp"] == new_ip
    assert started[elastic_id]["PublicIpAddress"] == allocation["PublicIp"]
    eventually("the fresh address routed to the same router", lambda: route_dev(cloud, new_ip) == uplink)
    assert f"ip daddr {new_ip} dnat to {private_ip}" in firewall.listing(router)
    assert old_ip not in firewall.listing(router), "the old address's translation is gone"
    assert route_dev(cloud, old_ip) is None, "the old address is not routed back (it is allocated, unassociated)"


# -- real VMs ------------------------------------------------------------------------------------------------
OPEN_TO_ALL = [
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    {"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
]


@pytest.fixture(scope="module", params=["direct", "vde"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One instance in a VPC of its own (no gateway yet), one in the default subnet (auto-assigned address)."""
    reason = network_requirements()
    if reason:
        pytest.skip(reason)
    cloud = start_cloud(
        tmp_path_factory.mktemp("vpcpub") / "state",
        network=request.param,
        network_model="vpc",
        node_vcpus=4,
        node_memory_mb=1024,
    )
    try:
        ec2 = cloud.ec2()
        ec2.create_key_pair(KeyName="pub", KeyType="ed25519")
        vpc = ec2.create_vpc(CidrBlock="10.87.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.87.1.0/24")["Subnet"]["SubnetId"]
        own = ec2.create_security_group(GroupName="pub", Description="ssh and ping", VpcId=vpc)["GroupId"]
        ec2.authorize_security_group_ingress(GroupId=own, IpPermissions=OPEN_TO_ALL)
        default_vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
        open_default = ec2.create_security_group(GroupName="pub", Description="ssh, ping", VpcId=default_vpc)
        ec2.authorize_security_group_ingress(GroupId=open_default["GroupId"], IpPermissions=OPEN_TO_ALL)
        image = default_image(ec2)
        mine = ec2.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet, SecurityGroupIds=[own], KeyName="pub"
        )["Instances"][0]
        auto = ec2.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, SecurityGroupIds=[open_default["GroupId"]], KeyName="pub"
        )["Instances"][0]
        connect(str(cloud.layout.root)).wait_booted([mine["InstanceId"], auto["InstanceId"]], timeout=300)
        underlay = ipaddress.ip_network(cloud.status()["clusters"][0]["network_detail"]["underlay"])
        yield {
            "cloud": cloud,
            "ec2": ec2,
            "vpc": vpc,
            "mine": mine["InstanceId"],
            "auto": auto["InstanceId"],
            "public_side": str(list(underlay.hosts())[1]),  # the outside namespace's own address
        }
    finally:
        servicectl.down(cloud.layout)
    no_leftovers(cloud)


def in_guest(lab: dict[str, Any], instance_id: str, command: str) -> str:
    """``command``'s output in the guest, over SSH from its VPC's router (sshd may still be starting)."""
    found: list[str] = []

    def answered() -> bool:
        result = cli(lab["cloud"], "ssh", instance_id, "--", command)
        found[:] = [result.stdout]
        return result.returncode != 255

    wait_until(answered, 90, what=f"sshd of {instance_id}", interval_s=1.0)
    return found[0]


def reaches_public_side(lab: dict[str, Any], instance_id: str) -> bool:
    probe = f"ping -c 1 -W 2 {lab['public_side']} >/dev/null 2>&1 && echo REACHED || echo NOT"
    return in_guest(lab, instance_id, probe).strip() == "REACHED"


def pinged_from_public_side(lab: dict[str, Any], address: str) -> bool:
    return links.ping(lab["cloud"].layout.outside_namespace, address, count=1, timeout=2.0) == 1


@contextlib.contextmanager
def listener(lab: dict[str, Any]) -> Iterator[list[str]]:
    """A TCP listener on the public side (the outside namespace's address, port 7791): the peers it saw."""
    with netns.entered(lab["cloud"].layout.outside_namespace):
        server = socket.create_server((lab["public_side"], 7791))
    server.settimeout(15)
    peers: list[str] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, peer = server.accept()
            peers.append(peer[0])
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield peers
    finally:
        thread.join(timeout=20)
        server.close()


def seen_from(lab: dict[str, Any], instance_id: str) -> list[str]:
    """The address a TCP connection from ``instance_id`` arrives from on the public side."""
    with listener(lab) as peers:
        in_guest(lab, instance_id, f"echo hi | nc -w 2 {lab['public_side']} 7791")
    return peers


@pytest.mark.vm
@pytest.mark.slow
def test_internet_gateway_and_elastic_address_on_real_vms(lab: dict[str, Any]) -> None:
    ec2, cloud, mine = lab["ec2"], lab["cloud"], lab["mine"]
    assert in_guest(lab, mine, "echo up").strip() == "up"
    assert not reaches_public_side(lab, mine), "no internet gateway: nothing leaves the VPC"
    allocation = ec2.allocate_address(Domain="vpc")
    public_ip = allocation["PublicIp"]
    assert error_of(lambda: ec2.associate_address(AllocationId=allocation["AllocationId"], InstanceId=mine)) == (
        "Gateway.NotAttached"
    )

    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=lab["vpc"])
    router = router_of(cloud, lab["vpc"])
    eventually("the gateway at the router", lambda: "ct status dnat accept" in firewall.listing(router))
    assert not reaches_public_side(lab, mine), "a gateway alone: a private address does not get out (EC2's rule)"
    assert seen_from(lab, mine) == [], "no connection arrives on the public side, masqueraded or not"
    assert not pinged_from_public_side(lab, public_ip)

    association = ec2.associate_address(AllocationId=allocation["AllocationId"], InstanceId=mine)["AssociationId"]
    assert becomes("the elastic address to answer", lambda: pinged_from_public_side(lab, public_ip))
    result = cli(cloud, "ssh", "--public", mine, "--", "hostname")
    assert result.stdout.strip() == mine, result.stderr
    assert seen_from(lab, mine) == [public_ip], "translated 1:1 on the way out too"
    metadata = in_guest(lab, mine, "wget -q -O - http://169.254.169.254/latest/meta-data/public-ipv4")
    assert metadata.strip() == public_ip

    ec2.disassociate_address(AssociationId=association)
    assert becomes("the elastic address to go", lambda: not pinged_from_public_side(lab, public_ip))
    probe = f"busybox nc -w 2 {public_ip} 22 </dev/null >/dev/null 2>&1 && echo ANSWERS || echo GONE"
    assert cli(cloud, "exec", "--", "sh", "-c", probe).stdout.strip() == "GONE"
    assert becomes("the way out to close with it", lambda: not reaches_public_side(lab, mine))
    ec2.release_address(AllocationId=allocation["AllocationId"])

    ec2.detach_internet_gateway(InternetGatewayId=gateway, VpcId=lab["vpc"])
    eventually("the uplink to close", lambda: "ct status dnat" not in firewall.listing(router))
    assert not reaches_public_side(lab, mine)


@pytest.mark.vm
@pytest.mark.slow
def test_default_subnet_gives_a_reachable_public_address(lab: dict[str, Any]) -> None:
    ec2, cloud, auto = lab["ec2"], lab["cloud"], lab["auto"]
    public_ip = described(ec2, [auto])[auto]["PublicIpAddress"]
    assert ipaddress.ip_address(public_ip) in POOL
    assert becomes("the auto-assigned address to answer", lambda: pinged_from_public_side(lab, public_ip))
    result = cli(cloud, "ssh", "--public", auto, "--", "hostname")
    assert result.stdout.strip() == auto, result.stderr
    assert reaches_public_side(lab, auto)


@pytest.mark.vm
@pytest.mark.slow
def test_a_started_instance_answers_at_its_fresh_address_only(lab: dict[str, Any]) -> None:
    ec2, cloud, auto = lab["ec2"], lab["cloud"], lab["auto"]
    old_ip = described(ec2, [auto])[auto]["PublicIpAddress"]
    assert becomes("the auto-assigned address to answer", lambda: pinged_from_public_side(lab, old_ip))
    ec2.stop_instances(InstanceIds=[auto])
    assert "PublicIpAddress" not in wait_states(ec2, [auto], "stopped", timeout=120)[auto]
    taker = ec2.allocate_address(Domain="vpc")  # the lowest free address: the one the instance gave up
    assert taker["PublicIp"] == old_ip
    ec2.start_instances(InstanceIds=[auto])
    new_ip = wait_states(ec2, [auto], "running", timeout=120)[auto]["PublicIpAddress"]
    assert new_ip != old_ip and ipaddress.ip_address(new_ip) in POOL
    connect(str(cloud.layout.root)).wait_booted([auto], timeout=300)
    assert in_guest(lab, auto, "echo up").strip() == "up"  # (sshd answers: booted again)
    assert becomes("the fresh address to answer", lambda: pinged_from_public_side(lab, new_ip))
    result = cli(cloud, "ssh", "--public", auto, "--", "hostname")
    assert result.stdout.strip() == auto, result.stderr
    assert seen_from(lab, auto) == [new_ip], "translated to the fresh address on the way out"
    metadata = in_guest(lab, auto, "wget -q -O - http://169.254.169.254/latest/meta-data/public-ipv4")
    assert metadata.strip() == new_ip
    assert not pinged_from_public_side(lab, old_ip), "the old translation is gone"
    ec2.release_address(AllocationId=taker["AllocationId"])
