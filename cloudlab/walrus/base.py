"""The parts of the engine every operation shares: lookups, permissions, writing blobs, installing versions,
and the per-user storage counters that quotas and the ledger read.

Order of a write, which is what makes ``kill -9`` harmless (see :mod:`cloudlab.walrus.blobs`):
stream to a temporary file → check every digest → fsync + rename → one SQLite transaction that
installs the version, removes what it replaces and charges the owner → unlink the replaced files.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudlab.walrus import access, checksums
from cloudlab.walrus.access import Principal
from cloudlab.walrus.blobs import BlobInfo, BlobStore
from cloudlab.walrus.db import MetaDB
from cloudlab.walrus.errors import WalrusError, access_denied, no_such_bucket
from cloudlab.walrus.records import NULL_VERSION, Bucket, Integrity, ObjectVersion, WriteSpec

MAX_KEY_BYTES = 1024
MAX_OBJECT_BYTES = 5 * 1024**4  # 5 TiB, as S3
MAX_PUT_BYTES = 5 * 1024**3  # a single PUT, as S3
INLINE_MAX = 64 * 1024  # objects up to this size are kept in their metadata row (see cloudlab.walrus.db)
MAX_KEPT_BUCKETS = 4096  # bucket records kept in memory (the cache starts over beyond this)


@dataclass(frozen=True)
class Received:
    """A body that has arrived and passed its digests: in a durable blob, or (small) in memory."""

    blob: BlobInfo | None
    inline: bytes | None
    size: int
    md5: bytes
    digests: dict[str, bytes]


def new_version_id() -> str:
    return secrets.token_urlsafe(24)


def check_key(key: str) -> None:
    if not key:
        raise WalrusError("InvalidArgument", "Object key must not be empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise WalrusError("KeyTooLongError", "Your key is too long", Size=str(len(key.encode())))


class EngineBase:
    """State and helpers shared by the bucket, object, listing and multipart operations."""

    def __init__(self, root: Path, region: str, clock: Callable[[], float] = time.time) -> None:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root = root
        self.region = region
        self.clock = clock
        self.db = MetaDB(root / "walrus.db")
        self.blobs = BlobStore(root)
        self._pending_out: dict[str, int] = {}
        self._out_lock = threading.Lock()
        self._buckets: dict[str, tuple[int, Bucket]] = {}  # name -> (generation read under, record)
        self._generations = itertools.count(1)
        self._bucket_generation = 0
        self.collected = self.blobs.collect_garbage(self._referenced_blobs())

    # -- lookups and permissions --------------------------------------------------------------------

    def _referenced_blobs(self) -> set[str]:
        referenced = {row["blob"] for row in self.db.query("SELECT blob FROM parts")}
        for row in self.db.query("SELECT segments FROM versions WHERE delete_marker=0"):
            referenced.update(blob for blob, _ in json.loads(row["segments"]))
        return referenced

    def bucket(self, name: str) -> Bucket:
        """A bucket's record, from memory unless a bucket changed since it was read.

        Every request reads its bucket (ACL, owner, versioning) and buckets change rarely, so records
        are kept, tagged with the generation they were read under; :meth:`buckets_changed` (called after
        every write to the table, once it is committed) starts a new generation, which retires every
        kept record. A record read before a change but kept after it carries the old tag and is never
        served. Inside a write transaction the record is read afresh (it may be uncommitted).
        Only this process writes ``walrus.db`` (the engine is the cloud service's), so the
        generation sees every change.
        """
        if self.db.in_transaction():
            return self._read_bucket(name)
        generation = self._bucket_generation
        kept = self._buckets.get(name)
        if kept is not None and kept[0] == generation:
            return kept[1]
        bucket = self._read_bucket(name)
        if len(self._buckets) >= MAX_KEPT_BUCKETS:
            self._buckets.clear()
        self._buckets[name] = (generation, bucket)
        return bucket

    def _read_bucket(self, name: str) -> Bucket:
        row = self.db.one("SELECT * FROM buckets WHERE name=?", (name,))
        if row is None:
            raise no_such_bucket(name)
        return Bucket.from_row(row)

    @contextmanager
    def bucket_write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the buckets table: kept records retire once it has committed (or failed).
        Never nested in another transaction, whose COMMIT would come after the records retired."""
        if self.db.in_transaction():
            raise RuntimeError("a bucket write must be a transaction of its own")
        try:
            with self.db.transaction() as db:
                yield db
        finally:
            self.buckets_changed()

    def buckets_changed(self) -> None:
        """Retire every kept bucket record (after a write to the buckets table, committed or not)."""
        self._bucket_generation = next(self._generations)  # next() is atomic: no two writers share one

    def require_bucket(self, principal: Principal | None, name: str, permission: str) -> Bucket:
        bucket = self.bucket(name)
        if not access.allowed(bucket.acl, principal, permission):
            raise access_denied(name)
        return bucket

    def require_owner(self, principal: Principal | None, name: str) -> Bucket:
        """Bucket configuration is its owner's (and the admin's) alone."""
        bucket = self.bucket(name)
        if principal is None or not (principal.is_admin or principal.name == bucket.owner):
            raise access_denied(name)
        return bucket

    def version(self, bucket: str, key: str, version_id: str | None) -> ObjectVersion | None:
        if version_id is None:
            row = self.db.one("SELECT * FROM versions WHERE bucket=? AND key=? AND latest=1", (bucket, key))
        else:
            row = self.db.one(
                "SELECT * FROM versions WHERE bucket=? AND key=? AND version_id=?", (bucket, key, version_id)
            )
        return ObjectVersion.from_row(row) if row else None

    def new_acl(self, principal: Principal, spec: WriteSpec, bucket: Bucket | None = None) -> dict[str, Any]:
        if spec.grants is not None:
            return access.explicit_acl(principal, spec.grants)
        owner = None
        if bucket is not None:
            ids = [g["id"] for g in bucket.acl.get("grants", []) if g.get("name") == bucket.owner and g.get("id")]
            owner = (bucket.owner, ids[0]) if ids else None
        return access.canned_acl(spec.canned_acl or "private", principal, owner)

    # -- writing ------------------------------------------------------------------------------------

    def write_blob(self, chunks: Iterable[Any], integrity: Integrity | None, limit: int = MAX_PUT_BYTES) -> BlobInfo:
        """Stream ``chunks`` to a durable blob after checking every digest the client claimed."""
        integrity = integrity or Integrity()
        algorithms = [integrity.checksum_algorithm] if integrity.checksum_algorithm else []
        if integrity.content_sha256:
            algorithms.append("SHA256")
        writer = self.blobs.writer(algorithms)
        try:
            for chunk in chunks:
                writer.write(chunk)
                if writer.size > limit:
                    raise WalrusError("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
            _verify(integrity, *writer.digests())
            return writer.commit()
        except BaseException:
            writer.abort()
            raise

    def receive(self, chunks: Iterable[Any], integrity: Integrity | None, inline_max: int = 0) -> Received:
        """Like :meth:`write_blob`, but a body of at most ``inline_max`` bytes stays in memory (no file)."""
        buffer = bytearray()
        iterator = iter(chunks)
        for chunk in iterator:
            if len(buffer) + len(chunk) > inline_max:
                rest = itertools.chain([bytes(buffer), chunk], iterator)
                info = self.write_blob(rest, integrity)
                return Received(info, None, info.size, info.md5, info.digests)
            buffer += chunk
        integrity = integrity or Integrity()
        data = bytes(buffer)
        md5, digests = verify_bytes(integrity, data)
        return Received(None, data, len(data), md5, digests)

    def charge(self, db: sqlite3.Connection, user: str, d_bytes: int, d_objects: int, bytes_in: int = 0) -> None:
        """Change ``user``'s stored bytes/objects (integrating byte-seconds up to now), inside a transaction."""
        now = self.clock()
        db.execute("INSERT OR IGNORE INTO usage (user, changed) VALUES (?, ?)", (user, now))
        db.execute(
            "UPDATE usage SET byte_seconds = byte_seconds + bytes * MAX(0, ? - changed), bytes = bytes + ?,"
            " objects = objects + ?, bytes_in = bytes_in + ?, changed = ? WHERE user=?",
            (now, d_bytes, d_objects, bytes_in, now, user),
        )

    def check_quota(self, db: sqlite3.Connection | None, user: str, add_bytes: int, add_objects: int) -> None:
        query = db.execute if db is not None else self.db._reader().execute  # noqa: SLF001
        quota = query("SELECT * FROM quotas WHERE user=?", (user,)).fetchone()
        if quota is None:
            return
        used = query("SELECT bytes, objects FROM usage WHERE user=?", (user,)).fetchone()
        used_bytes, used_objects = (used["bytes"], used["objects"]) if used else (0, 0)
        if quota["max_bytes"] is not None and add_bytes > 0 and used_bytes + add_bytes > quota["max_bytes"]:
            raise WalrusError(
                "QuotaExceeded", f"storage quota of {quota['max_bytes']} bytes exceeded for user {user!r}"
            )
        if quota["max_objects"] is not None and add_objects > 0 and used_objects + add_objects > quota["max_objects"]:
            raise WalrusError(
                "QuotaExceeded", f"object quota of {quota['max_objects']} objects exceeded for user {user!r}"
            )

    def install_version(self, db: sqlite3.Connection, bucket: Bucket, row: dict[str, Any]) -> list[str]:
        """Make ``row`` the key's latest version under the bucket's versioning state.

        Returns the blobs of what it replaced (a ``null`` version), to unlink after the commit.
        """
        doomed: list[str] = []
        if bucket.versioning == "Enabled":
            row["version_id"] = new_version_id()
        else:
            row["version_id"] = NULL_VERSION
            old = db.execute(
                "SELECT * FROM versions WHERE bucket=? AND key=? AND version_id=?",
                (bucket.name, row["key"], NULL_VERSION),
            ).fetchone()
            if old is not None:
                doomed = [blob for blob, _ in json.loads(old["segments"])]
                if not old["delete_marker"]:
                    self.charge(db, bucket.owner, -old["size"], -1)
                db.execute("DELETE FROM versions WHERE id=?", (old["id"],))
        db.execute("UPDATE versions SET latest=0 WHERE bucket=? AND key=? AND latest=1", (bucket.name, row["key"]))
        row.update(bucket=bucket.name, latest=1)
        columns = ", ".join(row)
        db.execute(f"INSERT INTO versions ({columns}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
        return doomed

    def restore_latest(self, db: sqlite3.Connection, bucket: str, key: str) -> None:
        """After a version is removed, the newest remaining one (if any) becomes the latest."""
        if db.execute("SELECT 1 FROM versions WHERE bucket=? AND key=? AND latest=1", (bucket, key)).fetchone():
            return
        db.execute(
            "UPDATE versions SET latest=1 WHERE id=(SELECT MAX(id) FROM versions WHERE bucket=? AND key=?)",
            (bucket, key),
        )

    # -- bytes out and the counters -----------------------------------------------------------------

    def count_out(self, user: str, nbytes: int) -> None:
        """Bytes served from ``user``'s buckets, buffered in memory and flushed with :meth:`flush_counters`."""
        if nbytes:
            with self._out_lock:
                self._pending_out[user] = self._pending_out.get(user, 0) + nbytes

    def flush_counters(self) -> None:
        with self._out_lock:
            pending, self._pending_out = self._pending_out, {}
        if not pending:
            return
        with self.db.transaction() as db:
            now = self.clock()
            for user, nbytes in pending.items():
                db.execute("INSERT OR IGNORE INTO usage (user, changed) VALUES (?, ?)", (user, now))
                db.execute("UPDATE usage SET bytes_out = bytes_out + ? WHERE user=?", (nbytes, user))

    def usage_counters(self) -> list[dict[str, Any]]:
        """Per user: stored bytes and objects, bytes in and out, byte-seconds integrated up to now."""
        self.flush_counters()
        now = self.clock()
        return [
            {
                "user": r["user"],
                "bytes": r["bytes"],
                "objects": r["objects"],
                "bytes_in": r["bytes_in"],
                "bytes_out": r["bytes_out"],
                "byte_seconds": r["byte_seconds"] + r["bytes"] * max(0.0, now - r["changed"]),
                "at": now,
            }
            for r in self.db.query("SELECT * FROM usage ORDER BY user")
        ]

    def set_quota(self, user: str, max_bytes: int | None, max_objects: int | None) -> None:
        with self.db.transaction() as db:
            if max_bytes is None and max_objects is None:
                db.execute("DELETE FROM quotas WHERE user=?", (user,))
            else:
                db.execute("INSERT OR REPLACE INTO quotas VALUES (?,?,?)", (user, max_bytes, max_objects))

    def close(self) -> None:
        self.flush_counters()
        self.db.close()


def _verify(integrity: Integrity, md5: bytes, digests: dict[str, bytes]) -> None:
    if integrity.content_md5 is not None and integrity.content_md5 != md5:
        raise WalrusError("BadDigest", "The Content-MD5 you specified did not match what we received.")
    if integrity.content_sha256 and digests.get("SHA256", b"").hex() != integrity.content_sha256.lower():
        raise WalrusError(
            "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed."
        )
    if integrity.checksum_algorithm:
        value = integrity.checksum_value() if callable(integrity.checksum_value) else integrity.checksum_value
        if value is not None and checksums.encode(digests[integrity.checksum_algorithm]) != value:
            raise WalrusError(
                "BadDigest",
                f"The {integrity.checksum_algorithm} you specified did not match the calculated checksum.",
            )


def decode_md5(value: str) -> bytes:
    """A Content-MD5 header's raw digest, or InvalidDigest."""
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise WalrusError("InvalidDigest", "The Content-MD5 you specified was invalid.")
    return raw


def verify_bytes(integrity: Integrity, data: bytes) -> tuple[bytes, dict[str, bytes]]:
    """Check a small body held in memory against the digests its client claimed; (MD5, other digests)."""
    algorithms = [integrity.checksum_algorithm] if integrity.checksum_algorithm else []
    if integrity.content_sha256:
        algorithms.append("SHA256")
    digests = {}
    for name in algorithms:
        digest = checksums.new_digest(name)
        digest.update(data)
        digests[name] = digest.digest()
    md5 = hashlib.md5(data).digest()
    _verify(integrity, md5, digests)
    return md5, digests
