"""VPCs, subnets, internet gateways, route tables and VPC security groups through unmodified boto3."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudlab.clc.cloud import CloudController
from cloudlab.clc.images import Images
from cloudlab.clc.store import Store
from cloudlab.clc.vpcs import Vpcs
from cloudlab.errors import CloudError
from tests.clouds import RunningCloud, error_code


@pytest.fixture(scope="module")
def ec2(sim_cloud: RunningCloud) -> Any:
    return sim_cloud.ec2()


@pytest.fixture(scope="module")
def bob(sim_cloud: RunningCloud) -> Any:
    return sim_cloud.new_user("vpcbob")


def refused(call: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as excinfo:
        call(**kwargs)
    assert excinfo.value.response["Error"]["Message"]
    return error_code(excinfo)


def name() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


def test_every_account_has_a_default_vpc(sim_cloud: RunningCloud) -> None:
    ec2 = sim_cloud.new_user("fresh")
    [vpc] = ec2.describe_vpcs()["Vpcs"]
    assert vpc["IsDefault"] is True and vpc["CidrBlock"] == "172.31.0.0/16" and vpc["State"] == "available"
    assert vpc["VpcId"].startswith("vpc-") and len(vpc["OwnerId"]) == 12
    [subnet] = ec2.describe_subnets()["Subnets"]  # the sim cloud has one zone
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    assert (subnet["VpcId"], subnet["CidrBlock"], subnet["AvailabilityZone"]) == (vpc["VpcId"], "172.31.0.0/20", zone)
    assert subnet["DefaultForAz"] is True
    assert subnet["AvailableIpAddressCount"] == 4096 - 5  # EC2 keeps the first four and the last address
    [group] = ec2.describe_security_groups()["SecurityGroups"]
    assert (group["GroupName"], group["VpcId"]) == ("default", vpc["VpcId"])
    assert group["IpPermissionsEgress"][0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]
    [gateway] = ec2.describe_internet_gateways()["InternetGateways"]
    assert gateway["Attachments"] == [{"VpcId": vpc["VpcId"], "State": "available"}]
    [table] = ec2.describe_route_tables()["RouteTables"]
    assert table["VpcId"] == vpc["VpcId"] and table["Associations"][0]["Main"] is True
    routes = {(r["DestinationCidrBlock"], r["GatewayId"]) for r in table["Routes"]}
    assert routes == {("172.31.0.0/16", "local"), ("0.0.0.0/0", gateway["InternetGatewayId"])}
    assert refused(ec2.create_default_vpc) == "DefaultVpcAlreadyExists"
    assert ec2.describe_vpcs()["Vpcs"] == [vpc]  # made once, then the same


@pytest.mark.parametrize(
    ("cidr", "code"),
    [
        ("10.0.0.0/8", "InvalidVpc.Range"),
        ("10.0.0.0/29", "InvalidVpc.Range"),
        ("8.8.0.0/16", "InvalidVpc.Range"),  # not RFC 1918
        ("172.32.0.0/16", "InvalidVpc.Range"),
        ("10.0.0.1/16", "InvalidParameterValue"),  # host bits
        ("10.0.0.0/33", "InvalidParameterValue"),
        ("bogus", "InvalidParameterValue"),
    ],
)
def test_invalid_vpc_ranges_are_refused(ec2: Any, cidr: str, code: str) -> None:
    before = {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]}
    assert refused(ec2.create_vpc, CidrBlock=cidr) == code
    assert {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]} == before


def test_vpc_and_subnets(ec2: Any) -> None:
    vpc = ec2.create_vpc(
        CidrBlock="10.20.0.0/16", TagSpecifications=[{"ResourceType": "vpc", "Tags": [{"Key": "Name", "Value": "lab"}]}]
    )["Vpc"]
    vpc_id = vpc["VpcId"]
    assert (
        vpc["IsDefault"] is False
        and vpc["CidrBlock"] == "10.20.0.0/16"
        and vpc["Tags"] == [{"Key": "Name", "Value": "lab"}]
    )
    assert [v["VpcId"] for v in ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": ["lab"]}])["Vpcs"]] == [
        vpc_id
    ]
    assert vpc_id not in {
        v["VpcId"] for v in ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    }
    subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.20.1.0/24")["Subnet"]
    assert (subnet["VpcId"], subnet["CidrBlock"], subnet["DefaultForAz"]) == (vpc_id, "10.20.1.0/24", False)
    assert subnet["AvailableIpAddressCount"] == 251 and subnet["MapPublicIpOnLaunch"] is False
    for cidr, code in (
        ("10.21.0.0/24", "InvalidSubnet.Range"),  # outside the VPC
        ("10.20.0.0/29", "InvalidSubnet.Range"),  # too small
        ("10.20.1.128/25", "InvalidSubnet.Conflict"),  # inside the first subnet
        ("10.20.0.0/16", "InvalidSubnet.Conflict"),
        ("10.20.2.5/24", "InvalidParameterValue"),
    ):
        assert refused(ec2.create_subnet, VpcId=vpc_id, CidrBlock=cidr) == code, cidr
    assert refused(ec2.create_subnet, VpcId="vpc-0123456789abcdef0", CidrBlock="10.0.0.0/24") == "InvalidVpcID.NotFound"
    assert refused(ec2.create_subnet, VpcId="vpc-nope", CidrBlock="10.0.0.0/24") == "InvalidVpcID.Malformed"
    assert refused(ec2.create_subnet, VpcId=vpc_id, CidrBlock="10.20.3.0/24", AvailabilityZone="nowhere-1z") == (
        "InvalidParameterValue"
    )
    second = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.20.2.0/24")["Subnet"]["SubnetId"]
    mine = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]
    assert sorted(s["CidrBlock"] for s in mine) == ["10.20.1.0/24", "10.20.2.0/24"]
    ec2.modify_subnet_attribute(SubnetId=second, MapPublicIpOnLaunch={"Value": True})
    public = ec2.describe_subnets(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "map-public-ip-on-launch", "Values": ["true"]}]
    )["Subnets"]
    assert [s["SubnetId"] for s in public] == [second]
    assert refused(ec2.describe_subnets, SubnetIds=["subnet-0123456789abcdef0"]) == "InvalidSubnetID.NotFound"

    assert refused(ec2.delete_vpc, VpcId=vpc_id) == "DependencyViolation"
    ec2.delete_subnet(SubnetId=second)
    ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    assert refused(ec2.delete_subnet, SubnetId=second) == "InvalidSubnetID.NotFound"
    ec2.delete_vpc(VpcId=vpc_id)
    assert refused(ec2.describe_vpcs, VpcIds=[vpc_id]) == "InvalidVpcID.NotFound"


def test_vpc_attributes(ec2: Any) -> None:
    vpc_id = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    try:
        answer = ec2.describe_vpc_attribute(VpcId=vpc_id, Attribute="enableDnsSupport")
        assert answer["VpcId"] == vpc_id and answer["EnableDnsSupport"] == {"Value": True}
        assert ec2.describe_vpc_attribute(VpcId=vpc_id, Attribute="enableDnsHostnames")["EnableDnsHostnames"] == {
            "Value": False
        }
        ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": True})
        assert ec2.describe_vpc_attribute(VpcId=vpc_id, Attribute="enableDnsHostnames")["EnableDnsHostnames"] == {
            "Value": True
        }
        assert refused(ec2.describe_vpc_attribute, VpcId="vpc-0123456789abcdef0", Attribute="enableDnsSupport") == (
            "InvalidVpcID.NotFound"
        )
    finally:
        ec2.delete_vpc(VpcId=vpc_id)


def test_internet_gateways_and_the_main_route_table(ec2: Any) -> None:
    vpc_id = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    other = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]

    def routes() -> set[tuple[str, str]]:
        [table] = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["RouteTables"]
        return {(r["DestinationCidrBlock"], r["GatewayId"]) for r in table["Routes"]}

    assert routes() == {("10.40.0.0/16", "local")}
    assert refused(ec2.detach_internet_gateway, InternetGatewayId=gateway, VpcId=vpc_id) == "Gateway.NotAttached"
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc_id)
    assert routes() == {("10.40.0.0/16", "local"), ("0.0.0.0/0", gateway)}
    [described] = ec2.describe_internet_gateways(InternetGatewayIds=[gateway])["InternetGateways"]
    assert described["Attachments"] == [{"VpcId": vpc_id, "State": "available"}]
    attached = ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}])
    assert [g["InternetGatewayId"] for g in attached["InternetGateways"]] == [gateway]
    assert refused(ec2.attach_internet_gateway, InternetGatewayId=other, VpcId=vpc_id) == "Resource.AlreadyAssociated"
    assert refused(ec2.delete_internet_gateway, InternetGatewayId=gateway) == "DependencyViolation"
    assert refused(ec2.delete_vpc, VpcId=vpc_id) == "DependencyViolation"
    ec2.detach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc_id)
    assert routes() == {("10.40.0.0/16", "local")}
    for gateway_id in (gateway, other):
        ec2.delete_internet_gateway(InternetGatewayId=gateway_id)
    assert refused(ec2.describe_internet_gateways, InternetGatewayIds=[gateway]) == "InvalidInternetGatewayID.NotFound"
    ec2.delete_vpc(VpcId=vpc_id)


def test_security_groups_belong_to_a_vpc(ec2: Any) -> None:
    vpc_id = ec2.create_vpc(CidrBlock="10.50.0.0/16")["Vpc"]["VpcId"]
    default_vpc = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]  # (its VpcId)
    shared = name()
    here = ec2.create_security_group(GroupName=shared, Description="in the new VPC", VpcId=vpc_id)["GroupId"]
    there = ec2.create_security_group(GroupName=shared, Description="same name, default VPC")["GroupId"]
    try:
        in_vpc = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]
        assert sorted(g["GroupName"] for g in in_vpc) == sorted(["default", shared])  # a default group per VPC
        assert {g["VpcId"] for g in ec2.describe_security_groups(GroupIds=[here, there])["SecurityGroups"]} == {
            vpc_id,
            default_vpc["VpcId"],
        }
        # a name names a group of the default VPC
        assert [g["GroupId"] for g in ec2.describe_security_groups(GroupNames=[shared])["SecurityGroups"]] == [there]
        assert refused(ec2.create_security_group, GroupName=shared, Description="d", VpcId=vpc_id) == (
            "InvalidGroup.Duplicate"
        )
        # a peer group of another VPC is refused
        code = refused(
            ec2.authorize_security_group_ingress,
            GroupId=here,
            IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": there}]}],
        )
        assert code == "InvalidGroup.NotFound"
        # egress: the allow-all rule can be revoked, rules added, duplicates refused
        everything = {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ec2.revoke_security_group_egress(GroupId=here, IpPermissions=[everything])
        assert ec2.describe_security_groups(GroupIds=[here])["SecurityGroups"][0]["IpPermissionsEgress"] == []
        https = {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}
        added = ec2.authorize_security_group_egress(GroupId=here, IpPermissions=[https])["SecurityGroupRules"]
        assert added[0]["IsEgress"] is True and added[0]["CidrIpv4"] == "10.0.0.0/8"
        [group] = ec2.describe_security_groups(GroupIds=[here])["SecurityGroups"]
        assert [(p["IpProtocol"], p["FromPort"], p["IpRanges"]) for p in group["IpPermissionsEgress"]] == [
            ("tcp", 443, [{"CidrIp": "10.0.0.0/8"}])
        ]
        assert group["IpPermissions"] == []  # egress rules are not ingress rules
        assert refused(ec2.authorize_security_group_egress, GroupId=here, IpPermissions=[https]) == (
            "InvalidPermission.Duplicate"
        )
        assert refused(ec2.revoke_security_group_egress, GroupId=here, IpPermissions=[everything]) == (
            "InvalidPermission.NotFound"
        )
        found = ec2.describe_security_groups(Filters=[{"Name": "egress.ip-permission.cidr", "Values": ["10.0.0.0/8"]}])
        assert [g["GroupId"] for g in found["SecurityGroups"]] == [here]
        assert refused(ec2.delete_vpc, VpcId=vpc_id) == "DependencyViolation"  # its own group is still there
    finally:
        ec2.delete_security_group(GroupId=here)
        ec2.delete_security_group(GroupId=there)
    ec2.delete_vpc(VpcId=vpc_id)  # its default group goes with it
    assert ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"] == []


def test_isolation_and_overlapping_ranges(ec2: Any, bob: Any) -> None:
    mine = ec2.create_vpc(CidrBlock="192.168.0.0/16")["Vpc"]["VpcId"]
    theirs = bob.create_vpc(CidrBlock="192.168.0.0/16")["Vpc"]["VpcId"]  # the same range in another account
    also_mine = ec2.create_vpc(CidrBlock="192.168.0.0/20")["Vpc"]["VpcId"]  # and overlapping in one account
    subnet = ec2.create_subnet(VpcId=mine, CidrBlock="192.168.1.0/24")["Subnet"]["SubnetId"]
    bob_subnet = bob.create_subnet(VpcId=theirs, CidrBlock="192.168.1.0/24")["Subnet"]["SubnetId"]
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    try:
        assert mine not in {v["VpcId"] for v in bob.describe_vpcs()["Vpcs"]}
        assert subnet not in {s["SubnetId"] for s in bob.describe_subnets()["Subnets"]}
        assert gateway not in {g["InternetGatewayId"] for g in bob.describe_internet_gateways()["InternetGateways"]}
        for call, kwargs, code in (
            (bob.describe_vpcs, {"VpcIds": [mine]}, "InvalidVpcID.NotFound"),
            (bob.delete_vpc, {"VpcId": mine}, "InvalidVpcID.NotFound"),
            (bob.create_subnet, {"VpcId": mine, "CidrBlock": "192.168.2.0/24"}, "InvalidVpcID.NotFound"),
            (bob.delete_subnet, {"SubnetId": subnet}, "InvalidSubnetID.NotFound"),
            (
                bob.modify_subnet_attribute,
                {"SubnetId": subnet, "MapPublicIpOnLaunch": {"Value": True}},
                "InvalidSubnetID.NotFound",
            ),
            (bob.describe_vpc_attribute, {"VpcId": mine, "Attribute": "enableDnsSupport"}, "InvalidVpcID.NotFound"),
            (
                bob.attach_internet_gateway,
                {"InternetGatewayId": gateway, "VpcId": theirs},
                "InvalidInternetGatewayID.NotFound",
            ),
            (
                bob.create_security_group,
                {"GroupName": name(), "Description": "d", "VpcId": mine},
                "InvalidVpcID.NotFound",
            ),
        ):
            assert refused(call, **kwargs) == code, call
        assert ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["MapPublicIpOnLaunch"] is False
        # the admin sees every account's VPCs, as for other resources
        assert {mine, theirs} <= {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]}
    finally:
        ec2.delete_internet_gateway(InternetGatewayId=gateway)
        ec2.delete_subnet(SubnetId=subnet)
        bob.delete_subnet(SubnetId=bob_subnet)
        for client, vpc_id in ((ec2, mine), (bob, theirs), (ec2, also_mine)):
            client.delete_vpc(VpcId=vpc_id)


def test_deleting_and_recreating_the_default_vpc(sim_cloud: RunningCloud) -> None:
    ec2 = sim_cloud.new_user("nodefault")
    [vpc] = ec2.describe_vpcs()["Vpcs"]
    [subnet] = ec2.describe_subnets()["Subnets"]
    [gateway] = ec2.describe_internet_gateways()["InternetGateways"]
    assert refused(ec2.delete_vpc, VpcId=vpc["VpcId"]) == "DependencyViolation"
    ec2.delete_subnet(SubnetId=subnet["SubnetId"])
    ec2.detach_internet_gateway(InternetGatewayId=gateway["InternetGatewayId"], VpcId=vpc["VpcId"])
    ec2.delete_vpc(VpcId=vpc["VpcId"])
    assert ec2.describe_vpcs()["Vpcs"] == [] and ec2.describe_subnets()["Subnets"] == []  # not made again
    image = ec2.describe_images(Filters=[{"Name": "name", "Values": ["cloudlab-default"]}])["Images"][0]["ImageId"]
    assert refused(ec2.run_instances, ImageId=image, MinCount=1, MaxCount=1) == "VPCIdNotSpecified"
    made = ec2.create_default_vpc()["Vpc"]
    assert made["IsDefault"] is True and made["VpcId"] != vpc["VpcId"] and made["CidrBlock"] == "172.31.0.0/16"
    assert [s["VpcId"] for s in ec2.describe_subnets()["Subnets"]] == [made["VpcId"]]


def _two_zone_controller(tmp_path: Path, network: str) -> CloudController:
    store = Store(tmp_path / "clc.db")
    clc = CloudController(store, Images(store, tmp_path / "images"), None, region="us-east-1")
    for i, zone in enumerate(("us-east-1a", "us-east-1b"), start=1):
        clc.add_cluster(f"cluster{i}", zone, channel=None, network=network, subnet="10.211.0.0/16")  # type: ignore[arg-type]
    return clc


def test_direct_networking_keeps_a_vpc_in_one_zone(tmp_path: Path) -> None:
    clc = _two_zone_controller(tmp_path, "direct")
    vpcs = clc.service(Vpcs)
    admin, _ = clc.users.ensure_admin()
    default = vpcs.ensure_default(admin.name)
    assert [s.zone for s in vpcs.describe_subnets(admin) if s.vpc_id == default] == ["us-east-1a"]
    vpc = vpcs.create_vpc(admin, "10.60.0.0/16")
    vpcs.create_subnet(admin, vpc.vpc_id, "10.60.1.0/24", "us-east-1b")  # the first subnet picks the zone
    vpcs.create_subnet(admin, vpc.vpc_id, "10.60.2.0/24", "us-east-1b")
    with pytest.raises(CloudError) as excinfo:
        vpcs.create_subnet(admin, vpc.vpc_id, "10.60.3.0/24", "us-east-1a")
    assert excinfo.value.code == "InvalidParameterValue"
    assert "direct networking keeps a VPC in one cluster" in str(excinfo.value)
    with pytest.raises(CloudError) as excinfo:  # and the default VPC is not in the second zone
        vpcs.default_subnet(admin.name, "us-east-1b")
    assert "direct networking" in str(excinfo.value)
    clc.store.close()


def test_vde_networking_lets_a_vpc_span_zones(tmp_path: Path) -> None:
    clc = _two_zone_controller(tmp_path, "vde")
    vpcs = clc.service(Vpcs)
    admin, _ = clc.users.ensure_admin()
    default = vpcs.ensure_default(admin.name)
    subnets = sorted((s.zone, s.cidr) for s in vpcs.describe_subnets(admin) if s.vpc_id == default)
    assert subnets == [("us-east-1a", "172.31.0.0/20"), ("us-east-1b", "172.31.16.0/20")]
    vpc = vpcs.create_vpc(admin, "10.60.0.0/16")
    vpcs.create_subnet(admin, vpc.vpc_id, "10.60.1.0/24", "us-east-1a")
    assert vpcs.create_subnet(admin, vpc.vpc_id, "10.60.2.0/24", "us-east-1b").zone == "us-east-1b"
    clc.store.close()


def test_groups_of_a_database_from_before_vpcs_join_the_default_vpc(tmp_path: Path) -> None:
    from cloudlab.clc.groups import SecurityGroups

    store = Store(tmp_path / "clc.db")
    store.ensure_schema(
        "CREATE TABLE security_groups (group_id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL,"
        " description TEXT NOT NULL, created REAL NOT NULL, UNIQUE (owner, name));"
        "CREATE TABLE security_group_rules (rule_id TEXT PRIMARY KEY, group_id TEXT NOT NULL, protocol TEXT NOT NULL,"
        " from_port INTEGER, to_port INTEGER, cidr TEXT, source_group_id TEXT, description TEXT);"
        "INSERT INTO security_groups VALUES ('sg-0123456789abcdef0', 'admin', 'default', 'old', 1.0);"
        "INSERT INTO security_groups VALUES ('sg-0123456789abcdef1', 'admin', 'web', 'old web', 2.0);"
        "INSERT INTO security_group_rules VALUES"
        " ('sgr-1', 'sg-0123456789abcdef1', 'tcp', 80, 80, '0.0.0.0/0', NULL, NULL);"
    )
    clc = CloudController(store, Images(store, tmp_path / "images"), None)
    admin, _ = clc.users.ensure_admin()
    groups = {g.name: g for g in clc.service(SecurityGroups).describe(admin)}
    default_vpc = clc.service(Vpcs).ensure_default(admin.name)
    assert set(groups) == {"default", "web"}  # the old default group is the default VPC's, not a second one
    assert {g.vpc_id for g in groups.values()} == {default_vpc}
    assert [(r.protocol, r.from_port, r.cidr) for r in groups["web"].rules] == [("tcp", 80, "0.0.0.0/0")]
    assert [(r.protocol, r.cidr, r.egress) for r in groups["web"].egress] == [("-1", "0.0.0.0/0", True)]
    store.close()
