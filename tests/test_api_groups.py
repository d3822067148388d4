"""EC2 security groups through unmodified boto3: groups, ingress rules, errors, filters, paging, isolation."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudlab.clc.groups import Rule, SecurityGroups
from cloudlab.clc.store import Store
from cloudlab.clc.users import Users
from tests.clouds import RunningCloud, error_code, unique, wait_states


@pytest.fixture(scope="module")
def cloud_db(sim_cloud: RunningCloud) -> Iterator[Any]:
    """The cloud's database and its group service, opened beside the running CLC (SQLite WAL)."""
    store = Store(sim_cloud.layout.database)
    users = Users(store, None)
    yield SimpleNamespace(store=store, users=users, groups=SecurityGroups(SimpleNamespace(store=store, users=users)))
    store.close()


@pytest.fixture(scope="module")
def bob(sim_cloud: RunningCloud) -> tuple[str, str, Any]:
    """A second, ordinary user: (name, 12-digit user id, boto3 client)."""
    user, client = sim_cloud.create_user("bob")
    return user.name, user.user_id, client


def group(ec2: Any, group_id: str) -> dict[str, Any]:
    return ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]


def permissions(ec2: Any, group_id: str) -> list[dict[str, Any]]:
    return group(ec2, group_id)["IpPermissions"]


@pytest.fixture(scope="module")
def admin_id(cloud_db: Any) -> str:
    """The admin's 12-digit account number."""
    return cloud_db.users.get("admin").user_id


def test_default_group(ec2: Any, raw_ec2: Any) -> None:
    default = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"]
    assert len(default) == 1
    default = default[0]
    assert default["GroupId"].startswith("sg-") and len(default["GroupId"]) == 20
    assert default["GroupName"] == "default" and default["Description"]
    assert len(default["OwnerId"]) == 12 and default["OwnerId"].isdigit()
    # members of the default group reach each other; everything may go out
    assert default["IpPermissions"] == [
        {
            "IpProtocol": "-1",
            "IpRanges": [],
            "Ipv6Ranges": [],
            "PrefixListIds": [],
            "UserIdGroupPairs": [{"GroupId": default["GroupId"], "GroupName": "default", "UserId": default["OwnerId"]}],
        }
    ]
    assert default["IpPermissionsEgress"][0]["IpProtocol"] == "-1"
    assert default["IpPermissionsEgress"][0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]
    for kwargs in ({"GroupName": "default"}, {"GroupId": default["GroupId"]}):
        with pytest.raises(ClientError) as excinfo:
            ec2.delete_security_group(**kwargs)
        assert error_code(excinfo) == "CannotDelete"
    with pytest.raises(ClientError) as excinfo:
        ec2.create_security_group(GroupName="default", Description="another")
    assert error_code(excinfo) == "InvalidGroup.Duplicate"
    with pytest.raises(ClientError) as excinfo:
        raw_ec2.delete_security_group()
    assert error_code(excinfo) == "MissingParameter"


def test_create_describe_delete(ec2: Any) -> None:
    name = unique("web")
    group_id = ec2.create_security_group(GroupName=name, Description="web servers")["GroupId"]
    assert group_id.startswith("sg-") and len(group_id) == 20
    found = group(ec2, group_id)
    assert (found["GroupName"], found["Description"], found["IpPermissions"]) == (name, "web servers", [])
    assert ec2.describe_security_groups(GroupNames=[name])["SecurityGroups"][0]["GroupId"] == group_id
    with pytest.raises(ClientError) as excinfo:
        ec2.create_security_group(GroupName=name, Description="again")
    assert error_code(excinfo) == "InvalidGroup.Duplicate"
    answer = ec2.delete_security_group(GroupId=group_id)
    assert answer["Return"] is True and answer["GroupId"] == group_id
    other = ec2.create_security_group(GroupName=name, Description="by name")["GroupId"]
    assert ec2.delete_security_group(GroupName=name)["GroupId"] == other
    for kwargs in ({"GroupId": group_id}, {"GroupName": name}):
        with pytest.raises(ClientError) as excinfo:
            ec2.delete_security_group(**kwargs)
        assert error_code(excinfo) == "InvalidGroup.NotFound"
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_security_groups(GroupIds=[group_id])
    assert error_code(excinfo) == "InvalidGroup.NotFound"
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_security_groups(GroupNames=[name])
    assert error_code(excinfo) == "InvalidGroup.NotFound"
    for call in (ec2.describe_security_groups, ec2.delete_security_group):
        kwargs = {"GroupIds": ["sg-nothex"]} if call == ec2.describe_security_groups else {"GroupId": "sg-nothex"}
        with pytest.raises(ClientError) as excinfo:
            call(**kwargs)
        assert error_code(excinfo) == "InvalidGroupId.Malformed"
    with pytest.raises(ClientError) as excinfo:
        ec2.create_security_group(GroupName=unique("sg"), Description="x", DryRun=True)
    assert error_code(excinfo) == "DryRunOperation"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"GroupName": "sg-mine", "Description": "d"}, "InvalidParameterValue"),
        ({"GroupName": "x" * 256, "Description": "d"}, "InvalidParameterValue"),
        ({"GroupName": "ok-name", "Description": "d" * 256}, "InvalidParameterValue"),
        ({"GroupName": "caf\u00e9", "Description": "d"}, "InvalidParameterValue"),
        ({"GroupName": "ok-name", "Description": ""}, "InvalidParameterValue"),
        ({"GroupName": "", "Description": "d"}, "InvalidParameterValue"),
        ({"GroupName": "ok-name"}, "MissingParameter"),
        ({"Description": "d"}, "MissingParameter"),
    ],
)
def test_create_checks(raw_ec2: Any, kwargs: dict[str, str], code: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        raw_ec2.create_security_group(**kwargs)
    assert error_code(excinfo) == code


def test_authorize_and_revoke(ec2: Any, admin_id: str) -> None:
    target = ec2.create_security_group(GroupName=unique("app"), Description="app")["GroupId"]
    source = ec2.create_security_group(GroupName=unique("lb"), Description="load balancers")["GroupId"]
    answer = ec2.authorize_security_group_ingress(
        GroupId=target,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 22,
                "ToPort": 22,
                "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "admins"}, {"CidrIp": "203.0.113.0/24"}],
            },
            {"IpProtocol": "6", "FromPort": 8000, "ToPort": 8080, "UserIdGroupPairs": [{"GroupId": source}]},
            {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "IpRanges": [{"CidrIp": "192.0.2.1/32"}]},
            {"IpProtocol": "icmp", "FromPort": 8, "ToPort": -1, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
            {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupName": "default"}]},
        ],
    )
    assert answer["Return"] is True
    rules = answer["SecurityGroupRules"]
    assert len(rules) == 6 and all(r["SecurityGroupRuleId"].startswith("sgr-") for r in rules)
    assert all(r["GroupId"] == target and r["IsEgress"] is False for r in rules)
    assert {r.get("CidrIpv4") for r in rules} >= {"10.0.0.0/8", "203.0.113.0/24", "192.0.2.1/32", "0.0.0.0/0"}
    assert [r["ReferencedGroupInfo"]["GroupId"] for r in rules if "ReferencedGroupInfo" in r][0] == source
    owner = admin_id
    default = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    by_protocol = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")): p for p in permissions(ec2, target)}
    assert set(by_protocol) == {
        ("tcp", 22, 22),
        ("tcp", 8000, 8080),
        ("udp", 53, 53),
        ("icmp", 8, -1),
        ("-1", None, None),
    }
    assert by_protocol[("tcp", 22, 22)]["IpRanges"] == [
        {"CidrIp": "10.0.0.0/8", "Description": "admins"},
        {"CidrIp": "203.0.113.0/24"},
    ]
    pair = by_protocol[("tcp", 8000, 8080)]["UserIdGroupPairs"][0]
    assert (pair["GroupId"], pair["UserId"]) == (source, owner)
    assert by_protocol[("-1", None, None)]["UserIdGroupPairs"][0]["GroupId"] == default
    # the same rule again, even with another description or spelling, is a duplicate; nothing is added
    for permission in (
        {"IpProtocol": "TCP", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
        {
            "IpProtocol": "17",
            "FromPort": 53,
            "ToPort": 53,
            "IpRanges": [{"CidrIp": "192.0.2.1/32", "Description": "x"}],
        },
    ):
        with pytest.raises(ClientError) as excinfo:
            ec2.authorize_security_group_ingress(
                GroupId=target,
                IpPermissions=[
                    {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 2, "IpRanges": [{"CidrIp": "10.9.0.0/16"}]},
                    permission,
                ],
            )
        assert error_code(excinfo) == "InvalidPermission.Duplicate"
    assert len(permissions(ec2, target)) == 5  # all or nothing: tcp 1-2 was not added
    # revoke by permission (descriptions do not matter) and by rule id
    ssh = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}
    assert ec2.revoke_security_group_ingress(GroupId=target, IpPermissions=[ssh])["Return"] is True
    with pytest.raises(ClientError) as excinfo:
        ec2.revoke_security_group_ingress(GroupId=target, IpPermissions=[ssh])
    assert error_code(excinfo) == "InvalidPermission.NotFound"
    icmp_rule = next(r["SecurityGroupRuleId"] for r in rules if r["IpProtocol"] == "icmp")
    assert ec2.revoke_security_group_ingress(GroupId=target, SecurityGroupRuleIds=[icmp_rule])["Return"] is True
    with pytest.raises(ClientError) as excinfo:
        ec2.revoke_security_group_ingress(GroupId=target, SecurityGroupRuleIds=[icmp_rule])
    assert error_code(excinfo) == "InvalidSecurityGroupRuleId.NotFound"
    left = {(p["IpProtocol"], p.get("FromPort")): p for p in permissions(ec2, target)}
    assert set(left) == {("tcp", 22), ("tcp", 8000), ("udp", 53), ("-1", None)}
    assert left[("tcp", 22)]["IpRanges"] == [{"CidrIp": "203.0.113.0/24"}]
    # a group whose rules name another group cannot be deleted away from under them
    with pytest.raises(ClientError) as excinfo:
        ec2.delete_security_group(GroupId=source)
    assert error_code(excinfo) == "DependencyViolation"
    ec2.revoke_security_group_ingress(
        GroupId=target,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 8080, "UserIdGroupPairs": [{"GroupId": source}]}
        ],
    )
    ec2.delete_security_group(GroupId=source)
    ec2.delete_security_group(GroupId=target)  # its own rules go with it


def test_flat_form(ec2: Any) -> None:
    name = unique("flat")
    source_name = unique("src")
    group_id = ec2.create_security_group(GroupName=name, Description="flat")["GroupId"]
    source = ec2.create_security_group(GroupName=source_name, Description="source")["GroupId"]
    ec2.authorize_security_group_ingress(GroupName=name, IpProtocol="tcp", FromPort=80, ToPort=80, CidrIp="0.0.0.0/0")
    # a source group alone opens tcp, udp and icmp from it (EC2-Classic)
    ec2.authorize_security_group_ingress(GroupName=name, SourceSecurityGroupName=source_name)
    found = {(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")): p for p in permissions(ec2, group_id)}
    assert set(found) == {("tcp", 80, 80), ("tcp", 0, 65535), ("udp", 0, 65535), ("icmp", -1, -1)}
    assert found[("udp", 0, 65535)]["UserIdGroupPairs"][0]["GroupId"] == source
    ec2.revoke_security_group_ingress(GroupName=name, IpProtocol="tcp", FromPort=80, ToPort=80, CidrIp="0.0.0.0/0")
    ec2.revoke_security_group_ingress(GroupName=name, SourceSecurityGroupName=source_name)
    assert permissions(ec2, group_id) == []
    with pytest.raises(ClientError) as excinfo:
        ec2.authorize_security_group_ingress(
            GroupId=group_id,
            CidrIp="10.0.0.0/8",
            IpProtocol="tcp",
            FromPort=1,
            ToPort=2,
            IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}],
        )
    assert error_code(excinfo) == "InvalidParameterCombination"
    with pytest.raises(ClientError) as excinfo:
        ec2.authorize_security_group_ingress(GroupId=group_id, IpProtocol="tcp", FromPort=1, ToPort=2)
    assert error_code(excinfo) == "MissingParameter"
    with pytest.raises(ClientError) as excinfo:
        ec2.authorize_security_group_ingress(GroupId=group_id)
    assert error_code(excinfo) == "MissingParameter"
    with pytest.raises(ClientError) as excinfo:
        ec2.authorize_security_group_ingress(IpProtocol="tcp", FromPort=1, ToPort=2, CidrIp="10.0.0.0/8")
    assert error_code(excinfo) == "MissingParameter"


def tcp(low: Any, high: Any, cidr: str = "10.0.0.0/8", protocol: str = "tcp") -> dict[str, Any]:
    return {"IpProtocol": protocol, "FromPort": low, "ToPort": high, "IpRanges": [{"CidrIp": cidr}]}


@pytest.fixture(scope="module")
def scratch_group(ec2: Any) -> str:
    return ec2.create_security_group(GroupName=unique("scratch"), Description="stays empty")["GroupId"]


@pytest.mark.parametrize(
    ("permission", "code"),
    [
        (tcp(22, 22, protocol="gre"), "InvalidParameterValue"),
        (tcp(22, 22, protocol="47"), "InvalidParameterValue"),
        (tcp(0, 70000), "InvalidParameterValue"),
        (tcp(-1, -1), "InvalidParameterValue"),
        (tcp(443, 80), "InvalidParameterValue"),
        (tcp(500, 400, protocol="udp"), "InvalidParameterValue"),
        ({"IpProtocol": "tcp", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}, "InvalidParameterValue"),
        (tcp(300, 0, protocol="icmp"), "InvalidParameterValue"),
        (tcp(-1, 3, protocol="icmp"), "InvalidParameterValue"),
        (tcp(22, 22, cidr="10.0.0.1/8"), "InvalidParameterValue"),
        (tcp(22, 22, cidr="300.0.0.0/8"), "InvalidParameterValue"),
        (tcp(22, 22, cidr="nonsense"), "InvalidParameterValue"),
        (tcp(22, 22, cidr="10.0.0.0/33"), "InvalidParameterValue"),
        ({"IpProtocol": "tcp", "FromPort": 1, "ToPort": 2}, "MissingParameter"),
        (
            {
                "IpProtocol": "tcp",
                "FromPort": 1,
                "ToPort": 2,
                "UserIdGroupPairs": [{"GroupId": "sg-0123456789abcdef0"}],
            },
            "InvalidGroup.NotFound",
        ),
        (
            {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 2, "UserIdGroupPairs": [{"GroupName": "no-such-group"}]},
            "InvalidGroup.NotFound",
        ),
        (
            {"IpProtocol": "tcp", "FromPort": 1, "ToPort": 2, "UserIdGroupPairs": [{"GroupId": "sg-bad"}]},
            "InvalidGroupId.Malformed",
        ),
    ],
)
def test_invalid_permissions(ec2: Any, scratch_group: str, permission: dict[str, Any], code: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        ec2.authorize_security_group_ingress(
            GroupId=scratch_group, IpPermissions=[tcp(1, 1, "192.0.2.0/24"), permission]
        )
    assert error_code(excinfo) == code
    assert permissions(ec2, scratch_group) == []  # all or nothing: the valid rule before it was not added


def test_unknown_target_group(ec2: Any) -> None:
    for kwargs, code in (
        ({"GroupId": "sg-0123456789abcdef0"}, "InvalidGroup.NotFound"),
        ({"GroupName": unique("nothing")}, "InvalidGroup.NotFound"),
        ({"GroupId": "default"}, "InvalidGroupId.Malformed"),
        ({"GroupId": "sg-xyz"}, "InvalidGroupId.Malformed"),
    ):
        for call in (ec2.authorize_security_group_ingress, ec2.revoke_security_group_ingress):
            with pytest.raises(ClientError) as excinfo:
                call(IpPermissions=[tcp(22, 22)], **kwargs)
            assert error_code(excinfo) == code, kwargs
    with pytest.raises(ClientError) as excinfo:
        ec2.delete_security_group(GroupId="default")
    assert error_code(excinfo) == "InvalidGroupId.Malformed"


def test_filters(ec2: Any, admin_id: str) -> None:
    prefix = unique("flt")
    web = ec2.create_security_group(GroupName=f"{prefix}-web", Description="web tier")["GroupId"]
    db = ec2.create_security_group(GroupName=f"{prefix}-db", Description="database tier")["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=web, IpPermissions=[tcp(80, 80, "0.0.0.0/0"), tcp(443, 443, "0.0.0.0/0")]
    )
    ec2.authorize_security_group_ingress(
        GroupId=db,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": web}]},
            tcp(5432, 5432, "10.1.0.0/16"),
            {"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "10.1.0.0/16"}]},
        ],
    )

    def names(*filters: tuple[str, list[str]]) -> list[str]:
        flts = [{"Name": "group-name", "Values": [f"{prefix}-*"]}] + [{"Name": n, "Values": v} for n, v in filters]
        return sorted(
            g["GroupName"][len(prefix) + 1 :] for g in ec2.describe_security_groups(Filters=flts)["SecurityGroups"]
        )

    assert names() == ["db", "web"]
    assert names(("group-name", [f"{prefix}-w?b"])) == ["web"]
    assert names(("group-id", [db])) == ["db"]
    assert names(("description", ["*tier"])) == ["db", "web"]
    assert names(("description", ["data*"])) == ["db"]
    assert names(("owner-id", [admin_id])) == ["db", "web"]
    assert names(("owner-id", ["000000000000"])) == []
    assert names(("ip-permission.protocol", ["icmp"])) == ["db"]
    assert names(("ip-permission.protocol", ["tcp"])) == ["db", "web"]
    assert names(("ip-permission.from-port", ["443"])) == ["web"]
    assert names(("ip-permission.to-port", ["54*"])) == ["db"]
    assert names(("ip-permission.cidr", ["0.0.0.0/0"])) == ["web"]
    assert names(("ip-permission.cidr", ["10.*"])) == ["db"]
    assert names(("ip-permission.group-id", [web])) == ["db"]
    assert names(("ip-permission.group-id", ["sg-*"])) == ["db"]
    assert names(("ip-permission.protocol", ["udp"])) == []
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_security_groups(Filters=[{"Name": "vpc-colour", "Values": ["x"]}])
    assert error_code(excinfo) == "InvalidParameterValue"
    ec2.revoke_security_group_ingress(
        GroupId=db,
        IpPermissions=[{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "UserIdGroupPairs": [{"GroupId": web}]}],
    )
    ec2.delete_security_group(GroupId=web)
    ec2.delete_security_group(GroupId=db)


def test_paging(ec2: Any, raw_ec2: Any) -> None:
    prefix = unique("page")
    made = [ec2.create_security_group(GroupName=f"{prefix}-{i}", Description="paged")["GroupId"] for i in range(7)]
    flt = [{"Name": "group-name", "Values": [f"{prefix}-*"]}]
    pages = list(ec2.get_paginator("describe_security_groups").paginate(Filters=flt, PaginationConfig={"PageSize": 5}))
    assert [len(p["SecurityGroups"]) for p in pages] == [5, 2]
    assert sorted(g["GroupId"] for p in pages for g in p["SecurityGroups"]) == sorted(made)
    assert "NextToken" in pages[0] and not pages[1].get("NextToken")
    for bad in (4, 1001):
        with pytest.raises(ClientError) as excinfo:
            raw_ec2.describe_security_groups(MaxResults=bad)
        assert error_code(excinfo) == "InvalidParameterValue"
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_security_groups(MaxResults=5, NextToken="not-a-token")
    assert error_code(excinfo) == "InvalidNextToken"


def test_groups_in_use_by_instances(ec2: Any, cloud_db: Any) -> None:
    image = ec2.describe_images(Filters=[{"Name": "name", "Values": ["cloudlab-default"]}])["Images"][0]["ImageId"]
    name = unique("inuse")
    group_id = ec2.create_security_group(GroupName=name, Description="in use")["GroupId"]
    instance_id = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t2.nano")["Instances"][0][
        "InstanceId"
    ]
    try:
        with cloud_db.store.transaction() as db:  # what RunInstances does once it takes SecurityGroupIds
            SecurityGroups.attach(db, instance_id, [group_id])
        assert {"GroupId": group_id, "GroupName": name} in cloud_db.groups.groups_of([instance_id])[instance_id]
        assert instance_id in cloud_db.groups.members([group_id])[group_id]
        with pytest.raises(ClientError) as excinfo:
            ec2.delete_security_group(GroupId=group_id)
        assert error_code(excinfo) == "DependencyViolation"
        assert instance_id in excinfo.value.response["Error"]["Message"]
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
    wait_states(ec2, [instance_id], "terminated")
    assert cloud_db.groups.members([group_id]) == {group_id: []}
    ec2.delete_security_group(GroupId=group_id)
    assert group_id not in {g["GroupId"] for g in cloud_db.groups.groups_of([instance_id])[instance_id]}


def test_launch_helpers_and_rules_for(cloud_db: Any, bob: tuple[str, str, Any]) -> None:
    name, _, bob_ec2 = bob
    user = cloud_db.users.get(name)
    groups = cloud_db.groups
    default = groups.resolve_for_launch(user, [], [])
    assert len(default) == 1 and groups.owner_of(default[0]) == name
    web_name = unique("web")
    web = bob_ec2.create_security_group(GroupName=web_name, Description="web")["GroupId"]
    assert groups.resolve_for_launch(user, [web_name, "default"], [web]) == [web, default[0]]
    for names, ids, code in (
        ([unique("missing")], [], "InvalidGroup.NotFound"),
        ([], ["sg-0123456789abcdef0"], "InvalidGroup.NotFound"),
        ([], ["sg-bad"], "InvalidGroupId.Malformed"),
    ):
        with pytest.raises(Exception) as excinfo:
            groups.resolve_for_launch(user, names, ids)
        assert getattr(excinfo.value, "code", None) == code
    bob_ec2.authorize_security_group_ingress(
        GroupId=web,
        IpPermissions=[tcp(80, 80, "0.0.0.0/0"), {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": default[0]}]}],
    )
    assert groups.rules_for([web]) == [
        Rule(web, "tcp", 80, 80, "0.0.0.0/0", None),
        Rule(web, "-1", None, None, None, default[0]),
    ]
    assert groups.rules_for(default) == [Rule(default[0], "-1", None, None, None, default[0])]


def test_isolation_between_users(ec2: Any, bob: tuple[str, str, Any], admin_id: str) -> None:
    _, bob_id, bob_ec2 = bob
    shared = unique("shared")
    admin_group = ec2.create_security_group(GroupName=shared, Description="admin's")["GroupId"]
    bob_groups = bob_ec2.describe_security_groups()["SecurityGroups"]
    assert admin_group not in {g["GroupId"] for g in bob_groups}
    assert {g["OwnerId"] for g in bob_groups} == {bob_id}
    assert "default" in {g["GroupName"] for g in bob_groups}  # bob has his own default group
    for call, kwargs in (
        (bob_ec2.describe_security_groups, {"GroupIds": [admin_group]}),
        (bob_ec2.describe_security_groups, {"GroupNames": [shared]}),
        (bob_ec2.delete_security_group, {"GroupId": admin_group}),
        (bob_ec2.authorize_security_group_ingress, {"GroupId": admin_group, "IpPermissions": [tcp(22, 22)]}),
        (bob_ec2.revoke_security_group_ingress, {"GroupId": admin_group, "IpPermissions": [tcp(22, 22)]}),
        (
            bob_ec2.authorize_security_group_ingress,
            {
                "GroupName": "default",
                "IpPermissions": [{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": admin_group}]}],
            },
        ),
        (
            bob_ec2.authorize_security_group_ingress,
            {
                "GroupName": "default",
                "IpPermissions": [
                    {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupName": shared, "UserId": admin_id}]}
                ],
            },
        ),
    ):
        with pytest.raises(ClientError) as excinfo:
            call(**kwargs)
        assert error_code(excinfo) == "InvalidGroup.NotFound", kwargs
    # names are per user: bob may have a group of the same name, and deletes his own by name
    bob_group = bob_ec2.create_security_group(GroupName=shared, Description="bob's")["GroupId"]
    assert bob_ec2.delete_security_group(GroupName=shared)["GroupId"] == bob_group
    assert group(ec2, admin_group)["Description"] == "admin's"
    # the admin sees (and may change) everyone's groups
    bob_group = bob_ec2.create_security_group(GroupName=shared, Description="bob's")["GroupId"]
    seen = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [shared]}])["SecurityGroups"]
    assert {(g["GroupId"], g["OwnerId"]) for g in seen} == {(admin_group, admin_id), (bob_group, bob_id)}
    ec2.authorize_security_group_ingress(GroupId=bob_group, IpPermissions=[tcp(22, 22)])
    assert permissions(bob_ec2, bob_group)[0]["IpRanges"] == [{"CidrIp": "10.0.0.0/8"}]
    ec2.delete_security_group(GroupId=bob_group)
    ec2.delete_security_group(GroupId=admin_group)
