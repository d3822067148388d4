"""EBS usage in the ledger: volume and snapshot GiB held over time (``ebs_gb_hours`` in the report).

A volume appends ``volume-created`` (with its size) to the append-only ledger in the transaction in
which its storage controller has made it, and ``volume-deleted`` in the one that records its
deletion; a snapshot ``snapshot-created`` once completed and ``snapshot-deleted``. The ledger's
``instance_id`` column holds the volume or snapshot id and ``instance_type`` ``ebs-volume`` or
``ebs-snapshot``. A resource counts its size from creation to deletion (or to the report's end),
clipped to the window: GiB × hours, split at UTC midnights when grouped by day.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from cloudlab.clc.store import Store

CREATED = {"volume": "volume-created", "snapshot": "snapshot-created"}
DELETED = {"volume": "volume-deleted", "snapshot": "snapshot-deleted"}
EBS_EVENTS = (*CREATED.values(), *DELETED.values())
EBS_METRIC = "ebs_gb_hours"


def append(
    db: sqlite3.Connection,
    owner: str,
    resource_id: str,
    kind: str,
    created: bool,
    size_gib: int,
    cluster: str,
    when: float | None = None,
) -> None:
    """One EBS event (call inside the transaction that changes the volume or snapshot)."""
    event = (CREATED if created else DELETED)[kind]
    db.execute(
        "INSERT INTO ledger (time, user, instance_id, instance_type, cluster, event, detail) VALUES (?,?,?,?,?,?,?)",
        (when or time.time(), owner, resource_id, f"ebs-{kind}", cluster, event, json.dumps({"size_gib": size_gib})),
    )


def _day_pieces(start: float, end: float) -> list[tuple[str, float]]:
    pieces, at = [], start
    while at < end:
        midnight = datetime.fromtimestamp(at, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        piece_end = min(end, (midnight + timedelta(days=1)).timestamp())
        pieces.append((midnight.date().isoformat(), piece_end - at))
        at = piece_end
    return pieces


def ebs_usage(store: Store, *, user: str | None, start: float | None, end: float, by: str) -> dict[str, dict[str, Any]]:
    """GiB-hours of volumes and snapshots per group key (as the instance report's keys), with the ids counted."""
    sql = f"SELECT * FROM ledger WHERE event IN ({','.join('?' * len(EBS_EVENTS))}) AND time <= ?"
    params: list[Any] = [*EBS_EVENTS, end]
    if user is not None:
        sql += " AND user=?"
        params.append(user)
    held: dict[str, dict[str, Any]] = {}
    for row in store.query(sql + " ORDER BY seq", params):
        entry = held.setdefault(
            row["instance_id"], {"user": row["user"], "type": row["instance_type"], "from": None, "to": None, "gib": 0}
        )
        if row["event"] in CREATED.values():
            entry["from"] = row["time"]
            try:
                entry["gib"] = int(json.loads(row["detail"])["size_gib"])
            except (ValueError, KeyError, TypeError):
                entry["gib"] = 0
        else:
            entry["to"] = row["time"]
    out: dict[str, dict[str, Any]] = {}
    for resource_id, entry in held.items():
        if entry["from"] is None:
            continue
        lo = entry["from"] if start is None else max(start, entry["from"])
        hi = min(end, entry["to"]) if entry["to"] is not None else end
        if hi <= lo:
            continue
        pieces = _day_pieces(lo, hi) if by == "day" else [(None, hi - lo)]
        for day, seconds in pieces:
            key = {"user": entry["user"], "type": entry["type"], "instance": resource_id, "day": day}.get(by, "total")
            group = out.setdefault(key or "total", {EBS_METRIC: 0.0, "ids": set(), "user": entry["user"]})
            group[EBS_METRIC] += entry["gib"] * seconds / 3600.0
            group["type"] = entry["type"]
            group["ids"].add(resource_id)
    return out
