"""Instance records: who may see which, and every state change with its ledger event, in one place.

Invariants kept here:
- every state change goes through :meth:`InstanceRecords.transition`, which checks it against EC2's
  state machine and appends the ledger event in the same transaction (so the ledger never misses a
  change and never records one that did not happen);
- the end of a running interval first appends the NIC's last byte counters (usage stays exact);
- leaving for ``shutting-down`` or ``terminated`` disassociates elastic addresses, as EC2 does;
- a user sees only their own instances, an admin all; an id that is malformed or unknown is
  refused with EC2's codes before anything else happens;
- a terminated instance stays visible for an hour (``terminated_visible_s``), as on EC2, and then
  reads as unknown; its record and its ledger events stay, for accounting. The query that lists
  instances names the live states and the recent terminations explicitly, so SQLite answers it from
  the ``(owner, state, terminated_at)`` and ``(state, terminated_at)`` indexes whatever the history.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from cloudlab.clc.addresses import Addresses
from cloudlab.clc.states import LIVE_STATES, check_transition
from cloudlab.clc.store import Store, append_ledger
from cloudlab.clc.usage import NetworkBytes
from cloudlab.clc.users import User
from cloudlab.errors import CloudError
from cloudlab.ids import is_valid_id

_LIVE = ",".join("?" * len(LIVE_STATES))
#: The record's columns a listing can be narrowed on in SQL (see :meth:`InstanceRecords.visible`).
MATCHABLE = frozenset(
    {"instance_id", "image_id", "instance_type", "state", "zone", "node", "kernel_id", "ramdisk_id", "key_name",
     "reservation_id"}
)  # fmt: skip
TERMINATED_VISIBLE_S = 3600.0  # EC2: "terminated instances remain visible for approximately one hour"
#: Every state but terminated: always visible.
_SHOWN = ("pending", "running", "shutting-down", "stopping", "stopped")
_VISIBLE = f"(state IN ({','.join(repr(s) for s in _SHOWN)}) OR (state='terminated' AND terminated_at >= ?))"


class InstanceRecords:
    """The ``instances`` table as the rest of the CLC uses it."""

    def __init__(
        self, store: Store, network_bytes: NetworkBytes, terminated_visible_s: float = TERMINATED_VISIBLE_S
    ) -> None:
        self.store = store
        self.network_bytes = network_bytes
        self.terminated_visible_s = terminated_visible_s

    # -- reads --------------------------------------------------------------------------------------------
    def visible(
        self,
        user: User,
        instance_ids: list[str] | None = None,
        matching: Sequence[tuple[str, Sequence[str]]] = (),
        window: tuple[int, int | None] | None = None,
    ) -> list[Any]:
        """``user``'s instances (all of them for an admin), or exactly ``instance_ids`` if given.

        ``matching`` narrows them in SQL: (column, values) pairs, each an exact match on one of the
        values, all ANDed (what a filter on the record's own fields becomes, so a describe of one
        instance among 10,000 reads one row). ``window`` is (offset, limit) in the listing's order, for a
        page. Neither is allowed with ``instance_ids``, whose unknown ids must be refused first.
        """
        for instance_id in instance_ids or []:
            if not is_valid_id(instance_id, "i"):
                raise CloudError("InvalidInstanceID.Malformed", f'Invalid id: "{instance_id}"')
        if instance_ids and (matching or window):
            raise ValueError("matching and window apply to a listing, not to named instances")
        sql, params = self.visible_query(user, instance_ids, matching, window)
        rows = self.store.query(sql, params)
        if instance_ids:
            missing = sorted(set(instance_ids) - {r["instance_id"] for r in rows})
            if missing:
                quoted = ", ".join(f"'{m}'" for m in missing)
                raise CloudError(
                    "InvalidInstanceID.NotFound",
                    f"The instance IDs {quoted} do not exist"
                    if len(missing) > 1
                    else f"The instance ID {quoted} does not exist",
                )
        return rows

    def visible_query(
        self,
        user: User,
        instance_ids: list[str] | None = None,
        matching: Sequence[tuple[str, Sequence[str]]] = (),
        window: tuple[int, int | None] | None = None,
    ) -> tuple[str, list[Any]]:
        """The SQL (and its parameters) that lists what ``user`` sees: live states and recent
        terminations named explicitly, so that it is answered from an index, not a table scan."""
        where, params = [_VISIBLE], [time.time() - self.terminated_visible_s]
        if not user.is_admin:
            where.append("owner=?")
            params.append(user.name)
        if instance_ids:
            where.append(f"instance_id IN ({','.join('?' * len(instance_ids))})")
            params.extend(instance_ids)
        for column, values in matching:
            if column not in MATCHABLE:
                raise ValueError(f"instances cannot be matched on {column!r}")
            where.append(f"{column} IN ({','.join('?' * len(values))})" if values else "0")
            params.extend(values)
        # rowid last: instances launched in the same instant keep one order from page to page
        sql = f"SELECT * FROM instances WHERE {' AND '.join(where)} ORDER BY launch_time, launch_index, rowid"
        if window is not None:
            offset, limit = window
            sql += " LIMIT ? OFFSET ?"
            params += [-1 if limit is None else limit, offset]
        return sql, params

    def get(self, instance_id: str) -> dict[str, Any] | None:
        row = self.store.one("SELECT * FROM instances WHERE instance_id=?", (instance_id,))
        return dict(row) if row else None

    def get_many(self, instance_ids: list[str]) -> list[dict[str, Any]]:
        """The rows of ``instance_ids`` that exist, in no particular order."""
        found: list[dict[str, Any]] = []
        for i in range(0, len(instance_ids), 500):
            chunk = instance_ids[i : i + 500]
            found += [
                dict(r)
                for r in self.store.query(
                    f"SELECT * FROM instances WHERE instance_id IN ({','.join('?' * len(chunk))})", chunk
                )
            ]
        return found

    def state_of(self, instance_id: str, default: str) -> str:
        return (self.get(instance_id) or {}).get("state", default)

    def live_by_node(self, cluster: str) -> dict[str, dict[str, Any]]:
        """The live instances the records place in ``cluster``: node -> instance id -> row."""
        rows = self.store.query(
            f"SELECT * FROM instances WHERE cluster=? AND state IN ({_LIVE})", (cluster, *LIVE_STATES)
        )
        found: dict[str, dict[str, Any]] = {}
        for row in rows:
            found.setdefault(row["node"], {})[row["instance_id"]] = row
        return found

    def live(self) -> list[Any]:
        return self.store.query(f"SELECT * FROM instances WHERE state IN ({_LIVE})", LIVE_STATES)

    def unfinished(self) -> list[Any]:
        """Starts never confirmed by a node, and stops and terminations not done yet."""
        return self.store.query(
            "SELECT * FROM instances WHERE (state='pending' AND dispatched_at IS NULL)"
            " OR state IN ('shutting-down', 'stopping')"
        )

    def reservation(self, reservation_id: str) -> dict[str, Any]:
        row = self.store.one("SELECT * FROM reservations WHERE reservation_id=?", (reservation_id,))
        if row is None:
            raise CloudError("InvalidReservationID.NotFound", f"no reservation {reservation_id}")
        instances = self.store.query(
            "SELECT * FROM instances WHERE reservation_id=? ORDER BY launch_index", (reservation_id,)
        )
        return {"reservation_id": reservation_id, "owner": row["owner"], "instances": [dict(i) for i in instances]}

    def reservation_for_token(self, owner: str, client_token: str) -> str | None:
        row = self.store.one(
            "SELECT reservation_id FROM reservations WHERE owner=? AND client_token=?", (owner, client_token)
        )
        return row["reservation_id"] if row is not None else None

    # -- writes -------------------------------------------------------------------------------------------
    def transition(
        self,
        instance_id: str,
        new: str,
        reason: str | None = None,
        *,
        expect: tuple[str, ...] | None = None,
        **fields: Any,
    ) -> bool:
        """Move one instance to ``new`` and append a ledger event; False if it was not in ``expect``."""
        with self.store.transaction() as db:
            return self._transition(db, instance_id, new, reason, expect, fields)

    def transition_many(
        self, instance_ids: list[str], new: str, reason: str | None = None, *, expect: tuple[str, ...] | None = None
    ) -> list[str]:
        """:meth:`transition` for many instances in one transaction; returns those that moved."""
        with self.store.transaction() as db:
            return [i for i in instance_ids if self._transition(db, i, new, reason, expect, {})]

    def _transition(
        self,
        db: Any,
        instance_id: str,
        new: str,
        reason: str | None,
        expect: tuple[str, ...] | None,
        fields: dict[str, Any],
    ) -> bool:
        row = db.execute("SELECT * FROM instances WHERE instance_id=?", (instance_id,)).fetchone()
        if row is None or (expect is not None and row["state"] not in expect) or row["state"] == new:
            return False
        check_transition(instance_id, row["state"], new)
        now = time.time()
        sets = {"state": new, "updated": now, **fields}
        if reason is not None:
            sets["state_reason"] = reason
        if new == "terminated":
            sets["terminated_at"] = now
        if new == "running" and "running_at" not in fields:
            sets["running_at"] = now
        if row["state"] == "running":
            self.network_bytes.flush(db, dict(row), now)  # the interval ends: its last counters first
        db.execute(
            f"UPDATE instances SET {', '.join(f'{k}=?' for k in sets)} WHERE instance_id=?",
            (*sets.values(), instance_id),
        )
        append_ledger(db, dict(row) | sets, new, reason, when=now)
        if new in ("shutting-down", "terminated"):
            Addresses.on_instance_terminated(db, instance_id)  # EC2 disassociates elastic addresses
        elif new in ("stopping", "stopped"):
            Addresses.on_instance_stopped(db, instance_id)  # EC2 releases the auto-assigned public address
        return True

    def mark_dispatched(self, *instance_ids: str) -> None:
        """The node confirmed these starts: from now on a VM's absence from a later report means it vanished."""
        now = time.time()
        with self.store.transaction() as db:
            db.executemany(
                "UPDATE instances SET dispatched_at=? WHERE instance_id=? AND dispatched_at IS NULL",
                [(now, i) for i in instance_ids],
            )

    def note_ledger(self, row: Any, event: str, detail: str | None = None) -> None:
        """An event that is not a state change (a reboot), for the ledger."""
        with self.store.transaction() as db:
            append_ledger(db, dict(row), event, detail)
