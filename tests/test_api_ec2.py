"""The first EC2 slice, driven by unmodified boto3 against a cloud on libvirt's test driver.

The test driver's domains do not execute, so these tests cover the API, the controllers and the
state machine; tests/test_vm.py boots real guests.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.clouds import RunningCloud, default_image, error_code, wait_states


def instance_ids(ec2: Any) -> set[str]:
    """Every instance the caller can see (states may still move: other tests' instances terminate)."""
    return {i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}


def test_regions_and_zones(ec2: Any, sim_cloud: RunningCloud) -> None:
    regions = ec2.describe_regions()["Regions"]
    assert [r["RegionName"] for r in regions] == ["cloudlab-1"]
    assert "://" not in regions[0]["Endpoint"]  # a hostname, as EC2 answers
    zones = ec2.describe_availability_zones()["AvailabilityZones"]
    assert [(z["ZoneName"], z["State"], z["RegionName"]) for z in zones] == [("cloudlab-1a", "available", "cloudlab-1")]
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_availability_zones(ZoneNames=["mars-1a"])
    assert error_code(excinfo) == "InvalidParameterValue"


def test_default_image_is_registered(ec2: Any) -> None:
    image = ec2.describe_images(ImageIds=[default_image(ec2)])["Images"][0]
    assert image["Name"] == "cloudlab-default"
    assert image["State"] == "available"
    assert image["KernelId"].startswith("aki-") and image["RamdiskId"].startswith("ari-")
    kinds = {i["ImageType"] for i in ec2.describe_images()["Images"]}
    assert kinds == {"machine", "kernel", "ramdisk"}
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_images(ImageIds=["ami-0123456789abcdef0"])
    assert error_code(excinfo) == "InvalidAMIID.NotFound"


def test_instance_lifecycle(ec2: Any, sim_cloud: RunningCloud) -> None:
    reservation = ec2.run_instances(ImageId=default_image(ec2), MinCount=2, MaxCount=2, InstanceType="t2.micro")
    assert reservation["ReservationId"].startswith("r-")
    ids = [i["InstanceId"] for i in reservation["Instances"]]
    assert len(ids) == 2 and all(i.startswith("i-") and len(i) == 19 for i in ids)
    assert {i["State"]["Name"] for i in reservation["Instances"]} == {"pending"}
    found = wait_states(ec2, ids, "running")
    for inst in found.values():
        assert inst["InstanceType"] == "t2.micro"
        assert inst["Placement"]["AvailabilityZone"] == "cloudlab-1a"
        assert inst["Placement"]["HostId"].startswith("node-")
        assert inst["LaunchTime"].year >= 2024
    # filters and the boto3 waiter (which filters by state) work
    running = ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["running"]}, {"Name": "instance-id", "Values": ids}]
    )
    assert sorted(i["InstanceId"] for r in running["Reservations"] for i in r["Instances"]) == sorted(ids)
    ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig={"Delay": 1, "MaxAttempts": 5})
    ec2.reboot_instances(InstanceIds=ids)
    assert ec2.get_console_output(InstanceId=ids[0])["InstanceId"] == ids[0]
    answer = ec2.terminate_instances(InstanceIds=ids)["TerminatingInstances"]
    assert {a["PreviousState"]["Name"] for a in answer} == {"running"}
    assert {a["CurrentState"]["Name"] for a in answer} <= {"shutting-down", "terminated"}
    final = wait_states(ec2, ids, "terminated")
    assert all(i["StateReason"]["Code"] == "Client.UserInitiatedShutdown" for i in final.values())
    again = ec2.terminate_instances(InstanceIds=ids)["TerminatingInstances"]
    assert {(a["PreviousState"]["Name"], a["CurrentState"]["Name"]) for a in again} == {("terminated", "terminated")}


def test_pagination(ec2: Any) -> None:
    ids = [
        i["InstanceId"]
        for i in ec2.run_instances(ImageId=default_image(ec2), MinCount=7, MaxCount=7, InstanceType="t2.nano")[
            "Instances"
        ]
    ]
    try:
        seen: list[str] = []
        pages = 0
        for page in ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-id", "Values": ids}], PaginationConfig={"PageSize": 5}
        ):
            pages += 1
            seen += [i["InstanceId"] for r in page["Reservations"] for i in r["Instances"]]
        assert pages == 2 and sorted(seen) == sorted(ids)
    finally:
        ec2.terminate_instances(InstanceIds=ids)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"ImageId": "ami-0123456789abcdef0", "MinCount": 1, "MaxCount": 1}, "InvalidAMIID.NotFound"),
        ({"ImageId": "not-an-image", "MinCount": 1, "MaxCount": 1}, "InvalidAMIID.Malformed"),
        ({"MinCount": 1, "MaxCount": 1, "InstanceType": "z9.enormous"}, "InvalidParameterValue"),
        ({"MinCount": 3, "MaxCount": 2}, "InvalidParameterValue"),
        ({"MinCount": 0, "MaxCount": 1}, "InvalidParameterValue"),
        ({"MinCount": 100, "MaxCount": 100, "InstanceType": "m1.xlarge"}, "InsufficientInstanceCapacity"),
        ({"MinCount": 1, "MaxCount": 1, "Placement": {"AvailabilityZone": "mars-1a"}}, "InvalidParameterValue"),
    ],
)
def test_run_instances_bad_input(ec2: Any, kwargs: dict[str, Any], code: str) -> None:
    before = instance_ids(ec2)
    kwargs = {"ImageId": default_image(ec2)} | kwargs
    with pytest.raises(ClientError) as excinfo:
        ec2.run_instances(**kwargs)
    assert error_code(excinfo) == code
    assert excinfo.value.response["Error"]["Message"]
    assert instance_ids(ec2) == before  # nothing half-created


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda ec2: ec2.describe_instances(InstanceIds=["i-0123456789abcdef0"]), "InvalidInstanceID.NotFound"),
        (lambda ec2: ec2.describe_instances(InstanceIds=["bogus"]), "InvalidInstanceID.Malformed"),
        (lambda ec2: ec2.terminate_instances(InstanceIds=["i-0123456789abcdef0"]), "InvalidInstanceID.NotFound"),
        (lambda ec2: ec2.reboot_instances(InstanceIds=["i-0123456789abcdef0"]), "InvalidInstanceID.NotFound"),
        (lambda ec2: ec2.get_console_output(InstanceId="i-0123456789abcdef0"), "InvalidInstanceID.NotFound"),
        (
            lambda ec2: ec2.describe_instances(Filters=[{"Name": "no-such-filter", "Values": ["x"]}]),
            "InvalidParameterValue",
        ),
        (lambda ec2: ec2.describe_instances(MaxResults=2), "InvalidParameterValue"),
        (lambda ec2: ec2.describe_instances(NextToken="!!garbage!!"), "InvalidNextToken"),
        (lambda ec2: ec2.describe_regions(RegionNames=["us-east-1"]), "InvalidParameterValue"),
        (lambda ec2: ec2.describe_vpn_gateways(), "UnsupportedOperation"),
    ],
)
def test_errors_have_ec2_codes(ec2: Any, call: Any, code: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        call(ec2)
    assert error_code(excinfo) == code


def test_dry_run(ec2: Any) -> None:
    before = instance_ids(ec2)
    with pytest.raises(ClientError) as excinfo:
        ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1, DryRun=True)
    assert error_code(excinfo) == "DryRunOperation"
    assert instance_ids(ec2) == before


def test_authentication_is_required(sim_cloud: RunningCloud) -> None:
    creds = sim_cloud.credentials()
    secret = creds["secret_key"]
    wrong_secret = sim_cloud.ec2(aws_secret_access_key=secret[:-1] + ("y" if secret.endswith("x") else "x"))
    with pytest.raises(ClientError) as excinfo:
        wrong_secret.describe_instances()
    assert error_code(excinfo) == "SignatureDoesNotMatch"
    unknown_key = sim_cloud.ec2(aws_access_key_id="AKIAUNKNOWNUNKNOWN00")
    with pytest.raises(ClientError) as excinfo:
        unknown_key.describe_instances()
    assert error_code(excinfo) == "AuthFailure"


def test_unknown_action_and_raw_garbage(sim_cloud: RunningCloud) -> None:
    import urllib.error
    import urllib.request

    for body in (b"Action=FlyToTheMoon&Version=2016-11-15", b"\xff\xfe\x00garbage", b""):
        request = urllib.request.Request(
            sim_cloud.url, data=body, method="POST", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            urllib.request.urlopen(request, timeout=5)
        text = excinfo.value.read().decode()
        assert 400 <= excinfo.value.code < 500
        assert "<Response><Errors><Error><Code>" in text and "<RequestID>" in text


def test_client_token_is_idempotent(ec2: Any) -> None:
    first = ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1, ClientToken="same-token-1")
    second = ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1, ClientToken="same-token-1")
    assert first["ReservationId"] == second["ReservationId"]
    assert [i["InstanceId"] for i in first["Instances"]] == [i["InstanceId"] for i in second["Instances"]]
    ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in first["Instances"]])


def test_aws_env_contract(sim_cloud: RunningCloud, monkeypatch: pytest.MonkeyPatch) -> None:
    """`eval "$(cloudlab env)"` is all boto3 needs."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "cloudlab.cli", "--state", str(sim_cloud.layout.root), "env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    env = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    assert set(env) >= {"AWS_ENDPOINT_URL_EC2", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    assert boto3.client("ec2").describe_regions()["Regions"][0]["RegionName"] == "cloudlab-1"


def test_pages_and_record_filters_are_enriched_like_a_full_describe(ec2: Any) -> None:
    # Record filters (instance-id, state, type, ...) and pages are applied before the enrichment; what each
    # page or filtered answer says of an instance must be what the full describe says of it.
    reservation = ec2.run_instances(ImageId=default_image(ec2), MinCount=7, MaxCount=7, InstanceType="t2.micro")
    ids = [i["InstanceId"] for i in reservation["Instances"]]
    ec2.create_tags(Resources=ids[:3], Tags=[{"Key": "Name", "Value": "paged"}])
    wait_states(ec2, ids, "running")
    full = {i["InstanceId"]: i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]}
    mine = [{"Name": "instance-id", "Values": ids}, {"Name": "instance-state-name", "Values": ["running"]}]
    paged = [
        i
        for page in ec2.get_paginator("describe_instances").paginate(Filters=mine, PaginationConfig={"PageSize": 5})
        for r in page["Reservations"]
        for i in r["Instances"]
    ]
    assert sorted(i["InstanceId"] for i in paged) == sorted(ids)
    for item in paged:
        for key in ("SecurityGroups", "Tags", "PrivateIpAddress", "BlockDeviceMappings", "RootDeviceType"):
            assert item.get(key) == full[item["InstanceId"]].get(key), key
    assert all(full[i]["Tags"] == [{"Key": "Name", "Value": "paged"}] for i in ids[:3])
    # a record filter with an enriched one: both hold
    both = mine + [{"Name": "tag:Name", "Values": ["paged"]}]
    found = [i["InstanceId"] for r in ec2.describe_instances(Filters=both)["Reservations"] for i in r["Instances"]]
    assert sorted(found) == sorted(ids[:3])
    [one] = [i for r in ec2.describe_instances(Filters=mine[:1] + [{"Name": "instance-id", "Values": [ids[4]]}])[
        "Reservations"] for i in r["Instances"]]  # fmt: skip
    assert one == full[ids[4]] | {"State": one["State"]}
    ec2.terminate_instances(InstanceIds=ids)
