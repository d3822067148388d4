"""Node-hours: how long each node was powered on, from an append-only ledger of its power changes.

POWERSAVE's saving is the time nodes spend powered down, so the cloud controller keeps, per node, the
events ``on`` and ``off`` with the cluster controller's time of the change (``NodeSummary.power_since``):
- a node's first report opens an ``on`` interval (a node is powered when it registers);
- a node the CC powered down appends ``off``; a woken one appends ``on`` when the wake was sent (a
  booting host draws power), so ``waking`` counts as on;
- ``cloudlab down`` appends ``off`` for every node that is on (the cloud stopped, its hosts with it);
- a cloud that was *killed* left its nodes' intervals open: the next start closes each at the time the
  node was last seen (``nodes.last_seen``), before anything new is noted.
A node whose CC does not answer is neither on nor off in the ledger's view until it answers again:
its interval stays open (its host presumably still runs).

The report (:func:`node_usage`) gives, per node and in a window: hours on, hours off (from its first
event to the window's end), the number of power-ons and its last known power state.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from cloudlab.clc.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS node_power (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, cluster TEXT NOT NULL, power TEXT NOT NULL,
    time REAL NOT NULL, reason TEXT);
CREATE INDEX IF NOT EXISTS node_power_by_node ON node_power(node, seq);
CREATE TRIGGER IF NOT EXISTS node_power_no_update BEFORE UPDATE ON node_power
    BEGIN SELECT RAISE(ABORT, 'the node power ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS node_power_no_delete BEFORE DELETE ON node_power
    BEGIN SELECT RAISE(ABORT, 'the node power ledger is append-only'); END;
"""

ON, OFF = "on", "off"


class NodeHours:
    """The node power ledger: notes each node's power as its CC reports it; closes intervals at down."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.ensure_schema(SCHEMA)
        self._lock = threading.Lock()
        self._last: dict[str, str] = {}  # node -> last recorded power
        self._close_killed_run()

    def _close_killed_run(self) -> None:
        """Close the intervals a killed cloud left open, at the time each node was last seen."""
        with self._lock, self.store.transaction() as db:
            for row in db.execute(
                "SELECT p.node, p.cluster, p.time, n.last_seen FROM node_power p"
                " LEFT JOIN nodes n ON n.name = p.node"
                " WHERE p.seq = (SELECT MAX(seq) FROM node_power q WHERE q.node = p.node) AND p.power = ?",
                (ON,),
            ).fetchall():
                at = max(row["time"], row["last_seen"] or row["time"])
                db.execute(
                    "INSERT INTO node_power (node, cluster, power, time, reason) VALUES (?,?,?,?,?)",
                    (row["node"], row["cluster"], OFF, at, "the cloud stopped without a down (closed at last seen)"),
                )

    def note(self, cluster: str, node: Any, *, answered: bool) -> None:
        """Record a node's power (a ``NodeSummary``) if it changed: ``waking`` counts as on. A node first
        seen opens its interval at its registration (it may have been powered down before the CLC looked);
        a node that never answered is not noted."""
        power, since = node.power, node.power_since
        recorded = OFF if power == OFF else ON
        if recorded == ON and power == ON and not answered:
            return  # a node that never answered (or stopped answering) is not known to be on
        with self._lock:
            last = self._last.get(node.name)
            if last is None:
                row = self.store.one(
                    "SELECT power FROM node_power WHERE node=? ORDER BY seq DESC LIMIT 1", (node.name,)
                )
                last = row["power"] if row is not None else None
            if last == recorded:
                self._last[node.name] = last
                return
            events = []
            if last is None:
                events.append((ON, node.registered or since or time.time(), "registered"))
            if recorded == OFF:
                events.append((OFF, since or time.time(), "powered down (POWERSAVE)"))
            elif last is not None:
                events.append((ON, since or time.time(), "woken"))
            with self.store.transaction() as db:
                for event_power, at, reason in events:
                    db.execute(
                        "INSERT INTO node_power (node, cluster, power, time, reason) VALUES (?,?,?,?,?)",
                        (node.name, cluster, event_power, at, reason),
                    )
            self._last[node.name] = recorded

    def all_off(self, reason: str) -> int:
        """Every node that is on goes off now (``cloudlab down``); returns how many."""
        now = time.time()
        closed = 0
        with self._lock, self.store.transaction() as db:
            rows = db.execute(
                "SELECT node, cluster FROM node_power p"
                " WHERE seq = (SELECT MAX(seq) FROM node_power q WHERE q.node = p.node) AND power = ?",
                (ON,),
            ).fetchall()
            for row in rows:
                db.execute(
                    "INSERT INTO node_power (node, cluster, power, time, reason) VALUES (?,?,?,?,?)",
                    (row["node"], row["cluster"], OFF, now, reason),
                )
                self._last[row["node"]] = OFF
                closed += 1
        return closed


def node_usage(store: Store, *, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
    """Per node: ``on_hours`` and ``off_hours`` in the window, ``power_ons`` (on events in it), ``power`` (last).

    Before a node's first event it did not exist for the ledger: that time is neither on nor off.
    """
    now = time.time()
    end = min(now, until) if until is not None else now
    start = since if since is not None else float("-inf")
    by_node: dict[str, list[Any]] = {}
    for row in store.query("SELECT node, cluster, power, time FROM node_power ORDER BY node, seq"):
        by_node.setdefault(row["node"], []).append(row)
    rows = []
    for node, events in sorted(by_node.items()):
        on_s = off_s = 0.0
        power_ons = 0
        for event, following in zip(events, [*events[1:], None], strict=True):
            opened = max(event["time"], start)
            closed = min(following["time"] if following is not None else end, end)
            if event["power"] == ON and start <= event["time"] <= end:
                power_ons += 1
            if closed <= opened:
                continue
            if event["power"] == ON:
                on_s += closed - opened
            else:
                off_s += closed - opened
        rows.append(
            {
                "node": node,
                "cluster": events[-1]["cluster"],
                "on_hours": on_s / 3600.0,
                "off_hours": off_s / 3600.0,
                "power_ons": power_ons,
                "power": events[-1]["power"],
            }
        )
    return rows
