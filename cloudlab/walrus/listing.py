"""Listings: objects (v1 and v2), object versions and multipart uploads, in S3's order and pages.

Keys come out of SQLite in BINARY order (UTF-8 bytes: S3's order) through indexes, a batch at a time,
so a page of 1,000 out of 100,000 keys reads about 1,000 rows. With a delimiter, every key under a
common prefix rolls up into that prefix, and the scan jumps past the whole prefix with one index
seek (the smallest string greater than every key that starts with it) instead of reading its keys.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from cloudlab.walrus.access import Principal
from cloudlab.walrus.base import EngineBase
from cloudlab.walrus.errors import WalrusError
from cloudlab.walrus.records import LISTED_COLUMNS, ListPage, Upload, listed

MAX_KEYS = 1000
_BATCH = 1001

#: (kind, value): "after" a row's sort position, or "beyond" every key starting with a prefix.
Cursor = tuple[str, Any]
Fetch = Callable[[Cursor | None, int], list[sqlite3.Row]]


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF and not (0xD7FF <= last < 0xE000):
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


def _page(fetch: Fetch, start: Cursor | None, prefix: str, delimiter: str | None, max_keys: int) -> ListPage:
    page = ListPage()
    cursor = start
    count = 0
    floor = _marker_key(start)
    while True:
        rows = fetch(cursor, _BATCH)
        if not rows:
            return page
        for row in rows:
            key = row["key"]
            common = None
            if delimiter:
                at = key.find(delimiter, len(prefix))
                if at >= 0:
                    common = key[: at + len(delimiter)]
            if common is not None and floor is not None and common <= floor:
                cursor = ("beyond", common)  # the marker was this prefix: continue after all of it
                break
            if count >= max_keys:
                page.truncated = True
                return page
            count += 1
            if common is not None:
                page.prefixes.append(common)
                page.next_marker, page.next_version_marker = common, None
                cursor = ("beyond", common)
                break  # the next fetch seeks past the whole prefix
            page.entries.append(row)
            page.next_marker = key
            cursor = ("after", row)
        else:
            if len(rows) < _BATCH:
                return page


def _marker_key(start: Cursor | None) -> str | None:
    if start is None:
        return None
    kind, value = start
    return value if kind == "start" else value[0] if kind == "marker" else None


def _bounds(prefix: str) -> tuple[str, list[Any]]:
    sql, args = " AND key >= ?", [prefix]
    end = prefix_end(prefix)
    if prefix and end is not None:
        sql += " AND key < ?"
        args.append(end)
    return sql, args


def _check_max_keys(max_keys: int | None) -> int:
    if max_keys is None:
        return MAX_KEYS
    if max_keys < 0:
        raise WalrusError("InvalidArgument", "max-keys must be non-negative", ArgumentName="max-keys")
    return min(max_keys, MAX_KEYS)


class ListingOps(EngineBase):
    def list_objects(
        self,
        principal: Principal | None,
        bucket: str,
        prefix: str = "",
        delimiter: str | None = None,
        after: str | None = None,
        max_keys: int | None = None,
    ) -> ListPage:
        """Current objects with ``key > after`` (entries are ObjectVersion, prefixes strings)."""
        self.require_bucket(principal, bucket, "READ")
        where, bound_args = _bounds(prefix)
        base = f"SELECT {LISTED_COLUMNS} FROM versions WHERE bucket=? AND latest=1 AND delete_marker=0{where}"

        def fetch(cursor: Cursor | None, limit: int) -> list[sqlite3.Row]:
            if cursor is None:
                return self.db.query(f"{base} ORDER BY key LIMIT ?", [bucket, *bound_args, limit])
            kind, value = cursor
            op, lo = (">", value) if kind == "start" else (">", value["key"]) if kind == "after" else (">=", None)
            if kind == "beyond":
                lo = prefix_end(value)
                if lo is None:
                    return []
            return self.db.query(f"{base} AND key {op} ? ORDER BY key LIMIT ?", [bucket, *bound_args, lo, limit])

        start: Cursor | None = ("start", after) if after else None
        page = _page(fetch, start, prefix, delimiter, _check_max_keys(max_keys))
        page.entries = [listed(row) for row in page.entries]
        return page

    def list_versions(
        self,
        principal: Principal | None,
        bucket: str,
        prefix: str = "",
        delimiter: str | None = None,
        key_marker: str | None = None,
        version_marker: str | None = None,
        max_keys: int | None = None,
    ) -> ListPage:
        """Every version and delete marker: by key, newest first within a key."""
        self.require_bucket(principal, bucket, "READ")
        where, bound_args = _bounds(prefix)
        base = f"SELECT {LISTED_COLUMNS} FROM versions WHERE bucket=?{where}"
        order = " ORDER BY key, id DESC LIMIT ?"

        def fetch(cursor: Cursor | None, limit: int) -> list[sqlite3.Row]:
            if cursor is None:
                return self.db.query(base + order, [bucket, *bound_args, limit])
            kind, value = cursor
            if kind == "beyond":
                lo = prefix_end(value)
                return (
                    [] if lo is None else self.db.query(f"{base} AND key >= ?{order}", [bucket, *bound_args, lo, limit])
                )
            key, row_id = (value["key"], value["id"]) if kind == "after" else value
            if row_id is None:
                return self.db.query(f"{base} AND key > ?{order}", [bucket, *bound_args, key, limit])
            return self.db.query(
                f"{base} AND (key > ? OR (key = ? AND id < ?)){order}", [bucket, *bound_args, key, key, row_id, limit]
            )

        start: Cursor | None = None
        if key_marker:
            row_id = None
            if version_marker:
                found = self.db.one(
                    "SELECT id FROM versions WHERE bucket=? AND key=? AND version_id=?",
                    (bucket, key_marker, version_marker),
                )
                if found is None:
                    raise WalrusError("InvalidArgument", "Invalid version id specified",
                                      ArgumentName="version-id-marker")  # fmt: skip
                row_id = found["id"]
            start = ("marker", (key_marker, row_id))
        page = _page(fetch, start, prefix, delimiter, _check_max_keys(max_keys))
        if page.entries and page.next_marker == page.entries[-1]["key"]:
            page.next_version_marker = page.entries[-1]["version_id"]
        page.entries = [listed(row) for row in page.entries]
        return page

    def list_uploads(
        self,
        principal: Principal | None,
        bucket: str,
        prefix: str = "",
        delimiter: str | None = None,
        key_marker: str | None = None,
        upload_marker: str | None = None,
        max_uploads: int | None = None,
    ) -> ListPage:
        """Multipart uploads in progress, by key then initiation (interrupted ones too, to abort them)."""
        self.require_bucket(principal, bucket, "READ")
        where, bound_args = _bounds(prefix)
        base = f"SELECT rowid AS rid, * FROM uploads WHERE bucket=?{where}"
        order = " ORDER BY key, rid LIMIT ?"

        def fetch(cursor: Cursor | None, limit: int) -> list[sqlite3.Row]:
            if cursor is None:
                return self.db.query(base + order, [bucket, *bound_args, limit])
            kind, value = cursor
            if kind == "beyond":
                lo = prefix_end(value)
                return (
                    [] if lo is None else self.db.query(f"{base} AND key >= ?{order}", [bucket, *bound_args, lo, limit])
                )
            key, rid = (value["key"], value["rid"]) if kind == "after" else value
            if rid is None:
                return self.db.query(f"{base} AND key > ?{order}", [bucket, *bound_args, key, limit])
            return self.db.query(
                f"{base} AND (key > ? OR (key = ? AND rowid > ?)){order}", [bucket, *bound_args, key, key, rid, limit]
            )

        start: Cursor | None = None
        if key_marker:
            rid = None
            if upload_marker:
                found = self.db.one("SELECT rowid FROM uploads WHERE upload_id=?", (upload_marker,))
                rid = found[0] if found else None
            start = ("marker", (key_marker, rid))
        page = _page(fetch, start, prefix, delimiter, _check_max_keys(max_uploads))
        if page.entries and page.next_marker == page.entries[-1]["key"]:
            page.next_version_marker = page.entries[-1]["upload_id"]
        page.entries = [Upload.from_row(row) for row in page.entries]
        return page
