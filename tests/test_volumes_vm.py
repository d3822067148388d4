"""EBS volumes and root volumes with real VMs: bytes a guest writes are on the disk the next guest reads.

One cloud on a direct network (the guests fetch their user data from the metadata service), two
instances of the busybox image, booted once for the whole module:

* ``rooted``: the default kernel and initramfs registered WITH a disk, so its ``/dev/vda`` is its
  own copy-on-write root volume (RootDeviceType ebs);
* ``plain``: ``cloudlab-default``, whose ``/dev/vda`` is a scratch disk.

Each guest's user data (run at every boot) reports on the console what it finds on its disks, so
the test reads the guest's view of the bytes, not the SC's files. A volume is exported by the
storage controller over NBD and hot-plugged by the node (libvirt) as ``/dev/vdb``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlab import processes, servicectl
from cloudlab.images.cached import find_built_image
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud, default_image, start_cloud, vm_requirements

pytestmark = [pytest.mark.vm, pytest.mark.slow]

#: The guest's script: report the root disk's marker (or write one), then wait for /dev/vdb and
#: either print what is on it (READ) or write a fresh token to it (WRITE). Bounded: at most 10 min
#: (the volume reaches the READ guest only after the other tests' steps, on a busy machine).
USER_DATA = r"""#!/bin/sh
mode=@MODE@
head=$(dd if=/dev/vda bs=64 count=1 2>/dev/null | tr -dc 'A-Za-z0-9-')
case "$head" in
    ROOTMARK-*) echo "storage-test: root kept $head" >/dev/console ;;
    *) token="ROOTMARK-$(cat /proc/sys/kernel/random/uuid)"
       printf '%s' "$token" | dd of=/dev/vda bs=64 count=1 conv=notrunc 2>/dev/null; sync
       echo "storage-test: root written $token" >/dev/console ;;
esac
[ -b /dev/vda ] && echo "storage-test: vda $(cat /sys/block/vda/size) sectors" >/dev/console
for _ in $(seq 3000); do [ -b /dev/vdb ] && break; sleep 0.2; done
[ -b /dev/vdb ] || { echo "storage-test: no vdb" >/dev/console; exit 1; }
if [ "$mode" = WRITE ]; then
    token="VOLDATA-$(cat /proc/sys/kernel/random/uuid)"
    printf '%s' "$token" | dd of=/dev/vdb bs=64 count=1 conv=notrunc 2>/dev/null; sync
    echo "storage-test: vdb written $token" >/dev/console
else
    echo "storage-test: vdb read $(dd if=/dev/vdb bs=64 count=1 2>/dev/null | tr -dc 'A-Za-z0-9-')" >/dev/console
fi
"""


def _console(ec2: Any, instance_id: str) -> str:
    return ec2.get_console_output(InstanceId=instance_id).get("Output") or ""


def console_line(ec2: Any, instance_id: str, pattern: str, timeout: float = 180) -> re.Match[str]:
    """The first console line of ``instance_id`` matching ``pattern`` (waited for, bounded)."""
    regex = re.compile(pattern)

    def found() -> re.Match[str] | None:
        return regex.search(_console(ec2, instance_id))

    return wait_until(found, timeout, what=f"{pattern!r} on {instance_id}'s console", interval_s=0.5)


def state_of(ec2: Any, instance_id: str) -> str:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]


def volume(ec2: Any, volume_id: str) -> dict[str, Any]:
    return ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]


def wait_volume(ec2: Any, volume_id: str, predicate: Any, what: str, timeout: float = 90) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = volume(ec2, volume_id)
        return found if predicate(found) else None

    return wait_until(check, timeout, what=what, interval_s=0.3)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCloud]:
    reason = vm_requirements() or (None if shutil.which("qemu-nbd") else "qemu-nbd is not installed (qemu-utils)")
    if reason:
        pytest.skip(reason)
    running = start_cloud(
        tmp_path_factory.mktemp("volumes") / "state", network="direct", node_vcpus=4, node_memory_mb=1024
    )
    yield running
    servicectl.down(running.layout)
    # the SC's NBD servers outlive a killed SC on purpose, but never the cloud
    assert processes.of_state(running.layout, (b"qemu-nbd",)) == []
    assert processes.storage_controllers(running.layout) == []


@pytest.fixture(scope="module")
def guests(cloud: RunningCloud, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both instances booted, each with the script above as user data."""
    ec2 = cloud.ec2()
    built = find_built_image()
    assert built is not None
    folder = tmp_path_factory.mktemp("rooted-image")
    shutil.copy(built.kernel, folder / "vmlinuz")
    shutil.copy(built.ramdisk, folder / "initrd.img")
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(folder / "disk.img"), "64M"], check=True)
    rooted_image = ec2.register_image(Name="busybox-on-a-root-volume", ImageLocation=str(folder))["ImageId"]

    def launch(image: str, mode: str) -> str:
        data = USER_DATA.replace("@MODE@", mode)
        return ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, UserData=data)["Instances"][0]["InstanceId"]

    rooted = launch(rooted_image, "WRITE")
    plain = launch(default_image(ec2), "READ")
    for instance_id in (rooted, plain):
        wait_until(lambda i=instance_id: state_of(ec2, i) == "running", 180, what=f"{instance_id} running")
    return {"ec2": ec2, "rooted": rooted, "plain": plain, "image": rooted_image}


def test_root_volume_is_the_instances_own_and_listed(guests: dict[str, Any]) -> None:
    ec2, rooted, plain = guests["ec2"], guests["rooted"], guests["plain"]
    instance = ec2.describe_instances(InstanceIds=[rooted])["Reservations"][0]["Instances"][0]
    assert instance["RootDeviceType"] == "ebs"
    assert instance["RootDeviceName"] == "/dev/vda"
    [mapping] = instance["BlockDeviceMappings"]
    root_id = mapping["Ebs"]["VolumeId"]
    assert mapping["DeviceName"] == "/dev/vda" and mapping["Ebs"]["DeleteOnTermination"] is True
    root = volume(ec2, root_id)
    assert root["State"] == "in-use" and root["Size"] == 1
    assert root["Attachments"][0]["InstanceId"] == rooted and root["Attachments"][0]["State"] == "attached"
    # The guest wrote its marker to its root volume; the image's own disk is untouched.
    console_line(ec2, rooted, r"storage-test: root written ROOTMARK-[0-9a-f-]+")
    image_disk = ec2.describe_images(ImageIds=[guests["image"]])["Images"][0]
    assert image_disk["RootDeviceType"] == "ebs"
    # cloudlab-default has no root volume: its vda is a scratch disk (instance store), 1 GiB.
    other = ec2.describe_instances(InstanceIds=[plain])["Reservations"][0]["Instances"][0]
    assert other["RootDeviceType"] == "instance-store" and other["BlockDeviceMappings"] == []
    console_line(ec2, plain, r"storage-test: vda 2097152 sectors")


def test_volume_written_by_one_instance_reads_the_same_on_another(cloud: RunningCloud, guests: dict) -> None:
    ec2, rooted, plain = guests["ec2"], guests["rooted"], guests["plain"]
    zone = ec2.describe_instances(InstanceIds=[rooted])["Reservations"][0]["Instances"][0]["Placement"]
    made = ec2.create_volume(Size=1, AvailabilityZone=zone["AvailabilityZone"])
    volume_id = made["VolumeId"]
    assert made["State"] == "creating"
    wait_volume(ec2, volume_id, lambda v: v["State"] == "available", "the volume to be available")

    answer = ec2.attach_volume(VolumeId=volume_id, InstanceId=rooted, Device="/dev/sdf")
    assert answer["State"] == "attaching" and answer["Device"] == "/dev/sdf"
    wait_volume(ec2, volume_id, lambda v: v["Attachments"] and v["Attachments"][0]["State"] == "attached", "attached")
    written = console_line(ec2, rooted, r"storage-test: vdb written (VOLDATA-[0-9a-f-]+)").group(1)
    # Attached: it cannot be deleted, nor attached twice.
    with pytest.raises(ec2.exceptions.ClientError) as busy:
        ec2.delete_volume(VolumeId=volume_id)
    assert busy.value.response["Error"]["Code"] == "VolumeInUse"
    with pytest.raises(ec2.exceptions.ClientError) as twice:
        ec2.attach_volume(VolumeId=volume_id, InstanceId=plain, Device="/dev/sdg")
    assert twice.value.response["Error"]["Code"] == "VolumeInUse"

    assert ec2.detach_volume(VolumeId=volume_id)["State"] == "detaching"
    wait_volume(ec2, volume_id, lambda v: v["State"] == "available" and not v["Attachments"], "detached")
    ec2.attach_volume(VolumeId=volume_id, InstanceId=plain, Device="/dev/sdh")
    read = console_line(ec2, plain, r"storage-test: vdb read (\S+)").group(1)
    assert read == written
    listed = volume(ec2, volume_id)["Attachments"][0]
    assert listed["Device"] == "/dev/sdh" and listed["InstanceId"] == plain
    # A snapshot of the attached volume (the guest paused meanwhile) holds the same bytes.
    snapshot_id = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    wait_until(
        lambda: ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["State"] == "completed",
        120,
        what="the snapshot of the attached volume",
    )
    assert state_of(ec2, plain) == "running"
    assert first_bytes(cloud.layout.root / "sc" / "cluster1" / "snapshots" / f"{snapshot_id}.qcow2") == written
    status = ec2.describe_volume_status(VolumeIds=[volume_id])["VolumeStatuses"][0]
    assert status["VolumeStatus"]["Status"] == "ok"
    storage = cloud.status()["clusters"][0]["storage"]
    assert storage["registered"] and storage["process"]["running"] and storage["exports"] >= 2


def test_root_volume_survives_stop_and_start_and_goes_at_termination(guests: dict[str, Any]) -> None:
    ec2, rooted = guests["ec2"], guests["rooted"]
    written = console_line(ec2, rooted, r"storage-test: root written (ROOTMARK-[0-9a-f-]+)").group(1)
    [mapping] = [
        m
        for m in ec2.describe_instances(InstanceIds=[rooted])["Reservations"][0]["Instances"][0]["BlockDeviceMappings"]
        if m["DeviceName"] == "/dev/vda"
    ]
    root_id = mapping["Ebs"]["VolumeId"]
    ec2.stop_instances(InstanceIds=[rooted])
    wait_until(lambda: state_of(ec2, rooted) == "stopped", 120, what="the rooted instance to stop")
    assert volume(ec2, root_id)["State"] == "in-use"  # a stopped instance keeps its volumes
    ec2.start_instances(InstanceIds=[rooted])
    kept = console_line(ec2, rooted, r"storage-test: root kept (ROOTMARK-[0-9a-f-]+)").group(1)
    assert kept == written
    ec2.terminate_instances(InstanceIds=[rooted])
    # DeleteOnTermination: the root volume goes with its instance, and is then never listed again
    wait_until(lambda: not _still_listed(ec2, root_id), 90, what="the root volume to be deleted")
    with pytest.raises(ec2.exceptions.ClientError) as gone:
        ec2.describe_volumes(VolumeIds=[root_id])
    assert gone.value.response["Error"]["Code"] == "InvalidVolume.NotFound"


def first_bytes(path: Path) -> str:
    """The token at the start of a qcow2 image's guest data, read on the SC's side with qemu-img."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "head.raw"
        subprocess.run(
            ["qemu-img", "dd", "-U", "-f", "qcow2", "-O", "raw", "bs=64", "count=1", f"if={path}", f"of={out}"],
            check=True,
            capture_output=True,
        )
        return re.sub(r"[^A-Za-z0-9-]", "", out.read_bytes().decode("ascii", "replace"))


def _still_listed(ec2: Any, volume_id: str) -> bool:
    return volume_id in {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
