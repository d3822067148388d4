"""EBS snapshots as the cloud controller records them.

A snapshot is recorded ``pending`` (progress 0%) and made by the cluster's storage controller next
(see :class:`~cloudlab.clc.volume_work.VolumeWork`): a standalone copy of the volume, so it outlives
the volume and any volume made from it. It is ``completed`` (100%) once the copy is on the SC's disk.
Its owner sees it (and an admin); DescribeSnapshots' ``OwnerIds`` (``self`` or account ids)
narrows that; another user's snapshot reads as ``InvalidSnapshot.NotFound``.
"""

from __future__ import annotations

import time
from typing import Any

from cloudlab.clc import ebs_usage, quotas
from cloudlab.clc.store import Store
from cloudlab.clc.tags import Tags, validate_specifications
from cloudlab.clc.users import User
from cloudlab.clc.volumes import Volumes
from cloudlab.errors import CloudError
from cloudlab.ids import is_valid_id, new_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    snapshot_id TEXT PRIMARY KEY, owner TEXT NOT NULL, volume_id TEXT NOT NULL, volume_size INTEGER NOT NULL,
    cluster TEXT NOT NULL, description TEXT, state TEXT NOT NULL, progress INTEGER NOT NULL DEFAULT 0,
    started REAL NOT NULL, completed REAL, size_bytes INTEGER, seconds REAL, error TEXT, deleted_at REAL,
    updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS snapshots_by_owner ON snapshots(owner, state);
"""
MAX_DESCRIPTION = 255


def record_pending(
    db: Any,
    user: User,
    snapshot_id: str,
    volume_id: str,
    size_gib: int,
    cluster: str,
    description: str | None,
    now: float,
) -> None:
    """A new ``pending`` snapshot of ``user``'s, within their snapshot quota (in the caller's transaction): made
    from a volume by CreateSnapshot or from an object by ImportSnapshot, the snapshot worker takes it from here."""
    (held,) = db.execute("SELECT COUNT(*) FROM snapshots WHERE owner=? AND state != 'deleted'", (user.name,)).fetchone()
    quota = quotas.limit(db, user.name, "snapshots")
    if quota is not None and held + 1 > quota:
        raise quotas.refuse("snapshots", user.name, quota, int(held), 1)
    db.execute(
        "INSERT INTO snapshots (snapshot_id, owner, volume_id, volume_size, cluster, description, state,"
        " progress, started, updated) VALUES (?,?,?,?,?,?,'pending',0,?,?)",
        (snapshot_id, user.name, volume_id, size_gib, cluster, description or "", now, now),
    )  # fmt: skip


class Snapshots:
    """The ``snapshots`` table as the EC2 actions use it (``clc.service(Snapshots)``)."""

    def __init__(self, clc: Any) -> None:
        self.clc = clc
        self.store: Store = clc.store
        self.store.ensure_schema(SCHEMA)

    # other services, looked up when used: a service is built under the CLC's services lock
    @property
    def volumes(self) -> Volumes:
        return self.clc.service(Volumes)

    @property
    def tags(self) -> Tags:
        return self.clc.service(Tags)

    def visible(self, user: User, snapshot_ids: list[str] | None = None) -> list[dict[str, Any]]:
        for snapshot_id in snapshot_ids or []:
            if not isinstance(snapshot_id, str) or not is_valid_id(snapshot_id, "snap"):
                raise CloudError("InvalidSnapshotID.Malformed", f'Invalid id: "{snapshot_id}" (expecting "snap-...")')
        where, params = ["state != 'deleted'"], []
        if not user.is_admin:
            where.append("owner=?")
            params.append(user.name)
        if snapshot_ids:
            where.append(f"snapshot_id IN ({','.join('?' * len(snapshot_ids))})")
            params.extend(snapshot_ids)
        rows = [
            dict(r)
            for r in self.store.query(
                f"SELECT * FROM snapshots WHERE {' AND '.join(where)} ORDER BY started, snapshot_id", params
            )
        ]
        if snapshot_ids:
            missing = sorted(set(snapshot_ids) - {r["snapshot_id"] for r in rows})
            if missing:
                quoted = ", ".join(f"'{m}'" for m in missing)
                raise CloudError("InvalidSnapshot.NotFound", f"The snapshot {quoted} does not exist.")
        return rows

    def one(self, user: User, snapshot_id: str, *, usable: bool = False) -> dict[str, Any]:
        """One of ``user``'s snapshots; with ``usable``, only a completed one (to make a volume of)."""
        row = self.visible(user, [snapshot_id])[0]
        if usable and row["state"] != "completed":
            raise CloudError("IncorrectState", f"Snapshot '{snapshot_id}' is '{row['state']}', not 'completed'")
        return row

    def get(self, snapshot_id: str) -> dict[str, Any] | None:
        row = self.store.one("SELECT * FROM snapshots WHERE snapshot_id=?", (snapshot_id,))
        return dict(row) if row else None

    def create(
        self,
        user: User,
        volume_id: str,
        description: str | None = None,
        tag_specifications: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        volume = self.volumes.one(user, volume_id)
        if volume["state"] not in ("available", "in-use") or volume["attach_state"] == "attaching":
            raise CloudError("IncorrectState", f"The volume '{volume_id}' is '{volume['state']}'")
        if description is not None and len(description) > MAX_DESCRIPTION:
            raise CloudError("InvalidParameterValue", f"the description is longer than {MAX_DESCRIPTION} characters")
        validate_specifications("snapshot", tag_specifications)
        snapshot_id = new_id("snap")
        now = time.time()
        with self.store.transaction() as db:
            record_pending(db, user, snapshot_id, volume_id, volume["size_gib"], volume["cluster"], description, now)
            if tag_specifications:
                self.tags.apply_specifications(db, user, "snapshot", [snapshot_id], tag_specifications)
        self.volumes.wake()
        row = self.get(snapshot_id)
        assert row is not None
        return row

    def delete(self, user: User, snapshot_id: str) -> None:
        row = self.one(user, snapshot_id)
        if row["state"] == "pending":
            raise CloudError("IncorrectState", f"Snapshot '{snapshot_id}' is still pending")
        self.set(snapshot_id, state="deleting")
        self.volumes.wake()

    def set(self, snapshot_id: str, *, ledger: bool | None = None, **fields: Any) -> None:
        """Change a snapshot's row; with ``ledger`` True (completed) or False (deleted), its ledger event too."""
        fields["updated"] = time.time()
        with self.store.transaction() as db:
            before = db.execute("SELECT * FROM snapshots WHERE snapshot_id=?", (snapshot_id,)).fetchone()
            db.execute(
                f"UPDATE snapshots SET {', '.join(f'{k}=?' for k in fields)} WHERE snapshot_id=?",
                (*fields.values(), snapshot_id),
            )
            if before is not None and ledger is not None and before["state"] != fields.get("state"):
                size, cluster = before["volume_size"], before["cluster"]
                ebs_usage.append(db, before["owner"], snapshot_id, "snapshot", ledger, size, cluster)
