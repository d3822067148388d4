"""EC2 compatibility in the details (issue 10, item 21), checked against botocore's model and the EC2
API reference: ImportKeyPair's formats and fingerprints, DryRun on every mutating action,
TagSpecifications on every create that takes them, the documented filters, EC2's error codes for
missing, malformed and unknown ids, and EC2's limits on rules per group and groups per instance.
"""

from __future__ import annotations

import base64
import hashlib
import textwrap
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from cloudlab.api.documented_filters import documented
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud, default_image, error_code, raw_call


@pytest.fixture(scope="module")
def ec2(sim_cloud: RunningCloud) -> Any:
    return sim_cloud.new_user("details")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- ImportKeyPair ---------------------------------------------------------------------------------------------


def _rfc4716(openssh_line: bytes) -> bytes:
    blob = openssh_line.split()[1].decode()
    body = "\n".join(textwrap.wrap(blob, 70))
    return (
        f'---- BEGIN SSH2 PUBLIC KEY ----\nComment: "2048-bit RSA, converted by a test"\n'
        f"Subject: a header that \\\n  continues\n{body}\n---- END SSH2 PUBLIC KEY ----\n"
    ).encode()


def test_import_key_pair_takes_every_format_ec2_takes(ec2: Any) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    openssh = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    md5 = ":".join(f"{b:02x}" for b in hashlib.md5(der, usedforsecurity=False).digest())  # EC2's, for imports
    for material in (openssh + b" me@host", base64.b64encode(der), der, _rfc4716(openssh)):
        name = _name("imported")
        answer = ec2.import_key_pair(KeyName=name, PublicKeyMaterial=material)
        assert answer["KeyFingerprint"] == md5, material[:40]
        [described] = ec2.describe_key_pairs(KeyNames=[name], IncludePublicKey=True)["KeyPairs"]
        assert described["PublicKey"].split()[:2] == openssh.decode().split()[:2]
        ec2.delete_key_pair(KeyName=name)
    edkey = ed25519.Ed25519PrivateKey.generate().public_key()
    ed_line = edkey.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    sha = base64.b64encode(hashlib.sha256(base64.b64decode(ed_line.split()[1])).digest()).decode()
    for material in (ed_line, _rfc4716(ed_line)):
        name = _name("imported-ed")
        assert ec2.import_key_pair(KeyName=name, PublicKeyMaterial=material)["KeyFingerprint"] == sha
        ec2.delete_key_pair(KeyName=name)


@pytest.mark.parametrize(
    "material",
    [
        b"ssh-rsa",
        b"not a key",
        b"---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n",
        base64.b64encode(b"\x30\x03\x02\x01\x00"),
        b"ssh-dss AAAAB3NzaC1kc3MAAACBAP",
    ],
)
def test_import_key_pair_refuses_what_is_not_a_key(ec2: Any, material: bytes) -> None:
    with pytest.raises(ClientError) as excinfo:
        ec2.import_key_pair(KeyName=_name("bad"), PublicKeyMaterial=material)
    assert error_code(excinfo) == "InvalidKey.Format"


# -- DryRun -------------------------------------------------------------------------------------------------------


def test_dry_run_on_every_mutating_action(sim_cloud: RunningCloud, ec2: Any) -> None:
    from cloudlab.api import actions
    from cloudlab.api.model import operation_model

    image = default_image(ec2)
    [inst] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"]
    instance_id = inst["InstanceId"]
    group_id = ec2.create_security_group(GroupName=_name("dry"), Description="d")["GroupId"]
    allocation = ec2.allocate_address()["AllocationId"]
    zone = inst["Placement"]["AvailabilityZone"]
    volume_id = ec2.create_volume(Size=1, AvailabilityZone=zone)["VolumeId"]
    wait_until(
        lambda: ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"] == "available",
        30,
        what="the volume to be made",
    )
    snapshot_id = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    ec2.create_key_pair(KeyName="dry-key")
    [public] = ec2.describe_images(ImageIds=[image])["Images"]
    own_image = ec2.register_image(Name=_name("own"), KernelId=public["KernelId"])["ImageId"]
    vpc_id = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    gateway_id = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    egress = {"GroupId": group_id, "IpPermissions": [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}
    calls: dict[str, dict[str, Any]] = {
        "RunInstances": {"ImageId": image, "MinCount": 1, "MaxCount": 1},
        "TerminateInstances": {"InstanceIds": [instance_id]},
        "StopInstances": {"InstanceIds": [instance_id]},
        "StartInstances": {"InstanceIds": [instance_id]},
        "RebootInstances": {"InstanceIds": [instance_id]},
        "CreateKeyPair": {"KeyName": _name("k")},
        "ImportKeyPair": {"KeyName": _name("k"), "PublicKeyMaterial": b"ssh-ed25519 AAAA"},
        "DeleteKeyPair": {"KeyName": "dry-key"},
        "CreateSecurityGroup": {"GroupName": _name("g"), "Description": "d"},
        "DeleteSecurityGroup": {"GroupId": group_id},
        "AuthorizeSecurityGroupIngress": {
            "GroupId": group_id,
            "IpProtocol": "tcp",
            "FromPort": 22,
            "ToPort": 22,
            "CidrIp": "0.0.0.0/0",
        },  # fmt: skip
        "RevokeSecurityGroupIngress": {
            "GroupId": group_id,
            "IpProtocol": "tcp",
            "FromPort": 22,
            "ToPort": 22,
            "CidrIp": "0.0.0.0/0",
        },  # fmt: skip
        "AllocateAddress": {},
        "ReleaseAddress": {"AllocationId": allocation},
        "AssociateAddress": {"AllocationId": allocation, "InstanceId": instance_id},
        "DisassociateAddress": {"PublicIp": "198.51.100.254"},
        "CreateTags": {"Resources": [instance_id], "Tags": [{"Key": "k", "Value": "v"}]},
        "DeleteTags": {"Resources": [instance_id]},
        "RegisterImage": {"Name": _name("img"), "KernelId": "aki-0123456789abcdef0"},
        "DeregisterImage": {"ImageId": own_image},
        "CreateVpc": {"CidrBlock": "10.8.0.0/16"},
        "CreateDefaultVpc": {},
        "DeleteVpc": {"VpcId": vpc_id},
        "CreateSubnet": {"VpcId": vpc_id, "CidrBlock": "10.9.2.0/24"},
        "DeleteSubnet": {"SubnetId": subnet_id},
        "CreateInternetGateway": {},
        "AttachInternetGateway": {"InternetGatewayId": gateway_id, "VpcId": vpc_id},
        "DetachInternetGateway": {"InternetGatewayId": gateway_id, "VpcId": vpc_id},
        "DeleteInternetGateway": {"InternetGatewayId": gateway_id},
        "AuthorizeSecurityGroupEgress": egress,
        "RevokeSecurityGroupEgress": egress,
        "CreateVolume": {"Size": 1, "AvailabilityZone": zone},
        "DeleteVolume": {"VolumeId": volume_id},
        "AttachVolume": {"VolumeId": volume_id, "InstanceId": instance_id, "Device": "/dev/sdf"},
        "DetachVolume": {"VolumeId": volume_id},
        "ModifyVolumeAttribute": {"VolumeId": volume_id, "AutoEnableIO": {"Value": True}},
        "CreateSnapshot": {"VolumeId": volume_id},
        "DeleteSnapshot": {"SnapshotId": snapshot_id},
        "CreateImage": {"InstanceId": instance_id, "Name": _name("made")},
        "ImportSnapshot": {"DiskContainer": {"Format": "RAW", "UserBucket": {"S3Bucket": "dry", "S3Key": "d.raw"}}},
    }
    mutating = {
        name
        for name in actions.ACTIONS
        if not name.startswith(("Describe", "Get"))
        and name in {op for op in calls} | {n for n in actions.ACTIONS if not n.startswith(("Describe", "Get"))}
        and "DryRun" in (operation_model(name).input_shape.members if operation_model(name).input_shape else {})
    }
    assert mutating <= set(calls), f"mutating actions without a DryRun check here: {mutating - set(calls)}"

    def snapshot() -> Any:
        return (
            sorted(
                i["InstanceId"] + i["State"]["Name"]
                for r in ec2.describe_instances()["Reservations"]
                for i in r["Instances"]
            ),  # fmt: skip
            sorted(k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]),
            sorted((g["GroupId"], len(g["IpPermissions"])) for g in ec2.describe_security_groups()["SecurityGroups"]),
            sorted((a["AllocationId"], a.get("InstanceId")) for a in ec2.describe_addresses()["Addresses"]),
            ec2.describe_tags()["Tags"],
            sorted(i["ImageId"] for i in ec2.describe_images()["Images"]),
            sorted(v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"]),
            sorted(s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]),
            sorted(str(g) for g in ec2.describe_internet_gateways()["InternetGateways"]),
            sorted(str(g["IpPermissionsEgress"]) for g in ec2.describe_security_groups()["SecurityGroups"]),
            sorted((v["VolumeId"], v["State"]) for v in ec2.describe_volumes()["Volumes"]),
            sorted(s["SnapshotId"] for s in ec2.describe_snapshots()["Snapshots"]),
            sorted(t["ImportTaskId"] for t in ec2.describe_import_snapshot_tasks()["ImportSnapshotTasks"]),
        )

    before = snapshot()
    for name in sorted(mutating):
        method = getattr(ec2, "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_"))
        with pytest.raises(ClientError) as excinfo:
            method(DryRun=True, **calls[name])
        assert error_code(excinfo) == "DryRunOperation", (name, excinfo.value.response["Error"])
    assert snapshot() == before
    ec2.terminate_instances(InstanceIds=[instance_id])
    ec2.release_address(AllocationId=allocation)
    ec2.delete_key_pair(KeyName="dry-key")
    ec2.deregister_image(ImageId=own_image)
    ec2.delete_subnet(SubnetId=subnet_id)
    ec2.delete_vpc(VpcId=vpc_id)
    ec2.delete_internet_gateway(InternetGatewayId=gateway_id)


# -- TagSpecifications -------------------------------------------------------------------------------------------


def test_tag_specifications_on_every_create_that_takes_them(ec2: Any) -> None:
    def spec(kind: str, value: str) -> list[dict[str, Any]]:
        return [{"ResourceType": kind, "Tags": [{"Key": "Name", "Value": value}]}]

    group_id = ec2.create_security_group(
        GroupName=_name("tagged"), Description="d", TagSpecifications=spec("security-group", "web")
    )["GroupId"]
    created = ec2.create_key_pair(KeyName=_name("tagged"), TagSpecifications=spec("key-pair", "made"))
    line = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    imported = ec2.import_key_pair(
        KeyName=_name("tagged"), PublicKeyMaterial=line, TagSpecifications=spec("key-pair", "mine")
    )
    [group] = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    assert group["Tags"] == [{"Key": "Name", "Value": "web"}]
    assert [g["GroupId"] for g in ec2.describe_security_groups(
        Filters=[{"Name": "tag:Name", "Values": ["web"]}])["SecurityGroups"]] == [group_id]  # fmt: skip
    pairs = {
        k["KeyPairId"]: k.get("Tags")
        for k in ec2.describe_key_pairs(Filters=[{"Name": "tag-key", "Values": ["Name"]}])["KeyPairs"]
    }
    assert pairs == {
        created["KeyPairId"]: [{"Key": "Name", "Value": "made"}],
        imported["KeyPairId"]: [{"Key": "Name", "Value": "mine"}],
    }
    described = {t["ResourceId"]: t["ResourceType"] for t in ec2.describe_tags()["Tags"]}
    assert described[group_id] == "security-group" and described[created["KeyPairId"]] == "key-pair"
    with pytest.raises(ClientError) as excinfo:  # a specification for another type is refused, nothing made
        ec2.create_security_group(GroupName=_name("x"), Description="d", TagSpecifications=spec("instance", "v"))
    assert error_code(excinfo) == "InvalidParameterValue"
    ec2.delete_security_group(GroupId=group_id)
    ec2.delete_key_pair(KeyPairId=created["KeyPairId"])
    ec2.delete_key_pair(KeyPairId=imported["KeyPairId"])


# -- Filters -----------------------------------------------------------------------------------------------------

DESCRIBES = {
    "DescribeInstances": "describe_instances",
    "DescribeInstanceStatus": "describe_instance_status",
    "DescribeInstanceTypes": "describe_instance_types",
    "DescribeImages": "describe_images",
    "DescribeKeyPairs": "describe_key_pairs",
    "DescribeSecurityGroups": "describe_security_groups",
    "DescribeAddresses": "describe_addresses",
    "DescribeTags": "describe_tags",
    "DescribeAvailabilityZones": "describe_availability_zones",
    "DescribeRegions": "describe_regions",
    "DescribeVpcs": "describe_vpcs",
    "DescribeSubnets": "describe_subnets",
    "DescribeInternetGateways": "describe_internet_gateways",
    "DescribeRouteTables": "describe_route_tables",
}


@pytest.mark.parametrize("action", sorted(DESCRIBES))
def test_every_filter_ec2_documents_is_accepted(ec2: Any, action: str) -> None:
    names = documented(action)
    assert names, f"the model documents no filters for {action}?"
    method = getattr(ec2, DESCRIBES[action])
    for name in sorted(names):
        method(Filters=[{"Name": name, "Values": ["no-such-value-anywhere"]}])  # no InvalidParameterValue
    with pytest.raises(ClientError) as excinfo:
        method(Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
    assert error_code(excinfo) == "InvalidParameterValue"


def test_documented_filters_mean_what_the_client_sees(ec2: Any) -> None:
    [inst] = ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1, InstanceType="t2.nano")["Instances"]
    try:
        mine = inst["InstanceId"]

        def ids(*filters: dict[str, Any]) -> list[str]:
            found = ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": [mine]}, *filters])
            return [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]

        assert ids({"Name": "vpc-id", "Values": [inst["VpcId"]]}) == [mine]  # launched into the default VPC
        assert ids({"Name": "vpc-id", "Values": ["vpc-0123456789abcdef0"]}) == []
        assert ids({"Name": "root-device-type", "Values": [inst["RootDeviceType"]]}) == [mine]
        assert ids({"Name": "placement.availability-zone" if False else "availability-zone",
                    "Values": [inst["Placement"]["AvailabilityZone"]]}) == [mine]  # fmt: skip
        assert ids({"Name": "instance-type", "Values": ["t2.*"]}) == [mine]
        types = ec2.describe_instance_types(Filters=[{"Name": "bare-metal", "Values": ["false"]}])["InstanceTypes"]
        assert "t2.nano" in {t["InstanceType"] for t in types}
        assert ec2.describe_instance_types(Filters=[{"Name": "bare-metal", "Values": ["true"]}])["InstanceTypes"] == []
    finally:
        ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])


# -- error codes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "kwargs", "code"),
    [
        ("describe_instances", {"InstanceIds": ["i-nothex!"]}, "InvalidInstanceID.Malformed"),
        ("describe_instances", {"InstanceIds": ["i-0123456789abcdef0"]}, "InvalidInstanceID.NotFound"),
        ("describe_images", {"ImageIds": ["ami-nothex!"]}, "InvalidAMIID.Malformed"),
        ("describe_images", {"ImageIds": ["ami-0123456789abcdef0"]}, "InvalidAMIID.NotFound"),
        ("describe_security_groups", {"GroupIds": ["sg-nothex!"]}, "InvalidGroupId.Malformed"),
        ("describe_security_groups", {"GroupIds": ["sg-0123456789abcdef0"]}, "InvalidGroup.NotFound"),
        ("describe_addresses", {"AllocationIds": ["eipalloc-nothex!"]}, "InvalidAllocationID.Malformed"),
        ("describe_addresses", {"AllocationIds": ["eipalloc-0123456789abcdef0"]}, "InvalidAllocationID.NotFound"),
        ("describe_key_pairs", {"KeyNames": ["no-such-key"]}, "InvalidKeyPair.NotFound"),
        ("terminate_instances", {"InstanceIds": ["i-nothex!"]}, "InvalidInstanceID.Malformed"),
        ("deregister_image", {"ImageId": "ami-nothex!"}, "InvalidAMIID.Malformed"),
    ],
)
def test_malformed_and_unknown_ids(ec2: Any, call: str, kwargs: dict[str, Any], code: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        getattr(ec2, call)(**kwargs)
    assert error_code(excinfo) == code, excinfo.value.response["Error"]


@pytest.mark.parametrize(
    ("params", "member"),
    [
        ({"Action": "RunInstances", "MinCount": "1", "MaxCount": "1"}, "ImageId"),
        ({"Action": "TerminateInstances"}, "InstanceId"),
        ({"Action": "CreateSecurityGroup", "GroupName": "x"}, "GroupDescription"),
        ({"Action": "ImportKeyPair", "KeyName": "x"}, "PublicKeyMaterial"),
    ],
)
def test_a_missing_parameter(sim_cloud: RunningCloud, ec2: Any, params: dict[str, str], member: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        raw_call(sim_cloud, ec2, params)
    assert error_code(excinfo) == "MissingParameter"
    assert member in excinfo.value.response["Error"]["Message"]


# -- limits ------------------------------------------------------------------------------------------------------


def test_rules_per_group_and_groups_per_instance(ec2: Any) -> None:
    group_id = ec2.create_security_group(GroupName=_name("many-rules"), Description="d")["GroupId"]
    ports = [{"IpProtocol": "tcp", "FromPort": p, "ToPort": p, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}
             for p in range(1, 62)]  # fmt: skip
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=ports[:59])
    with pytest.raises(ClientError) as excinfo:
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=ports[59:])
    assert error_code(excinfo) == "RulesPerSecurityGroupLimitExceeded"
    [group] = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
    assert len(group["IpPermissions"]) == 59  # all or nothing
    ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=ports[59:60])  # the 60th fits
    groups = [ec2.create_security_group(GroupName=_name("g"), Description="d")["GroupId"] for _ in range(6)]
    before = ec2.describe_instances()["Reservations"]
    with pytest.raises(ClientError) as excinfo:
        ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1, SecurityGroupIds=groups)
    assert error_code(excinfo) == "SecurityGroupsPerInstanceLimitExceeded"
    assert ec2.describe_instances()["Reservations"] == before
    [inst] = ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1, SecurityGroupIds=groups[:5])[
        "Instances"
    ]
    assert len(inst["SecurityGroups"]) == 5
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
