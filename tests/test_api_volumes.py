"""EBS volumes and snapshots through boto3 on the shared simulated cloud (libvirt's test driver).

The storage controller is real here too: each volume is a qcow2 file made by qemu-img in the SC's
folder, each snapshot a copy of it (the tests look at those files); only the nodes' domains do not
execute, so an attachment goes into the domain's definition instead of a running guest (the bytes a
guest sees are tested with real VMs in ``test_volumes_vm.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudlab.clc.store import Store
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud, default_image, error_code


def zone_of(ec2: Any) -> str:
    return ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]


def volume(ec2: Any, volume_id: str) -> dict[str, Any]:
    return ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]


def wait_volume(ec2: Any, volume_id: str, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        v = volume(ec2, volume_id)
        return v if check(v) else None

    return wait_until(found, 30, what=what, interval_s=0.1)


def new_volume(ec2: Any, size: int = 1, **options: Any) -> str:
    volume_id = ec2.create_volume(Size=size, AvailabilityZone=zone_of(ec2), **options)["VolumeId"]
    wait_volume(ec2, volume_id, lambda v: v["State"] == "available", "the volume to be available")
    return volume_id


def running_instance(ec2: Any) -> str:
    instance_id = ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1, InstanceType="t2.nano")[
        "Instances"
    ][0]["InstanceId"]

    def running() -> bool:
        reservation = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
        return reservation["Instances"][0]["State"]["Name"] == "running"

    wait_until(running, 30, what=f"{instance_id} to run", interval_s=0.1)
    return instance_id


def sc_folder(cloud: RunningCloud) -> Path:
    return cloud.layout.root / "sc" / "cluster1"


def qemu_info(path: Path) -> dict[str, Any]:
    done = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def users(sim_cloud: RunningCloud) -> dict[str, Any]:
    return {who: sim_cloud.create_user(f"vol{who}")[1] for who in ("alice", "bob")}


def test_create_describe_delete_with_tags_filters_and_pages(sim_cloud: RunningCloud, users: dict[str, Any]) -> None:
    alice = users["alice"]
    made = alice.create_volume(
        Size=2,
        AvailabilityZone=zone_of(alice),
        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "dataset", "Value": "genomes"}]}],
    )
    assert made["State"] == "creating" and made["Size"] == 2 and made["Attachments"] == []
    volume_id = made["VolumeId"]
    shown = wait_volume(alice, volume_id, lambda v: v["State"] == "available", "available")
    assert shown["Tags"] == [{"Key": "dataset", "Value": "genomes"}]
    info = qemu_info(sc_folder(sim_cloud) / "volumes" / f"{volume_id}.qcow2")
    assert info["format"] == "qcow2" and info["virtual-size"] == 2 * 1024**3
    others = [new_volume(alice) for _ in range(5)]
    tagged = alice.describe_volumes(Filters=[{"Name": "tag:dataset", "Values": ["genomes"]}])["Volumes"]
    assert [v["VolumeId"] for v in tagged] == [volume_id]
    by_size = alice.describe_volumes(Filters=[{"Name": "size", "Values": ["2"]}])["Volumes"]
    assert {v["VolumeId"] for v in by_size} == {volume_id}
    pages = list(alice.get_paginator("describe_volumes").paginate(PaginationConfig={"PageSize": 5}))
    assert len(pages) == 2
    assert sorted(v["VolumeId"] for p in pages for v in p["Volumes"]) == sorted([volume_id, *others])
    alice.delete_volume(VolumeId=volume_id)
    wait_until(
        lambda: volume_id not in {v["VolumeId"] for v in alice.describe_volumes()["Volumes"]}, 30, what="deleted"
    )
    assert not (sc_folder(sim_cloud) / "volumes" / f"{volume_id}.qcow2").exists()
    with pytest.raises(ClientError) as gone:
        alice.describe_volumes(VolumeIds=[volume_id])
    assert error_code(gone) == "InvalidVolume.NotFound"
    for other in others:
        alice.delete_volume(VolumeId=other)


@pytest.mark.parametrize(
    "options, code",
    [
        ({"Size": 0}, "InvalidParameterValue"),
        ({"Size": 1025}, "InvalidParameterValue"),
        ({"Size": 20000, "VolumeType": "gp2"}, "InvalidParameterValue"),
        ({"Size": 1, "VolumeType": "io9"}, "InvalidParameterValue"),
        ({}, "MissingParameter"),
        ({"Size": 1, "AvailabilityZone": "mars-1a"}, "InvalidParameterValue"),
        ({"SnapshotId": "snap-0123456789abcdef0"}, "InvalidSnapshot.NotFound"),
        ({"SnapshotId": "nonsense"}, "InvalidSnapshotID.Malformed"),
        ({"Size": 1, "Encrypted": True}, "InvalidParameterValue"),
    ],
)
def test_create_volume_refuses_bad_input(users: dict[str, Any], options: dict[str, Any], code: str) -> None:
    alice = users["alice"]
    options = {"AvailabilityZone": zone_of(alice)} | options
    with pytest.raises(ClientError) as excinfo:
        alice.create_volume(**options)
    assert error_code(excinfo) == code


def test_attach_detach_states_and_errors(users: dict[str, Any]) -> None:
    alice = users["alice"]
    instance_id = running_instance(alice)
    volume_id = new_volume(alice)
    for device in ("sdf", "/dev/sda1", "/dev/vda", "/dev/nvme0"):
        with pytest.raises(ClientError) as bad:
            alice.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=device)
        assert error_code(bad) == "InvalidParameterValue", device
    with pytest.raises(ClientError) as unattached:
        alice.detach_volume(VolumeId=volume_id)
    assert error_code(unattached) == "IncorrectState"
    attached = alice.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    assert attached["State"] == "attaching"
    shown = wait_volume(alice, volume_id, lambda v: v["Attachments"][0]["State"] == "attached", "attached")
    assert shown["State"] == "in-use" and shown["Attachments"][0]["Device"] == "/dev/sdf"
    [mapping] = alice.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0][
        "BlockDeviceMappings"
    ]
    assert mapping == {
        "DeviceName": "/dev/sdf",
        "Ebs": {
            "VolumeId": volume_id,
            "Status": "attached",
            "AttachTime": shown["Attachments"][0]["AttachTime"],
            "DeleteOnTermination": False,
        },
    }
    second = new_volume(alice)
    with pytest.raises(ClientError) as taken:
        alice.attach_volume(VolumeId=second, InstanceId=instance_id, Device="/dev/sdf")
    assert error_code(taken) == "InvalidParameterValue"
    with pytest.raises(ClientError) as in_use:
        alice.delete_volume(VolumeId=volume_id)
    assert error_code(in_use) == "VolumeInUse"
    with pytest.raises(ClientError) as elsewhere:
        alice.detach_volume(VolumeId=volume_id, InstanceId="i-0123456789abcdef0")
    assert error_code(elsewhere) == "InvalidAttachment.NotFound"
    assert alice.detach_volume(VolumeId=volume_id, Force=True)["State"] == "detaching"
    wait_volume(alice, volume_id, lambda v: v["State"] == "available" and v["Attachments"] == [], "detached")
    alice.terminate_instances(InstanceIds=[instance_id])
    for v in (volume_id, second):
        alice.delete_volume(VolumeId=v)


def test_block_device_mappings_at_launch_and_delete_on_termination(users: dict[str, Any]) -> None:
    alice = users["alice"]
    reservation = alice.run_instances(
        ImageId=default_image(alice),
        MinCount=1,
        MaxCount=1,
        InstanceType="t2.nano",
        BlockDeviceMappings=[
            {"DeviceName": "/dev/sdb", "Ebs": {"VolumeSize": 2}},
            {"DeviceName": "/dev/sdc", "Ebs": {"VolumeSize": 1, "DeleteOnTermination": False}},
            {"DeviceName": "/dev/sdd", "VirtualName": "ephemeral0"},
        ],
    )
    instance_id = reservation["Instances"][0]["InstanceId"]

    def mappings() -> list[dict[str, Any]]:
        found = alice.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        return found["BlockDeviceMappings"] if found["State"]["Name"] == "running" else []

    shown = wait_until(lambda: len(mappings()) == 2 and mappings(), 30, what="the launch volumes")
    by_device = {m["DeviceName"]: m["Ebs"] for m in shown}
    assert set(by_device) == {"/dev/sdb", "/dev/sdc"}
    assert by_device["/dev/sdb"]["DeleteOnTermination"] is True
    assert by_device["/dev/sdc"]["DeleteOnTermination"] is False
    assert volume(alice, by_device["/dev/sdb"]["VolumeId"])["Size"] == 2
    alice.terminate_instances(InstanceIds=[instance_id])
    kept = by_device["/dev/sdc"]["VolumeId"]
    wait_volume(alice, kept, lambda v: v["State"] == "available", "the kept volume to be detached")
    wait_until(
        lambda: by_device["/dev/sdb"]["VolumeId"] not in {v["VolumeId"] for v in alice.describe_volumes()["Volumes"]},
        30,
        what="the DeleteOnTermination volume to be deleted",
    )
    alice.delete_volume(VolumeId=kept)


def test_snapshots_and_volumes_made_of_them(sim_cloud: RunningCloud, users: dict[str, Any]) -> None:
    alice = users["alice"]
    volume_id = new_volume(alice, size=1)
    # bytes written into the volume's file (as a guest would, through qemu-io) must reach the copy
    path = sc_folder(sim_cloud) / "volumes" / f"{volume_id}.qcow2"
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 1M 64k", str(path)], check=True, capture_output=True)
    snapshot = alice.create_snapshot(
        VolumeId=volume_id,
        Description="before the experiment",
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": "run", "Value": "7"}]}],
    )
    assert snapshot["State"] == "pending" and snapshot["Progress"] == "0%" and snapshot["VolumeSize"] == 1
    snapshot_id = snapshot["SnapshotId"]

    def completed() -> dict[str, Any] | None:
        found = alice.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
        return found if found["State"] == "completed" else None

    done = wait_until(completed, 30, what="the snapshot to complete")
    assert done["Progress"] == "100%" and done["Description"] == "before the experiment"
    assert done["Tags"] == [{"Key": "run", "Value": "7"}]
    mine = alice.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert snapshot_id in {s["SnapshotId"] for s in mine}
    tagged = alice.describe_snapshots(Filters=[{"Name": "tag:run", "Values": ["7"]}])["Snapshots"]
    assert [s["SnapshotId"] for s in tagged] == [snapshot_id]
    with pytest.raises(ClientError) as small:
        alice.create_volume(SnapshotId=snapshot_id, Size=0, AvailabilityZone=zone_of(alice))
    assert error_code(small) == "InvalidParameterValue"
    restored = alice.create_volume(SnapshotId=snapshot_id, Size=3, AvailabilityZone=zone_of(alice))
    assert restored["SnapshotId"] == snapshot_id and restored["Size"] == 3
    wait_volume(alice, restored["VolumeId"], lambda v: v["State"] == "available", "the restored volume")
    copy = sc_folder(sim_cloud) / "volumes" / f"{restored['VolumeId']}.qcow2"
    assert qemu_info(copy)["virtual-size"] == 3 * 1024**3
    compared = subprocess.run(["qemu-io", "-c", "read -P 0x5a 1M 64k", str(copy)], capture_output=True, text=True)
    assert compared.returncode == 0 and "Pattern verification failed" not in compared.stdout, compared.stdout
    # RunInstances can make a volume of it too
    reservation = alice.run_instances(
        ImageId=default_image(alice),
        MinCount=1,
        MaxCount=1,
        InstanceType="t2.nano",
        BlockDeviceMappings=[{"DeviceName": "/dev/sde", "Ebs": {"SnapshotId": snapshot_id}}],
    )
    launched = reservation["Instances"][0]["InstanceId"]

    def launch_volume() -> dict[str, Any] | None:
        found = alice.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [launched]}])["Volumes"]
        return found[0] if found and found[0]["Attachments"][0]["State"] == "attached" else None

    from_snapshot = wait_until(launch_volume, 30, what="the launch volume made of the snapshot")
    assert from_snapshot["SnapshotId"] == snapshot_id and from_snapshot["Size"] == 1
    alice.terminate_instances(InstanceIds=[launched])
    # A snapshot outlives its volume; deleting it leaves volumes made of it.
    alice.delete_volume(VolumeId=volume_id)
    alice.delete_snapshot(SnapshotId=snapshot_id)
    wait_until(
        lambda: snapshot_id not in {s["SnapshotId"] for s in alice.describe_snapshots()["Snapshots"]},
        30,
        what="the snapshot to be deleted",
    )
    assert not (sc_folder(sim_cloud) / "snapshots" / f"{snapshot_id}.qcow2").exists()
    assert volume(alice, restored["VolumeId"])["State"] == "available"
    alice.delete_volume(VolumeId=restored["VolumeId"])


def test_another_users_volumes_and_snapshots_are_invisible(users: dict[str, Any]) -> None:
    alice, bob = users["alice"], users["bob"]
    volume_id = new_volume(alice)
    snapshot_id = alice.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    bobs_instance = running_instance(bob)
    assert volume_id not in {v["VolumeId"] for v in bob.describe_volumes()["Volumes"]}
    assert snapshot_id not in {s["SnapshotId"] for s in bob.describe_snapshots()["Snapshots"]}
    attempts: list[tuple[Callable[[], Any], str]] = [
        (lambda: bob.describe_volumes(VolumeIds=[volume_id]), "InvalidVolume.NotFound"),
        (lambda: bob.delete_volume(VolumeId=volume_id), "InvalidVolume.NotFound"),
        (
            lambda: bob.attach_volume(VolumeId=volume_id, InstanceId=bobs_instance, Device="/dev/sdf"),
            "InvalidVolume.NotFound",
        ),
        (lambda: bob.detach_volume(VolumeId=volume_id), "InvalidVolume.NotFound"),
        (lambda: bob.create_snapshot(VolumeId=volume_id), "InvalidVolume.NotFound"),
        (lambda: bob.describe_volume_attribute(VolumeId=volume_id, Attribute="autoEnableIO"), "InvalidVolume.NotFound"),
        (lambda: bob.describe_snapshots(SnapshotIds=[snapshot_id]), "InvalidSnapshot.NotFound"),
        (lambda: bob.delete_snapshot(SnapshotId=snapshot_id), "InvalidSnapshot.NotFound"),
        (
            lambda: bob.create_volume(SnapshotId=snapshot_id, AvailabilityZone=zone_of(bob)),
            "InvalidSnapshot.NotFound",
        ),
        (lambda: bob.create_tags(Resources=[volume_id], Tags=[{"Key": "k", "Value": "v"}]), "InvalidVolume.NotFound"),
    ]
    for attempt, code in attempts:
        with pytest.raises(ClientError) as excinfo:
            attempt()
        assert error_code(excinfo) == code
    # nor may alice attach to bob's instance
    with pytest.raises(ClientError) as theirs:
        alice.attach_volume(VolumeId=volume_id, InstanceId=bobs_instance, Device="/dev/sdf")
    assert error_code(theirs) == "InvalidInstanceID.NotFound"
    assert volume(alice, volume_id)["State"] == "available"
    bob.terminate_instances(InstanceIds=[bobs_instance])


def test_volume_quota_per_user(sim_cloud: RunningCloud) -> None:
    user, ec2 = sim_cloud.create_user("volquota")
    store = Store(sim_cloud.layout.database)
    try:
        with store.transaction() as db:
            db.executemany(
                "INSERT INTO quotas (user_name, resource, quota) VALUES (?,?,?)",
                [(user.name, "volumes", 2), (user.name, "volume_gib", 3)],
            )
    finally:
        store.close()
    first = new_volume(ec2, size=2)
    with pytest.raises(ClientError) as too_big:
        ec2.create_volume(Size=2, AvailabilityZone=zone_of(ec2))
    assert error_code(too_big) == "VolumeLimitExceeded"
    second = new_volume(ec2, size=1)
    with pytest.raises(ClientError) as too_many:
        ec2.create_volume(Size=1, AvailabilityZone=zone_of(ec2))
    assert error_code(too_many) == "VolumeLimitExceeded"
    assert "quota" in too_many.value.response["Error"]["Message"]
    ec2.delete_volume(VolumeId=first)
    ec2.delete_volume(VolumeId=second)


def test_volume_attribute_and_status(users: dict[str, Any]) -> None:
    alice = users["alice"]
    volume_id = new_volume(alice)
    answer = alice.describe_volume_attribute(VolumeId=volume_id, Attribute="autoEnableIO")
    assert answer["AutoEnableIO"] == {"Value": False}
    alice.modify_volume_attribute(VolumeId=volume_id, AutoEnableIO={"Value": True})
    answer = alice.describe_volume_attribute(VolumeId=volume_id, Attribute="autoEnableIO")
    assert answer["AutoEnableIO"] == {"Value": True}
    [status] = alice.describe_volume_status(VolumeIds=[volume_id])["VolumeStatuses"]
    assert status["VolumeStatus"]["Status"] == "ok"
    assert {d["Name"] for d in status["VolumeStatus"]["Details"]} == {"io-enabled", "io-performance"}
    alice.delete_volume(VolumeId=volume_id)


def test_a_killed_storage_controller_is_restarted_and_loses_nothing(
    sim_cloud: RunningCloud, users: dict[str, Any]
) -> None:
    import os
    import signal

    alice = users["alice"]
    kept = new_volume(alice)
    before = sim_cloud.status()["clusters"][0]["storage"]["process"]
    os.kill(before["pid"], signal.SIGKILL)
    made = alice.create_volume(Size=1, AvailabilityZone=zone_of(alice))["VolumeId"]  # recorded while the SC is down

    def restarted() -> dict[str, Any] | None:
        storage = sim_cloud.status()["clusters"][0]["storage"]
        process = storage["process"]
        return storage if process["pid"] != before["pid"] and process["running"] and storage["registered"] else None

    after = wait_until(restarted, 60, what="the storage controller to be restarted", interval_s=0.3)
    assert after["process"]["restarts"] == before["restarts"] + 1
    shown = subprocess.run(
        [sys.executable, "-m", "cloudlab.cli", "--state", str(sim_cloud.layout.root), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(x for x in shown.stdout.splitlines() if "storage controller" in x)
    assert "cluster1: registered at http://" in line and f"pid {after['process']['pid']}, restarts" in line
    wait_volume(alice, made, lambda v: v["State"] == "available", "the volume asked for while the SC was down")
    assert volume(alice, kept)["State"] == "available"
    assert (sc_folder(sim_cloud) / "volumes" / f"{kept}.qcow2").exists()
    for volume_id in (kept, made):
        alice.delete_volume(VolumeId=volume_id)


def test_create_image_from_an_instance_and_register_one_with_a_root_snapshot(
    sim_cloud: RunningCloud, tmp_path: Path
) -> None:
    admin = sim_cloud.ec2()
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "initrd.img").write_bytes(b"ramdisk")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(tmp_path / "disk.img"), "16M"], check=True)
    source = admin.register_image(Name="ebs-source", ImageLocation=str(tmp_path))["ImageId"]
    assert admin.describe_images(ImageIds=[source])["Images"][0]["RootDeviceType"] == "ebs"
    instance_id = admin.run_instances(ImageId=source, MinCount=1, MaxCount=1, InstanceType="t2.nano")["Instances"][0][
        "InstanceId"
    ]
    wait_until(
        lambda: (
            admin.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]
            == "running"
        ),
        30,
        what="the source instance",
    )
    with pytest.raises(ClientError) as ramdisk_only:
        plain = running_instance(admin)
        try:
            admin.create_image(InstanceId=plain, Name="from-instance-store")
        finally:
            admin.terminate_instances(InstanceIds=[plain])
    assert error_code(ramdisk_only) == "InvalidParameterValue"

    image_id = admin.create_image(InstanceId=instance_id, Name="made-from-an-instance", NoReboot=True)["ImageId"]

    def available() -> dict[str, Any] | None:
        found = admin.describe_images(ImageIds=[image_id])["Images"][0]
        return found if found["State"] == "available" else None

    made = wait_until(available, 30, what="the new image")
    assert made["RootDeviceType"] == "ebs" and made["Public"] is False
    [root] = made["BlockDeviceMappings"]
    snapshot_id = root["Ebs"]["SnapshotId"]
    snapshot = admin.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert snapshot["State"] == "completed" and instance_id in snapshot["Description"]
    # an instance of the new image gets a root volume made from that snapshot
    child = admin.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t2.nano")["Instances"][0][
        "InstanceId"
    ]

    def root_volume() -> dict[str, Any] | None:
        instance = admin.describe_instances(InstanceIds=[child])["Reservations"][0]["Instances"][0]
        if instance["State"]["Name"] != "running" or not instance["BlockDeviceMappings"]:
            return None
        return volume(admin, instance["BlockDeviceMappings"][0]["Ebs"]["VolumeId"])

    assert wait_until(root_volume, 30, what="the child's root volume")["SnapshotId"] == snapshot_id
    # RegisterImage with the snapshot as its root; deregistering leaves the snapshot
    registered = admin.register_image(
        Name="registered-on-a-snapshot",
        KernelId=made["KernelId"],
        RamdiskId=made["RamdiskId"],
        RootDeviceName="/dev/vda",
        BlockDeviceMappings=[{"DeviceName": "/dev/vda", "Ebs": {"SnapshotId": snapshot_id}}],
    )["ImageId"]
    assert (
        admin.describe_images(ImageIds=[registered])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        == snapshot_id
    )
    for image in (registered, image_id):
        admin.deregister_image(ImageId=image)
    assert admin.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["State"] == "completed"
    admin.terminate_instances(InstanceIds=[instance_id, child])
