"""VPC subnets on a real network (direct flavour, ``network_model: vpc``): real VMs, real bridges.

Two VPCs with the same range, 10.80.0.0/16, each with the subnet 10.80.1.0/24: two instances in the first
VPC's subnet reach each other on their segment; the one instance of the second VPC gets the same address as
the first VPC's first instance (ranges overlap, the networks do not), fetches its own metadata from its own
VPC's router, and reaches nobody of the first VPC. Every address used lives in the cloud's namespaces; SSH
runs inside the VPC's router namespace, the only place that routes to the VPC.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlab import servicectl
from cloudlab.client import connect
from cloudlab.net import netns
from tests.clouds import RunningCloud, default_image, start_cloud, vm_requirements

pytestmark = [pytest.mark.vm, pytest.mark.slow]


@pytest.fixture(scope="module")
def vpc_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCloud]:
    reason = vm_requirements()
    if reason:
        pytest.skip(reason)
    cloud = start_cloud(
        tmp_path_factory.mktemp("vpcnet") / "state",
        network="direct",
        network_model="vpc",
        node_vcpus=4,
        node_memory_mb=1024,
    )
    yield cloud
    servicectl.down(cloud.layout)
    assert netns.names(cloud.layout.network_prefix + "-") == []  # the VPC routers went with the cloud


@pytest.fixture(scope="module")
def lab(vpc_cloud: RunningCloud, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ec2 = vpc_cloud.ec2()
    key = tmp_path_factory.mktemp("vpckey") / "vpc.pem"
    key.write_text(ec2.create_key_pair(KeyName="vpc", KeyType="ed25519")["KeyMaterial"])
    key.chmod(0o600)
    vpcs, subnets = [], []
    for _ in range(2):
        vpc = ec2.create_vpc(CidrBlock="10.80.0.0/16")["Vpc"]["VpcId"]
        vpcs.append(vpc)
        subnets.append(ec2.create_subnet(VpcId=vpc, CidrBlock="10.80.1.0/24")["Subnet"]["SubnetId"])
        # a VPC's default group lets in only its members (security groups filter each instance's port): SSH
        # from the router, where this test drives the guests from, needs a rule, as it would in EC2
        [default] = ec2.describe_security_groups(
            Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "group-name", "Values": ["default"]}]
        )["SecurityGroups"]
        ec2.authorize_security_group_ingress(
            GroupId=default["GroupId"],
            IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        )
    image = default_image(ec2)
    common = {"ImageId": image, "KeyName": "vpc"}
    a = ec2.run_instances(MinCount=2, MaxCount=2, SubnetId=subnets[0], **common)["Instances"]
    b = ec2.run_instances(MinCount=1, MaxCount=1, SubnetId=subnets[1], **common)["Instances"]
    ids = [i["InstanceId"] for i in a + b]
    connect(str(vpc_cloud.layout.root)).wait_booted(ids, timeout=240)
    routers = vpc_cloud.status()["clusters"][0]["network_detail"]["vpc_routers"]
    return {"ec2": ec2, "key": key, "vpcs": vpcs, "a": a, "b": b[0], "routers": routers}


def ssh(lab: dict[str, Any], vpc: str, address: str, command: str) -> subprocess.CompletedProcess[str]:
    """SSH (OpenSSH, the launch key) to ``address`` from ``vpc``'s router namespace; bounded in time."""
    argv = ["ssh", "-i", str(lab["key"]), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    argv += ["-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"root@{address}", command]
    return subprocess.run(
        netns.command(lab["routers"][vpc], argv), capture_output=True, text=True, timeout=60, check=False
    )


def ssh_when_up(lab: dict[str, Any], vpc: str, address: str, command: str) -> subprocess.CompletedProcess[str]:
    """(sshd starts after the boot marker, once the key came from the metadata service: at most 60 s)"""
    deadline = time.monotonic() + 60
    while True:
        result = ssh(lab, vpc, address, command)
        if result.returncode != 255 or time.monotonic() > deadline:
            return result
        time.sleep(1)


def test_instances_have_addresses_of_their_subnets(lab: dict[str, Any]) -> None:
    a1, a2 = lab["a"]
    assert [a1["PrivateIpAddress"], a2["PrivateIpAddress"], lab["b"]["PrivateIpAddress"]] == [
        "10.80.1.4",
        "10.80.1.5",
        "10.80.1.4",  # the same address in the other VPC
    ]
    assert set(lab["routers"]) == set(lab["vpcs"])
    assert len(set(lab["routers"].values())) == 2  # a router (namespace) per VPC


def test_each_vpc_has_its_own_metadata(lab: dict[str, Any]) -> None:
    a1, b = lab["a"][0], lab["b"]
    url = "http://169.254.169.254/latest/meta-data/instance-id"
    for vpc, inst in ((lab["vpcs"][0], a1), (lab["vpcs"][1], b)):
        result = ssh_when_up(lab, vpc, inst["PrivateIpAddress"], f"wget -q -O - {url}")
        assert result.stdout.strip() == inst["InstanceId"], result.stderr


def test_a_subnet_is_one_segment_and_vpcs_are_apart(lab: dict[str, Any]) -> None:
    a1, a2 = lab["a"]
    vpc_a, vpc_b = lab["vpcs"]
    reach = ssh_when_up(lab, vpc_a, a1["PrivateIpAddress"], f"ping -c 2 -W 2 {a2['PrivateIpAddress']}")
    assert reach.returncode == 0, reach.stdout + reach.stderr
    apart = ssh_when_up(lab, vpc_b, lab["b"]["PrivateIpAddress"], f"ping -c 2 -W 2 {a2['PrivateIpAddress']}")
    assert apart.returncode == 1 and "0 packets received" in apart.stdout, apart.stdout + apart.stderr
    # and the routers: the first VPC's router reaches its second instance's sshd, the second VPC's does not
    assert ssh_port_answers(lab["routers"][vpc_a], a2["PrivateIpAddress"])
    assert not ssh_port_answers(lab["routers"][vpc_b], a2["PrivateIpAddress"])


def ssh_port_answers(namespace: str, address: str) -> bool:
    """Whether ``address``:22 accepts a TCP connection from ``namespace`` (bounded: 3 s)."""
    with netns.entered(namespace), contextlib.suppress(OSError), socket.create_connection((address, 22), timeout=3):
        return True
    return False


def test_status_and_teardown_know_the_routers(vpc_cloud: RunningCloud, lab: dict[str, Any]) -> None:
    detail = vpc_cloud.status()["clusters"][0]["network_detail"]
    assert all(netns.exists(ns) for ns in detail["vpc_routers"].values())
    assert Path(f"/run/netns/{detail['vpc_routers'][lab['vpcs'][0]]}").exists()
