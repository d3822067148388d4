"""Walrus's usage into the cloud's append-only ledger: storage byte-seconds and bytes in and out per user.

The engine keeps exact running counters per user in its own database (stored bytes and objects,
bytes received and served, and byte-seconds integrated at every change). The recorder appends a
``storage`` event with those cumulative counters to the CLC's ledger whenever they changed, at most
once per ``interval_s`` and once more when the service stops, so the ledger holds readings of a
monotone series: a report takes differences between readings (and extends the last reading at its
stored size), and a lost or repeated reading never double-counts anything.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from cloudlab.clc.store import Store
from cloudlab.walrus.engine import Walrus

STORAGE_EVENT = "storage"
LEDGER_INSTANCE = "walrus"  # the ledger's instance_id column for storage readings


def _last_readings(store: Store) -> dict[str, dict[str, Any]]:
    rows = store.query(
        "SELECT user, detail FROM ledger WHERE seq IN (SELECT MAX(seq) FROM ledger WHERE event=? GROUP BY user)",
        (STORAGE_EVENT,),
    )
    return {row["user"]: json.loads(row["detail"]) for row in rows}


def record_storage(walrus: Walrus, store: Store, last: dict[str, dict[str, Any]] | None = None) -> int:
    """Append a reading for every user whose counters moved since their last reading; returns how many."""
    last = _last_readings(store) if last is None else last
    readings = []
    for counters in walrus.usage_counters():
        detail = {k: counters[k] for k in ("bytes", "objects", "bytes_in", "bytes_out")}
        previous = last.get(counters["user"])
        if previous is not None and all(previous.get(k) == v for k, v in detail.items()):
            continue  # nothing moved: the last reading extrapolates exactly
        detail["byte_seconds"] = counters["byte_seconds"]
        readings.append((counters["at"], counters["user"], detail))
    if not readings:
        return 0
    with store.transaction() as db:
        for at, user, detail in readings:
            db.execute(
                "INSERT INTO ledger (time, user, instance_id, instance_type, event, detail) VALUES (?,?,?,?,?,?)",
                (at, user, LEDGER_INSTANCE, "s3", STORAGE_EVENT, json.dumps(detail)),
            )
            last[user] = detail
    return len(readings)


class StorageRecorder:
    """A daemon thread that calls :func:`record_storage` every ``interval_s`` (and once at :meth:`stop`)."""

    def __init__(self, walrus: Walrus, store: Store, interval_s: float = 10.0) -> None:
        self._walrus, self._store, self._interval = walrus, store, interval_s
        self._stop = threading.Event()
        self._last: dict[str, dict[str, Any]] | None = None
        self._thread = threading.Thread(target=self._run, name="walrus-ledger", daemon=True)

    def start(self) -> StorageRecorder:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.record()

    def record(self) -> int:
        if self._last is None:
            self._last = _last_readings(self._store)
        try:
            return record_storage(self._walrus, self._store, self._last)
        except Exception:  # noqa: BLE001 - a failed reading is retried at the next tick, never fatal
            import logging

            logging.getLogger(__name__).exception("recording storage usage failed")
            return 0

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.record()


__all__ = ["LEDGER_INSTANCE", "STORAGE_EVENT", "StorageRecorder", "record_storage", "time"]
