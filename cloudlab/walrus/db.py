"""Walrus's metadata: one SQLite database (``STATE/walrus/walrus.db``), WAL, every commit fsynced.

It is its own database, not the CLC's, so that 100,000-key listings and a burst of PUTs never queue
behind the cloud controller's writer (and the reverse). Every commit is durable before an S3 client
hears 200: an acknowledged object survives even a power cut, not only a kill. The writer runs with
``synchronous=NORMAL`` and fsyncs the WAL itself right after each COMMIT, outside the writer's lock,
which is what ``FULL`` would do inside it: the WAL holds the commit's frames once COMMIT returns, and
after the fsync they are on disk (SQLite's recovery keeps every frame up to the last valid commit).
Done outside the lock, the fsync no longer stops the next bodies from running meanwhile. The price: a
reader may see a commit a few milliseconds before it is durable, while its writer still waits for the
fsync; a kill -9 in that window loses nothing (the page cache has it), and only a power cut could take
back what a reader saw early, never what a writer was told had succeeded.

Small objects (at most 64 KiB) live in the row itself (``inline``): one durable commit instead of a
file, its fsync, a rename and a folder fsync, which is what a 4 KiB PUT would otherwise spend its time on.

Keys sort with SQLite's BINARY collation, which compares the UTF-8 bytes: exactly S3's order.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, created REAL NOT NULL, region TEXT NOT NULL,
    acl TEXT NOT NULL, versioning TEXT NOT NULL DEFAULT '', tags TEXT, cors TEXT);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, bucket TEXT NOT NULL, key TEXT NOT NULL, version_id TEXT NOT NULL,
    latest INTEGER NOT NULL, delete_marker INTEGER NOT NULL DEFAULT 0, owner TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0, etag TEXT, modified REAL NOT NULL, content_type TEXT, headers TEXT,
    metadata TEXT, tags TEXT, acl TEXT, checksum_algorithm TEXT, checksum TEXT, parts INTEGER,
    segments TEXT NOT NULL DEFAULT '[]', inline BLOB);
CREATE UNIQUE INDEX IF NOT EXISTS versions_by_id ON versions(bucket, key, version_id);
CREATE INDEX IF NOT EXISTS versions_by_key ON versions(bucket, key, id);
CREATE INDEX IF NOT EXISTS versions_current ON versions(bucket, key) WHERE latest=1 AND delete_marker=0;
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL, owner TEXT NOT NULL,
    initiated REAL NOT NULL, content_type TEXT, headers TEXT, metadata TEXT, tags TEXT, acl TEXT,
    checksum_algorithm TEXT);
CREATE INDEX IF NOT EXISTS uploads_by_key ON uploads(bucket, key, initiated);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL, part_number INTEGER NOT NULL, blob TEXT NOT NULL, size INTEGER NOT NULL,
    etag TEXT NOT NULL, modified REAL NOT NULL, checksum TEXT, PRIMARY KEY (upload_id, part_number));
CREATE TABLE IF NOT EXISTS usage (
    user TEXT PRIMARY KEY, bytes INTEGER NOT NULL DEFAULT 0, objects INTEGER NOT NULL DEFAULT 0,
    bytes_in INTEGER NOT NULL DEFAULT 0, bytes_out INTEGER NOT NULL DEFAULT 0,
    byte_seconds REAL NOT NULL DEFAULT 0, changed REAL NOT NULL);
CREATE TABLE IF NOT EXISTS quotas (user TEXT PRIMARY KEY, max_bytes INTEGER, max_objects INTEGER);
"""


class MetaDB:
    """A serialised writer connection and one reader connection per thread (as the CLC's store).

    Writes are group-committed: each :meth:`transaction` body runs alone on the writer connection,
    inside a savepoint of a transaction that stays open, and its caller waits, after the body, until
    a COMMIT covering it is durable (the WAL fsynced after it). While one COMMIT's fsync runs, the bodies
    that arrive meanwhile run into the next transaction, and one COMMIT (one fsync) then makes all of
    them durable. A caller still hears of success only once its own write is on disk, a body that
    fails is rolled back to its savepoint alone, and a COMMIT that fails fails every body it carried;
    one writer alone commits at once, as before (nothing waits for company).
    """

    #: times a committer yields so that bodies already waiting for the writer join its COMMIT
    JOIN_YIELDS = 16

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        self._db = self._connect()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # the WAL is fsynced by _sync_wal after each COMMIT
        self._wal = Path(f"{path}-wal")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()  # one body (or one COMMIT) at a time on the writer connection
        self._local = threading.local()
        self._writer: int | None = None
        self._state = threading.Condition(threading.Lock())
        self._entering = 0  # bodies waiting for the writer
        self._open = False  # a transaction is open on the writer connection
        self._pending = 0  # bodies in it that succeeded, waiting for its COMMIT
        self._batch = 0  # the number of the transaction bodies join now
        self._durable = -1  # the last batch committed (or failed)
        self._committing = False
        self._failed: dict[int, BaseException] = {}
        self.commits = 0  # COMMITs made (each one fsync): bodies / commits is the batching achieved

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        me = threading.get_ident()
        if self._writer == me:  # nested in a body of this thread: part of it
            with self._savepoint():
                yield self._db
            return
        with self._state:
            self._entering += 1
        with self._lock:
            with self._state:
                self._entering -= 1
            if not self._open:
                self._db.execute("BEGIN IMMEDIATE")
                self._open = True
            self._writer = me
            try:
                with self._savepoint():
                    yield self._db
            except BaseException:
                if self._pending == 0:  # nothing else rides on this transaction: end it
                    self._db.execute("ROLLBACK")
                    self._open = False
                raise
            finally:
                self._writer = None
            self._pending += 1
            ticket = self._batch
        self._make_durable(ticket)

    @contextmanager
    def _savepoint(self) -> Iterator[None]:
        self._db.execute("SAVEPOINT body")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO body")
            self._db.execute("RELEASE body")
            raise
        self._db.execute("RELEASE body")

    def _make_durable(self, ticket: int) -> None:
        """Return once batch ``ticket`` is committed (raise if its COMMIT failed): commit it ourselves
        unless another thread is committing, in which case wait for that one and look again."""
        while True:
            with self._state:
                if self._durable >= ticket:
                    error = self._failed.get(ticket)
                    if error is not None:
                        raise error
                    return
                if self._committing:
                    self._state.wait()
                    continue
                self._committing = True
            for _ in range(self.JOIN_YIELDS):  # bodies already queued for the writer join this COMMIT
                if self._entering == 0:
                    break
                time.sleep(0)
            error: BaseException | None = None
            with self._lock:
                batch, self._batch = self._batch, self._batch + 1
                if self._open:
                    try:
                        self._db.execute("COMMIT")
                        self.commits += 1
                    except BaseException as exc:  # noqa: BLE001 - handed to every body of the batch
                        error = exc
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    self._open, self._pending = False, 0
                    committed = error is None
                else:
                    committed = False
            if committed:  # outside the lock: the next bodies run while the disk works
                try:
                    self._sync_wal()
                except BaseException as exc:  # noqa: BLE001 - handed to every body of the batch
                    error = exc
            with self._state:
                self._durable = batch
                if error is not None:
                    self._failed[batch] = error
                    for old in [b for b in self._failed if b < batch - 64]:
                        del self._failed[old]
                self._committing = False
                self._state.notify_all()

    def _sync_wal(self) -> None:
        """Make every COMMIT so far durable: fdatasync the WAL (opened by name each time, so a WAL that
        SQLite recreated is the one synced)."""
        fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def in_transaction(self) -> bool:
        """Whether this thread is inside a :meth:`transaction` body (its reads see its own writes)."""
        return self._writer == threading.get_ident()

    def _reader(self) -> sqlite3.Connection:
        if self._writer == threading.get_ident():
            return self._db
        conn = getattr(self._local, "db", None)
        if conn is None:
            conn = self._local.db = self._connect()
        return conn

    def query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[sqlite3.Row]:
        return self._reader().execute(sql, params).fetchall()

    def one(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> sqlite3.Row | None:
        return self._reader().execute(sql, params).fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()
