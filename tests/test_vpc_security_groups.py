"""VPC security groups enforced on instances' ports (``network_model: vpc``).

First from the records to the host's nftables table (libvirt's test driver: no guests, real namespaces): the
rules of an instance's groups, group references resolved to members' addresses, changes reaching the host while
the instances run. Then on real VMs: two instances of one subnet, probing each other (bounded: ``nc -w``,
``ping -W``) through the filters while rules are authorised and revoked.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from cloudlab import servicectl
from cloudlab.client import connect
from cloudlab.net import firewall, netns
from cloudlab.waiting import WaitTimeout, wait_until
from tests.clouds import RunningCloud, default_image, network_requirements, start_cloud

SYNC_BOUND_S = 10.0  # how long a change may take to reach the host before a test gives up (promised: ~1 s)


def host_of(cloud: RunningCloud) -> str:
    namespaces = cloud.status()["clusters"][0]["network_detail"]["namespaces"]
    return next(ns for role, ns in namespaces.items() if role not in ("outside",) and not role.startswith("nat "))


def chain_of(listing: str, match: str) -> str:
    """The body of the chain that the forward line containing ``match`` jumps to ("" while there is none)."""
    line = next((line for line in listing.splitlines() if match in line and "jump" in line), None)
    if line is None:
        return ""
    start = listing.index(f"chain {line.split('jump ')[1].strip()} {{")
    return listing[start : listing.index("}", start)]


def eventually(what: str, check: Any) -> Any:
    return wait_until(check, SYNC_BOUND_S, what=what, interval_s=0.2)


def test_groups_reach_the_host_as_filters_of_running_instances(cloud_factory: Any) -> None:
    cloud = cloud_factory(hypervisor="test:///default", network="direct", network_model="vpc", nodes=1, node_vcpus=4)
    ec2 = cloud.ec2()
    vpc = ec2.create_vpc(CidrBlock="10.83.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.83.1.0/24")["Subnet"]["SubnetId"]
    web = ec2.create_security_group(GroupName="web", Description="web", VpcId=vpc)["GroupId"]
    clients = ec2.create_security_group(GroupName="clients", Description="clients", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=web,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
    )
    image = default_image(ec2)
    server = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet, SecurityGroupIds=[web])
    client = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet, SecurityGroupIds=[clients])
    server_ip = server["Instances"][0]["PrivateIpAddress"]
    client_ip = client["Instances"][0]["PrivateIpAddress"]
    host = host_of(cloud)

    def listing() -> str:
        return firewall.listing(host)

    def server_ingress() -> str:
        return chain_of(listing(), f"ip daddr {server_ip} jump")

    eventually("the server's filter on the host", lambda: "tcp dport 22 accept" in server_ingress())
    assert "table inet cloudlab_sg" in listing()
    assert f"ip saddr {client_ip}" not in server_ingress()

    # a rule naming the clients' group: its member's address, on the running server, within the sync
    referenced = {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "UserIdGroupPairs": [{"GroupId": clients}]}
    ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[referenced])
    eventually("the group reference", lambda: f"ip saddr {client_ip} tcp dport 8080 accept" in server_ingress())
    ec2.revoke_security_group_ingress(GroupId=web, IpPermissions=[referenced])
    eventually("the revoke", lambda: "8080" not in server_ingress())

    # the clients' egress: EC2's allow-all until revoked, then only the metadata service
    def client_egress() -> str:
        return chain_of(listing(), f"ip saddr {client_ip} jump")

    assert "accept" not in client_egress() and "return" in client_egress()
    everything = {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    ec2.revoke_security_group_egress(GroupId=clients, IpPermissions=[everything])
    eventually(
        "the egress revoke",
        lambda: (
            [ln.strip() for ln in client_egress().splitlines() if "return" in ln] == ["ip daddr 169.254.169.254 return"]
        ),
    )
    ec2.terminate_instances(InstanceIds=[server["Instances"][0]["InstanceId"]])
    eventually("the terminated server's filter to go", lambda: f"ip daddr {server_ip} jump" not in listing())


# -- real VMs ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["direct", "vde"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two instances of one subnet, on direct (the host's bridge holds their taps) and on vde (each NIC has a
    bridge of its own, ``vb<port>``, where the node applies the filter)."""
    reason = network_requirements()
    if reason:
        pytest.skip(reason)
    cloud = start_cloud(
        tmp_path_factory.mktemp("vpcsg") / "state",
        network=request.param,
        network_model="vpc",
        node_vcpus=4,
        node_memory_mb=1024,
    )
    try:
        ec2 = cloud.ec2()
        key = tmp_path_factory.mktemp("vpcsgkey") / "sg.pem"
        key.write_text(ec2.create_key_pair(KeyName="sg", KeyType="ed25519")["KeyMaterial"])
        key.chmod(0o600)
        vpc = ec2.create_vpc(CidrBlock="10.84.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.84.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="probe", Description="probe", VpcId=vpc)["GroupId"]
        # SSH from the VPC's router only: where this test drives the guests from
        router_ssh = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.84.1.1/32"}]}
        ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[router_ssh])
        launched = ec2.run_instances(
            ImageId=default_image(ec2), MinCount=2, MaxCount=2, SubnetId=subnet, SecurityGroupIds=[group],
            KeyName="sg",
        )["Instances"]  # fmt: skip
        connect(str(cloud.layout.root)).wait_booted([i["InstanceId"] for i in launched], timeout=300)
        router = cloud.status()["clusters"][0]["network_detail"]["vpc_routers"][vpc]
        yield {
            "ec2": ec2,
            "key": key,
            "group": group,
            "router": router,
            "ips": [i["PrivateIpAddress"] for i in launched],
        }
    finally:
        servicectl.down(cloud.layout)


def ssh(pair: dict[str, Any], address: str, command: str) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-i", str(pair["key"]), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    argv += ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"root@{address}", command]
    return subprocess.run(netns.command(pair["router"], argv), capture_output=True, text=True, timeout=60, check=False)


def ssh_when_up(pair: dict[str, Any], address: str, command: str) -> subprocess.CompletedProcess[str]:
    """(sshd starts once the key came from the metadata service)"""
    result: subprocess.CompletedProcess[str] | None = None

    def answered() -> bool:
        nonlocal result
        result = ssh(pair, address, command)
        return result.returncode != 255

    with contextlib.suppress(WaitTimeout):
        wait_until(answered, 90, what=f"sshd of {address}", interval_s=1.0)
    assert result is not None
    return result


def probe_ssh(pair: dict[str, Any], source: str, target: str) -> bool:
    """Whether ``target``'s sshd answers ``source`` (its banner, bounded by nc's 2 s connect timeout)."""
    result = ssh(pair, source, f"echo | timeout 5 nc -w 2 {target} 22 | head -c 4")
    return result.stdout.startswith("SSH-")


def probe_ping(pair: dict[str, Any], source: str, target: str) -> bool:
    return ssh(pair, source, f"ping -c 1 -W 1 {target}").returncode == 0


def becomes(what: str, check: Any) -> bool:
    """Whether ``check`` holds within the sync bound (a change must reach the running instances' ports)."""
    try:
        return wait_until(check, SYNC_BOUND_S, what=what, interval_s=0.5)
    except WaitTimeout:
        return False


@pytest.mark.vm
@pytest.mark.slow
def test_security_groups_filter_running_instances(pair: dict[str, Any]) -> None:
    ec2, group = pair["ec2"], pair["group"]
    a, b = pair["ips"]
    up = ssh_when_up(pair, a, "echo up")
    assert up.stdout.strip() == "up", up.stderr  # allowed by a rule: SSH from the router
    assert ssh_when_up(pair, b, "echo up").stdout.strip() == "up"
    assert not probe_ssh(pair, a, b), "b's sshd is allowed for the router only"
    assert not probe_ping(pair, a, b), "no rule allows icmp"

    # authorising lets the running instances reach each other
    from_group = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [{"GroupId": group}]}
    icmp = {"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "10.84.1.0/24"}]}
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[from_group, icmp])
    assert becomes("b's sshd to answer a", lambda: probe_ssh(pair, a, b))
    assert probe_ping(pair, a, b) and probe_ping(pair, b, a)

    # revoking closes it again (new connections; the SSH sessions from the router are unaffected)
    ec2.revoke_security_group_ingress(GroupId=group, IpPermissions=[from_group])
    assert becomes("b's sshd to stop answering a", lambda: not probe_ssh(pair, a, b))
    assert probe_ping(pair, a, b), "the icmp rule stays"

    # the group's egress revoked: nothing goes out but replies and the metadata service
    everything = {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    ec2.revoke_security_group_egress(GroupId=group, IpPermissions=[everything])
    assert becomes("a's pings to be blocked on the way out", lambda: not probe_ping(pair, a, b))
    url = "http://169.254.169.254/latest/meta-data/local-ipv4"
    assert ssh(pair, a, f"timeout 10 wget -q -O - {url}").stdout.strip() == a, "metadata is never filtered"
    ec2.authorize_security_group_egress(GroupId=group, IpPermissions=[everything])
    assert becomes("a's pings to pass again", lambda: probe_ping(pair, a, b))
