"""The storage controller on its own: volume files made with qemu-img, NBD exports by qemu-nbd, and
the signed messages that command it (only a cluster controller may)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cloudlab import contract as c
from cloudlab.errors import CloudError
from cloudlab.processes import pid_alive
from cloudlab.rpc import Dispatcher, LocalChannel
from cloudlab.sc.controller import StorageController
from cloudlab.sc.files import image_info
from cloudlab.waiting import wait_until

VOL, SNAP = "vol-0123456789abcdef0", "snap-0123456789abcdef0"


@pytest.fixture
def sc(tmp_path: Path) -> StorageController:
    storage = StorageController("cluster1", tmp_path / "sc", "127.0.0.1")
    storage.exports.first_port = 21809  # apart from any cloud's exports on this host
    yield storage
    storage.exports.stop_all()


def read_nbd(export: c.NbdExport, length: int = 4) -> bytes:
    url = f"nbd://{export.host}:{export.port}/{export.name}"
    done = subprocess.run(["qemu-io", "-r", "-f", "raw", "-c", f"read -v 0 {length}", url], capture_output=True)
    assert done.returncode == 0, done.stderr
    return bytes(int(h, 16) for h in done.stdout.decode().split(":", 1)[1].split()[:length])


def test_volumes_overlays_snapshots_and_copies(sc: StorageController, tmp_path: Path) -> None:
    blank = sc.create_volume(c.CreateVolume(VOL, 2))
    assert blank.size_bytes == 2 * 1024**3 and blank.allocated_bytes < 4 * 1024**2  # sparse
    assert sc.create_volume(c.CreateVolume(VOL, 2)) == blank  # made once, however often asked
    image = tmp_path / "disk.img"
    image.write_bytes(b"IMG!" + bytes(1024 * 1024 - 4))
    root = sc.create_volume(c.CreateVolume("vol-00000000000000001", 1, backing=str(image)))
    info = image_info(sc.files.volume(root.volume_id))
    assert info["backing-filename"] == str(image) and info["backing-filename-format"] == "raw"
    export = sc.export_volume(root.volume_id)
    assert read_nbd(export) == b"IMG!"  # the overlay shows the image's bytes
    subprocess.run(
        ["qemu-io", "-f", "raw", "-c", "write -P 0x41 0 4", f"nbd://127.0.0.1:{export.port}/{root.volume_id}"],
        check=True,
        capture_output=True,
    )
    assert image.read_bytes()[:4] == b"IMG!"  # ... and writes go to the instance's overlay only
    made = sc.create_snapshot(c.SnapshotRequest(SNAP, root.volume_id))  # read through the live export
    assert made.size_bytes == 1024**3
    restored = sc.create_volume(c.CreateVolume("vol-00000000000000002", 3, snapshot_id=SNAP))
    assert restored.size_bytes == 3 * 1024**3
    copy = sc.export_volume(restored.volume_id)
    assert read_nbd(copy) == b"AAAA"
    sc.delete_snapshot(SNAP)
    assert read_nbd(copy) == b"AAAA"  # a volume made of a snapshot outlives it
    report = sc.describe()
    assert set(report.volumes) == {VOL, root.volume_id, restored.volume_id} and report.snapshots == ()
    assert set(report.exports) == {root.volume_id, restored.volume_id}
    sc.delete_volume(root.volume_id)
    assert root.volume_id not in sc.describe().exports and not sc.files.volume(root.volume_id).exists()


def test_a_dead_nbd_server_comes_back_on_its_port(sc: StorageController) -> None:
    sc.create_volume(c.CreateVolume(VOL, 1))
    first = sc.export_volume(VOL)
    assert sc.export_volume(VOL) == first
    pid = json.loads((sc.exports.folder / f"{VOL}.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), 10, what="qemu-nbd to die")
    assert VOL not in sc.describe().exports
    again = sc.export_volume(VOL)
    assert again.port == first.port and VOL in sc.describe().exports
    sc.unexport_volume(VOL)
    assert sc.describe().exports == {}


@pytest.mark.parametrize(
    "request_, code",
    [
        (c.CreateVolume("vol-bad", 1), "InvalidParameterValue"),
        (c.CreateVolume(VOL, 0), "InvalidParameterValue"),
        (c.CreateVolume(VOL, 1, snapshot_id=SNAP), "InvalidSnapshot.NotFound"),
        (c.CreateVolume(VOL, 1, backing="/nonexistent/disk.img"), "InvalidAMIID.Unavailable"),
    ],
)
def test_bad_requests_are_refused_with_codes(sc: StorageController, request_: c.CreateVolume, code: str) -> None:
    with pytest.raises(CloudError) as excinfo:
        sc.create_volume(request_)
    assert excinfo.value.code == code
    assert not sc.files.volume(VOL).exists()


def test_only_a_cluster_controller_commands_it(
    sc: StorageController, signer_verifier: Callable[[str, str], tuple]
) -> None:
    signer, verifier = signer_verifier("cluster1", "sc")
    dispatcher = Dispatcher("sc-cluster1", signer, verifier)
    sc.register_routes(dispatcher)
    cc = LocalChannel("cluster1", "sc", *signer_verifier("cc-cluster1", "cc"), dispatcher)
    assert cc.ask(c.SC_CREATE_VOLUME, c.CreateVolume(VOL, 1)).volume_id == VOL
    node = LocalChannel("cluster1", "sc", *signer_verifier("node-01", "nc"), dispatcher)
    with pytest.raises(CloudError) as refused:
        node.ask(c.SC_DELETE_VOLUME, c.VolumeRef(VOL))
    assert refused.value.code == "MessageRejected" and "role" in refused.value.message
    assert sc.files.volume(VOL).exists()


def test_a_full_disk_refuses_new_volumes_and_corrupts_nothing(tmp_path: Path) -> None:
    """The SC's folder on a small tmpfs (mounted for this test only): a volume larger than the free space
    is refused although it would be sparse, and once less than the reserve is free, CreateSnapshot too;
    each refusal is a clear error that leaves no partial file and the existing volume intact."""
    folder = tmp_path / "small"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(folder)]
    if os.geteuid() != 0 or subprocess.run(mount).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        sc = StorageController("cluster1", folder, "127.0.0.1")
        # a volume made while the disk had room (a 1 GiB file costs a few hundred KiB: it is sparse)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(sc.files.volume(VOL)), "1G"], check=True)
        room = sc.describe()
        assert room.free_bytes - room.reserve_bytes < 1024**3  # the whole size counts, not the sparse file
        with pytest.raises(CloudError) as large:
            sc.create_volume(c.CreateVolume("vol-00000000000000008", 1))
        assert large.value.code == "InsufficientVolumeCapacity"
        assert "MiB free" in large.value.message and "1 GiB" in large.value.message
        (folder / "filler").write_bytes(b"\0" * (80 * 1024 * 1024))  # leaves < 256 MiB free
        before = sorted(p.name for p in folder.rglob("*"))
        for attempt in (
            lambda: sc.create_volume(c.CreateVolume("vol-00000000000000009", 1)),
            lambda: sc.create_snapshot(c.SnapshotRequest(SNAP, VOL)),
        ):
            with pytest.raises(CloudError) as full:
                attempt()
            assert full.value.code == "InsufficientVolumeCapacity" and "MiB free" in full.value.message
        assert sorted(p.name for p in folder.rglob("*")) == before  # no partial volume or snapshot
        assert image_info(sc.files.volume(VOL))["virtual-size"] == 1024**3  # the existing volume is intact
        check = subprocess.run(["qemu-img", "check", "-q", str(sc.files.volume(VOL))], capture_output=True)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        subprocess.run(["umount", str(folder)], check=True)
