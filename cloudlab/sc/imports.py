"""Snapshots imported from a disk image in the object store (EC2's ImportSnapshot, from Walrus).

The SC fetches the image from a presigned GET (the CLC checked that the user may read the object),
streams it to a temporary file beside the snapshots, and converts it with ``qemu-img`` into a
standalone qcow2 snapshot, renamed into place whole (as every SC file is). The user's bytes are
never trusted as a format: the image is opened only as the format the user declared (``raw`` or
``qcow2``, never probed), and a qcow2 that names a backing file or an external data file is refused,
since either would make the SC read a file of the host (another volume, ``/etc/shadow``) into the
user's snapshot.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from cloudlab.contract import ImportSnapshot, SnapshotMade
from cloudlab.errors import CloudError
from cloudlab.sc.files import GIB, VolumeFiles, _fsync, _fsync_dir, image_info, qemu_img

CHUNK = 1024 * 1024
FETCH_TIMEOUT_S = 60.0
FORMATS = ("raw", "qcow2")
MAX_VIRTUAL_BYTES = 16384 * GIB  # EC2's largest volume


def import_snapshot(files: VolumeFiles, request: ImportSnapshot) -> SnapshotMade:
    """Make ``request.snapshot_id`` from the image at ``request.url`` unless it exists (idempotent)."""
    import time

    target = files.snapshot(request.snapshot_id)
    start = time.monotonic()
    if not target.exists():
        if request.format not in FORMATS:
            raise CloudError("InvalidParameterValue", f"disk image format {request.format!r} is not raw or qcow2")
        fetched = target.with_name(target.name + ".import")
        tmp = target.with_name(target.name + ".tmp")
        try:
            files._check_space(2 * request.size, "imported snapshot")  # the download and its conversion
            _fetch(request.url, fetched, request.size)
            info = json.loads(qemu_img("info", "--output=json", "-f", request.format, str(fetched), timeout=30))
            _check_image(info, request.format)
            tmp.unlink(missing_ok=True)
            qemu_img("convert", "-f", request.format, "-O", "qcow2", str(fetched), str(tmp))
            _fsync(tmp)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        finally:
            fetched.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
    size = int(image_info(target)["virtual-size"])
    return SnapshotMade(request.snapshot_id, size, round(time.monotonic() - start, 3))


def _check_image(info: dict, declared: str) -> None:
    if info.get("format") != declared:
        raise CloudError("InvalidParameterValue", f"the disk image is {info.get('format')}, not {declared}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise CloudError("InvalidParameterValue", "the disk image names a backing file: give a standalone image")
    if (info.get("format-specific") or {}).get("data", {}).get("data-file"):
        raise CloudError("InvalidParameterValue", "the disk image names an external data file")
    if not 0 < int(info.get("virtual-size", 0)) <= MAX_VIRTUAL_BYTES:
        raise CloudError("InvalidParameterValue", f"the disk image's size must be 1 byte to {MAX_VIRTUAL_BYTES} bytes")


def _fetch(url: str, path: Path, size: int) -> None:
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as answer, path.open("wb") as out:  # noqa: S310 - a URL the CLC signed
            while chunk := answer.read(CHUNK):
                received += len(chunk)
                if received > size:
                    raise CloudError("InvalidParameterValue", "the disk image is larger than when it was imported")
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise CloudError("InvalidParameterValue", f"fetching the disk image: HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise CloudError("InvalidParameterValue", f"fetching the disk image failed: {exc.reason}") from None
    if received != size:
        raise CloudError("InvalidParameterValue", f"the disk image is {received} bytes, not {size}")
