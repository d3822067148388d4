"""The image registry: machine images with their kernel and ramdisk images (EC2's ami/aki/ari).

Image files are copied into the state folder so that a registered image keeps working when the
build cache changes; a node reads them from there (a remote node will fetch them by digest).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudlab.clc.store import Store
from cloudlab.clc.tags import Tags
from cloudlab.clc.uploads import UploadPolicy
from cloudlab.errors import CloudError
from cloudlab.guest import DEFAULT_IMAGE_NAME
from cloudlab.ids import new_id

AMI_NAME_RE = re.compile(r"^[A-Za-z0-9()\[\] ./\-'@_]{3,128}$")


@dataclass(frozen=True)
class Image:
    image_id: str
    name: str
    kind: str  # machine, kernel or ramdisk
    owner: str
    kernel_id: str | None
    ramdisk_id: str | None
    path: str | None
    sha256: str | None
    state: str
    description: str | None
    is_public: bool
    created: float


#: Kernels and ramdisks registered from a bucket: their bytes stay there, a node fetches them (by digest).
OBJECTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS image_objects (
    image_id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL, version_id TEXT,
    size INTEGER NOT NULL, sha256 TEXT NOT NULL);
"""


@dataclass(frozen=True)
class BootFile:
    """A kernel or ramdisk as a node gets it: a file the cloud holds (``path``), or an object to fetch."""

    image_id: str
    owner: str
    sha256: str | None
    path: Path | None = None
    bucket: str | None = None
    key: str | None = None
    version_id: str | None = None
    size: int = 0


def _row_to_image(row: object) -> Image:
    return Image(**{name: row[name] for name in Image.__dataclass_fields__})  # type: ignore[index]


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


#: The file names RegisterImage looks for in an ImageLocation folder, by role.
LOCATION_FILES: dict[str, tuple[str, ...]] = {
    "kernel": ("vmlinuz", "kernel", "bzImage"),
    "ramdisk": ("initrd.img", "initrd", "ramdisk"),
    "disk": ("disk.img",),
}


class Images:
    def __init__(self, store: Store, images_dir: Path, uploads: UploadPolicy | None = None) -> None:
        self._store = store
        self._dir = images_dir
        # Where ordinary users may register from (see clc/uploads.py); the default is <state>/uploads.
        self.uploads = uploads or UploadPolicy(images_dir.parent / "uploads")
        store.ensure_schema(OBJECTS_SCHEMA)

    def get(self, image_id: str) -> Image | None:
        row = self._store.one("SELECT * FROM images WHERE image_id=?", (image_id,))
        return _row_to_image(row) if row else None

    def list(self) -> list[Image]:
        """Every image that is not deregistered."""
        return [
            _row_to_image(r)
            for r in self._store.query("SELECT * FROM images WHERE state != 'deregistered' ORDER BY created, image_id")
        ]

    def by_name(self, name: str) -> Image | None:
        row = self._store.one(
            "SELECT * FROM images WHERE name=? AND kind='machine' AND state='available' ORDER BY created DESC", (name,)
        )
        return _row_to_image(row) if row else None

    def _store_file(self, source: Path, digest: str) -> Path:
        """Copy (or hard-link) ``source`` into the image store under its digest."""
        target = self._dir / digest[:2] / digest
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        return target

    def register(
        self,
        name: str,
        kernel: Path,
        ramdisk: Path | None,
        *,
        owner: str,
        description: str = "",
        public: bool = True,
        disk: Path | None = None,
        digests: dict[Path, str] | None = None,
    ) -> Image:
        """Register a machine image from a kernel, an optional ramdisk and an optional disk the cloud can read.

        ``digests``: sha256 already known for some of the files (a built image's manifest), so a
        large disk is not read again at every start of the cloud."""
        known = digests or {}
        for path in (kernel, ramdisk, disk):
            if path is not None and not path.is_file():
                raise CloudError("InvalidParameterValue", f"image file {path} does not exist or is not a file")
        now = time.time()
        parts: dict[str, tuple[str, str, Path]] = {}
        for kind, prefix, path in (("kernel", "aki", kernel), ("ramdisk", "ari", ramdisk)):
            if path is None:
                continue
            digest = known.get(path) or file_sha256(path)
            # (a part kept in a user's bucket is that user's, never shared with a registered file's image)
            existing = self._store.one(
                "SELECT image_id FROM images WHERE kind=? AND sha256=? AND path IS NOT NULL", (kind, digest)
            )
            stored = self._store_file(path, digest)
            parts[kind] = (existing["image_id"] if existing else new_id(prefix), digest, stored)
        machine_id = new_id("ami")
        disk_path = str(self._store_file(disk, known.get(disk) or file_sha256(disk))) if disk is not None else None
        with self._store.transaction() as db:
            for kind, (image_id, digest, stored) in parts.items():
                db.execute(
                    "INSERT OR IGNORE INTO images (image_id, name, kind, owner, path, sha256, state, description,"
                    " is_public, created) VALUES (?,?,?,?,?,?,'available',?,?,?)",
                    (image_id, f"{name}-{kind}", kind, owner, str(stored), digest, description, int(public), now),
                )
            db.execute(
                "INSERT INTO images (image_id, name, kind, owner, kernel_id, ramdisk_id, path, state, description,"
                " is_public, created) VALUES (?,?,'machine',?,?,?,?,'available',?,?,?)",
                (
                    machine_id,
                    name,
                    owner,
                    parts["kernel"][0],
                    parts.get("ramdisk", (None,))[0],
                    disk_path,
                    description,
                    int(public),
                    now,
                ),
            )
        image = self.get(machine_id)
        assert image is not None
        return image

    def register_default(
        self,
        kernel: Path,
        ramdisk: Path,
        owner: str,
        description: str,
        *,
        name: str = DEFAULT_IMAGE_NAME,
        disk: Path | None = None,
        digests: dict[Path, str] | None = None,
    ) -> tuple[Image, bool]:
        """Register a built image (``cloudlab-default``, or ``name``) unless the same files are already
        registered under its name.

        Returns the image and whether it was newly registered. An older image of that name with other
        files is renamed aside (``<name>-<date>``) so that ``Name=<name>`` stays unique.
        """
        known = digests or {}

        def digest(path: Path) -> str:
            return known.get(path) or file_sha256(path)

        current = self.by_name(name)
        if current is not None:
            k = self.get(current.kernel_id or "")
            r = self.get(current.ramdisk_id or "")
            same_disk = (current.path is None) if disk is None else (Path(current.path or "").name == digest(disk))
            if k and r and k.sha256 == digest(kernel) and r.sha256 == digest(ramdisk) and same_disk:
                return current, False
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(current.created))
            with self._store.transaction() as db:
                db.execute("UPDATE images SET name=? WHERE image_id=?", (f"{name}-{stamp}", current.image_id))
        image = self.register(name, kernel, ramdisk, owner=owner, description=description, disk=disk, digests=known)
        return image, True

    def check_new_name(self, owner: str, name: str) -> None:
        """EC2's AMI name rules: 3-128 characters of a small set, unique per owner."""
        if not AMI_NAME_RE.match(name):
            raise CloudError(
                "InvalidAMIName.Malformed",
                f"AMI name {name!r} must be 3-128 letters, digits or ( ) [ ] space . / - ' @ _",
            )
        if self._store.one(
            "SELECT 1 FROM images WHERE owner=? AND name=? AND kind='machine' AND state='available'", (owner, name)
        ):
            raise CloudError("InvalidAMIName.Duplicate", f"AMI name {name} is already in use by an image you own")

    def register_location(
        self, owner: str, name: str, location: str, description: str = "", *, admin: bool = False
    ) -> Image:
        """RegisterImage from ``ImageLocation``: a folder with the kernel (``vmlinuz`` or ``kernel``),
        optionally the ramdisk (``initrd.img``, ``initrd`` or ``ramdisk``) and a disk (``disk.img``,
        attached read-only as vda). New images are private, as in EC2.

        An ordinary user names a folder under their own upload folder, and its files are checked and
        copied as :mod:`cloudlab.clc.uploads` says; the administrator may name any folder of the host."""
        self.check_new_name(owner, name)
        if not admin:
            folder = self.uploads.resolve(owner, location)
            with self.uploads.staged(folder, LOCATION_FILES, location, self._dir) as found:
                return self._register_found(owner, name, location, description, found)
        folder = Path(location.removeprefix("file://")).expanduser()
        if not folder.is_absolute() or not folder.is_dir():
            raise CloudError(
                "InvalidParameterValue",
                f"ImageLocation {location!r} must be an absolute path of a folder the cloud can read, "
                "holding vmlinuz (and optionally initrd.img and disk.img)",
            )
        found = {
            role: path
            for role, names in LOCATION_FILES.items()
            if (path := next((folder / n for n in names if (folder / n).is_file()), None)) is not None
        }
        return self._register_found(owner, name, location, description, found)

    def _register_found(self, owner: str, name: str, location: str, description: str, found: dict[str, Path]) -> Image:
        if "kernel" not in found:
            raise CloudError("InvalidParameterValue", f"ImageLocation {location!r} holds no vmlinuz (or kernel) file")
        return self.register(
            name,
            found["kernel"],
            found.get("ramdisk"),
            owner=owner,
            description=description,
            public=False,
            disk=found.get("disk"),
        )

    def register_parts(
        self, owner: str, name: str, kernel_id: str, ramdisk_id: str | None, description: str = "", visible: Any = None
    ) -> Image:
        """RegisterImage from an existing kernel image (aki) and optional ramdisk image (ari)."""
        self.check_new_name(owner, name)
        kernel = self.get(kernel_id)
        if kernel is None or kernel.kind != "kernel" or (visible and not visible(kernel)):
            raise CloudError("InvalidAKIID.NotFound", f"The kernel image id '[{kernel_id}]' does not exist")
        if ramdisk_id:
            ramdisk = self.get(ramdisk_id)
            if ramdisk is None or ramdisk.kind != "ramdisk" or (visible and not visible(ramdisk)):
                raise CloudError("InvalidARIID.NotFound", f"The ramdisk image id '[{ramdisk_id}]' does not exist")
        machine_id = new_id("ami")
        with self._store.transaction() as db:
            db.execute(
                "INSERT INTO images (image_id, name, kind, owner, kernel_id, ramdisk_id, state, description,"
                " is_public, created) VALUES (?,?,'machine',?,?,?,'available',?,0,?)",
                (machine_id, name, owner, kernel_id, ramdisk_id or None, description, time.time()),
            )
        image = self.get(machine_id)
        assert image is not None
        return image

    def deregister(self, image_id: str) -> None:
        """The image can no longer be launched or described; running instances keep running."""
        with self._store.transaction() as db:
            db.execute("UPDATE images SET state='deregistered' WHERE image_id=?", (image_id,))
            Tags.remove_resource(db, image_id)

    def boot_files(self, image: Image) -> tuple[BootFile, BootFile | None]:
        """The kernel and ramdisk that boot a machine image, each a file here or an object in a bucket."""
        kernel = self._boot_file(image.kernel_id)
        if kernel is None:
            raise CloudError("InvalidAMIID.Unavailable", f"image {image.image_id} has no kernel")
        return kernel, self._boot_file(image.ramdisk_id)

    def _boot_file(self, image_id: str | None) -> BootFile | None:
        part = self.get(image_id) if image_id else None
        if part is None:
            return None
        if part.path:
            return BootFile(part.image_id, part.owner, part.sha256, path=Path(part.path))
        row = self._store.one("SELECT * FROM image_objects WHERE image_id=?", (part.image_id,))
        if row is None:
            return None
        return BootFile(part.image_id, part.owner, row["sha256"], bucket=row["bucket"], key=row["key"],
                        version_id=row["version_id"], size=row["size"])  # fmt: skip

    def files(self, image: Image) -> tuple[Path | None, Path | None]:
        """The kernel and ramdisk paths that boot a machine image (None for a part kept in a bucket)."""
        kernel, ramdisk = self.boot_files(image)
        return kernel.path, ramdisk.path if ramdisk else None
