"""Images and snapshots from Walrus: RegisterImage from a manifest in a bucket, ImportSnapshot of a disk image.

On the shared simulated cloud (libvirt's test driver, a real SC with qemu-img, real Walrus): an image
registered from a bucket boots from files a node fetched over a presigned GET and cached by digest (a
second launch needs no fetch: it still starts after the objects are gone); a disk image made with
qemu-img (raw and qcow2) imported into a snapshot, a volume made of it holds the same bytes (read from
the SC's file with qemu-img); another user's private bucket can be neither registered nor imported
from. A real VM boots the default image uploaded with ``cloudlab image upload`` (``test_vm`` mark).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from cloudlab import servicectl
from cloudlab.guest import has_booted
from cloudlab.waiting import wait_until
from tests.clouds import (
    RunningCloud,
    cli,
    default_image,
    error_code,
    network_requirements,
    start_cloud,
    unique,
    vm_requirements,
)

MARK = b"IMPORTED-DISK-MARK-0123456789"


def s3_of(cloud: RunningCloud, key: Any) -> Any:
    info = servicectl.endpoint(cloud.layout) or {}
    return boto3.client(
        "s3", endpoint_url=info["s3_url"], region_name=cloud.info["region"], aws_access_key_id=key.access_key,
        aws_secret_access_key=key.secret_key, config=Config(s3={"addressing_style": "path"}),
    )  # fmt: skip


@pytest.fixture(scope="module")
def people(sim_cloud: RunningCloud) -> dict[str, Any]:
    """Two users, each with EC2 and S3 clients."""
    found = {}
    for who in ("owner", "other"):
        user, key = sim_cloud.add_user(f"img-{who}")
        ec2 = sim_cloud.ec2(aws_access_key_id=key.access_key, aws_secret_access_key=key.secret_key)
        found[who] = {"user": user, "ec2": ec2, "s3": s3_of(sim_cloud, key)}
    return found


def put_image(s3: Any, bucket: str, name: str, files: dict[str, bytes]) -> str:
    s3.create_bucket(Bucket=bucket)
    entries = {}
    for role, data in files.items():
        key = f"{name}/{role}"
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        entries[role] = {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"format": "cloudlab-image/1", "name": name, "files": entries}
    s3.put_object(Bucket=bucket, Key=f"{name}/manifest.json", Body=json.dumps(manifest).encode())
    return f"{bucket}/{name}/manifest.json"


def running(ec2: Any, image_id: str) -> str:
    instance_id = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType="t2.nano")["Instances"][0][
        "InstanceId"
    ]

    def state() -> str | None:
        found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        return found["State"]["Name"] if found["State"]["Name"] in ("running", "terminated") else None

    assert wait_until(state, 60, what=f"{instance_id} running", interval_s=0.2) == "running"
    return instance_id


def cached(cloud: RunningCloud, digest: str) -> list[Path]:
    return list((cloud.layout.root / "nodes").glob(f"*/image-cache/{digest[:2]}/{digest}"))


def test_register_from_a_bucket_boot_from_the_nodes_cache_and_isolation(
    sim_cloud: RunningCloud, people: dict[str, Any]
) -> None:
    owner, other = people["owner"], people["other"]
    kernel, ramdisk = b"kernel bytes " + unique("k").encode(), b"ramdisk bytes " + unique("r").encode()
    bucket, name = unique("images"), unique("from-bucket")
    location = put_image(owner["s3"], bucket, name, {"kernel": kernel, "ramdisk": ramdisk})

    with pytest.raises(ClientError) as denied:  # another user's private bucket
        other["ec2"].register_image(Name=unique("stolen"), ImageLocation=location)
    assert error_code(denied) == "InvalidManifest" and "access denied" in str(denied.value)

    image_id = owner["ec2"].register_image(Name=name, ImageLocation=location)["ImageId"]
    image = owner["ec2"].describe_images(ImageIds=[image_id])["Images"][0]
    assert image["State"] == "available" and image["Public"] is False and image["KernelId"].startswith("aki-")
    first = running(owner["ec2"], image_id)
    kernel_digest = hashlib.sha256(kernel).hexdigest()
    [kernel_file] = cached(sim_cloud, kernel_digest)
    assert kernel_file.read_bytes() == kernel
    assert [p.read_bytes() for p in cached(sim_cloud, hashlib.sha256(ramdisk).hexdigest())] == [ramdisk]
    before = kernel_file.stat()

    # the objects are gone: only the node's cache can boot the image now (no second fetch)
    for role in ("kernel", "ramdisk"):
        owner["s3"].delete_object(Bucket=bucket, Key=f"{name}/{role}")
    second = running(owner["ec2"], image_id)
    after = kernel_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    owner["ec2"].terminate_instances(InstanceIds=[first, second])

    # a manifest whose digest does not match what the bucket holds is refused at registration
    bad = put_image(owner["s3"], unique("images"), unique("bad"), {"kernel": b"real kernel"})
    bucket2, key2 = bad.split("/", 1)
    manifest = json.loads(owner["s3"].get_object(Bucket=bucket2, Key=key2)["Body"].read())
    manifest["files"]["kernel"]["sha256"] = "0" * 64
    owner["s3"].put_object(Bucket=bucket2, Key=key2, Body=json.dumps(manifest).encode())
    with pytest.raises(ClientError) as mismatch:
        owner["ec2"].register_image(Name=unique("bad"), ImageLocation=bad)
    assert error_code(mismatch) == "InvalidManifest" and "SHA-256" in str(mismatch.value)


def disk_images(folder: Path) -> dict[str, Path]:
    """A 3 MiB raw disk with MARK at 1 MiB, and the same disk as qcow2 (made with qemu-img)."""
    raw = folder / "disk.raw"
    with raw.open("wb") as out:
        out.truncate(3 * 1024 * 1024)
        out.seek(1024 * 1024)
        out.write(MARK)
    qcow2 = folder / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    return {"RAW": raw, "QCOW2": qcow2}


def wait_task(ec2: Any, task_id: str) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        [task] = ec2.describe_import_snapshot_tasks(ImportTaskIds=[task_id])["ImportSnapshotTasks"]
        return task if task["SnapshotTaskDetail"]["Status"] != "active" else None

    return wait_until(settled, 60, what=f"import task {task_id}", interval_s=0.2)


def volume_bytes(cloud: RunningCloud, volume_id: str, tmp: Path) -> bytes:
    raw = tmp / f"{volume_id}.raw"
    source = cloud.layout.root / "sc" / "cluster1" / "volumes" / f"{volume_id}.qcow2"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(source), str(raw)], check=True)
    return raw.read_bytes()


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed (make test installs it)")
def test_import_snapshot_from_a_bucket_then_a_volume_with_the_same_bytes(
    sim_cloud: RunningCloud, people: dict[str, Any], tmp_path: Path
) -> None:
    owner, other = people["owner"], people["other"]
    bucket = unique("disks")
    owner["s3"].create_bucket(Bucket=bucket)
    for fmt, path in disk_images(tmp_path).items():
        key = f"exports/{path.name}"
        owner["s3"].upload_file(str(path), bucket, key)
        container = {"Format": fmt, "UserBucket": {"S3Bucket": bucket, "S3Key": key}}
        with pytest.raises(ClientError) as denied:
            other["ec2"].import_snapshot(DiskContainer=container)
        assert error_code(denied) == "InvalidParameter"

        # without a Format, the first bytes decide
        reply = owner["ec2"].import_snapshot(
            Description=f"{fmt} disk",
            DiskContainer=container if fmt == "RAW" else {"UserBucket": container["UserBucket"]},
        )
        assert reply["ImportTaskId"].startswith("import-snap-") and reply["SnapshotTaskDetail"]["Status"] == "active"
        task = wait_task(owner["ec2"], reply["ImportTaskId"])
        detail = task["SnapshotTaskDetail"]
        assert detail["Status"] == "completed", detail
        assert detail["Format"] == fmt and detail["UserBucket"] == {"S3Bucket": bucket, "S3Key": key}
        assert other["ec2"].describe_import_snapshot_tasks()["ImportSnapshotTasks"] == []
        snapshot = owner["ec2"].describe_snapshots(SnapshotIds=[detail["SnapshotId"]])["Snapshots"][0]
        assert snapshot["State"] == "completed" and snapshot["VolumeId"] == "vol-ffffffff"
        assert snapshot["VolumeSize"] == 1

        zone = owner["ec2"].describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
        volume_id = owner["ec2"].create_volume(SnapshotId=detail["SnapshotId"], AvailabilityZone=zone)["VolumeId"]
        wait_until(
            lambda v=volume_id: owner["ec2"].describe_volumes(VolumeIds=[v])["Volumes"][0]["State"] == "available",
            60, what="the volume from the imported snapshot", interval_s=0.2,
        )  # fmt: skip
        data = volume_bytes(sim_cloud, volume_id, tmp_path)
        assert len(data) == 1024**3 and data[1024 * 1024 : 1024 * 1024 + len(MARK)] == MARK
        assert data[: 1024 * 1024] == bytes(1024 * 1024)

        # ... and the root of an image (RegisterImage with the snapshot in BlockDeviceMappings)
        kernel = owner["ec2"].describe_images(ImageIds=[default_image(owner["ec2"])])["Images"][0]["KernelId"]
        image_id = owner["ec2"].register_image(
            Name=unique(f"imported-{fmt.lower()}"), KernelId=kernel, RootDeviceName="/dev/vda",
            BlockDeviceMappings=[{"DeviceName": "/dev/vda", "Ebs": {"SnapshotId": detail["SnapshotId"]}}],
        )["ImageId"]  # fmt: skip
        image = owner["ec2"].describe_images(ImageIds=[image_id])["Images"][0]
        assert image["RootDeviceType"] == "ebs"
        assert [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]] == [detail["SnapshotId"]]


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed (make test installs it)")
def test_import_refuses_a_qcow2_with_a_backing_file(
    sim_cloud: RunningCloud, people: dict[str, Any], tmp_path: Path
) -> None:
    owner = people["owner"]
    sneaky = tmp_path / "sneaky.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw", str(sneaky), "1M"],
                   check=True)  # fmt: skip
    bucket = unique("disks")
    owner["s3"].create_bucket(Bucket=bucket)
    owner["s3"].upload_file(str(sneaky), bucket, "sneaky.qcow2")
    reply = owner["ec2"].import_snapshot(DiskContainer={"UserBucket": {"S3Bucket": bucket, "S3Key": "sneaky.qcow2"}})
    detail = wait_task(owner["ec2"], reply["ImportTaskId"])["SnapshotTaskDetail"]
    assert detail["Status"] == "error" and "backing file" in detail["StatusMessage"]


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.parametrize("network", ["none", "direct"])
def test_image_uploaded_to_a_bucket_boots_a_real_vm(tmp_path: Path, network: str) -> None:
    """With a network, the node lives in its host's namespace and fetches over the cluster's underlay."""
    reason = vm_requirements() if network == "none" else network_requirements()
    if reason:
        pytest.skip(reason)
    cloud = start_cloud(tmp_path / "state", network=network)
    try:
        done = cli(cloud, "image", "upload", "from-walrus", "--bucket", "walrus-images", timeout=300)
        assert done.returncode == 0, done.stderr
        image_id = done.stdout.split("registered ")[-1].strip()
        ec2 = cloud.ec2()
        image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
        assert image["Name"] == "from-walrus" and image["State"] == "available"
        instance_id = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]

        def booted() -> bool:
            return has_booted(ec2.get_console_output(InstanceId=instance_id).get("Output") or "")

        wait_until(booted, 600, what="the boot marker of the image from the bucket", interval_s=2)
        assert list((cloud.layout.root / "nodes").glob("*/image-cache/*/*"))
    finally:
        servicectl.down(cloud.layout)
