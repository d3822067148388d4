"""The image registry: machine images with their kernel and ramdisk images (EC2's ami/aki/ari).

Image files are copied into the state folder so that a registered image keeps working when the
build cache changes; a node reads them from there (a remote node will fetch them by digest).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cloudlab.clc.store import Store
from cloudlab.errors import CloudError
from cloudlab.ids import new_id

DEFAULT_IMAGE_NAME = "cloudlab-default"


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


def _row_to_image(row: object) -> Image:
    return Image(**{name: row[name] for name in Image.__dataclass_fields__})  # type: ignore[index]


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class Images:
    def __init__(self, store: Store, images_dir: Path) -> None:
        self._store = store
        self._dir = images_dir

    def get(self, image_id: str) -> Image | None:
        row = self._store.one("SELECT * FROM images WHERE image_id=?", (image_id,))
        return _row_to_image(row) if row else None

    def list(self) -> list[Image]:
        return [_row_to_image(r) for r in self._store.query("SELECT * FROM images ORDER BY created, image_id")]

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
        self, name: str, kernel: Path, ramdisk: Path | None, *, owner: str, description: str = "", public: bool = True
    ) -> Image:
        """Register a machine image from a kernel and an optional ramdisk the cloud can read."""
        for path in (kernel, ramdisk):
            if path is not None and not path.is_file():
                raise CloudError("InvalidParameterValue", f"image file {path} does not exist or is not a file")
        now = time.time()
        parts: dict[str, tuple[str, str, Path]] = {}
        for kind, prefix, path in (("kernel", "aki", kernel), ("ramdisk", "ari", ramdisk)):
            if path is None:
                continue
            digest = file_sha256(path)
            existing = self._store.one("SELECT image_id FROM images WHERE kind=? AND sha256=?", (kind, digest))
            stored = self._store_file(path, digest)
            parts[kind] = (existing["image_id"] if existing else new_id(prefix), digest, stored)
        machine_id = new_id("ami")
        with self._store.transaction() as db:
            for kind, (image_id, digest, stored) in parts.items():
                db.execute(
                    "INSERT OR IGNORE INTO images (image_id, name, kind, owner, path, sha256, state, description,"
                    " is_public, created) VALUES (?,?,?,?,?,?,'available',?,?,?)",
                    (image_id, f"{name}-{kind}", kind, owner, str(stored), digest, description, int(public), now),
                )
            db.execute(
                "INSERT INTO images (image_id, name, kind, owner, kernel_id, ramdisk_id, state, description,"
                " is_public, created) VALUES (?,?,'machine',?,?,?,'available',?,?,?)",
                (
                    machine_id,
                    name,
                    owner,
                    parts["kernel"][0],
                    parts.get("ramdisk", (None,))[0],
                    description,
                    int(public),
                    now,
                ),
            )
        image = self.get(machine_id)
        assert image is not None
        return image

    def register_default(self, kernel: Path, ramdisk: Path, owner: str, description: str) -> tuple[Image, bool]:
        """Register the built default image unless the same files are already registered under its name.

        Returns the image and whether it was newly registered. An older default image with other
        files is renamed aside (``cloudlab-default-<date>``) so that ``Name=cloudlab-default`` stays unique.
        """
        current = self.by_name(DEFAULT_IMAGE_NAME)
        if current is not None:
            k = self.get(current.kernel_id or "")
            r = self.get(current.ramdisk_id or "")
            if k and r and k.sha256 == file_sha256(kernel) and r.sha256 == file_sha256(ramdisk):
                return current, False
            stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(current.created))
            with self._store.transaction() as db:
                db.execute(
                    "UPDATE images SET name=? WHERE image_id=?", (f"{DEFAULT_IMAGE_NAME}-{stamp}", current.image_id)
                )
        return self.register(DEFAULT_IMAGE_NAME, kernel, ramdisk, owner=owner, description=description), True

    def files(self, image: Image) -> tuple[Path, Path | None]:
        """The kernel and ramdisk paths that boot a machine image."""
        kernel = self.get(image.kernel_id or "")
        if kernel is None or not kernel.path:
            raise CloudError("InvalidAMIID.Unavailable", f"image {image.image_id} has no kernel")
        ramdisk = self.get(image.ramdisk_id) if image.ramdisk_id else None
        return Path(kernel.path), Path(ramdisk.path) if ramdisk and ramdisk.path else None
