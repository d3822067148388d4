"""What the engine hands back: plain records of buckets, object versions, uploads and listing pages."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cloudlab.walrus import access

NULL_VERSION = "null"


@dataclass(frozen=True)
class Bucket:
    name: str
    owner: str
    created: float
    region: str
    acl: dict[str, Any]
    versioning: str  # '' (never enabled), 'Enabled' or 'Suspended'
    tags: dict[str, str] | None
    cors: list[dict[str, Any]] | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Bucket:
        return cls(
            row["name"],
            row["owner"],
            row["created"],
            row["region"],
            access.load(row["acl"], row["owner"]),
            row["versioning"],
            json.loads(row["tags"]) if row["tags"] else None,
            json.loads(row["cors"]) if row["cors"] else None,
        )


@dataclass(frozen=True)
class ObjectVersion:
    """One version of an object (or a delete marker) with everything S3 shows about it."""

    bucket: str
    key: str
    version_id: str
    is_latest: bool
    delete_marker: bool
    owner: str
    size: int
    etag: str | None
    modified: float
    content_type: str | None
    headers: dict[str, str]
    metadata: dict[str, str]
    tags: dict[str, str]
    acl: dict[str, Any]
    checksum_algorithm: str | None
    checksum: str | None
    parts: int | None
    segments: list[tuple[str, int]]
    inline: bytes | None = None  # a small object's bytes, kept in its metadata row

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ObjectVersion:
        return cls(
            row["bucket"],
            row["key"],
            row["version_id"],
            bool(row["latest"]),
            bool(row["delete_marker"]),
            row["owner"],
            row["size"],
            row["etag"],
            row["modified"],
            row["content_type"],
            json.loads(row["headers"] or "{}"),
            json.loads(row["metadata"] or "{}"),
            json.loads(row["tags"] or "{}"),
            access.load(row["acl"], row["owner"]),
            row["checksum_algorithm"],
            row["checksum"],
            row["parts"],
            [(blob, size) for blob, size in json.loads(row["segments"] or "[]")],
            row["inline"],
        )


class Listed(NamedTuple):
    """What a listing shows of a version: read without decoding its metadata, ACL and tags (a named tuple:
    a page builds a thousand, and a frozen dataclass's ``__init__`` costs nine ``object.__setattr__``)."""

    key: str
    version_id: str
    is_latest: bool
    delete_marker: bool
    owner: str
    size: int
    etag: str | None
    modified: float
    checksum_algorithm: str | None


LISTED_COLUMNS = "id, key, version_id, latest, delete_marker, owner, size, etag, modified, checksum_algorithm"


def listed(row: sqlite3.Row) -> Listed:
    return Listed(row[1], row[2], bool(row[3]), bool(row[4]), row[5], row[6], row[7], row[8], row[9])


@dataclass(frozen=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    owner: str
    initiated: float
    content_type: str | None
    headers: dict[str, str]
    metadata: dict[str, str]
    tags: dict[str, str]
    acl: dict[str, Any]
    checksum_algorithm: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Upload:
        return cls(
            row["upload_id"],
            row["bucket"],
            row["key"],
            row["owner"],
            row["initiated"],
            row["content_type"],
            json.loads(row["headers"] or "{}"),
            json.loads(row["metadata"] or "{}"),
            json.loads(row["tags"] or "{}"),
            access.load(row["acl"], row["owner"]),
            row["checksum_algorithm"],
        )


@dataclass(frozen=True)
class Part:
    part_number: int
    size: int
    etag: str
    modified: float
    checksum: str | None
    blob: str


@dataclass
class ListPage:
    """A page of a listing: entries (versions or uploads), common prefixes, and where to go on."""

    entries: list[Any] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    next_marker: str | None = None  # key (or key-marker) to continue after
    next_version_marker: str | None = None  # for versions and uploads (upload-id-marker)


@dataclass
class WriteSpec:
    """What a client said about an object it writes (PUT, POST, copy with REPLACE, multipart create)."""

    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # Content-Encoding, -Disposition, -Language, ...
    metadata: dict[str, str] = field(default_factory=dict)  # x-amz-meta-*
    tags: dict[str, str] = field(default_factory=dict)
    canned_acl: str | None = None
    grants: list[dict[str, Any]] | None = None


@dataclass
class Integrity:
    """Digests a client claims for the bytes it sends; each is checked before anything is committed.

    ``checksum_value`` may be a callable: an aws-chunked trailer arrives only after the last byte.
    """

    content_md5: bytes | None = None
    checksum_algorithm: str | None = None
    checksum_value: Any = None  # str | Callable[[], str | None] | None
    content_sha256: str | None = None  # hex, from a signed x-amz-content-sha256
