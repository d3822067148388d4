"""Elastic addresses through unmodified boto3, plus the address service's rules on a store of its own.

The API tests share the session's simulated cloud with other modules, so they use users of their
own (the per-user limit is 5) and give back every address and instance they take.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudlab.clc.addresses import Addresses
from cloudlab.clc.store import Store
from cloudlab.clc.tags import Tags
from cloudlab.clc.users import User
from tests.clouds import RunningCloud, default_image, error_code

POOL = ipaddress.ip_network("198.51.100.0/24")


def run_one(ec2: Any) -> str:
    answer = ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1, InstanceType="t2.nano")
    return answer["Instances"][0]["InstanceId"]


def addresses(ec2: Any, **kwargs: Any) -> list[dict[str, Any]]:
    return ec2.describe_addresses(**kwargs)["Addresses"]


@pytest.fixture(scope="module")
def alice(sim_cloud: RunningCloud) -> Iterator[Any]:
    ec2 = sim_cloud.new_user("eip-alice")
    yield ec2
    release_all(ec2)


@pytest.fixture(scope="module")
def bob(sim_cloud: RunningCloud) -> Iterator[Any]:
    ec2 = sim_cloud.new_user("eip-bob")
    yield ec2
    release_all(ec2)


def release_all(ec2: Any, *only: dict[str, Any]) -> None:
    """Disassociate and release the user's addresses (or just ``only`` of them)."""
    wanted = {a["AllocationId"] for a in only}
    for address in addresses(ec2):
        if wanted and address["AllocationId"] not in wanted:
            continue
        if address.get("AssociationId"):
            ec2.disassociate_address(AssociationId=address["AssociationId"])
        ec2.release_address(AllocationId=address["AllocationId"])


@pytest.fixture(scope="module")
def instances(alice: Any, bob: Any) -> Iterator[dict[str, list[str]]]:
    """Two instances of alice's and one of bob's, terminated at the end."""
    owned = {"alice": [run_one(alice), run_one(alice)], "bob": [run_one(bob)]}
    yield owned
    alice.terminate_instances(InstanceIds=owned["alice"])
    bob.terminate_instances(InstanceIds=owned["bob"])


# -- allocate, describe, release ------------------------------------------------------------------------------


def test_allocate_describe_release(alice: Any) -> None:
    first = alice.allocate_address(Domain="vpc")
    assert first["Domain"] == "vpc"
    assert first["AllocationId"].startswith("eipalloc-") and len(first["AllocationId"]) == len("eipalloc-") + 17
    ip = ipaddress.ip_address(first["PublicIp"])
    assert ip in POOL and ip not in (POOL.network_address, POOL.broadcast_address)
    second = alice.allocate_address(Domain="standard")  # EC2-Classic style, released by its address
    assert second["Domain"] == "standard"
    try:
        listed = addresses(alice)
        assert [a["AllocationId"] for a in listed] == sorted(
            [first["AllocationId"], second["AllocationId"]],
            key=lambda i: ipaddress.ip_address(next(a["PublicIp"] for a in listed if a["AllocationId"] == i)),
        )
        by_id = addresses(alice, AllocationIds=[first["AllocationId"]])
        assert by_id == [
            {
                "PublicIp": first["PublicIp"],
                "AllocationId": first["AllocationId"],
                "Domain": "vpc",
                "NetworkBorderGroup": "cloudlab-1",
            }
        ]
        assert addresses(alice, PublicIps=[second["PublicIp"]])[0]["AllocationId"] == second["AllocationId"]
    finally:
        alice.release_address(AllocationId=first["AllocationId"])
        alice.release_address(PublicIp=second["PublicIp"])
    assert addresses(alice) == []
    with pytest.raises(ClientError) as excinfo:
        addresses(alice, AllocationIds=[first["AllocationId"]])
    assert error_code(excinfo) == "InvalidAllocationID.NotFound"
    with pytest.raises(ClientError) as excinfo:
        alice.release_address(AllocationId=first["AllocationId"])
    assert error_code(excinfo) == "InvalidAllocationID.NotFound"


def test_lowest_free_address_is_given_first(alice: Any) -> None:
    low = alice.allocate_address()
    high = alice.allocate_address()
    assert ipaddress.ip_address(low["PublicIp"]) < ipaddress.ip_address(high["PublicIp"])
    alice.release_address(AllocationId=low["AllocationId"])
    again = alice.allocate_address()
    assert again["PublicIp"] == low["PublicIp"] and again["AllocationId"] != low["AllocationId"]
    for address in (high, again):
        alice.release_address(AllocationId=address["AllocationId"])


def test_per_user_limit(sim_cloud: RunningCloud) -> None:
    ec2 = sim_cloud.new_user("eip-limit")
    taken = [ec2.allocate_address()["AllocationId"] for _ in range(5)]
    try:
        with pytest.raises(ClientError) as excinfo:
            ec2.allocate_address()
        assert error_code(excinfo) == "AddressLimitExceeded"
        assert len(addresses(ec2)) == 5
    finally:
        for allocation_id in taken:
            ec2.release_address(AllocationId=allocation_id)
    ec2.release_address(AllocationId=ec2.allocate_address()["AllocationId"])  # room again


def test_tag_specifications_and_filters(alice: Any) -> None:
    web = alice.allocate_address(
        TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": [{"Key": "Name", "Value": "web-1"}]}]
    )
    db = alice.allocate_address(Domain="standard")
    alice.create_tags(Resources=[db["AllocationId"]], Tags=[{"Key": "Name", "Value": "db-1"}, {"Key": "tier"}])
    try:
        listed = {a["AllocationId"]: a for a in addresses(alice)}
        assert listed[web["AllocationId"]]["Tags"] == [{"Key": "Name", "Value": "web-1"}]
        assert sorted(t["Key"] for t in listed[db["AllocationId"]]["Tags"]) == ["Name", "tier"]

        def ids(*filters: tuple[str, list[str]]) -> set[str]:
            found = addresses(alice, Filters=[{"Name": n, "Values": v} for n, v in filters])
            return {a["AllocationId"] for a in found}

        both = {web["AllocationId"], db["AllocationId"]}
        assert ids(("tag:Name", ["web-*"])) == {web["AllocationId"]}
        assert ids(("tag:Name", ["web-?", "db-?"])) == both
        assert ids(("tag-key", ["tier"])) == {db["AllocationId"]}
        assert ids(("domain", ["standard"])) == {db["AllocationId"]}
        assert ids(("public-ip", ["198.51.100.*"])) == both
        assert ids(("public-ip", [web["PublicIp"]])) == {web["AllocationId"]}
        assert ids(("allocation-id", ["eipalloc-*"]), ("domain", ["vpc"])) == {web["AllocationId"]}
        assert ids(("instance-id", ["i-*"])) == set()
        with pytest.raises(ClientError) as excinfo:
            ids(("colour", ["blue"]))
        assert error_code(excinfo) == "InvalidParameterValue"
        # a specification for another resource type allocates nothing
        with pytest.raises(ClientError) as excinfo:
            alice.allocate_address(TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "a"}]}])
        assert error_code(excinfo) == "InvalidParameterValue"
        assert set(listed) == {a["AllocationId"] for a in addresses(alice)}
    finally:
        alice.release_address(AllocationId=web["AllocationId"])
        alice.release_address(AllocationId=db["AllocationId"])
    tagged = alice.describe_tags(Filters=[{"Name": "resource-id", "Values": [web["AllocationId"]]}])["Tags"]
    assert tagged == []  # released with its address


# -- associate, disassociate ----------------------------------------------------------------------------------


def test_associate_and_disassociate(alice: Any, instances: dict[str, list[str]]) -> None:
    one, two = instances["alice"]
    address = alice.allocate_address()
    other = alice.allocate_address()
    try:
        association = alice.associate_address(AllocationId=address["AllocationId"], InstanceId=one)["AssociationId"]
        assert association.startswith("eipassoc-")
        [shown] = addresses(alice, AllocationIds=[address["AllocationId"]])
        assert (shown["InstanceId"], shown["AssociationId"]) == (one, association)
        assert addresses(alice, Filters=[{"Name": "instance-id", "Values": [one]}]) == [shown]
        assert addresses(alice, Filters=[{"Name": "association-id", "Values": ["eipassoc-*"]}]) == [shown]
        # associating again with the same instance changes nothing
        again = alice.associate_address(AllocationId=address["AllocationId"], InstanceId=one)["AssociationId"]
        assert again == association
        # an associated address cannot be released
        with pytest.raises(ClientError) as excinfo:
            alice.release_address(AllocationId=address["AllocationId"])
        assert error_code(excinfo) == "InvalidIPAddress.InUse"
        # moving it to another instance needs AllowReassociation
        with pytest.raises(ClientError) as excinfo:
            alice.associate_address(AllocationId=address["AllocationId"], InstanceId=two)
        assert error_code(excinfo) == "Resource.AlreadyAssociated"
        assert addresses(alice, AllocationIds=[address["AllocationId"]]) == [shown]
        moved = alice.associate_address(AllocationId=address["AllocationId"], InstanceId=two, AllowReassociation=True)
        [shown] = addresses(alice, AllocationIds=[address["AllocationId"]])
        assert (shown["InstanceId"], shown["AssociationId"]) == (two, moved["AssociationId"])
        # an instance that has an address gets the new one; the old one is disassociated
        by_ip = alice.associate_address(PublicIp=other["PublicIp"], InstanceId=two)["AssociationId"]
        state = {a["AllocationId"]: (a.get("InstanceId"), a.get("AssociationId")) for a in addresses(alice)}
        assert state[address["AllocationId"]] == (None, None)
        assert state[other["AllocationId"]] == (two, by_ip)
        # the old association id is gone
        with pytest.raises(ClientError) as excinfo:
            alice.disassociate_address(AssociationId=moved["AssociationId"])
        assert error_code(excinfo) == "InvalidAssociationID.NotFound"
        alice.disassociate_address(AssociationId=by_ip)
        assert "InstanceId" not in addresses(alice, AllocationIds=[other["AllocationId"]])[0]
        # by public address
        alice.associate_address(PublicIp=address["PublicIp"], InstanceId=one)
        alice.disassociate_address(PublicIp=address["PublicIp"])
        assert "AssociationId" not in addresses(alice, PublicIps=[address["PublicIp"]])[0]
    finally:
        release_all(alice, address, other)


def test_termination_disassociates(alice: Any, sim_cloud: RunningCloud) -> None:
    instance_id = run_one(alice)
    address = alice.allocate_address()
    try:
        association = alice.associate_address(AllocationId=address["AllocationId"], InstanceId=instance_id)
        alice.terminate_instances(InstanceIds=[instance_id])
        [shown] = addresses(alice, AllocationIds=[address["AllocationId"]])
        assert "InstanceId" not in shown and "AssociationId" not in shown
        with pytest.raises(ClientError) as excinfo:
            alice.disassociate_address(AssociationId=association["AssociationId"])
        assert error_code(excinfo) == "InvalidAssociationID.NotFound"
        with pytest.raises(ClientError) as excinfo:
            alice.associate_address(AllocationId=address["AllocationId"], InstanceId=instance_id)
        assert error_code(excinfo) == "IncorrectInstanceState"
    finally:
        alice.release_address(AllocationId=address["AllocationId"])  # free again, without a disassociate


@pytest.fixture(scope="module")
def spare(alice: Any) -> Iterator[dict[str, Any]]:
    """An address of alice's that the error tests must leave as it is."""
    address = alice.allocate_address()
    before = addresses(alice, AllocationIds=[address["AllocationId"]])
    yield address
    assert addresses(alice, AllocationIds=[address["AllocationId"]]) == before  # no failed call changed it
    alice.release_address(AllocationId=address["AllocationId"])


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda ec2, _: ec2.allocate_address(Domain="galactic"), "InvalidParameterValue"),
        (lambda ec2, _: ec2.allocate_address(Address="203.0.113.7"), "InvalidParameterValue"),
        (lambda ec2, _: ec2.allocate_address(Address="198.51.100.255"), "InvalidParameterValue"),
        (lambda ec2, _: ec2.allocate_address(Address="not-an-address"), "InvalidParameterValue"),
        (lambda ec2, _: ec2.release_address(), "MissingParameter"),
        (
            lambda ec2, _: ec2.release_address(AllocationId="eipalloc-0123456789abcdef0", PublicIp="198.51.100.9"),
            "InvalidParameterCombination",
        ),
        (lambda ec2, _: ec2.release_address(AllocationId="eipalloc-0123456789abcdef0"), "InvalidAllocationID.NotFound"),
        (lambda ec2, _: ec2.release_address(PublicIp="198.51.100.250"), "InvalidAddress.NotFound"),
        (lambda ec2, _: ec2.describe_addresses(PublicIps=["198.51.100.250"]), "InvalidAddress.NotFound"),
        (
            lambda ec2, _: ec2.describe_addresses(AllocationIds=["eipalloc-0123456789abcdef0"]),
            "InvalidAllocationID.NotFound",
        ),
        (lambda ec2, a: ec2.associate_address(AllocationId=a["AllocationId"]), "MissingParameter"),
        (lambda ec2, a: ec2.associate_address(InstanceId="i-0123456789abcdef0"), "MissingParameter"),
        (
            lambda ec2, a: ec2.associate_address(AllocationId=a["AllocationId"], InstanceId="i-0123456789abcdef0"),
            "InvalidInstanceID.NotFound",
        ),
        (
            lambda ec2, a: ec2.associate_address(AllocationId=a["AllocationId"], InstanceId="bogus"),
            "InvalidInstanceID.Malformed",
        ),
        (
            lambda ec2, a: ec2.associate_address(
                AllocationId=a["AllocationId"], PublicIp=a["PublicIp"], InstanceId="i-0123456789abcdef0"
            ),
            "InvalidParameterCombination",
        ),
        (
            lambda ec2, a: ec2.associate_address(
                AllocationId=a["AllocationId"], NetworkInterfaceId="eni-0123456789abcdef0"
            ),
            "InvalidNetworkInterfaceID.NotFound",
        ),
        (
            lambda ec2, a: ec2.associate_address(AllocationId=a["AllocationId"], NetworkInterfaceId="eni-bogus"),
            "InvalidNetworkInterfaceId.Malformed",
        ),
        (
            lambda ec2, a: ec2.associate_address(
                AllocationId=a["AllocationId"],
                NetworkInterfaceId="eni-0123456789abcdef0",
                InstanceId="i-0123456789abcdef0",
            ),
            "InvalidParameterCombination",
        ),
        (
            lambda ec2, _: ec2.associate_address(
                AllocationId="eipalloc-0123456789abcdef0", InstanceId="i-0123456789abcdef0"
            ),
            "InvalidAllocationID.NotFound",
        ),
        (lambda ec2, _: ec2.disassociate_address(), "MissingParameter"),
        (
            lambda ec2, _: ec2.disassociate_address(AssociationId="eipassoc-0123456789abcdef0"),
            "InvalidAssociationID.NotFound",
        ),
        (lambda ec2, _: ec2.disassociate_address(PublicIp="198.51.100.250"), "InvalidAddress.NotFound"),
    ],
)
def test_errors_have_ec2_codes(alice: Any, spare: dict[str, Any], call: Any, code: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        call(alice, spare)
    assert error_code(excinfo) == code, excinfo.value.response["Error"]
    assert excinfo.value.response["Error"]["Message"]


# -- isolation ----------------------------------------------------------------------------------------------------


def test_users_cannot_touch_each_others_addresses(
    alice: Any, bob: Any, sim_cloud: RunningCloud, instances: dict[str, list[str]]
) -> None:
    mine = alice.allocate_address()
    theirs = bob.allocate_address()
    try:
        association = alice.associate_address(AllocationId=mine["AllocationId"], InstanceId=instances["alice"][0])
        alice.create_tags(Resources=[mine["AllocationId"]], Tags=[{"Key": "owner", "Value": "alice"}])
        before = addresses(alice)
        assert [a["AllocationId"] for a in addresses(bob)] == [theirs["AllocationId"]]
        attempts = [
            (lambda: bob.describe_addresses(AllocationIds=[mine["AllocationId"]]), "InvalidAllocationID.NotFound"),
            (lambda: bob.describe_addresses(PublicIps=[mine["PublicIp"]]), "InvalidAddress.NotFound"),
            (lambda: bob.release_address(AllocationId=mine["AllocationId"]), "InvalidAllocationID.NotFound"),
            (lambda: bob.release_address(PublicIp=mine["PublicIp"]), "InvalidAddress.NotFound"),
            (
                lambda: bob.associate_address(
                    AllocationId=mine["AllocationId"], InstanceId=instances["bob"][0], AllowReassociation=True
                ),
                "InvalidAllocationID.NotFound",
            ),
            (
                lambda: bob.associate_address(AllocationId=theirs["AllocationId"], InstanceId=instances["alice"][1]),
                "InvalidInstanceID.NotFound",
            ),
            (
                lambda: bob.disassociate_address(AssociationId=association["AssociationId"]),
                "InvalidAssociationID.NotFound",
            ),
            (lambda: bob.disassociate_address(PublicIp=mine["PublicIp"]), "InvalidAddress.NotFound"),
            (
                lambda: bob.create_tags(Resources=[mine["AllocationId"]], Tags=[{"Key": "owner", "Value": "bob"}]),
                "InvalidAllocationID.NotFound",
            ),
            (lambda: bob.delete_tags(Resources=[mine["AllocationId"]]), "InvalidAllocationID.NotFound"),
        ]
        for attempt, code in attempts:
            with pytest.raises(ClientError) as excinfo:
                attempt()
            assert error_code(excinfo) == code
        assert bob.describe_tags(Filters=[{"Name": "resource-id", "Values": [mine["AllocationId"]]}])["Tags"] == []
        assert addresses(alice) == before
        assert "InstanceId" not in addresses(bob)[0]
        # the admin sees both
        admin_view = {a["AllocationId"] for a in addresses(sim_cloud.ec2())}
        assert {mine["AllocationId"], theirs["AllocationId"]} <= admin_view
    finally:
        release_all(alice, mine)
        release_all(bob, theirs)


# -- the service's rules, on a store of its own ------------------------------------------------------------------


class FakeCloud:
    """Just what the address and tag services use of the cloud controller."""

    def __init__(self, store: Store, public_pool: str) -> None:
        self.store = store
        self.public_pool = public_pool
        self._services: dict[type, Any] = {}

    def service(self, cls: type) -> Any:
        if cls not in self._services:
            self._services[cls] = cls(self)
        return self._services[cls]


def add_instance(store: Store, instance_id: str, owner: str, state: str = "running") -> None:
    with store.transaction() as db:
        db.execute(
            "INSERT INTO instances (instance_id, reservation_id, owner, image_id, instance_type, vcpus, memory_mb,"
            " cluster, zone, state, launch_time, updated) VALUES (?, 'r-0', ?, 'ami-0', 't2.nano', 1, 512, 'c', 'z',"
            " ?, 0, 0)",
            (instance_id, owner, state),
        )


@pytest.fixture
def small_cloud(tmp_path: Path) -> Iterator[FakeCloud]:
    store = Store(tmp_path / "clc.sqlite")
    yield FakeCloud(store, "192.0.2.0/29")  # 6 usable addresses
    store.close()


def test_pool_exhaustion_and_network_broadcast(small_cloud: FakeCloud) -> None:
    service = small_cloud.service(Addresses)
    user = User("u", "000000000001", False, True)
    store = small_cloud.store
    with store.transaction() as db:
        db.execute("INSERT INTO quotas (user_name, resource, quota) VALUES ('u', 'addresses', 100)")
    got = [service.allocate(user)["public_ip"] for _ in range(6)]
    assert got == [f"192.0.2.{n}" for n in range(1, 7)]
    with pytest.raises(Exception) as excinfo:
        service.allocate(user)
    assert excinfo.value.code == "AddressLimitExceeded"
    service.release(user, public_ip="192.0.2.4")
    assert service.allocate(user, address="192.0.2.4")["public_ip"] == "192.0.2.4"
    with pytest.raises(Exception) as excinfo:
        service.allocate(user, address="192.0.2.4")
    assert excinfo.value.code == "InvalidIPAddress.InUse"


def test_termination_hook_and_public_ips_of(small_cloud: FakeCloud) -> None:
    store = small_cloud.store
    service = small_cloud.service(Addresses)
    user = User("u", "000000000001", False, True)
    add_instance(store, "i-00000000000000001", "u")
    add_instance(store, "i-00000000000000002", "u")
    add_instance(store, "i-00000000000000003", "u", state="stopped")
    a = service.allocate(user)
    b = service.allocate(user)
    service.associate(user, "i-00000000000000001", allocation_id=a["allocation_id"])
    service.associate(user, "i-00000000000000002", allocation_id=b["allocation_id"])
    with pytest.raises(Exception) as excinfo:
        service.associate(user, "i-00000000000000003", allocation_id=b["allocation_id"], allow_reassociation=True)
    assert excinfo.value.code == "IncorrectInstanceState"
    ids = ["i-00000000000000001", "i-00000000000000002", "i-00000000000000003"]
    assert service.public_ips_of(ids) == {
        "i-00000000000000001": a["public_ip"],
        "i-00000000000000002": b["public_ip"],
    }
    # the controller's hook, in its own transaction
    with store.transaction() as db:
        db.execute("UPDATE instances SET state='terminated' WHERE instance_id='i-00000000000000001'")
        Addresses.on_instance_terminated(db, "i-00000000000000001")
    # no hook: the read treats the association as gone, and the next write clears it
    with store.transaction() as db:
        db.execute("UPDATE instances SET state='shutting-down' WHERE instance_id='i-00000000000000002'")
    assert service.public_ips_of(ids) == {}
    assert {r["instance_id"] for r in service.describe(user)} == {None}
    assert store.one("SELECT COUNT(*) FROM addresses WHERE instance_id IS NOT NULL")[0] == 1
    service.release(user, allocation_id=b["allocation_id"])
    assert store.one("SELECT COUNT(*) FROM addresses WHERE instance_id IS NOT NULL")[0] == 0
    # the hook is harmless where no address table exists yet
    bare = Store(store.path.with_name("bare.sqlite"))
    try:
        with bare.transaction() as db:
            Addresses.on_instance_terminated(db, "i-00000000000000001")
            Tags.remove_resource(db, "i-00000000000000001")
    finally:
        bare.close()
