"""Walrus's metadata: one SQLite database (``STATE/walrus/walrus.db``), WAL, ``synchronous=FULL``.

It is its own database, not the CLC's, so that 100,000-key listings and a burst of PUTs never queue
behind the cloud controller's writer (and the reverse). FULL makes every commit durable before an S3
client hears 200: an acknowledged object survives even a power cut, not only a kill.

Small objects (at most 64 KiB) live in the row itself (``inline``): one durable commit instead of a
file, its fsync, a rename and a folder fsync, which is what a 4 KiB PUT would otherwise spend its time on.

Keys sort with SQLite's BINARY collation, which compares the UTF-8 bytes: exactly S3's order.
"""

from __future__ import annotations

import os
import sqlite3
import threading
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
    """A serialised writer connection and one reader connection per thread (as the CLC's store)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        self._db = self._connect()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._writer: int | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            outer, self._writer = self._writer, threading.get_ident()
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._writer = outer

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
