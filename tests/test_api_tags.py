"""EC2 tags through unmodified boto3, plus the tag service's own rules on a store of its own.

The API tests share the session's simulated cloud with other modules: they tag resources of users
of their own and remove every tag they put on shared resources (the default image).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudlab.clc.store import Store
from cloudlab.clc.tags import Tags
from cloudlab.clc.users import User
from cloudlab.errors import CloudError
from tests.clouds import RunningCloud, default_image, error_code


def tags_of(ec2: Any, resource_id: str) -> dict[str, str]:
    found = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource_id]}])["Tags"]
    return {t["Key"]: t["Value"] for t in found}


@pytest.fixture(scope="module")
def alice(sim_cloud: RunningCloud) -> Any:
    return sim_cloud.new_user("tags-alice")


@pytest.fixture(scope="module")
def bob(sim_cloud: RunningCloud) -> Any:
    return sim_cloud.new_user("tags-bob")


@pytest.fixture(scope="module")
def admin(sim_cloud: RunningCloud) -> Any:
    return sim_cloud.ec2()


@pytest.fixture(scope="module")
def reservation(alice: Any) -> Iterator[dict[str, Any]]:
    """One instance of alice's (with its reservation), terminated at the end."""
    answer = alice.run_instances(ImageId=default_image(alice), MinCount=1, MaxCount=1, InstanceType="t2.nano")
    yield answer
    alice.terminate_instances(InstanceIds=[answer["Instances"][0]["InstanceId"]])


@pytest.fixture
def instance(alice: Any, reservation: dict[str, Any]) -> Iterator[str]:
    """Alice's instance, with no tags before and after each test."""
    instance_id = reservation["Instances"][0]["InstanceId"]
    alice.delete_tags(Resources=[instance_id])
    yield instance_id
    alice.delete_tags(Resources=[instance_id])


def test_create_describe_overwrite(alice: Any, instance: str) -> None:
    alice.create_tags(Resources=[instance], Tags=[{"Key": "Name", "Value": "web"}, {"Key": "empty"}])
    described = alice.describe_tags(Filters=[{"Name": "resource-id", "Values": [instance]}])["Tags"]
    assert described == [
        {"Key": "Name", "ResourceId": instance, "ResourceType": "instance", "Value": "web"},
        {"Key": "empty", "ResourceId": instance, "ResourceType": "instance", "Value": ""},
    ]
    alice.create_tags(Resources=[instance], Tags=[{"Key": "Name", "Value": "db"}])  # overwrites
    assert tags_of(alice, instance) == {"Name": "db", "empty": ""}


def test_filters_with_wildcards(alice: Any, instance: str, reservation: dict[str, Any]) -> None:
    reservation_id = reservation["ReservationId"]
    alice.create_tags(
        Resources=[instance, reservation_id],
        Tags=[{"Key": "project", "Value": "cloud-lab"}, {"Key": "stage", "Value": "test1"}],
    )
    alice.create_tags(Resources=[instance], Tags=[{"Key": "Name", "Value": "web"}])
    try:

        def found(*filters: tuple[str, list[str]]) -> set[tuple[str, str]]:
            tags = alice.describe_tags(Filters=[{"Name": n, "Values": v} for n, v in filters])["Tags"]
            return {(t["ResourceId"], t["Key"]) for t in tags}

        assert found(("key", ["proj*"])) == {(instance, "project"), (reservation_id, "project")}
        assert found(("value", ["test?"])) == {(instance, "stage"), (reservation_id, "stage")}
        assert found(("value", ["test"])) == set()  # no partial match without a wildcard
        assert found(("resource-type", ["reservation"])) == {(reservation_id, "project"), (reservation_id, "stage")}
        assert found(("resource-type", ["instance"]), ("key", ["Name", "stage"])) == {
            (instance, "Name"),
            (instance, "stage"),
        }
        assert found(("resource-id", ["i-*"]), ("value", ["*-lab"])) == {(instance, "project")}
        assert found(("tag:Name", ["w*"])) == {(instance, "Name")}
        assert found(("key", ["name"])) == set()  # case matters
        with pytest.raises(ClientError) as excinfo:
            found(("colour", ["blue"]))
        assert error_code(excinfo) == "InvalidParameterValue"
    finally:
        alice.delete_tags(Resources=[reservation_id])


def test_paging(alice: Any, instance: str) -> None:
    alice.create_tags(Resources=[instance], Tags=[{"Key": f"k{n:02}", "Value": str(n)} for n in range(12)])
    pages = list(
        alice.get_paginator("describe_tags").paginate(
            Filters=[{"Name": "resource-id", "Values": [instance]}], PaginationConfig={"PageSize": 5}
        )
    )
    assert [len(p["Tags"]) for p in pages] == [5, 5, 2]
    assert [t["Key"] for p in pages for t in p["Tags"]] == [f"k{n:02}" for n in range(12)]
    for kwargs, code in (
        ({"MaxResults": 4}, "InvalidParameterValue"),
        ({"MaxResults": 1001}, "InvalidParameterValue"),
        ({"NextToken": "!!garbage!!"}, "InvalidNextToken"),
    ):
        with pytest.raises(ClientError) as excinfo:
            alice.describe_tags(**kwargs)
        assert error_code(excinfo) == code


def test_delete_semantics(alice: Any, instance: str) -> None:
    def reset() -> None:
        alice.create_tags(
            Resources=[instance],
            Tags=[{"Key": "a", "Value": "1"}, {"Key": "b", "Value": "2"}, {"Key": "c", "Value": ""}],
        )

    reset()
    alice.delete_tags(Resources=[instance], Tags=[{"Key": "a"}])  # key only: whatever the value
    assert tags_of(alice, instance) == {"b": "2", "c": ""}
    alice.delete_tags(Resources=[instance], Tags=[{"Key": "b", "Value": "other"}])  # value must match
    assert tags_of(alice, instance) == {"b": "2", "c": ""}
    alice.delete_tags(Resources=[instance], Tags=[{"Key": "b", "Value": "2"}])
    assert tags_of(alice, instance) == {"c": ""}
    alice.delete_tags(Resources=[instance], Tags=[{"Key": "c", "Value": ""}])  # an empty value is a value
    assert tags_of(alice, instance) == {}
    alice.delete_tags(Resources=[instance], Tags=[{"Key": "never-there"}])  # not an error
    reset()
    alice.delete_tags(Resources=[instance])  # no tags: all of them
    assert tags_of(alice, instance) == {}


BAD_TAGS = [
    ([{"Key": f"k{n}", "Value": "v"} for n in range(51)], "TagLimitExceeded"),
    ([{"Key": "k" * 129, "Value": "v"}], "InvalidParameterValue"),
    ([{"Key": "", "Value": "v"}], "InvalidParameterValue"),
    ([{"Key": "ok", "Value": "v" * 257}], "InvalidParameterValue"),
    ([{"Key": "aws:cloudformation:stack-name", "Value": "v"}], "InvalidParameterValue"),
    ([{"Key": "AWS:Name", "Value": "v"}], "InvalidParameterValue"),
    ([{"Key": "same", "Value": "1"}, {"Key": "same", "Value": "2"}], "InvalidParameterValue"),
    ([{"Value": "no key"}], "InvalidParameterValue"),
    ([], "MissingParameter"),
]


def test_limits_and_bad_tags(alice: Any, instance: str) -> None:
    for tags, code in BAD_TAGS:
        with pytest.raises(ClientError) as excinfo:
            alice.create_tags(Resources=[instance], Tags=tags)
        assert error_code(excinfo) == code, tags[:1]
    assert tags_of(alice, instance) == {}


def test_limits_at_the_edge(alice: Any, instance: str) -> None:
    alice.create_tags(Resources=[instance], Tags=[{"Key": "k" * 128, "Value": "v" * 256}])
    alice.create_tags(Resources=[instance], Tags=[{"Key": f"k{n:02}", "Value": ""} for n in range(48)])
    assert len(tags_of(alice, instance)) == 49
    alice.create_tags(Resources=[instance], Tags=[{"Key": "k00", "Value": "overwriting counts no new tag"}])
    # 49 + 2 new keys: refused as a whole
    with pytest.raises(ClientError) as excinfo:
        alice.create_tags(Resources=[instance], Tags=[{"Key": "new1"}, {"Key": "new2"}])
    assert error_code(excinfo) == "TagLimitExceeded"
    assert len(tags_of(alice, instance)) == 49
    alice.create_tags(Resources=[instance], Tags=[{"Key": "new1"}])
    assert len(tags_of(alice, instance)) == 50
    with pytest.raises(ClientError) as excinfo:
        alice.delete_tags(Resources=[instance], Tags=[{"Key": "aws:reserved"}])
    assert error_code(excinfo) == "InvalidParameterValue"


UNKNOWN_RESOURCES = [
    ("i-0123456789abcdef0", "InvalidInstanceID.NotFound"),
    ("ami-0123456789abcdef0", "InvalidAMIID.NotFound"),
    ("aki-0123456789abcdef0", "InvalidAMIID.NotFound"),
    ("sg-0123456789abcdef0", "InvalidGroup.NotFound"),
    ("key-0123456789abcdef0", "InvalidKeyPair.NotFound"),
    ("eipalloc-0123456789abcdef0", "InvalidAllocationID.NotFound"),
    ("r-0123456789abcdef0", "InvalidReservationID.NotFound"),
    ("vol-0123456789abcdef0", "InvalidVolume.NotFound"),
    ("vpc-0123456789abcdef0", "InvalidVpcID.NotFound"),
    ("i-nothex", "InvalidID"),
    ("bogus", "InvalidID"),
]


def test_unknown_resources(alice: Any, instance: str) -> None:
    alice.create_tags(Resources=[instance], Tags=[{"Key": "kept", "Value": "v"}])
    for resource_id, code in UNKNOWN_RESOURCES:
        # with a real resource in the same request: all or nothing
        with pytest.raises(ClientError) as excinfo:
            alice.create_tags(Resources=[instance, resource_id], Tags=[{"Key": "k", "Value": "v"}])
        assert error_code(excinfo) == code, resource_id
        assert excinfo.value.response["Error"]["Message"]
    for resource_id, code in UNKNOWN_RESOURCES[::3]:
        with pytest.raises(ClientError) as excinfo:
            alice.delete_tags(Resources=[instance, resource_id])
        assert error_code(excinfo) == code, resource_id
    assert tags_of(alice, instance) == {"kept": "v"}


def test_missing_resources(alice: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        alice.create_tags(Resources=[], Tags=[{"Key": "k", "Value": "v"}])
    assert error_code(excinfo) == "MissingParameter"
    with pytest.raises(ClientError) as excinfo:
        alice.delete_tags(Resources=[])
    assert error_code(excinfo) == "MissingParameter"


def test_users_cannot_see_or_change_each_others_tags(alice: Any, bob: Any, admin: Any, instance: str) -> None:
    alice.create_tags(Resources=[instance], Tags=[{"Key": "owner", "Value": "alice"}])
    for attempt in (
        lambda: bob.create_tags(Resources=[instance], Tags=[{"Key": "owner", "Value": "bob"}]),
        lambda: bob.delete_tags(Resources=[instance]),
        lambda: bob.delete_tags(Resources=[instance], Tags=[{"Key": "owner"}]),
    ):
        with pytest.raises(ClientError) as excinfo:
            attempt()
        assert error_code(excinfo) == "InvalidInstanceID.NotFound"
    assert tags_of(bob, instance) == {}
    assert all(t["ResourceId"] != instance for t in bob.describe_tags()["Tags"])
    assert tags_of(alice, instance) == {"owner": "alice"}
    # the admin sees and changes any resource's tags; they stay the owner's
    assert tags_of(admin, instance) == {"owner": "alice"}
    admin.create_tags(Resources=[instance], Tags=[{"Key": "checked-by", "Value": "admin"}])
    assert tags_of(alice, instance) == {"owner": "alice", "checked-by": "admin"}
    assert tags_of(bob, instance) == {}


def test_image_tags_are_the_image_owners(alice: Any, admin: Any) -> None:
    image_id = default_image(admin)  # public, owned by the admin
    with pytest.raises(ClientError) as excinfo:
        alice.create_tags(Resources=[image_id], Tags=[{"Key": "mine", "Value": "no"}])
    assert error_code(excinfo) == "InvalidAMIID.NotFound"
    admin.create_tags(Resources=[image_id], Tags=[{"Key": "tested-by", "Value": "test_api_tags"}])
    try:
        assert tags_of(admin, image_id)["tested-by"] == "test_api_tags"
        assert {
            t["ResourceType"]
            for t in admin.describe_tags(Filters=[{"Name": "resource-id", "Values": [image_id]}])["Tags"]
        } == {"image"}
        assert tags_of(alice, image_id) == {}  # tags of a public image are its owner's
        with pytest.raises(ClientError) as excinfo:
            alice.delete_tags(Resources=[image_id])
        assert error_code(excinfo) == "InvalidAMIID.NotFound"
        assert tags_of(admin, image_id)["tested-by"] == "test_api_tags"
    finally:
        admin.delete_tags(Resources=[image_id], Tags=[{"Key": "tested-by"}])
    assert "tested-by" not in tags_of(admin, image_id)


def test_dry_run(alice: Any, instance: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        alice.create_tags(Resources=[instance], Tags=[{"Key": "k", "Value": "v"}], DryRun=True)
    assert error_code(excinfo) == "DryRunOperation"
    assert tags_of(alice, instance) == {}


# -- the service's own rules, on a store of its own ---------------------------------------------------------------


class FakeCloud:
    """Just what the tag service uses of the cloud controller."""

    def __init__(self, store: Store) -> None:
        self.store = store


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Tags]:
    store = Store(tmp_path / "clc.sqlite")
    yield Tags(FakeCloud(store))
    store.close()


def add_instance_in(db: Any, instance_id: str, owner: str) -> None:
    db.execute(
        "INSERT INTO instances (instance_id, reservation_id, owner, image_id, instance_type, vcpus, memory_mb,"
        " cluster, zone, state, launch_time, updated) VALUES (?, 'r-0', ?, 'ami-0', 't2.nano', 1, 512, 'c', 'z',"
        " 'pending', 0, 0)",
        (instance_id, owner),
    )


def add_instance(store: Store, instance_id: str, owner: str) -> None:
    with store.transaction() as db:
        add_instance_in(db, instance_id, owner)


def test_tag_specifications_for_a_new_resource(service: Tags) -> None:
    store = service.store
    user = User("u", "000000000001", False, True)
    ids = ["i-00000000000000001", "i-00000000000000002"]
    specs = [
        {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "web"}]},
        {"ResourceType": "instance", "Tags": [{"Key": "team"}]},
    ]
    with store.transaction() as db:
        for instance_id in ids:
            add_instance_in(db, instance_id, "u")
        assert service.apply_specifications(db, user, "instance", ids, specs) == {"Name": "web", "team": ""}
    assert service.for_resources([*ids, "i-00000000000000003"]) == {
        i: [{"Key": "Name", "Value": "web"}, {"Key": "team", "Value": ""}] for i in ids
    }
    for bad, code in (
        ([{"ResourceType": "volume", "Tags": [{"Key": "a"}]}], "InvalidParameterValue"),
        ([{"Tags": [{"Key": "a"}]}], "InvalidParameterValue"),
        ([{"ResourceType": "instance", "Tags": [{"Key": "aws:x"}]}], "InvalidParameterValue"),
        (
            [
                {"ResourceType": "instance", "Tags": [{"Key": "a"}]},
                {"ResourceType": "instance", "Tags": [{"Key": "a"}]},
            ],
            "InvalidParameterValue",
        ),
        ([{"ResourceType": "instance", "Tags": [{"Key": f"k{n}"} for n in range(51)]}], "TagLimitExceeded"),
    ):
        with pytest.raises(CloudError) as excinfo, store.transaction() as db:
            add_instance_in(db, "i-00000000000000009", "u")
            service.apply_specifications(db, user, "instance", ["i-00000000000000009"], bad)
        assert excinfo.value.code == code
        assert store.one("SELECT 1 FROM instances WHERE instance_id='i-00000000000000009'") is None  # rolled back
    with store.transaction() as db:
        service.remove_resource(db, ids[0])
    assert list(service.for_resources(ids)) == [ids[1]]
    # the owner of a tag is the owner of the resource, whoever tags it
    add_instance(store, "i-0000000000000000a", "someone-else")
    service.create(User("admin", "000000000000", True, True), ["i-0000000000000000a"], [{"Key": "k"}])
    assert [t["ResourceId"] for t in service.describe(User("someone-else", "1", False, True))] == [
        "i-0000000000000000a"
    ]


def test_kinds_whose_tables_come_later(service: Tags) -> None:
    """Security groups and key pairs live in tables of other services: until those exist, none is found."""
    store = service.store
    user = User("u", "000000000001", False, True)
    for resource_id, code, table, column in (
        ("sg-00000000000000001", "InvalidGroup.NotFound", "security_groups", "group_id"),
        ("key-00000000000000001", "InvalidKeyPair.NotFound", "key_pairs", "key_pair_id"),
    ):
        assert store.one("SELECT name FROM sqlite_master WHERE name=?", (table,)) is None
        with pytest.raises(CloudError) as excinfo:
            service.create(user, [resource_id], [{"Key": "k", "Value": "v"}])
        assert excinfo.value.code == code
        with store.transaction() as db:
            db.execute(f"CREATE TABLE {table} ({column} TEXT PRIMARY KEY, owner TEXT NOT NULL)")
            db.execute(f"INSERT INTO {table} VALUES (?, 'u')", (resource_id,))
        service.create(user, [resource_id], [{"Key": "k", "Value": "v"}])
    assert {(t["ResourceId"], t["ResourceType"]) for t in service.describe(user)} == {
        ("sg-00000000000000001", "security-group"),
        ("key-00000000000000001", "key-pair"),
    }
    with pytest.raises(CloudError) as excinfo:
        service.create(User("other", "2", False, True), ["sg-00000000000000001"], [{"Key": "k"}])
    assert excinfo.value.code == "InvalidGroup.NotFound"
