"""Two users, one cloud: neither sees nor changes the other's instances; the admin sees everyone's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.clouds import RunningCloud, wait_states


@pytest.fixture(scope="module")
def users(sim_cloud: RunningCloud) -> dict[str, tuple[Any, str]]:
    """alice and bob: (boto3 client, account id)."""
    found = {}
    for who in ("alice", "bob"):
        user, client = sim_cloud.create_user(who)
        found[who] = (client, user.user_id)
    return found


def visible_ids(ec2: Any) -> set[str]:
    return {i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}


def test_instances_are_private(users: dict[str, tuple[Any, str]], sim_cloud: RunningCloud) -> None:
    alice, alice_id = users["alice"]
    bob, _ = users["bob"]
    image = alice.describe_images(Filters=[{"Name": "name", "Values": ["cloudlab-default"]}])["Images"][0]["ImageId"]
    reservation = alice.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        InstanceType="t2.nano",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "owner", "Value": "alice"}]}],
    )
    instance = reservation["Instances"][0]["InstanceId"]
    assert reservation["OwnerId"] == alice_id
    wait_states(alice, [instance], "running")
    assert instance in visible_ids(alice)
    assert instance not in visible_ids(bob)
    attempts: list[Callable[[], Any]] = [
        lambda: bob.describe_instances(InstanceIds=[instance]),
        lambda: bob.terminate_instances(InstanceIds=[instance]),
        lambda: bob.reboot_instances(InstanceIds=[instance]),
        lambda: bob.stop_instances(InstanceIds=[instance]),
        lambda: bob.start_instances(InstanceIds=[instance]),
        lambda: bob.get_console_output(InstanceId=instance),
        lambda: bob.describe_instance_attribute(InstanceId=instance, Attribute="userData"),
        lambda: bob.describe_instance_status(InstanceIds=[instance]),
        lambda: bob.create_tags(Resources=[instance], Tags=[{"Key": "owner", "Value": "bob"}]),
        lambda: bob.delete_tags(Resources=[instance]),
    ]
    for attempt in attempts:
        with pytest.raises(ClientError) as excinfo:
            attempt()
        assert excinfo.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"
    bob_address = bob.allocate_address(Domain="vpc")
    try:
        with pytest.raises(ClientError) as excinfo:
            bob.associate_address(InstanceId=instance, AllocationId=bob_address["AllocationId"])
        assert excinfo.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"
    finally:
        bob.release_address(AllocationId=bob_address["AllocationId"])
    # nothing changed: still running, still alice's tag
    [inst] = alice.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"]
    assert inst["State"]["Name"] == "running"
    assert inst["Tags"] == [{"Key": "owner", "Value": "alice"}]
    # the admin sees it, with its owner's account id
    admin = sim_cloud.ec2()
    [res] = admin.describe_instances(InstanceIds=[instance])["Reservations"]
    assert res["OwnerId"] == alice_id
    assert admin.describe_instances(Filters=[{"Name": "owner-id", "Values": [alice_id]}])["Reservations"]
    alice.terminate_instances(InstanceIds=[instance])


def test_dry_run_tells_allowed_from_unauthorized(users: dict[str, tuple[Any, str]]) -> None:
    alice, _ = users["alice"]
    bob, _ = users["bob"]
    image = alice.describe_images(Filters=[{"Name": "name", "Values": ["cloudlab-default"]}])["Images"][0]["ImageId"]
    [inst] = alice.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t2.nano")["Instances"]
    try:
        for client, code in ((alice, "DryRunOperation"), (bob, "UnauthorizedOperation")):
            with pytest.raises(ClientError) as excinfo:
                client.terminate_instances(InstanceIds=[inst["InstanceId"]], DryRun=True)
            assert excinfo.value.response["Error"]["Code"] == code
        with pytest.raises(ClientError) as excinfo:
            bob.deregister_image(ImageId=image, DryRun=True)
        assert excinfo.value.response["Error"]["Code"] == "UnauthorizedOperation"
        with pytest.raises(ClientError) as excinfo:
            alice.terminate_instances(InstanceIds=["i-0123456789abcdef0"], DryRun=True)
        assert excinfo.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"
        state = alice.describe_instances(InstanceIds=[inst["InstanceId"]])["Reservations"][0]["Instances"][0]
        assert state["State"]["Name"] in ("pending", "running"), "a dry run changes nothing"
    finally:
        alice.terminate_instances(InstanceIds=[inst["InstanceId"]])
