"""EBS-backed machine images: an AMI whose root is a snapshot (CreateImage, RegisterImage with a root snapshot).

As on EC2, such an image is its kernel (and ramdisk) plus a snapshot of a root volume; each instance
of it gets a root volume made from that snapshot. CreateImage snapshots the instance's root volume
(with the guest paused while the SC copies it, so the copy is crash-consistent) and registers the
image ``pending``; it becomes ``available`` when the snapshot completes (``failed`` if it fails).
Without ``NoReboot`` the instance is rebooted once the copy is made, as EC2 reboots it. Deregistering
the image leaves the snapshot, which stays its owner's to delete.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cloudlab.clc.snapshots import Snapshots
from cloudlab.clc.store import Store
from cloudlab.clc.users import User
from cloudlab.clc.volumes import ROOT_DEVICE, Volumes
from cloudlab.errors import CloudError
from cloudlab.ids import new_id

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS image_roots (
    image_id TEXT PRIMARY KEY, snapshot_id TEXT NOT NULL, device TEXT NOT NULL, size_gib INTEGER NOT NULL,
    instance_id TEXT, reboot INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS image_roots_by_snapshot ON image_roots(snapshot_id);
"""


class EbsImages:
    """The root snapshots of machine images (``clc.service(EbsImages)``)."""

    def __init__(self, clc: Any) -> None:
        self.clc = clc
        self.store: Store = clc.store
        self.store.ensure_schema(SCHEMA)

    def root_of(self, image_id: str) -> dict[str, Any] | None:
        row = self.store.one("SELECT * FROM image_roots WHERE image_id=?", (image_id,))
        return dict(row) if row else None

    def roots_of(self, image_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not image_ids:
            return {}
        rows = self.store.query(
            f"SELECT * FROM image_roots WHERE image_id IN ({','.join('?' * len(image_ids))})", image_ids
        )
        return {r["image_id"]: dict(r) for r in rows}

    def create_image(
        self, user: User, instance_id: str, name: str, description: str = "", *, no_reboot: bool = False
    ) -> str:
        """CreateImage: the instance's root volume snapshotted, a new private AMI registered ``pending``."""
        [instance] = self.clc.records.visible(user, [instance_id])
        if instance["state"] not in ("running", "stopped"):
            state = instance["state"]
            message = f"The instance '{instance_id}' is '{state}': not running or stopped"
            raise CloudError("IncorrectInstanceState", message)
        volumes = self.clc.service(Volumes).of_instances([instance_id]).get(instance_id, [])
        root = next((v for v in volumes if v["is_root"]), None)
        if root is None:
            raise CloudError(
                "InvalidParameterValue",
                f"The instance '{instance_id}' has no root volume (its image boots from a ramdisk): "
                "CreateImage needs an EBS-backed instance",
            )
        source = self.clc.images.get(instance["image_id"])
        if source is None or not source.kernel_id:
            raise CloudError("InvalidAMIID.Unavailable", f"the image of {instance_id} is gone")
        self.clc.images.check_new_name(user.name, name)
        snapshot = self.clc.service(Snapshots).create(
            user, root["volume_id"], description=f"Created by CreateImage({instance_id}) for {name}"
        )
        image_id = new_id("ami")
        now = time.time()
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO images (image_id, name, kind, owner, kernel_id, ramdisk_id, state, description,"
                " is_public, created) VALUES (?,?,'machine',?,?,?,'pending',?,0,?)",
                (image_id, name, user.name, source.kernel_id, source.ramdisk_id, description, now),
            )
            db.execute(
                "INSERT INTO image_roots (image_id, snapshot_id, device, size_gib, instance_id, reboot, created)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    image_id,
                    snapshot["snapshot_id"],
                    ROOT_DEVICE,
                    root["size_gib"],
                    instance_id,
                    int(not no_reboot and instance["state"] == "running"),
                    now,
                ),
            )
        return image_id

    def register_with_root(
        self, user: User, name: str, kernel_id: str, ramdisk_id: str | None, snapshot_id: str, description: str = ""
    ) -> str:
        """RegisterImage with a root snapshot in its BlockDeviceMappings (the kernel and ramdisk by id)."""
        snapshot = self.clc.service(Snapshots).one(user, snapshot_id, usable=True)

        def visible(part: Any) -> bool:
            return bool(part.is_public or part.owner == user.name or user.is_admin)

        image = self.clc.images.register_parts(user.name, name, kernel_id, ramdisk_id, description, visible=visible)
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO image_roots (image_id, snapshot_id, device, size_gib, created) VALUES (?,?,?,?,?)",
                (image.image_id, snapshot_id, ROOT_DEVICE, snapshot["volume_size"], time.time()),
            )
        return image.image_id

    def snapshot_finished(self, snapshot_id: str, completed: bool) -> None:
        """A snapshot completed (or failed): the images waiting for it become available (or failed)."""
        rows = self.store.query(
            "SELECT r.*, i.state AS image_state FROM image_roots r JOIN images i ON i.image_id = r.image_id"
            " WHERE r.snapshot_id=?",
            (snapshot_id,),
        )
        for row in rows:
            if row["image_state"] != "pending":
                continue
            with self.store.transaction() as db:
                db.execute(
                    "UPDATE images SET state=? WHERE image_id=?",
                    ("available" if completed else "failed", row["image_id"]),
                )
            if completed and row["reboot"] and row["instance_id"]:
                instance = self.clc.records.get(row["instance_id"]) or {}
                if instance.get("state") == "running":
                    owner = self.clc.users.get(instance["owner"])
                    try:
                        self.clc.reboot_instances(owner, [row["instance_id"]])
                    except CloudError as exc:
                        log.warning("CreateImage %s: rebooting %s failed: %s", row["image_id"], row["instance_id"], exc)
