"""Machine images registered from a bucket (``RegisterImage ImageLocation=BUCKET/NAME/manifest.json``).

As Eucalyptus registered bundles from Walrus: the image's files are objects in one of the user's
buckets and a small manifest names them. ``cloudlab image upload NAME --bucket B`` writes both.
The manifest (JSON, :data:`MANIFEST_FORMAT`)::

    {"format": "cloudlab-image/1", "name": "NAME",
     "files": {"kernel":  {"key": "NAME/vmlinuz",    "size": 123, "sha256": "..."},
               "ramdisk": {"key": "NAME/initrd.img", "size": 456, "sha256": "..."},
               "disk":    {"key": "NAME/disk.img",   "size": 789, "sha256": "..."}}}

Registration reads every object *as the registering user* (another user's private bucket reads as
``InvalidManifest``), checks each file's size against the cloud's image limit and its SHA-256 against
the manifest, and records the object version it read. The kernel and ramdisk stay in the bucket: a
node fetches them when it boots an instance and keeps them in its cache by digest (it checks the
digest it fetched, so a later change to the object is refused, never booted). The disk becomes the
backing file of each instance's root volume, which the storage controller needs as a file: it is
copied into the image store once, by digest, checked like any uploaded disk (no backing file).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from cloudlab.clc import objects as obj
from cloudlab.clc.images import Image
from cloudlab.clc.users import User
from cloudlab.errors import CloudError
from cloudlab.ids import new_id

MANIFEST_FORMAT = "cloudlab-image/1"
MANIFEST_NAME = "manifest.json"
MANIFEST_MAX_BYTES = 64 * 1024
ROLES = ("kernel", "ramdisk", "disk")
_PREFIX = {"kernel": "aki", "ramdisk": "ari"}


def is_bucket_location(location: str) -> bool:
    """Whether an ImageLocation names a manifest in a bucket (``s3://B/K`` or ``B/.../manifest.json``)."""
    return location.startswith("s3://") or (location.endswith(MANIFEST_NAME) and not location.startswith("/"))


def split_location(location: str) -> tuple[str, str]:
    bucket, _, key = location.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise CloudError("InvalidParameterValue", f"ImageLocation {location[:200]!r} must be BUCKET/KEY of a manifest")
    return bucket, key


def manifest(name: str, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest that names ``files`` (role -> key, size, sha256): what ``image upload`` writes."""
    return {"format": MANIFEST_FORMAT, "name": name, "files": files}


def _bad(location: str, why: str) -> CloudError:
    return CloudError("InvalidManifest", f"the manifest {location[:200]!r} cannot be used: {why}")


class BucketImages:
    """RegisterImage from a manifest in a bucket (``clc.service(BucketImages)``)."""

    def __init__(self, clc: Any) -> None:
        self.clc = clc

    def register(self, user: User, name: str, location: str, description: str = "") -> Image:
        images = self.clc.images
        images.check_new_name(user.name, name)
        objects = obj.require(self.clc.objects)
        bucket, key = split_location(location)
        ref = obj.lookup(objects, user, bucket, key, "InvalidManifest")
        try:
            found = json.loads(obj.read_all(objects, user, ref, MANIFEST_MAX_BYTES, "InvalidManifest"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _bad(location, "it is not JSON") from None
        files = found.get("files") if isinstance(found, dict) else None
        if not isinstance(found, dict) or found.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise _bad(location, f'it is not a {MANIFEST_FORMAT} manifest ({{"format": ..., "files": {{...}}}})')
        if "kernel" not in files or set(files) - set(ROLES):
            raise _bad(location, f"its files must be a kernel and optionally {', '.join(ROLES[1:])}")
        checked = {role: self._check_file(objects, user, bucket, location, role, files[role]) for role in files}
        disk = self._store_disk(objects, user, checked["disk"], location) if "disk" in checked else None
        return self._record(user, name, description, checked, disk)

    def _check_file(
        self, objects: obj.ObjectStore, user: User, bucket: str, location: str, role: str, entry: Any
    ) -> tuple[obj.ObjectRef, str]:
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise _bad(location, f"its {role} has no key")
        ref = obj.lookup(objects, user, bucket, entry["key"], "InvalidManifest")
        limit = self.clc.images.uploads.max_file_bytes
        if ref.size > limit:
            raise CloudError("InvalidParameterValue", f"the {role} is {ref.size} bytes; the limit is {limit}")
        if entry.get("size") is not None and entry["size"] != ref.size:
            raise _bad(location, f"its {role} is {ref.size} bytes, not the {entry['size']} it says")
        digest = obj.sha256_of(objects, user, ref, "InvalidManifest")
        if entry.get("sha256") is not None and entry["sha256"] != digest:
            raise _bad(location, f"the {role}'s SHA-256 is {digest}, not the {entry['sha256']} it says")
        return ref, digest

    def _store_disk(
        self, objects: obj.ObjectStore, user: User, checked: tuple[obj.ObjectRef, str], location: str
    ) -> Path:
        """The disk copied into the image store (by digest, once), refused if it refers to other files."""
        from cloudlab.sc.files import image_info  # qemu-img's view, as the SC will read the backing file

        ref, digest = checked
        images_dir: Path = self.clc.images._dir
        images_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".bucket-disk-", dir=images_dir)
        tmp = Path(name)
        try:
            hasher = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, obj._open(objects, user, ref, "InvalidManifest") as data:
                for chunk in data.chunks():
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if hasher.hexdigest() != digest:  # changed since it was checked
                raise _bad(location, "the disk changed while it was read")
            info = image_info(tmp)
            if info.get("backing-filename") or info.get("format-specific", {}).get("data", {}).get("data-file"):
                raise _bad(location, "the disk refers to another file (backing or data file)")
            return self.clc.images._store_file(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)

    def _record(
        self, user: User, name: str, description: str, checked: dict[str, tuple[obj.ObjectRef, str]], disk: Path | None
    ) -> Image:
        now = time.time()
        ids = {role: new_id(_PREFIX[role]) for role in ("kernel", "ramdisk") if role in checked}
        machine_id = new_id("ami")
        with self.clc.store.transaction() as db:
            for role, image_id in ids.items():
                ref, digest = checked[role]
                db.execute(
                    "INSERT INTO images (image_id, name, kind, owner, path, sha256, state, description, is_public,"
                    " created) VALUES (?,?,?,?,NULL,?,'available',?,0,?)",
                    (image_id, f"{name}-{role}", role, user.name, digest, description, now),
                )
                db.execute(
                    "INSERT INTO image_objects (image_id, bucket, key, version_id, size, sha256) VALUES (?,?,?,?,?,?)",
                    (image_id, ref.bucket, ref.key, ref.version_id, ref.size, digest),
                )
            db.execute(
                "INSERT INTO images (image_id, name, kind, owner, kernel_id, ramdisk_id, path, state, description,"
                " is_public, created) VALUES (?,?,'machine',?,?,?,?,'available',?,0,?)",
                (
                    machine_id,
                    name,
                    user.name,
                    ids["kernel"],
                    ids.get("ramdisk"),
                    str(disk) if disk else None,
                    description,
                    now,
                ),  # fmt: skip
            )
        image = self.clc.images.get(machine_id)
        assert image is not None
        return image
