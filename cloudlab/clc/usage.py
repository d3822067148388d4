"""Accounting reports, computed from the append-only ledger and nothing else.

What is billed (as EC2 bills): the time an instance spends in ``running``. ``pending``, ``stopping``,
``shutting-down``, ``stopped`` and ``terminated`` cost nothing; a reboot does not interrupt a running
interval. An interval opens at the first ``running`` event and closes at the next state event that is
not ``running`` (so a repeated ``running`` event, however it came about, never opens a second
interval and never counts a second twice); an instance still running is counted up to ``now``.

Because every figure is derived from persisted events, a restart of the cloud neither loses nor
double-counts time: ``cloudlab down`` moves every live instance to ``shutting-down`` (which ends its
interval) before the service exits. An instance whose cloud was *killed* (no ``down``) stays running
in the records until the restarted cloud's reconciler notices its VM is gone and appends
``terminated`` at that moment, so it is billed until then: the ledger records what the cloud knew.

Network bytes come from ``network`` events: cumulative receive/transmit counters of the instance's
port (``{"rx": .., "tx": ..}``), appended by the cloud controller when they change and at the end of a
running interval. Each running interval is a new counter session (a new VM process); within one, a
counter that goes down is a reset. Bytes are attributed at the time of the reading.

Metrics per row: ``instances`` (distinct instances with any usage in the window), ``instance_hours``,
``vcpu_hours``, ``gb_hours`` (memory in GiB × hours), ``net_rx_bytes`` and ``net_tx_bytes`` (seen from
the instance: received and sent). Grouped by user, by type, by instance, by UTC day (an interval is
split at midnight) or as one ``total`` row: for every metric, the sum over users (or types, or
instances) equals the total; the sum of ``instances`` over days may exceed it (an instance spans days).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from cloudlab.clc.ebs_usage import EBS_EVENTS, EBS_METRIC, ebs_usage
from cloudlab.clc.storage_usage import STORAGE_EVENT, STORAGE_METRICS, storage_usage
from cloudlab.clc.store import Store, append_ledger

BILLABLE_STATE = "running"
STATE_EVENTS = frozenset({"pending", "running", "shutting-down", "terminated", "stopping", "stopped"})
NETWORK_EVENT = "network"
GROUPINGS = ("user", "type", "day", "instance", "total")
METRICS = ("instance_hours", "vcpu_hours", "gb_hours", "net_rx_bytes", "net_tx_bytes", *STORAGE_METRICS, EBS_METRIC)

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr|d|day|days|w|wk)\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400, "day": 86400, "days": 86400}
_UNIT_S |= {"w": 7 * 86400, "wk": 7 * 86400}


_LATEST = datetime(9999, 12, 31, tzinfo=UTC).timestamp()


class UsageError(ValueError):
    """A request for a report that cannot be answered (bad time, grouping or user)."""


def parse_time(value: str | float | int | datetime | date | None, now: float | None = None) -> float | None:
    """Like :func:`_parse_time`, refusing times before 1970 or after 9999 (``UsageError``)."""
    parsed = _parse_time(value, now)
    if parsed is not None and not (0.0 <= parsed <= _LATEST):
        raise UsageError(f"time out of range: {value!r} (1970 to 9999)")
    return parsed


def _parse_time(value: str | float | int | datetime | date | None, now: float | None = None) -> float | None:
    """Seconds since the epoch for ``value``: None, epoch seconds (also as text), a datetime/date, ``now``, a relative
    duration into the past (``90s``, ``30m``, ``2h``, ``7d``, ``1w``) or an ISO 8601 date or time (naive = UTC).
    """
    if value is None:
        return None
    now = time.time() if now is None else now
    if isinstance(value, bool):
        raise UsageError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        if value != value:  # NaN
            raise UsageError("not a time: NaN")
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    text = str(value).strip()
    if not text:
        return None
    if text.lower() == "now":
        return now
    try:
        number = float(text)  # seconds since the epoch
    except ValueError:
        pass
    else:
        return _parse_time(number, now)
    relative = _RELATIVE.match(text)
    if relative:
        if float(relative.group(1)) > 1e6:
            raise UsageError(f"time out of range: {text!r}")
        return now - float(relative.group(1)) * _UNIT_S[relative.group(2).lower()]
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise UsageError(
            f"not a time: {text!r} (use an ISO date or time such as 2026-01-31 or 2026-01-31T12:00Z, "
            "or a duration into the past such as 2h or 7d)"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


@dataclass
class _Interval:
    """Part of an instance's billable time, with what the instance was then."""

    user: str
    instance_id: str
    instance_type: str
    vcpus: int
    memory_mb: int
    start: float
    end: float


@dataclass
class _Bytes:
    user: str
    instance_id: str
    instance_type: str
    when: float
    rx: int
    tx: int


def _counters(detail: str | None) -> tuple[int, int] | None:
    try:
        data = json.loads(detail or "")
        return max(0, int(data["rx"])), max(0, int(data["tx"]))
    except (ValueError, TypeError, KeyError):
        return None


def _instance_usage(events: list[Any], start: float | None, end: float) -> tuple[list[_Interval], list[_Bytes]]:
    """The billable intervals (clipped to [start, end]) and byte deltas of one instance's events (in order)."""
    intervals: list[_Interval] = []
    deltas: list[_Bytes] = []
    opened: Any = None  # the event that opened the current running interval
    last_type = events[0]["instance_type"] or "unknown"
    session_rx = session_tx = 0  # last counters of the current VM session

    def close(at: float) -> None:
        lo = opened["time"] if start is None else max(opened["time"], start)
        hi = min(at, end)
        if hi > lo:
            intervals.append(
                _Interval(
                    opened["user"],
                    opened["instance_id"],
                    opened["instance_type"] or "unknown",
                    int(opened["vcpus"] or 0),
                    int(opened["memory_mb"] or 0),
                    lo,
                    hi,
                )
            )

    for event in events:
        kind = event["event"]
        last_type = event["instance_type"] or last_type
        if kind in STATE_EVENTS:
            if kind == BILLABLE_STATE:
                if opened is None:
                    opened = event
                    session_rx = session_tx = 0  # a new VM: its port counters start again
            elif opened is not None:
                close(event["time"])
                opened = None
        elif kind == NETWORK_EVENT:
            counters = _counters(event["detail"])
            if counters is None:
                continue
            rx, tx = counters
            d_rx = rx - session_rx if rx >= session_rx else rx  # a counter that went down was reset
            d_tx = tx - session_tx if tx >= session_tx else tx
            session_rx, session_tx = rx, tx
            when = event["time"]
            if (d_rx or d_tx) and (start is None or when >= start) and when <= end:
                deltas.append(_Bytes(event["user"], event["instance_id"], last_type, when, d_rx, d_tx))
    if opened is not None:
        close(end)
    return intervals, deltas


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).date().isoformat()


def _split_days(interval: _Interval) -> Iterable[tuple[str, float]]:
    """(UTC day, seconds) pieces of an interval."""
    at = interval.start
    while at < interval.end:
        midnight = datetime.fromtimestamp(at, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        next_midnight = (midnight + timedelta(days=1)).timestamp()
        piece_end = min(interval.end, next_midnight)
        yield midnight.date().isoformat(), piece_end - at
        at = piece_end


def _empty(key: str) -> dict[str, Any]:
    return {"key": key, "instances": set(), "instance_hours": 0.0, "vcpu_hours": 0.0, "gb_hours": 0.0,
            "net_rx_bytes": 0, "net_tx_bytes": 0, "storage_gb_hours": 0.0, "s3_bytes_in": 0,
            "s3_bytes_out": 0, EBS_METRIC: 0.0}  # fmt: skip


def usage_report(
    store: Store,
    *,
    user: str | None = None,
    since: str | float | datetime | date | None = None,
    until: str | float | datetime | date | None = None,
    by: str = "user",
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Usage rows grouped ``by`` user, type, day, instance or total, sorted by key (see the module docstring).

    ``since``/``until`` bound the window (default: everything, up to ``now``); an instance still running
    counts up to ``min(now, until)``. Rows are dicts with ``key``, ``instances`` and :data:`METRICS`;
    rows by instance also carry ``user`` and ``instance_type``. Raises :class:`UsageError` for bad input.
    """
    if by not in GROUPINGS:
        raise UsageError(f"cannot group by {by!r}: use one of {', '.join(GROUPINGS)}")
    now = time.time() if now is None else float(now)
    start = parse_time(since, now)
    end = parse_time(until, now)
    end = now if end is None else min(end, now)
    if start is not None and start > end:
        raise UsageError("the report window is empty: since is after until (or in the future)")
    if user is not None and not _known_user(store, user):
        raise UsageError(f"no user {user!r} in this cloud")
    not_instances = (STORAGE_EVENT, *EBS_EVENTS)  # readings and volumes/snapshots have reports of their own
    sql = f"SELECT * FROM ledger WHERE time <= ? AND event NOT IN ({','.join('?' * len(not_instances))})"
    params: list[Any] = [end, *not_instances]
    if user is not None:
        sql += " AND user = ?"
        params.append(user)
    rows = store.query(sql + " ORDER BY instance_id, time, seq", params)

    groups: dict[str, dict[str, Any]] = {}
    owners: dict[str, tuple[str, str]] = {}

    def group(key: str) -> dict[str, Any]:
        found = groups.get(key)
        if found is None:
            found = groups[key] = _empty(key)
        return found

    def key_of(item: _Interval | _Bytes, day: str | None = None) -> str:
        if by == "user":
            return item.user
        if by == "type":
            return item.instance_type
        if by == "instance":
            return item.instance_id
        if by == "day":
            return day or _day(item.when)  # type: ignore[union-attr]
        return "total"

    index = 0
    while index < len(rows):
        first = index
        instance_id = rows[index]["instance_id"]
        while index < len(rows) and rows[index]["instance_id"] == instance_id:
            index += 1
        intervals, deltas = _instance_usage(rows[first:index], start, end)
        for interval in intervals:
            owners[interval.instance_id] = (interval.user, interval.instance_type)
            pieces = _split_days(interval) if by == "day" else [(None, interval.end - interval.start)]
            for day, seconds in pieces:
                g = group(key_of(interval, day))
                g["instances"].add(interval.instance_id)
                hours = seconds / 3600.0
                g["instance_hours"] += hours
                g["vcpu_hours"] += interval.vcpus * hours
                g["gb_hours"] += interval.memory_mb / 1024.0 * hours
        for delta in deltas:
            owners.setdefault(delta.instance_id, (delta.user, delta.instance_type))
            g = group(key_of(delta))
            g["instances"].add(delta.instance_id)
            g["net_rx_bytes"] += delta.rx
            g["net_tx_bytes"] += delta.tx

    for key, values in storage_usage(store, user=user, start=start, end=end, by=by).items():
        g = group(key)
        for name, value in values.items():
            g[name] += value
        if by == "instance":
            owners.setdefault(key, (key.split(":", 1)[1], "s3"))

    for key, values in ebs_usage(store, user=user, start=start, end=end, by=by).items():
        group(key)[EBS_METRIC] += values[EBS_METRIC]
        if by == "instance":
            owners.setdefault(key, (values["user"], values["type"]))

    result = []
    for key in sorted(groups):
        g = groups[key]
        row = {"key": key, "instances": len(g["instances"])} | {m: g[m] for m in METRICS}
        if by == "instance":
            row["user"], row["instance_type"] = owners[key]
        result.append(row)
    if by == "total" and not result:
        result.append({"key": "total", "instances": 0} | {m: 0.0 if "hours" in m else 0 for m in METRICS})
    return result


def usage_total(
    store: Store,
    *,
    user: str | None = None,
    since: str | float | datetime | date | None = None,
    until: str | float | datetime | date | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The one ``total`` row of :func:`usage_report` (computed on its own, so it checks the groupings)."""
    return usage_report(store, user=user, since=since, until=until, by="total", now=now)[0]


def _known_user(store: Store, name: str) -> bool:
    return (
        store.one("SELECT 1 FROM users WHERE name=?", (name,)) is not None
        or store.one("SELECT 1 FROM ledger WHERE user=? LIMIT 1", (name,)) is not None
    )


__all__ = [
    "BILLABLE_STATE",
    "GROUPINGS",
    "METRICS",
    "NETWORK_EVENT",
    "UsageError",
    "parse_time",
    "usage_report",
    "usage_total",
]


# -- network byte counters into the ledger -------------------------------------------------------------------
NETWORK_LEDGER_S = 60.0  # a running instance's changed byte counters reach the ledger at most this often


class NetworkBytes:
    """Turns the NIC counters that node reports carry into ``network`` ledger events.

    Counters are cumulative per VM session. A changed reading is appended at most every
    :data:`NETWORK_LEDGER_S` per instance (reports arrive every second); the end of a running interval
    appends the last reading seen, and a node's final reading at termination is appended as is.
    """

    def __init__(self, store: Store, interval_s: float = NETWORK_LEDGER_S) -> None:
        self.store = store
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, int]] = {}
        self._logged: dict[str, tuple[int, int, float]] = {}

    def note(self, row: Any, rx: int, tx: int) -> None:
        """A node reported ``row``'s cumulative counters: append them when they changed and are due."""
        instance_id = row["instance_id"]
        with self._lock:
            self._seen[instance_id] = (rx, tx)
            logged = self._logged.get(instance_id)
        if logged is None:  # first sight in this process: what the ledger holds for this VM session
            last = self.store.one(
                "SELECT detail FROM ledger WHERE instance_id=? AND event=? AND seq > COALESCE("
                "(SELECT MAX(seq) FROM ledger WHERE instance_id=? AND event='running'), 0) ORDER BY seq DESC LIMIT 1",
                (instance_id, NETWORK_EVENT, instance_id),
            )
            counts = json.loads(last["detail"]) if last is not None else {"rx": 0, "tx": 0}
            logged = (int(counts["rx"]), int(counts["tx"]), float("-inf"))
            with self._lock:
                self._logged.setdefault(instance_id, logged)
        if (rx, tx) == logged[:2] or time.monotonic() - logged[2] < self.interval_s:
            return
        with self.store.transaction() as db:
            current = db.execute("SELECT * FROM instances WHERE instance_id=?", (instance_id,)).fetchone()
            if current is None or current["state"] != "running":
                return
            append_ledger(db, dict(current), NETWORK_EVENT, json.dumps({"rx": rx, "tx": tx}))
            with self._lock:
                self._logged[instance_id] = (rx, tx, time.monotonic())

    def flush(self, db: Any, row: dict[str, Any], now: float) -> None:
        """Append the last counters seen for ``row`` if the ledger lacks them (inside the transaction
        that ends its running interval)."""
        with self._lock:
            seen = self._seen.pop(row["instance_id"], None)
            logged = self._logged.pop(row["instance_id"], None)
        if seen is not None and (logged is None or seen != logged[:2]):
            append_ledger(db, row, NETWORK_EVENT, json.dumps({"rx": seen[0], "tx": seen[1]}), when=now)

    def final(self, instance_id: str, rx: int | None, tx: int | None) -> None:
        """The counters a node read just before it destroyed the VM, into the ledger."""
        if rx is None or tx is None:
            return
        with self.store.transaction() as db:
            row = db.execute("SELECT * FROM instances WHERE instance_id=?", (instance_id,)).fetchone()
            if row is not None:
                append_ledger(db, dict(row), NETWORK_EVENT, json.dumps({"rx": rx, "tx": tx}))
