"""Stop/Start, instance status, types and attributes, and image registration, through boto3."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud, default_image, error_code, wait_states


@pytest.fixture
def instance(ec2: Any) -> Any:
    user_data = "#!/bin/sh\necho hello from user data\n"
    [inst] = ec2.run_instances(
        ImageId=default_image(ec2), MinCount=1, MaxCount=1, InstanceType="t2.nano", UserData=user_data
    )["Instances"]
    wait_states(ec2, [inst["InstanceId"]], "running")
    yield inst["InstanceId"]
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])


def test_stop_and_start(ec2: Any, sim_cloud: RunningCloud, instance: str) -> None:
    stopping = ec2.stop_instances(InstanceIds=[instance])["StoppingInstances"][0]
    assert stopping["PreviousState"]["Name"] == "running"
    assert stopping["CurrentState"]["Name"] in ("stopping", "stopped")
    wait_states(ec2, [instance], "stopped")
    with pytest.raises(ClientError) as excinfo:
        ec2.reboot_instances(InstanceIds=[instance])
    assert error_code(excinfo) == "IncorrectInstanceState"
    starting = ec2.start_instances(InstanceIds=[instance])["StartingInstances"][0]
    assert (starting["PreviousState"]["Name"], starting["CurrentState"]["Name"]) == ("stopped", "pending")
    wait_states(ec2, [instance], "running")
    import sqlite3

    events = [
        r[0]
        for r in sqlite3.connect(sim_cloud.layout.database).execute(
            "SELECT event FROM ledger WHERE instance_id=? ORDER BY seq", (instance,)
        )
    ]
    assert events == ["pending", "running", "stopping", "stopped", "pending", "running"]


def test_stop_refuses_a_terminated_instance(ec2: Any) -> None:
    [inst] = ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1, InstanceType="t2.nano")["Instances"]
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    wait_states(ec2, [inst["InstanceId"]], "terminated")
    for call in (ec2.stop_instances, ec2.start_instances):
        with pytest.raises(ClientError) as excinfo:
            call(InstanceIds=[inst["InstanceId"]])
        assert error_code(excinfo) == "IncorrectInstanceState"
    with pytest.raises(ClientError) as excinfo:
        ec2.stop_instances(InstanceIds=["i-0123456789abcdef0"])
    assert error_code(excinfo) == "InvalidInstanceID.NotFound"


def test_instance_status(ec2: Any, instance: str) -> None:

    def ok() -> list[dict[str, Any]] | None:
        found = ec2.describe_instance_status(InstanceIds=[instance])["InstanceStatuses"]
        return found if found and found[0]["InstanceStatus"]["Status"] == "ok" else None

    statuses = wait_until(ok, 10, what="the instance status ok", interval_s=0.3)
    assert statuses[0]["InstanceState"]["Name"] == "running"
    assert statuses[0]["SystemStatus"]["Details"][0]["Status"] == "passed"
    ec2.stop_instances(InstanceIds=[instance])
    wait_states(ec2, [instance], "stopped")
    assert ec2.describe_instance_status(InstanceIds=[instance])["InstanceStatuses"] == []
    everything = ec2.describe_instance_status(InstanceIds=[instance], IncludeAllInstances=True)["InstanceStatuses"]
    assert everything[0]["InstanceState"]["Name"] == "stopped"
    assert everything[0]["InstanceStatus"]["Status"] == "not-applicable"
    filtered = ec2.describe_instance_status(
        IncludeAllInstances=True, Filters=[{"Name": "instance-state-name", "Values": ["stopp*"]}]
    )["InstanceStatuses"]
    assert instance in [s["InstanceId"] for s in filtered]


def test_instance_types(ec2: Any) -> None:
    types = {t["InstanceType"]: t for t in ec2.describe_instance_types()["InstanceTypes"]}
    assert types["t2.micro"]["VCpuInfo"]["DefaultVCpus"] == 1
    assert types["t2.micro"]["MemoryInfo"]["SizeInMiB"] == 256
    two = ec2.describe_instance_types(Filters=[{"Name": "vcpu-info.default-vcpus", "Values": ["2"]}])["InstanceTypes"]
    assert two and all(t["VCpuInfo"]["DefaultVCpus"] == 2 for t in two)
    assert [t["InstanceType"] for t in ec2.describe_instance_types(InstanceTypes=["m1.small"])["InstanceTypes"]] == [
        "m1.small"
    ]
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_instance_types(InstanceTypes=["z9.enormous"])
    assert error_code(excinfo) == "InvalidInstanceType"


def test_instance_attributes(ec2: Any, instance: str) -> None:
    assert ec2.describe_instance_attribute(InstanceId=instance, Attribute="instanceType")["InstanceType"] == {
        "Value": "t2.nano"
    }
    user_data = ec2.describe_instance_attribute(InstanceId=instance, Attribute="userData")["UserData"]["Value"]
    assert base64.b64decode(user_data).decode() == "#!/bin/sh\necho hello from user data\n"
    kernel = ec2.describe_instance_attribute(InstanceId=instance, Attribute="kernel")["KernelId"]["Value"]
    assert kernel.startswith("aki-")
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_instance_attribute(InstanceId="i-0123456789abcdef0", Attribute="instanceType")
    assert error_code(excinfo) == "InvalidInstanceID.NotFound"


def _image_folder(tmp_path: Path, sim_cloud: RunningCloud) -> Path:
    folder = tmp_path / "image"
    folder.mkdir()
    (folder / "vmlinuz").write_bytes(b"a kernel " + uuid.uuid4().bytes)
    (folder / "initrd.img").write_bytes(b"a ramdisk " + uuid.uuid4().bytes)
    (folder / "disk.img").write_bytes(b"\0" * 4096)
    return folder


def test_register_describe_deregister(ec2: Any, sim_cloud: RunningCloud, tmp_path: Path) -> None:
    name = f"my-image-{uuid.uuid4().hex[:8]}"
    image_id = ec2.register_image(
        Name=name, ImageLocation=str(_image_folder(tmp_path, sim_cloud)), Description="registered by a test"
    )["ImageId"]
    [image] = ec2.describe_images(ImageIds=[image_id])["Images"]
    assert (image["Name"], image["State"], image["Public"]) == (name, "available", False)
    assert image["KernelId"].startswith("aki-") and image["RamdiskId"].startswith("ari-")
    attr = ec2.describe_image_attribute(ImageId=image_id, Attribute="description")
    assert attr["Description"]["Value"] == "registered by a test"
    assert ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")["LaunchPermissions"] == []
    with pytest.raises(ClientError) as excinfo:
        ec2.register_image(Name=name, ImageLocation=str(tmp_path / "image"))
    assert error_code(excinfo) == "InvalidAMIName.Duplicate"
    again = ec2.register_image(Name=name + "-parts", KernelId=image["KernelId"], RamdiskId=image["RamdiskId"])
    [inst] = ec2.run_instances(ImageId=again["ImageId"], MinCount=1, MaxCount=1, InstanceType="t2.nano")["Instances"]
    wait_states(ec2, [inst["InstanceId"]], "running")
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    ec2.deregister_image(ImageId=image_id)
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_images(ImageIds=[image_id])
    assert error_code(excinfo) == "InvalidAMIID.NotFound"
    with pytest.raises(ClientError) as excinfo:
        ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1)
    assert error_code(excinfo) == "InvalidAMIID.NotFound"
    ec2.deregister_image(ImageId=again["ImageId"])


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"Name": "no-location"}, "MissingParameter"),
        ({"Name": "bad*name!", "ImageLocation": "/"}, "InvalidAMIName.Malformed"),
        ({"Name": "good-name", "ImageLocation": "relative/path"}, "InvalidParameterValue"),
        ({"Name": "good-name", "ImageLocation": "/nonexistent/folder"}, "InvalidParameterValue"),
        ({"Name": "good-name", "ImageLocation": "/etc"}, "InvalidParameterValue"),
        ({"Name": "good-name", "KernelId": "aki-0123456789abcdef0"}, "InvalidAKIID.NotFound"),
    ],
)
def test_register_image_bad_input(ec2: Any, kwargs: dict[str, Any], code: str) -> None:
    before = {i["ImageId"] for i in ec2.describe_images()["Images"]}
    with pytest.raises(ClientError) as excinfo:
        ec2.register_image(**kwargs)
    assert error_code(excinfo) == code
    assert {i["ImageId"] for i in ec2.describe_images()["Images"]} == before


def test_image_attribute_errors(ec2: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_image_attribute(ImageId="ami-0123456789abcdef0", Attribute="description")
    assert error_code(excinfo) == "InvalidAMIID.NotFound"
    with pytest.raises(ClientError) as excinfo:
        ec2.deregister_image(ImageId="ami-0123456789abcdef0")
    assert error_code(excinfo) == "InvalidAMIID.NotFound"
