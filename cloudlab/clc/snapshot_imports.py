"""EC2's ImportSnapshot from a disk image in the object store, and its import tasks.

``ImportSnapshot(DiskContainer={"Format": "RAW"|"QCOW2", "UserBucket": {"S3Bucket": B, "S3Key": K}})``
checks, as the user, that the object may be read (another user's private bucket is refused at once,
``InvalidParameter``), records an import task (``import-snap-...``) and a snapshot ``pending`` whose
volume is ``vol-ffffffff`` (as EC2 shows imported snapshots), and returns. The snapshot worker (see
:class:`~cloudlab.clc.volume_work.VolumeWork`) then has the cluster's storage controller fetch the
image through a presigned GET and convert it (see ``sc/imports.py``). The task's state follows its
snapshot's, in the states botocore's ``SnapshotImported`` waiter reads: ``active`` while the
snapshot is pending, ``completed`` once it is, ``error`` (with the reason) if it failed. The snapshot
is then an ordinary one: CreateVolume from it, or RegisterImage with it as the root device.

Without a Format the first bytes decide (qcow2's magic, else raw); the SC opens the image only as the
format decided here and refuses a qcow2 with a backing or data file.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from cloudlab.clc import objects as obj
from cloudlab.clc.snapshots import record_pending
from cloudlab.clc.store import Store
from cloudlab.clc.users import User
from cloudlab.clc.volumes import Volumes
from cloudlab.contract import ImportSnapshot
from cloudlab.errors import CloudError
from cloudlab.ids import new_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshot_imports (
    task_id TEXT PRIMARY KEY, owner TEXT NOT NULL, snapshot_id TEXT NOT NULL, bucket TEXT NOT NULL,
    key TEXT NOT NULL, version_id TEXT, format TEXT NOT NULL, size INTEGER NOT NULL, description TEXT,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS snapshot_imports_by_snapshot ON snapshot_imports(snapshot_id);
"""
IMPORTED_VOLUME = "vol-ffffffff"  # EC2's volume id of an imported snapshot
TASK_ID_RE = re.compile(r"^import-snap-[0-9a-f]{8,17}$")
QCOW2_MAGIC = b"QFI\xfb"
GIB = 1024**3
_FORMATS = {"raw": "raw", "qcow2": "qcow2", "qcow": "qcow2"}
_STATES = {"pending": "active", "completed": "completed", "error": "error", "deleting": "completed",
           "deleted": "completed"}  # fmt: skip


class SnapshotImports:
    """The ``snapshot_imports`` table (``clc.service(SnapshotImports)``)."""

    def __init__(self, clc: Any) -> None:
        self.clc = clc
        self.store: Store = clc.store
        self.store.ensure_schema(SCHEMA)

    def start(self, user: User, container: dict[str, Any], description: str = "") -> str:
        """ImportSnapshot: the task and its snapshot recorded; the SC makes the snapshot next."""
        bucket, key = _source(container)
        objects = obj.require(self.clc.objects)
        ref = obj.lookup(objects, user, bucket, key, "InvalidParameter")
        if ref.size == 0:
            raise CloudError("InvalidParameter", f"s3://{bucket}/{key} is empty")
        fmt = self._format(objects, user, ref, container.get("Format"))
        cluster = self.clc.clusters.for_zone(None).name
        task_id, snapshot_id, now = new_id("import-snap"), new_id("snap"), time.time()
        note = description or container.get("Description") or ""
        with self.store.transaction() as db:
            size_gib = max(1, math.ceil(ref.size / GIB))
            origin = f"Created by ImportSnapshot({task_id}) from s3://{bucket}/{key}"[:255]
            record_pending(db, user, snapshot_id, IMPORTED_VOLUME, size_gib, cluster, origin, now)
            db.execute(
                "INSERT INTO snapshot_imports (task_id, owner, snapshot_id, bucket, key, version_id, format, size,"
                " description, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (task_id, user.name, snapshot_id, bucket, key, ref.version_id, fmt, ref.size, note, now),
            )
        self.clc.service(Volumes).wake()  # the snapshot worker looks now
        return task_id

    @staticmethod
    def _format(objects: obj.ObjectStore, user: User, ref: obj.ObjectRef, given: str | None) -> str:
        if given:
            fmt = _FORMATS.get(given.lower())
            if fmt is None:
                raise CloudError("InvalidParameterValue", f"Format {given!r}: this cloud imports RAW and QCOW2 images")
            return fmt
        with obj._open(objects, user, ref, "InvalidParameter") as data:
            head = next(data.chunks(0, min(ref.size, 4) - 1), b"")
        return "qcow2" if head[:4] == QCOW2_MAGIC else "raw"

    def request_for(self, snapshot: dict[str, Any]) -> ImportSnapshot | None:
        """What the SC needs to make an imported snapshot (None for a snapshot of a volume)."""
        row = self.store.one("SELECT * FROM snapshot_imports WHERE snapshot_id=?", (snapshot["snapshot_id"],))
        if row is None:
            return None
        objects = obj.require(self.clc.objects)
        url = objects.presign(row["owner"], row["bucket"], row["key"], row["version_id"], snapshot["cluster"])
        return ImportSnapshot(row["snapshot_id"], url, row["format"], row["size"])

    def sized(self, snapshot_id: str, size_bytes: int) -> None:
        """An imported snapshot's volume size, once the SC knows the image's (before the ledger sees it)."""
        with self.store.transaction() as db:
            db.execute(
                "UPDATE snapshots SET volume_size=? WHERE snapshot_id=?",
                (max(1, math.ceil(size_bytes / GIB)), snapshot_id),
            )

    def describe(self, user: User, task_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """The user's import tasks (all for the admin), each with its snapshot's state."""
        for task_id in task_ids or []:
            if not TASK_ID_RE.match(task_id):
                raise CloudError("InvalidConversionTaskId.Malformed", f"Invalid id: {task_id[:80]!r}")
        where, params = [], []
        if not user.is_admin:
            where.append("t.owner=?")
            params.append(user.name)
        if task_ids:
            where.append(f"t.task_id IN ({','.join('?' * len(task_ids))})")
            params.extend(task_ids)
        sql = (
            "SELECT t.*, s.state, s.error, s.progress, s.size_bytes FROM snapshot_imports t"
            " JOIN snapshots s ON s.snapshot_id = t.snapshot_id"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY t.created, t.task_id"
        )
        rows = [dict(r) for r in self.store.query(sql, params)]
        missing = sorted(set(task_ids or []) - {r["task_id"] for r in rows})
        if missing:
            raise CloudError("InvalidConversionTaskId", f"The import task '{missing[0]}' does not exist")
        return [task_view(r) for r in rows]


def task_view(row: dict[str, Any]) -> dict[str, Any]:
    """An import task as EC2's ImportSnapshotTask shape has it."""
    status = _STATES.get(row["state"], "active")
    detail: dict[str, Any] = {
        "DiskImageSize": float(row["size"]),
        "Format": row["format"].upper(),
        "Progress": str(row["progress"]) if status == "active" else None,
        "SnapshotId": row["snapshot_id"],
        "Status": status,
        "StatusMessage": row["error"] if status == "error" else ("pending" if status == "active" else None),
        "UserBucket": {"S3Bucket": row["bucket"], "S3Key": row["key"]},
        "Description": row["description"] or None,
        "Encrypted": False,
    }
    return {"ImportTaskId": row["task_id"], "Description": row["description"] or None,
            "SnapshotTaskDetail": {k: v for k, v in detail.items() if v is not None}}  # fmt: skip


def _source(container: dict[str, Any]) -> tuple[str, str]:
    bucket_spec = container.get("UserBucket") or {}
    if bucket_spec.get("S3Bucket") and bucket_spec.get("S3Key"):
        return str(bucket_spec["S3Bucket"]), str(bucket_spec["S3Key"])
    url = container.get("Url") or ""
    if url.startswith("s3://") and "/" in url[5:]:
        bucket, _, key = url[5:].partition("/")
        return bucket, key
    raise CloudError("InvalidParameter", "DiskContainer needs UserBucket (S3Bucket and S3Key) or an s3:// Url")
