"""RegisterImage from a host folder: ordinary users only from their own upload folder (issue 10, item 9).

Through boto3 against a running cloud (users made beside it), and at the core for the size limit.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.clouds import RunningCloud, error_code


def _image_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vmlinuz").write_bytes(b"a kernel " + uuid.uuid4().bytes)
    (folder / "initrd.img").write_bytes(b"a ramdisk " + uuid.uuid4().bytes)
    return folder


@pytest.fixture
def user(sim_cloud: RunningCloud) -> tuple[str, Any, Path]:
    """A fresh user, their boto3 client and their upload folder (made by the administrator)."""
    record, ec2 = sim_cloud.create_user("uploader")
    folder = sim_cloud.layout.root / "uploads" / record.name
    folder.mkdir(parents=True)
    return record.name, ec2, folder


def _image_ids(sim_cloud: RunningCloud) -> set[str]:
    return {i["ImageId"] for i in sim_cloud.ec2().describe_images()["Images"]}


def _store_files(sim_cloud: RunningCloud) -> set[Path]:
    return {p for p in sim_cloud.layout.images.rglob("*") if p.is_file()}


def test_a_user_registers_from_a_folder_in_their_upload_folder(sim_cloud: RunningCloud, user: Any) -> None:
    _name, ec2, folder = user
    _image_files(folder / "mine")
    for location in (str(folder / "mine"), "mine"):  # absolute, or relative to the user's folder
        image_id = ec2.register_image(Name=f"mine-{uuid.uuid4().hex[:6]}", ImageLocation=location)["ImageId"]
        [image] = ec2.describe_images(ImageIds=[image_id])["Images"]
        assert image["State"] == "available" and image["KernelId"].startswith("aki-")
    # The registered copy is the cloud's: changing the upload afterwards changes nothing registered.
    kernel = folder / "mine" / "vmlinuz"
    stored = [p for p in sim_cloud.layout.images.rglob("*") if p.is_file() and p.read_bytes() == kernel.read_bytes()]
    assert stored and all(os.stat(p).st_ino != os.stat(kernel).st_ino for p in stored)


@pytest.mark.parametrize(
    ("location", "code"),
    [
        ("file://{folder}/img", "InvalidParameterValue"),
        ("~/img", "InvalidParameterValue"),
        ("{folder}/../{other}/img", "InvalidParameterValue"),
        ("../{other}/img", "InvalidParameterValue"),
        ("{folder}/img/../img", "InvalidParameterValue"),
        ("{outside}", "InvalidManifest"),
        ("/etc", "InvalidManifest"),
        ("{uploads}/{other}/img", "InvalidManifest"),
        ("{folder}/link-out", "InvalidManifest"),
        ("{folder}/shadow", "InvalidManifest"),
        ("{folder}/hardlink", "InvalidManifest"),
        ("{folder}/fifo", "InvalidManifest"),
    ],
)
def test_a_user_cannot_register_from_anywhere_else(
    sim_cloud: RunningCloud, user: Any, tmp_path: Path, location: str, code: str
) -> None:
    _name, ec2, folder = user
    uploads = folder.parent
    _image_files(folder / "img")
    other_folder = uploads / f"other-{uuid.uuid4().hex[:6]}"
    _image_files(other_folder / "img")
    outside = _image_files(tmp_path / "outside")
    (folder / "link-out").symlink_to(outside)  # a folder link that leads out of the user's folder
    (folder / "shadow").mkdir()
    (folder / "shadow" / "vmlinuz").symlink_to("/etc/shadow")  # the file link of the report
    (folder / "hardlink").mkdir()
    os.link(outside / "vmlinuz", folder / "hardlink" / "vmlinuz")  # a second name for a file outside
    (folder / "fifo").mkdir()
    os.mkfifo(folder / "fifo" / "vmlinuz")  # not a regular file: reading it would hang the API
    wanted = location.format(folder=folder, other=other_folder.name, outside=outside, uploads=uploads)
    before, files_before = _image_ids(sim_cloud), _store_files(sim_cloud)
    with pytest.raises(ClientError) as excinfo:
        ec2.register_image(Name=f"evil-{uuid.uuid4().hex[:6]}", ImageLocation=wanted)
    assert error_code(excinfo) == code, excinfo.value.response["Error"]["Message"]
    assert _image_ids(sim_cloud) == before
    assert _store_files(sim_cloud) == files_before  # nothing copied into the image store either


def test_the_administrator_may_register_any_host_folder(sim_cloud: RunningCloud, tmp_path: Path) -> None:
    folder = _image_files(tmp_path / "admin-image")
    image_id = sim_cloud.ec2().register_image(Name=f"adm-{uuid.uuid4().hex[:6]}", ImageLocation=str(folder))
    assert image_id["ImageId"].startswith("ami-")


def test_files_above_the_size_limit_are_refused(tmp_path: Path) -> None:
    from cloudlab.clc.images import Images
    from cloudlab.clc.store import Store
    from cloudlab.clc.uploads import UploadPolicy
    from cloudlab.errors import CloudError

    store = Store(tmp_path / "clc.db")
    try:
        images = Images(store, tmp_path / "images", UploadPolicy(tmp_path / "uploads", max_file_bytes=64))
        folder = tmp_path / "uploads" / "alice" / "big"
        folder.mkdir(parents=True)
        (folder / "vmlinuz").write_bytes(b"k" * 64)
        (folder / "initrd.img").write_bytes(b"r" * 65)
        with pytest.raises(CloudError) as excinfo:
            images.register_location("alice", "too-big", str(folder))
        assert excinfo.value.code == "InvalidParameterValue" and "65 bytes" in excinfo.value.message
        assert images.list() == []
        (folder / "initrd.img").write_bytes(b"r" * 64)
        image = images.register_location("alice", "fits", str(folder))
        assert image.kernel_id and image.ramdisk_id
    finally:
        store.close()
