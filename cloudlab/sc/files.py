"""Volumes and snapshots as qcow2 files, made and copied with ``qemu-img``.

Every file appears whole or not at all: it is written under a temporary name and renamed into
place, so a killed SC leaves either no volume or a complete one (a stray ``.tmp`` is removed the
next time the same volume or snapshot is made). Volumes are sparse: a new 1 GiB volume costs a few
hundred KiB until the guest writes to it.

A full disk: a new volume is refused (``InsufficientVolumeCapacity``) unless its whole size fits in
the free space, less :data:`RESERVE_BYTES`; a snapshot unless its copy (the volume's allocated bytes)
does. The whole size, although the file is sparse: a volume that could never be filled is a failure
postponed into the guest (a write that finds the disk full stops the guest), so it is refused while
the user can still choose; volumes that each fit may together promise more than the disk holds
(thin provisioning, as the guests rarely fill their volumes), and the reserve keeps room for their
growth, for snapshots, and for qcow2's metadata, so that a volume already in use is never the one
that breaks. Nothing is written before the check, so a refusal leaves no partial file.

* a blank volume: ``qemu-img create -f qcow2``;
* a root volume: a copy-on-write overlay whose backing file is the image's disk (the image file is
  never written; registered image files are never deleted, so the backing stays);
* a snapshot: a standalone qcow2 copy of the volume (``qemu-img convert``), read from the volume's
  NBD export while it is attached (through the same qemu-nbd that serves the guest) or from the
  file when it is not;
* a volume from a snapshot: a copy of the snapshot, grown to the requested size, so snapshots and
  volumes can be deleted in any order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from cloudlab.contract import CreateVolume, NbdExport, SnapshotMade, VolumeMade
from cloudlab.errors import CloudError

GIB = 1024**3
QEMU_IMG_TIMEOUT_S = 600.0
#: Space kept free on the SC's disk: a CreateVolume that would leave less is refused.
RESERVE_BYTES = 256 * 1024**2


def qemu_img(*args: str, timeout: float = QEMU_IMG_TIMEOUT_S) -> str:
    """Run ``qemu-img``; a failure is a CloudError with its own message (one line)."""
    try:
        done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise CloudError("InternalError", "qemu-img is not installed (apt-get install qemu-utils)") from None
    except subprocess.TimeoutExpired:
        raise CloudError("InternalError", f"qemu-img {args[0]} took longer than {timeout:g} s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise CloudError("InternalError", f"qemu-img {args[0]} failed: {detail[-1] if detail else done.returncode}")
    return done.stdout


def image_info(path: Path | str, *, shared: bool = False) -> dict:
    """``qemu-img info`` of a file (or an ``nbd://`` URL) as a dict (format, virtual-size, actual-size)."""
    args = ["info", "--output=json"] + (["-U"] if shared else []) + [str(path)]
    return json.loads(qemu_img(*args, timeout=30))


class VolumeFiles:
    """The SC's folder: ``volumes/vol-*.qcow2`` and ``snapshots/snap-*.qcow2``."""

    def __init__(self, root: Path) -> None:
        self.volumes = root / "volumes"
        self.snapshots = root / "snapshots"
        for folder in (self.volumes, self.snapshots):
            folder.mkdir(parents=True, exist_ok=True)

    def volume(self, volume_id: str) -> Path:
        return self.volumes / f"{volume_id}.qcow2"

    def snapshot(self, snapshot_id: str) -> Path:
        return self.snapshots / f"{snapshot_id}.qcow2"

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.volumes).free

    def volume_ids(self) -> list[str]:
        return sorted(p.stem for p in self.volumes.glob("vol-*.qcow2"))

    def snapshot_ids(self) -> list[str]:
        return sorted(p.stem for p in self.snapshots.glob("snap-*.qcow2"))

    def made(self, volume_id: str) -> VolumeMade:
        path = self.volume(volume_id)
        info = image_info(path, shared=True)
        return VolumeMade(volume_id, int(info["virtual-size"]), path.stat().st_blocks * 512)

    def create(self, request: CreateVolume) -> VolumeMade:
        """Make the volume unless it exists (a retried request after a lost reply makes it once)."""
        path = self.volume(request.volume_id)
        if path.exists():
            return self.made(request.volume_id)
        size = request.size_gib * GIB
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        if request.snapshot_id is not None:
            source = self.snapshot(request.snapshot_id)
            if not source.exists():
                raise CloudError("InvalidSnapshot.NotFound", f"The snapshot '{request.snapshot_id}' does not exist")
            self._check_space(max(size, int(image_info(source)["virtual-size"])), "volume")
            qemu_img("convert", "-O", "qcow2", str(source), str(tmp))
            if int(image_info(tmp)["virtual-size"]) < size:
                qemu_img("resize", str(tmp), str(size))
        elif request.backing is not None:
            backing = Path(request.backing)
            if not backing.is_file():
                raise CloudError("InvalidAMIID.Unavailable", f"the image disk {backing} is missing on the SC")
            info = image_info(backing)
            size = max(size, int(info["virtual-size"]))
            self._check_space(size, "volume")
            qemu_img("create", "-q", "-f", "qcow2", "-b", str(backing), "-F", info["format"], str(tmp), str(size))
        else:
            self._check_space(size, "volume")
            qemu_img("create", "-q", "-f", "qcow2", str(tmp), str(size))
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return self.made(request.volume_id)

    def _check_space(self, needed: int, what: str) -> None:
        """Refuse what would leave less than the reserve free (see the module's docstring)."""
        free = self.free_bytes()
        if free - needed < RESERVE_BYTES:
            raise CloudError(
                "InsufficientVolumeCapacity",
                f"the storage controller has {free // 1024**2} MiB free, too little for a new {what} of "
                f"{_size(needed)} (it keeps {RESERVE_BYTES // 1024**2} MiB in reserve)",
            )

    def delete(self, volume_id: str) -> None:
        self.volume(volume_id).unlink(missing_ok=True)

    def take_snapshot(self, snapshot_id: str, volume_id: str, export: NbdExport | None) -> SnapshotMade:
        """Copy the volume into a standalone snapshot (through its export while a guest uses it)."""
        target = self.snapshot(snapshot_id)
        start = time.monotonic()
        if not target.exists():
            source = self.volume(volume_id)
            if not source.exists():
                raise CloudError("InvalidVolume.NotFound", f"The volume '{volume_id}' does not exist")
            self._check_space(source.stat().st_blocks * 512, "snapshot")
            tmp = target.with_name(target.name + ".tmp")
            tmp.unlink(missing_ok=True)
            if export is not None:  # qemu-nbd holds the file's write lock and has the coherent view
                url = f"nbd://{export.host}:{export.port}/{export.name}"
                qemu_img("convert", "-f", "raw", "-O", "qcow2", url, str(tmp))
            else:
                qemu_img("convert", "-O", "qcow2", str(source), str(tmp))
            _fsync(tmp)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        size = int(image_info(target)["virtual-size"])
        return SnapshotMade(snapshot_id, size, round(time.monotonic() - start, 3))

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.snapshot(snapshot_id).unlink(missing_ok=True)


def _size(count: int) -> str:
    return f"{count / GIB:g} GiB" if count >= GIB else f"{count / 1024**2:.0f} MiB"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
