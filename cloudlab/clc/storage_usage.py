"""Storage metrics of the accounting report, from Walrus's ``storage`` readings in the ledger.

Each reading holds cumulative counters of one user at one time: ``byte_seconds`` (stored bytes
integrated over time), ``bytes_in``, ``bytes_out`` and the stored ``bytes`` at that time. The value of a
counter at any time t is the last reading at or before t, with byte-seconds extended at that reading's
stored size (exact until the next change); a window's usage is the difference between its two ends, so
the sum over days or users equals the total. ``storage_gb_hours`` is GiB × hours.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from cloudlab.clc.store import Store

STORAGE_EVENT = "storage"
STORAGE_METRICS = ("storage_gb_hours", "s3_bytes_in", "s3_bytes_out")
_GIB_HOUR = 3600.0 * 1024**3


class _Series:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.readings: list[dict[str, Any]] = []

    def at(self, when: float) -> tuple[float, int, int]:
        """(byte-seconds, bytes in, bytes out) at ``when``."""
        index = bisect.bisect_right(self.times, when) - 1
        if index < 0:
            return 0.0, 0, 0
        r = self.readings[index]
        return r["byte_seconds"] + r["bytes"] * max(0.0, when - self.times[index]), r["bytes_in"], r["bytes_out"]

    def between(self, start: float | None, end: float) -> dict[str, float | int]:
        lo = self.at(start) if start is not None else (0.0, 0, 0)
        hi = self.at(end)
        return {
            "storage_gb_hours": (hi[0] - lo[0]) / _GIB_HOUR,
            "s3_bytes_in": hi[1] - lo[1],
            "s3_bytes_out": hi[2] - lo[2],
        }


def _series(store: Store, user: str | None, end: float) -> dict[str, _Series]:
    sql = "SELECT user, time, detail FROM ledger WHERE event=? AND time <= ?"
    params: list[Any] = [STORAGE_EVENT, end]
    if user is not None:
        sql += " AND user=?"
        params.append(user)
    series: dict[str, _Series] = {}
    for row in store.query(sql + " ORDER BY user, time, seq", params):
        try:
            reading = json.loads(row["detail"])
            reading = {k: reading[k] for k in ("byte_seconds", "bytes", "bytes_in", "bytes_out")}
        except (ValueError, KeyError, TypeError):
            continue
        s = series.setdefault(row["user"], _Series())
        s.times.append(row["time"])
        s.readings.append(reading)
    return series


def _days(start: float, end: float) -> Iterator[tuple[str, float, float]]:
    at = start
    while at < end:
        midnight = datetime.fromtimestamp(at, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        piece_end = min(end, (midnight + timedelta(days=1)).timestamp())
        yield midnight.date().isoformat(), at, piece_end
        at = piece_end


def storage_usage(
    store: Store, *, user: str | None, start: float | None, end: float, by: str
) -> dict[str, dict[str, float | int]]:
    """Storage metrics per group key (user, ``s3`` by type, ``walrus:USER`` by instance, UTC day, ``total``)."""
    out: dict[str, dict[str, float | int]] = {}

    def add(key: str, values: dict[str, float | int]) -> None:
        if not any(values.values()):
            return
        row = out.setdefault(key, dict.fromkeys(STORAGE_METRICS, 0))
        for name, value in values.items():
            row[name] += value

    for name, series in _series(store, user, end).items():
        if by == "day":
            first = series.times[0] if start is None else max(start, series.times[0])
            for day, lo, hi in _days(first, end):
                add(day, series.between(lo, hi))
            continue
        key = {"user": name, "type": "s3", "instance": f"walrus:{name}"}.get(by, "total")
        add(key, series.between(start, end))
    return out
