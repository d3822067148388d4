"""The cloud controller's durable state: one SQLite database in WAL mode.

The CLC is the source of truth for instances, so every change is committed before the cloud acts
on it (an instance row exists, as ``pending``, before any node is asked to start a VM) and every
state change appends to the accounting ledger in the same transaction. The ledger is append-only,
enforced by triggers, so a bug cannot rewrite history.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cloudlab.paths import private_dir

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, user_id TEXT NOT NULL UNIQUE, is_admin INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1, certificate TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS access_keys (
    access_key TEXT PRIMARY KEY, secret_key TEXT NOT NULL, user_name TEXT NOT NULL REFERENCES users(name),
    active INTEGER NOT NULL DEFAULT 1, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS clusters (
    name TEXT PRIMARY KEY, zone TEXT NOT NULL UNIQUE, network TEXT NOT NULL, policy TEXT NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY, cluster TEXT NOT NULL, hypervisor TEXT, accel TEXT, vcpus_total INTEGER,
    memory_mb_total INTEGER, first_seen REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS vm_types (
    name TEXT PRIMARY KEY, vcpus INTEGER NOT NULL, memory_mb INTEGER NOT NULL, disk_gb INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS images (
    image_id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, owner TEXT NOT NULL,
    kernel_id TEXT, ramdisk_id TEXT, path TEXT, sha256 TEXT, state TEXT NOT NULL, description TEXT,
    is_public INTEGER NOT NULL DEFAULT 1, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id TEXT PRIMARY KEY, owner TEXT NOT NULL, client_token TEXT, created REAL NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS reservations_by_token ON reservations(owner, client_token)
    WHERE client_token IS NOT NULL;
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY, reservation_id TEXT NOT NULL, owner TEXT NOT NULL, image_id TEXT NOT NULL,
    kernel_id TEXT, ramdisk_id TEXT, instance_type TEXT NOT NULL, vcpus INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL, cluster TEXT NOT NULL, zone TEXT NOT NULL, node TEXT, state TEXT NOT NULL,
    state_reason TEXT, launch_index INTEGER NOT NULL DEFAULT 0, key_name TEXT, user_data TEXT,
    launch_time REAL NOT NULL, dispatched_at REAL, running_at REAL, terminated_at REAL,
    updated REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instances_by_owner ON instances(owner);
CREATE INDEX IF NOT EXISTS instances_by_state ON instances(state);
CREATE INDEX IF NOT EXISTS instances_by_owner_state ON instances(owner, state, terminated_at);
CREATE INDEX IF NOT EXISTS instances_by_state_end ON instances(state, terminated_at);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, user TEXT NOT NULL, instance_id TEXT NOT NULL,
    instance_type TEXT, vcpus INTEGER, memory_mb INTEGER, node TEXT, cluster TEXT, event TEXT NOT NULL,
    detail TEXT);
CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger
    BEGIN SELECT RAISE(ABORT, 'the accounting ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger
    BEGIN SELECT RAISE(ABORT, 'the accounting ledger is append-only'); END;
CREATE TABLE IF NOT EXISTS unknown_vms (
    node TEXT NOT NULL, instance_id TEXT NOT NULL, state TEXT, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    PRIMARY KEY (node, instance_id));
"""


class Store:
    """One SQLite database: a single, serialised writer connection, and a reader connection per thread.

    WAL lets readers see the last committed state while a write is in progress, so DescribeInstances
    and the API's authentication never queue behind the reconciler's writes. A thread inside a
    write transaction reads through the writer, so it sees its own uncommitted changes.
    """

    def __init__(self, path: Path) -> None:
        private_dir(path.parent)
        self.path = path
        # Every secret access key is in here: 0600 from the first byte. SQLite gives its -wal and -shm
        # files the database file's mode, so they are private too.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a committed transaction survives a crash or kill of the process (the WAL is
        # written before COMMIT returns); only an OS crash may lose the last commits, at a fraction
        # of FULL's cost (an fsync per commit would cap the CLC at a few hundred state changes/s).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.RLock()
        self._schemas: set[str] = set()
        self._local = threading.local()
        self._writer_thread: int | None = None
        self._closed = False
        self._version_db: sqlite3.Connection | None = None
        self._version_lock = threading.Lock()
        self._db.executescript(SCHEMA)
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def ensure_schema(self, sql: str) -> None:
        """Create a domain module's tables (``CREATE ... IF NOT EXISTS``), once per process.

        ``executescript`` commits whatever transaction is open, so calling this inside one is a bug
        that would silently break that transaction's atomicity: refuse it loudly.
        """
        with self._lock:
            if sql in self._schemas:
                return
            if self._writer_thread is not None:
                raise RuntimeError("ensure_schema inside a transaction would commit it: create services first")
            self._db.executescript(sql)
            self._schemas.add(sql)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; commits on success, rolls back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            outer, self._writer_thread = self._writer_thread, threading.get_ident()
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._writer_thread = outer

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "db", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            conn.row_factory = sqlite3.Row
            self._local.db = conn
        return conn

    def query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]:
        if self._writer_thread == threading.get_ident():
            return self._db.execute(sql, params).fetchall()
        return self._reader().execute(sql, params).fetchall()

    def one(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Row | None:
        if self._writer_thread == threading.get_ident():
            return self._db.execute(sql, params).fetchone()
        return self._reader().execute(sql, params).fetchone()

    def data_version(self) -> int:
        """A number that changes whenever anyone (any connection, any process) commits to the database.

        SQLite's ``PRAGMA data_version`` on a connection of its own that never writes: a few
        microseconds, where a query costs a parse and a lookup. A reader may keep what it derived from
        the database for as long as this number stays the same (the S3 endpoint keeps access keys so).
        """
        with self._version_lock:
            if self._version_db is None:
                self._version_db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                                   timeout=30)  # fmt: skip
            return int(self._version_db.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        with self._version_lock:
            if self._version_db is not None:
                self._version_db.close()
                self._version_db = None
        with self._lock:
            self._closed = True
            self._db.close()
            reader = getattr(self._local, "db", None)
            if reader is not None:
                reader.close()
                self._local.db = None


def append_ledger(
    db: sqlite3.Connection,
    instance: sqlite3.Row | dict[str, Any],
    event: str,
    detail: str | None = None,
    when: float | None = None,
) -> None:
    """Append one usage event for ``instance`` (call inside the transaction that changed it)."""
    db.execute(
        "INSERT INTO ledger (time, user, instance_id, instance_type, vcpus, memory_mb, node, cluster, event, detail)"
        " VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            when or time.time(),
            instance["owner"],
            instance["instance_id"],
            instance["instance_type"],
            instance["vcpus"],
            instance["memory_mb"],
            instance["node"],
            instance["cluster"],
            event,
            detail,
        ),
    )
