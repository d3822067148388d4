"""Multipart uploads: create, upload part (or copy a range into one), complete, abort, list parts.

Parts are blobs of their own; completing an upload does not copy a byte: the new version's segments
are the chosen parts' blobs, in order (so a 1 GiB multipart upload is as fast as its parts). The
ETag is S3's (MD5 of the parts' MD5s, ``-N``), as is the composite checksum. An upload interrupted by
a crash stays listed (ListMultipartUploads) until it is completed or aborted, as on S3.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from cloudlab.walrus import access, checksums
from cloudlab.walrus.access import Principal
from cloudlab.walrus.base import check_key
from cloudlab.walrus.buckets import MAX_OBJECT_TAGS, check_tags
from cloudlab.walrus.errors import WalrusError, no_such_bucket
from cloudlab.walrus.objects import Conditions, ObjectOps, check_conditions, resolve_range
from cloudlab.walrus.records import Bucket, Integrity, ObjectVersion, Part, Upload, WriteSpec

MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PART_NUMBER = 10000
MAX_PARTS_LISTED = 1000


def _no_such_upload(upload_id: str) -> WalrusError:
    return WalrusError(
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted "
        "or completed.",
        UploadId=upload_id,
    )


class MultipartOps(ObjectOps):
    min_part_bytes = MIN_PART_BYTES

    def create_upload(
        self, principal: Principal, bucket_name: str, key: str, spec: WriteSpec, checksum_algorithm: str | None = None
    ) -> Upload:
        check_key(key)
        bucket = self.require_bucket(principal, bucket_name, "WRITE")
        check_tags(spec.tags, MAX_OBJECT_TAGS)
        acl = self.new_acl(principal, spec, bucket)
        upload_id = secrets.token_urlsafe(48)
        with self.db.transaction() as db:
            db.execute(
                "INSERT INTO uploads (upload_id, bucket, key, owner, initiated, content_type, headers, metadata, tags,"
                " acl, checksum_algorithm) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (upload_id, bucket_name, key, principal.name, self.clock(), spec.content_type,
                 json.dumps(spec.headers), json.dumps(spec.metadata), json.dumps(spec.tags), access.dump(acl),
                 checksum_algorithm),
            )  # fmt: skip
        return self.upload(bucket_name, key, upload_id)

    def upload(self, bucket: str, key: str, upload_id: str) -> Upload:
        row = self.db.one("SELECT * FROM uploads WHERE upload_id=? AND bucket=? AND key=?", (upload_id, bucket, key))
        if row is None:
            self.bucket(bucket)
            raise _no_such_upload(upload_id)
        return Upload.from_row(row)

    def _require_upload(self, principal: Principal | None, bucket: str, key: str, upload_id: str) -> Upload:
        self.require_bucket(principal, bucket, "WRITE")
        return self.upload(bucket, key, upload_id)

    def upload_part(
        self,
        principal: Principal | None,
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        chunks: Any,
        integrity: Integrity | None = None,
        declared_size: int | None = None,
    ) -> Part:
        if not 1 <= part_number <= MAX_PART_NUMBER:
            raise WalrusError("InvalidArgument", f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, "
                              "inclusive", ArgumentName="partNumber")  # fmt: skip
        upload = self._require_upload(principal, bucket, key, upload_id)
        owner = self.bucket(bucket).owner
        self.check_quota(None, owner, declared_size or 0, 0)
        algorithm = (integrity.checksum_algorithm if integrity else None) or upload.checksum_algorithm
        if integrity is None:
            integrity = Integrity(checksum_algorithm=algorithm)
        elif integrity.checksum_algorithm is None and algorithm:
            integrity.checksum_algorithm = algorithm
        info = self.write_blob(chunks, integrity)
        checksum = checksums.encode(info.digests[algorithm]) if algorithm else None
        doomed: list[str] = []
        try:
            with self.db.transaction() as db:
                if db.execute("SELECT 1 FROM uploads WHERE upload_id=?", (upload_id,)).fetchone() is None:
                    raise _no_such_upload(upload_id)
                self.check_quota(db, owner, info.size, 0)
                old = db.execute(
                    "SELECT blob, size FROM parts WHERE upload_id=? AND part_number=?", (upload_id, part_number)
                ).fetchone()
                if old is not None:
                    doomed.append(old["blob"])
                    self.charge(db, owner, -old["size"], 0)
                db.execute(
                    "INSERT OR REPLACE INTO parts VALUES (?,?,?,?,?,?,?)",
                    (upload.upload_id, part_number, info.blob_id, info.size, info.md5.hex(), self.clock(), checksum),
                )
                self.charge(db, owner, info.size, 0, bytes_in=info.size)
        except BaseException:
            self.blobs.delete([info.blob_id])
            raise
        self.blobs.delete(doomed)
        return Part(part_number, info.size, info.md5.hex(), self.clock(), checksum, info.blob_id)

    def upload_part_copy(
        self,
        principal: Principal,
        source: tuple[str, str, str | None],
        bucket: str,
        key: str,
        upload_id: str,
        part_number: int,
        source_range: str | None,
        conditions: Conditions | None = None,
    ) -> tuple[ObjectVersion, Part]:
        self._require_upload(principal, bucket, key, upload_id)
        with self.open_object(principal, *source) as data:
            check_conditions(data.version, conditions, copy=True)
            first, last = 0, data.version.size - 1
            if source_range is not None:
                resolved = _copy_range(source_range, data.version.size)
                first, last = resolved
            part = self.upload_part(
                principal, bucket, key, upload_id, part_number, data.chunks(first, last), None, last - first + 1
            )
        return data.version, part

    def list_parts(
        self, principal: Principal | None, bucket: str, key: str, upload_id: str, marker: int = 0,
        max_parts: int | None = None,
    ) -> tuple[Upload, list[Part], bool]:  # fmt: skip
        self.require_bucket(principal, bucket, "READ")
        upload = self.upload(bucket, key, upload_id)
        limit = min(max_parts if max_parts is not None else MAX_PARTS_LISTED, MAX_PARTS_LISTED)
        rows = self.db.query(
            "SELECT * FROM parts WHERE upload_id=? AND part_number > ? ORDER BY part_number LIMIT ?",
            (upload_id, marker, limit + 1),
        )
        parts = [Part(r["part_number"], r["size"], r["etag"], r["modified"], r["checksum"], r["blob"]) for r in rows]
        return upload, parts[:limit], len(parts) > limit

    def abort_upload(self, principal: Principal | None, bucket: str, key: str, upload_id: str) -> None:
        self._require_upload(principal, bucket, key, upload_id)
        owner = self.bucket(bucket).owner
        with self.db.transaction() as db:
            rows = db.execute("SELECT blob, size FROM parts WHERE upload_id=?", (upload_id,)).fetchall()
            self.charge(db, owner, -sum(r["size"] for r in rows), 0)
            db.execute("DELETE FROM parts WHERE upload_id=?", (upload_id,))
            db.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,))
        self.blobs.delete(r["blob"] for r in rows)

    def complete_upload(
        self, principal: Principal | None, bucket_name: str, key: str, upload_id: str, chosen: list[tuple[int, str]]
    ) -> ObjectVersion:
        """Complete with (part number, ETag) pairs in ascending order, as S3 checks them."""
        upload = self._require_upload(principal, bucket_name, key, upload_id)
        if not chosen:
            raise WalrusError("MalformedXML", "The XML you provided was not well-formed or did not validate against "
                              "our published schema")  # fmt: skip
        numbers = [number for number, _ in chosen]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise WalrusError("InvalidPartOrder", "The list of parts was not in ascending order. Parts must be "
                              "ordered by part number.", UploadId=upload_id)  # fmt: skip
        doomed: list[str] = []
        with self.db.transaction() as db:
            rows = {r["part_number"]: r for r in db.execute("SELECT * FROM parts WHERE upload_id=?", (upload_id,))}
            picked = []
            for index, (number, etag) in enumerate(chosen):
                row = rows.get(number)
                if row is None or row["etag"] != etag.strip().strip('"'):
                    raise WalrusError("InvalidPart", "One or more of the specified parts could not be found. The part "
                                      "may not have been uploaded, or the specified entity tag may not match the "
                                      "part's entity tag.", UploadId=upload_id, PartNumber=str(number))  # fmt: skip
                if index < len(chosen) - 1 and row["size"] < self.min_part_bytes:
                    raise WalrusError("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed "
                                      "object size.", ProposedSize=str(row["size"]), MinSizeAllowed=
                                      str(self.min_part_bytes), PartNumber=str(number), ETag=row["etag"])  # fmt: skip
                picked.append(row)
            bucket_row = db.execute("SELECT * FROM buckets WHERE name=?", (bucket_name,)).fetchone()
            if bucket_row is None:
                raise no_such_bucket(bucket_name)
            bucket = Bucket.from_row(bucket_row)
            size = sum(r["size"] for r in picked)
            unused = [r for n, r in rows.items() if n not in set(numbers)]
            self.check_quota(db, bucket.owner, 0, 1)
            self.charge(db, bucket.owner, -sum(r["size"] for r in unused), 1)
            doomed += [r["blob"] for r in unused]
            algorithm = upload.checksum_algorithm
            checksum = None
            if algorithm and all(r["checksum"] for r in picked):
                checksum = checksums.composite(algorithm, [r["checksum"] for r in picked])
            row = {
                "key": key,
                "owner": upload.owner,
                "size": size,
                "etag": checksums.multipart_etag([bytes.fromhex(r["etag"]) for r in picked]),
                "modified": self.clock(),
                "content_type": upload.content_type,
                "headers": json.dumps(upload.headers),
                "metadata": json.dumps(upload.metadata),
                "tags": json.dumps(upload.tags),
                "acl": access.dump(upload.acl),
                "checksum_algorithm": algorithm if checksum else None,
                "checksum": checksum,
                "parts": len(picked),
                "segments": json.dumps([[r["blob"], r["size"]] for r in picked]),
            }
            db.execute("DELETE FROM parts WHERE upload_id=?", (upload_id,))
            db.execute("DELETE FROM uploads WHERE upload_id=?", (upload_id,))
            doomed += self.install_version(db, bucket, row)
        self.blobs.delete(doomed)
        version = self.version(bucket_name, key, row["version_id"])
        assert version is not None
        return version


def _copy_range(spec: str, size: int) -> tuple[int, int]:
    """x-amz-copy-source-range must be ``bytes=first-last`` inside the source, else InvalidArgument/InvalidRange."""
    unit, _, rest = spec.partition("=")
    first, dash, last = rest.partition("-")
    if unit != "bytes" or not dash or not first.isdigit() or not last.isdigit() or int(last) < int(first):
        raise WalrusError("InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last "
                          "where first and last are the zero-based offsets of the first and last bytes to copy",
                          ArgumentName="x-amz-copy-source-range")  # fmt: skip
    if int(last) >= size:
        raise WalrusError("InvalidRange", "The requested range is not satisfiable", ActualObjectSize=str(size))
    resolved = resolve_range(spec, size)
    assert resolved is not None
    return resolved
