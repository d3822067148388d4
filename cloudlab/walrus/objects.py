"""Object operations: put, get, head, delete (versions and delete markers), copy, tagging and ACLs.

Reading hands back open file descriptors of the version's segments, opened while the version is
current: a concurrent delete may unlink the files, but a read already started finishes (POSIX keeps
an unlinked open file), and a later read sees the delete. Conditional requests (If-Match, ...) follow
RFC 7232 as S3 applies them.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cloudlab.walrus import access, checksums
from cloudlab.walrus.access import Principal
from cloudlab.walrus.base import INLINE_MAX, EngineBase, check_key
from cloudlab.walrus.blobs import CHUNK, BlobInfo
from cloudlab.walrus.buckets import MAX_OBJECT_TAGS, check_tags
from cloudlab.walrus.errors import WalrusError, access_denied, no_such_bucket, no_such_key
from cloudlab.walrus.records import Integrity, ObjectVersion, WriteSpec


@dataclass(frozen=True)
class Conditions:
    """RFC 7232 preconditions (S3 takes them on GET/HEAD and, as x-amz-copy-source-if-*, on copy)."""

    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: datetime | None = None
    if_unmodified_since: datetime | None = None


def _etag_matches(header: str, etag: str | None) -> bool:
    tags = [t.strip().removeprefix("W/").strip('"') for t in header.split(",")]
    return "*" in tags or (etag is not None and etag.strip('"') in tags)


def check_conditions(version: ObjectVersion, cond: Conditions | None, *, copy: bool = False) -> None:
    """Raise PreconditionFailed (412) or NotModified (304) as S3 does; ``copy`` makes both 412."""
    if cond is None:
        return
    modified = int(version.modified)
    failed = WalrusError("PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                         Condition="If-Match")  # fmt: skip
    not_modified = failed if copy else WalrusError("NotModified", "Not Modified")
    if cond.if_match is not None and not _etag_matches(cond.if_match, version.etag):
        raise failed
    if (
        cond.if_unmodified_since is not None
        and cond.if_match is None
        and modified > cond.if_unmodified_since.timestamp()
    ):
        raise failed
    if cond.if_none_match is not None and _etag_matches(cond.if_none_match, version.etag):
        raise not_modified
    if (
        cond.if_modified_since is not None
        and cond.if_none_match is None
        and modified <= cond.if_modified_since.timestamp()
    ):
        raise not_modified


def resolve_range(spec: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` as an inclusive (first, last), None to send it all.

    A syntactically odd Range is ignored (RFC 7233); one that cannot be satisfied is InvalidRange (416).
    """
    unit, _, ranges = spec.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in ranges:
        return None
    first_text, dash, last_text = ranges.strip().partition("-")
    if not dash or not (first_text.isdigit() or first_text == "") or not (last_text.isdigit() or last_text == ""):
        return None
    if first_text == "":
        if last_text == "":
            return None
        length = int(last_text)
        if length == 0 or size == 0:
            raise _invalid_range(size)
        return max(0, size - length), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last < first:
        return None
    if first >= size:
        raise _invalid_range(size)
    return first, min(last, size - 1)


def _invalid_range(size: int) -> WalrusError:
    return WalrusError("InvalidRange", "The requested range is not satisfiable", ActualObjectSize=str(size))


class ObjectData:
    """The open segments of one version, readable as ranges (for sendfile or a plain copy)."""

    def __init__(self, version: ObjectVersion, files: list[tuple[int, int]]) -> None:
        self.version = version
        self._files = files  # (fd, size) per segment
        self.inline = version.inline  # a small object's bytes (then there are no files)

    def pieces(self, first: int = 0, last: int | None = None) -> Iterator[tuple[int, int, int]]:
        """(fd, offset, length) covering bytes first..last (inclusive) in order."""
        last = self.version.size - 1 if last is None else last
        position = 0
        for fd, size in self._files:
            start, end = max(first, position), min(last, position + size - 1)
            if start <= end:
                yield fd, start - position, end - start + 1
            position += size

    def chunks(self, first: int = 0, last: int | None = None) -> Iterator[bytes]:
        if self.inline is not None:
            yield self.inline[first : (self.version.size if last is None else last + 1)]
            return
        for fd, offset, length in self.pieces(first, last):
            while length > 0:
                data = os.pread(fd, min(CHUNK, length), offset)
                if not data:
                    raise WalrusError("InternalError", "object data is shorter than its metadata says")
                offset += len(data)
                length -= len(data)
                yield data

    def close(self) -> None:
        for fd, _ in self._files:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files = []

    def __enter__(self) -> ObjectData:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: The columns of a version row that :meth:`ObjectOps.commit_version`'s callers leave to the schema's defaults.
_VERSION_DEFAULTS: dict[str, Any] = {"delete_marker": 0, "parts": None, "inline": None, "content_type": None,
                                     "headers": None, "metadata": None, "tags": None}  # fmt: skip


def _headers_row(spec: WriteSpec) -> dict[str, Any]:
    return {
        "content_type": spec.content_type,
        "headers": json.dumps(spec.headers),
        "metadata": json.dumps(spec.metadata),
        "tags": json.dumps(spec.tags),
    }


class ObjectOps(EngineBase):
    def put_object(
        self,
        principal: Principal | None,
        bucket_name: str,
        key: str,
        chunks: Any,
        spec: WriteSpec,
        integrity: Integrity | None = None,
        declared_size: int | None = None,
    ) -> ObjectVersion:
        """Stream an object in and make it the key's latest version (see :mod:`cloudlab.walrus.base`)."""
        check_key(key)
        bucket = self.require_bucket(principal, bucket_name, "WRITE")
        check_tags(spec.tags, MAX_OBJECT_TAGS)
        owner = principal or Principal(bucket.owner, "")
        acl = self.new_acl(owner, spec, bucket)
        self.check_quota(None, bucket.owner, declared_size or 0, 1)
        small = declared_size is not None and declared_size <= INLINE_MAX
        info = self.receive(chunks, integrity, INLINE_MAX if small else 0)
        blobs = [info.blob] if info.blob is not None else []
        segments = [[info.blob.blob_id, info.size]] if info.blob is not None else []
        checksum = None
        if integrity and integrity.checksum_algorithm:
            checksum = checksums.encode(info.digests[integrity.checksum_algorithm])
        row = {
            "key": key,
            "owner": owner.name,
            "size": info.size,
            "etag": info.md5.hex(),
            "inline": info.inline or None,  # an empty object needs neither a file nor bytes
            "modified": self.clock(),
            "acl": access.dump(acl),
            "checksum_algorithm": integrity.checksum_algorithm if integrity else None,
            "checksum": checksum,
            "segments": json.dumps(segments),
            **_headers_row(spec),
        }
        return self.commit_version(bucket_name, row, blobs, info.size)

    def commit_version(
        self, bucket_name: str, row: dict[str, Any], blobs: list[BlobInfo], bytes_in: int
    ) -> ObjectVersion:
        """Install durable blobs as a new version, charging the bucket owner; unlink what it replaced."""
        try:
            with self.db.transaction() as db:
                bucket_row = db.execute("SELECT * FROM buckets WHERE name=?", (bucket_name,)).fetchone()
                if bucket_row is None:
                    raise no_such_bucket(bucket_name)
                from cloudlab.walrus.records import Bucket

                bucket = Bucket.from_row(bucket_row)
                self.check_quota(db, bucket.owner, row["size"], 1)
                self.charge(db, bucket.owner, row["size"], 1, bytes_in=bytes_in)
                doomed = self.install_version(db, bucket, row)
        except BaseException:
            self.blobs.delete(b.blob_id for b in blobs)
            raise
        self.blobs.delete(doomed)
        # The committed row as the caller's answer, without reading it back: it is exactly what was
        # inserted (a re-read through a reader connection was a tenth of a small PUT's server time).
        return ObjectVersion.from_row(_VERSION_DEFAULTS | row)

    def put_empty_objects(self, principal: Principal, bucket_name: str, keys: list[str]) -> int:
        """Create many empty objects in one transaction (datasets of markers, and listing tests at scale)."""
        bucket = self.require_bucket(principal, bucket_name, "WRITE")
        for key in keys:
            check_key(key)
        acl = access.dump(access.canned_acl("private", principal))
        now = self.clock()
        with self.db.transaction() as db:
            self.check_quota(db, bucket.owner, 0, len(keys))
            for key in keys:
                row = {"key": key, "owner": principal.name, "size": 0, "etag": "d41d8cd98f00b204e9800998ecf8427e",
                       "modified": now, "acl": acl, "segments": "[]", **_headers_row(WriteSpec())}  # fmt: skip
                self.install_version(db, bucket, row)
            self.charge(db, bucket.owner, 0, len(keys))
        return len(keys)

    def lookup(
        self, principal: Principal | None, bucket_name: str, key: str, version_id: str | None, permission: str = "READ"
    ) -> ObjectVersion:
        """The version a GET/HEAD names, after the permission check (S3's 404 vs 403 rules)."""
        bucket = self.bucket(bucket_name)
        version = self.version(bucket_name, key, version_id)
        if version is None:
            if not access.allowed(bucket.acl, principal, "READ"):
                raise access_denied(f"{bucket_name}/{key}")
            if version_id is not None:
                raise WalrusError("NoSuchVersion", "The specified version does not exist.", Key=key,
                                  VersionId=version_id)  # fmt: skip
            raise no_such_key(bucket_name, key)
        if not access.allowed(version.acl, principal, permission):
            raise access_denied(f"{bucket_name}/{key}")
        if version.delete_marker:
            if version_id is not None:
                raise WalrusError("MethodNotAllowed", "The specified method is not allowed against this resource.",
                                  delete_marker="true", version_id=version.version_id)  # fmt: skip
            raise WalrusError("NoSuchKey", "The specified key does not exist.", Key=key, delete_marker="true",
                              version_id=version.version_id)  # fmt: skip
        return version

    def open_object(
        self, principal: Principal | None, bucket_name: str, key: str, version_id: str | None = None,
        conditions: Conditions | None = None,
    ) -> ObjectData:  # fmt: skip
        for _ in range(3):  # a delete may unlink the files between the lookup and the open: look again
            version = self.lookup(principal, bucket_name, key, version_id)
            check_conditions(version, conditions)
            files: list[tuple[int, int]] = []
            try:
                for blob, size in version.segments:
                    files.append((os.open(self.blobs.path(blob), os.O_RDONLY | os.O_CLOEXEC), size))
            except FileNotFoundError:
                for fd, _ in files:
                    os.close(fd)
                continue
            return ObjectData(version, files)
        raise no_such_key(bucket_name, key)

    def delete_object(
        self, principal: Principal | None, bucket_name: str, key: str, version_id: str | None = None
    ) -> tuple[str | None, bool]:
        """Delete as S3 does; returns (version id affected or created, whether it is a delete marker)."""
        bucket = self.require_bucket(principal, bucket_name, "WRITE")
        doomed: list[str] = []
        with self.db.transaction() as db:
            if version_id is not None:
                row = db.execute(
                    "SELECT * FROM versions WHERE bucket=? AND key=? AND version_id=?", (bucket_name, key, version_id)
                ).fetchone()
                if row is None:
                    if version_id != "null":
                        raise WalrusError("NoSuchVersion", "The specified version does not exist.", Key=key,
                                          VersionId=version_id)  # fmt: skip
                    return version_id, False
                doomed = [blob for blob, _ in json.loads(row["segments"])]
                if not row["delete_marker"]:
                    self.charge(db, bucket.owner, -row["size"], -1)
                db.execute("DELETE FROM versions WHERE id=?", (row["id"],))
                self.restore_latest(db, bucket_name, key)
                return_value: tuple[str | None, bool] = (version_id, bool(row["delete_marker"]))
            elif bucket.versioning == "":
                row = db.execute(
                    "SELECT * FROM versions WHERE bucket=? AND key=? AND latest=1", (bucket_name, key)
                ).fetchone()
                if row is not None:
                    doomed = [blob for blob, _ in json.loads(row["segments"])]
                    self.charge(db, bucket.owner, -row["size"], -1)
                    db.execute("DELETE FROM versions WHERE id=?", (row["id"],))
                return_value = (None, False)
            else:
                marker = {
                    "key": key,
                    "owner": principal.name if principal else bucket.owner,
                    "size": 0,
                    "modified": self.clock(),
                    "delete_marker": 1,
                    "acl": bucket_acl_for_marker(bucket),
                }
                doomed = self.install_version(db, bucket, marker)
                return_value = (marker["version_id"], True)
        self.blobs.delete(doomed)
        return return_value

    def copy_object(
        self,
        principal: Principal,
        source: tuple[str, str, str | None],
        bucket_name: str,
        key: str,
        spec: WriteSpec | None,
        conditions: Conditions | None = None,
        tags: dict[str, str] | None = None,
        acl: WriteSpec | None = None,
    ) -> tuple[ObjectVersion, ObjectVersion]:
        """Copy a version; ``spec`` None keeps its metadata (directive COPY), else REPLACE; the copy's ACL is
        ``acl``'s (private by default, as S3: ACLs are never copied). Returns (source version, new version)."""
        src_bucket, src_key, src_version = source
        if (src_bucket, src_key) == (bucket_name, key) and spec is None and src_version is None and tags is None:
            raise WalrusError(
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself without changing "
                "the object's metadata, storage class, website redirect location or encryption attributes.",
            )
        with self.open_object(principal, src_bucket, src_key, src_version) as data:
            check_conditions(data.version, conditions, copy=True)
            old = data.version
            if spec is None:
                spec = WriteSpec(old.content_type, dict(old.headers), dict(old.metadata), dict(old.tags))
            if tags is not None:
                spec.tags = tags
            if acl is not None:
                spec.canned_acl, spec.grants = acl.canned_acl, acl.grants
            integrity = Integrity(checksum_algorithm=old.checksum_algorithm) if old.checksum_algorithm else None
            if old.checksum and old.parts:
                integrity = None  # a composite checksum cannot be carried to a single-part copy
            version = self.put_object(principal, bucket_name, key, data.chunks(), spec, integrity, old.size)
        return old, version

    # -- tagging and ACL ----------------------------------------------------------------------------

    def _update_version(self, bucket_name: str, key: str, version_id: str | None, column: str, value: str) -> str:
        with self.db.transaction() as db:
            clause = "version_id=?" if version_id is not None else "latest=1"
            args = (bucket_name, key) + ((version_id,) if version_id is not None else ())
            row = db.execute(
                f"SELECT id, version_id FROM versions WHERE bucket=? AND key=? AND {clause} AND delete_marker=0", args
            ).fetchone()
            if row is None:
                raise no_such_key(bucket_name, key)
            db.execute(f"UPDATE versions SET {column}=? WHERE id=?", (value, row["id"]))
            return row["version_id"]

    def get_object_tags(
        self, principal: Principal | None, bucket: str, key: str, version_id: str | None
    ) -> ObjectVersion:
        return self.lookup(principal, bucket, key, version_id)

    def put_object_tags(
        self, principal: Principal | None, bucket: str, key: str, version_id: str | None, tags: dict[str, str]
    ) -> str:
        self.lookup(principal, bucket, key, version_id, "WRITE_ACP" if principal is None else "READ")
        self.require_bucket(principal, bucket, "WRITE")
        check_tags(tags, MAX_OBJECT_TAGS)
        return self._update_version(bucket, key, version_id, "tags", json.dumps(tags))

    def get_object_acl(
        self, principal: Principal | None, bucket: str, key: str, version_id: str | None
    ) -> ObjectVersion:
        return self.lookup(principal, bucket, key, version_id, "READ_ACP")

    def put_object_acl(
        self, principal: Principal, bucket: str, key: str, version_id: str | None, spec: WriteSpec
    ) -> str:
        version = self.lookup(principal, bucket, key, version_id, "WRITE_ACP")
        acl = self.new_acl(principal, spec, self.bucket(bucket))
        acl["owner"] = version.owner
        return self._update_version(bucket, key, version_id, "acl", access.dump(acl))


def bucket_acl_for_marker(bucket: Any) -> str:
    """A delete marker carries the bucket owner's private ACL (it has no data to share)."""
    return access.dump({"owner": bucket.owner, "grants": []})
