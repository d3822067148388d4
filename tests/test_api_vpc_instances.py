"""Instances in VPC subnets through unmodified boto3 (libvirt's test driver: records, not packets)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.clouds import RunningCloud, default_image, error_code


@pytest.fixture(scope="module")
def ec2(sim_cloud: RunningCloud) -> Any:
    return sim_cloud.new_user("vpcinst")


@pytest.fixture(scope="module")
def image(ec2: Any) -> str:
    return default_image(ec2)


@pytest.fixture(scope="module")
def lab(ec2: Any) -> Iterator[dict[str, str]]:
    """A VPC 10.70.0.0/16 with one /28 subnet (11 usable addresses) and a group of its own."""
    vpc = ec2.create_vpc(CidrBlock="10.70.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.70.1.0/28")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="lab", Description="lab", VpcId=vpc)["GroupId"]
    yield {"vpc": vpc, "subnet": subnet, "group": group}


def run(ec2: Any, image: str, count: int = 1, **kwargs: Any) -> list[dict[str, Any]]:
    return ec2.run_instances(ImageId=image, MinCount=count, MaxCount=count, InstanceType="t2.nano", **kwargs)[
        "Instances"
    ]


def terminate(ec2: Any, instances: list[dict[str, Any]]) -> None:
    ids = [i["InstanceId"] for i in instances]
    ec2.terminate_instances(InstanceIds=ids)
    waiter = ec2.get_waiter("instance_terminated")
    waiter.wait(InstanceIds=ids, WaiterConfig={"Delay": 1, "MaxAttempts": 60})


def refused(call: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as excinfo:
        call(**kwargs)
    return error_code(excinfo)


def test_a_launch_without_a_subnet_goes_to_the_default_subnet(ec2: Any, image: str) -> None:
    [default_subnet] = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    [inst] = run(ec2, image)
    try:
        assert (inst["VpcId"], inst["SubnetId"]) == (default_subnet["VpcId"], default_subnet["SubnetId"])
        assert inst["PrivateIpAddress"] == "172.31.0.4"  # the first address EC2 does not keep
        [nic] = inst["NetworkInterfaces"]
        assert nic["NetworkInterfaceId"].startswith("eni-") and nic["PrivateIpAddress"] == "172.31.0.4"
        assert nic["Attachment"]["DeviceIndex"] == 0 and nic["Status"] == "in-use"
        assert [g["GroupName"] for g in nic["Groups"]] == ["default"]
        [group] = ec2.describe_security_groups(GroupIds=[nic["Groups"][0]["GroupId"]])["SecurityGroups"]
        assert group["VpcId"] == inst["VpcId"]  # the default group of the subnet's VPC
        after = ec2.describe_subnets(SubnetIds=[default_subnet["SubnetId"]])["Subnets"][0]
        assert after["AvailableIpAddressCount"] == default_subnet["AvailableIpAddressCount"] - 1
    finally:
        terminate(ec2, [inst])
    [gone] = ec2.describe_instances(InstanceIds=[inst["InstanceId"]])["Reservations"][0]["Instances"]
    assert "NetworkInterfaces" not in gone and "PrivateIpAddress" not in gone  # released with the instance
    again = ec2.describe_subnets(SubnetIds=[default_subnet["SubnetId"]])["Subnets"][0]
    assert again["AvailableIpAddressCount"] == default_subnet["AvailableIpAddressCount"]


def test_instances_in_a_subnet_get_its_addresses(ec2: Any, image: str, lab: dict[str, str]) -> None:
    instances = run(ec2, image, 3, SubnetId=lab["subnet"], SecurityGroupIds=[lab["group"]])
    try:
        addresses = [i["PrivateIpAddress"] for i in instances]
        assert addresses == ["10.70.1.4", "10.70.1.5", "10.70.1.6"]
        assert {(i["VpcId"], i["SubnetId"]) for i in instances} == {(lab["vpc"], lab["subnet"])}
        assert {i["SecurityGroups"][0]["GroupId"] for i in instances} == {lab["group"]}
        found = ec2.describe_instances(Filters=[{"Name": "subnet-id", "Values": [lab["subnet"]]}])
        assert sorted(i["PrivateIpAddress"] for r in found["Reservations"] for i in r["Instances"]) == addresses
        by_vpc = ec2.describe_instances(Filters=[{"Name": "vpc-id", "Values": [lab["vpc"]]}])
        assert len([i for r in by_vpc["Reservations"] for i in r["Instances"]]) == 3
        nics = ec2.describe_network_interfaces(Filters=[{"Name": "subnet-id", "Values": [lab["subnet"]]}])
        assert sorted(
            (n["PrivateIpAddress"], n["Attachment"]["InstanceId"]) for n in nics["NetworkInterfaces"]
        ) == sorted((i["PrivateIpAddress"], i["InstanceId"]) for i in instances)
        assert {n["AvailabilityZone"] for n in nics["NetworkInterfaces"]} == {
            instances[0]["Placement"]["AvailabilityZone"]
        }
        assert refused(ec2.delete_subnet, SubnetId=lab["subnet"]) == "DependencyViolation"
        # the /28 has 11 addresses: 3 are held, 8 left
        assert (
            refused(
                ec2.run_instances, ImageId=image, MinCount=9, MaxCount=9, SubnetId=lab["subnet"], InstanceType="t2.nano"
            )
            == "InsufficientFreeAddressesInSubnet"
        )
    finally:
        terminate(ec2, instances)


def test_a_private_address_and_the_network_interfaces_form(ec2: Any, image: str, lab: dict[str, str]) -> None:
    [inst] = run(
        ec2,
        image,
        NetworkInterfaces=[
            {"DeviceIndex": 0, "SubnetId": lab["subnet"], "Groups": [lab["group"]], "PrivateIpAddress": "10.70.1.10"}
        ],
    )
    try:
        assert (inst["SubnetId"], inst["PrivateIpAddress"]) == (lab["subnet"], "10.70.1.10")
        assert [g["GroupId"] for g in inst["SecurityGroups"]] == [lab["group"]]
        for address, code in (
            ("10.70.1.10", "InvalidIPAddress.InUse"),
            ("10.70.1.1", "InvalidParameterValue"),  # the VPC router's
            ("10.70.1.15", "InvalidParameterValue"),  # the broadcast address
            ("10.70.2.4", "InvalidParameterValue"),  # outside the subnet
        ):
            assert (
                refused(
                    ec2.run_instances,
                    ImageId=image,
                    MinCount=1,
                    MaxCount=1,
                    SubnetId=lab["subnet"],
                    PrivateIpAddress=address,
                )
                == code
            ), address
        assert (
            refused(
                ec2.run_instances,
                ImageId=image,
                MinCount=2,
                MaxCount=2,
                SubnetId=lab["subnet"],
                PrivateIpAddress="10.70.1.11",
            )
            == "InvalidParameterCombination"
        )
        assert (
            refused(
                ec2.run_instances,
                ImageId=image,
                MinCount=1,
                MaxCount=1,
                SubnetId=lab["subnet"],
                NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": lab["subnet"]}],
            )
            == "InvalidParameterCombination"
        )
        [nic] = ec2.describe_network_interfaces(
            NetworkInterfaceIds=[inst["NetworkInterfaces"][0]["NetworkInterfaceId"]]
        )["NetworkInterfaces"]
        assert nic["Attachment"]["InstanceId"] == inst["InstanceId"] and nic["VpcId"] == lab["vpc"]
    finally:
        terminate(ec2, [inst])


def test_groups_and_zones_must_fit_the_subnet(ec2: Any, image: str, lab: dict[str, str]) -> None:
    default_group = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    before = ec2.describe_instances()["Reservations"]
    assert (
        refused(
            ec2.run_instances,
            ImageId=image,
            MinCount=1,
            MaxCount=1,
            SubnetId=lab["subnet"],
            SecurityGroupIds=[default_group],  # of the default VPC
        )
        == "InvalidParameter"
    )
    assert (
        refused(
            ec2.run_instances,
            ImageId=image,
            MinCount=1,
            MaxCount=1,
            SubnetId=lab["subnet"],
            Placement={"AvailabilityZone": "nowhere-9z"},
        )
        == "InvalidParameterValue"
    )
    assert (
        refused(ec2.run_instances, ImageId=image, MinCount=1, MaxCount=1, SubnetId="subnet-0123456789abcdef0")
        == "InvalidSubnetID.NotFound"
    )
    assert ec2.describe_instances()["Reservations"] == before  # nothing half-made


def test_another_account_cannot_launch_into_a_subnet(sim_cloud: RunningCloud, image: str, lab: dict[str, str]) -> None:
    other = sim_cloud.new_user("intruder")
    assert refused(other.run_instances, ImageId=image, MinCount=1, MaxCount=1, SubnetId=lab["subnet"]) == (
        "InvalidSubnetID.NotFound"
    )
    assert other.describe_network_interfaces()["NetworkInterfaces"] == []


def test_ipaddress_math_of_default_subnets_per_zone(ec2: Any) -> None:
    """(the default subnets are /20s of 172.31.0.0/16, one per zone, in zone order)"""
    subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    for index, subnet in enumerate(sorted(subnets, key=lambda s: s["AvailabilityZone"])):
        assert (
            ipaddress.ip_network(subnet["CidrBlock"]) == list(ipaddress.ip_network("172.31.0.0/16").subnets(4))[index]
        )
