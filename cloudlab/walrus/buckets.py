"""Bucket operations: create, list, delete (empty only), ACLs, tagging, versioning and CORS."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from cloudlab.walrus import access
from cloudlab.walrus.access import Principal
from cloudlab.walrus.base import EngineBase
from cloudlab.walrus.errors import WalrusError, no_such_bucket
from cloudlab.walrus.records import Bucket, WriteSpec

BUCKET_NAME_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MAX_BUCKETS_PER_USER = 1000
MAX_BUCKET_TAGS = 50
MAX_OBJECT_TAGS = 10
CORS_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "HEAD"})


def check_bucket_name(name: str) -> None:
    """S3's rules for bucket names (the ones that also make them valid DNS labels)."""
    bad = BUCKET_NAME_RE.fullmatch(name) is None or ".." in name or ".-" in name or "-." in name
    if not bad:
        try:
            ipaddress.IPv4Address(name)
            bad = True
        except ValueError:
            pass
    if bad:
        raise WalrusError("InvalidBucketName", "The specified bucket is not valid.", BucketName=name)


def check_tags(tags: dict[str, str], limit: int) -> None:
    """S3's tag rules: at most ``limit`` tags, keys 1-128 and values 0-256 characters."""
    if len(tags) > limit:
        raise WalrusError("BadRequest" if limit == MAX_OBJECT_TAGS else "InvalidTag",
                          f"Object tags cannot be greater than {limit}")  # fmt: skip
    for key, value in tags.items():
        if not key or len(key) > 128:
            raise WalrusError("InvalidTag", "The TagKey you have provided is invalid")
        if len(value) > 256:
            raise WalrusError("InvalidTag", "The TagValue you have provided is too long, max length is 256")
        if key.startswith("aws:"):
            raise WalrusError("InvalidTag", "System tags cannot be added/updated by requester")


class BucketOps(EngineBase):
    def create_bucket(self, principal: Principal, name: str, location: str | None, spec: WriteSpec) -> Bucket:
        check_bucket_name(name)
        if location and location != self.region:
            raise WalrusError(
                "IllegalLocationConstraintException",
                f"The {location} location constraint is incompatible for the region specific endpoint "
                f"this request was sent to ({self.region}).",
            )
        acl = self.new_acl(principal, spec)
        with self.bucket_write() as db:
            row = db.execute("SELECT owner FROM buckets WHERE name=?", (name,)).fetchone()
            if row is not None:
                if row["owner"] == principal.name:
                    raise WalrusError(
                        "BucketAlreadyOwnedByYou",
                        "Your previous request to create the named bucket succeeded and you already own it.",
                        resource=name,
                        BucketName=name,
                    )
                raise WalrusError(
                    "BucketAlreadyExists",
                    "The requested bucket name is not available. The bucket namespace is shared by all users "
                    "of the system. Please select a different name and try again.",
                    resource=name,
                    BucketName=name,
                )
            (count,) = db.execute("SELECT COUNT(*) FROM buckets WHERE owner=?", (principal.name,)).fetchone()
            if count >= MAX_BUCKETS_PER_USER:
                raise WalrusError("TooManyBuckets", "You have attempted to create more buckets than allowed")
            db.execute(
                "INSERT INTO buckets (name, owner, created, region, acl) VALUES (?,?,?,?,?)",
                (name, principal.name, self.clock(), self.region, access.dump(acl)),
            )
        return self.bucket(name)

    def list_buckets(self, principal: Principal) -> list[Bucket]:
        """The caller's buckets (every bucket for the admin), by name."""
        if principal.is_admin:
            rows = self.db.query("SELECT * FROM buckets ORDER BY name")
        else:
            rows = self.db.query("SELECT * FROM buckets WHERE owner=? ORDER BY name", (principal.name,))
        return [Bucket.from_row(row) for row in rows]

    def head_bucket(self, principal: Principal | None, name: str) -> Bucket:
        return self.require_bucket(principal, name, "READ")

    def delete_bucket(self, principal: Principal, name: str) -> None:
        self.require_owner(principal, name)
        with self.bucket_write() as db:
            if (
                db.execute("SELECT 1 FROM versions WHERE bucket=? LIMIT 1", (name,)).fetchone()
                or db.execute("SELECT 1 FROM uploads WHERE bucket=? LIMIT 1", (name,)).fetchone()
            ):
                raise WalrusError(
                    "BucketNotEmpty", "The bucket you tried to delete is not empty", resource=name, BucketName=name
                )
            if db.execute("DELETE FROM buckets WHERE name=?", (name,)).rowcount == 0:
                raise no_such_bucket(name)

    def bucket_location(self, principal: Principal, name: str) -> str:
        return self.require_owner(principal, name).region

    # -- ACL ----------------------------------------------------------------------------------------

    def get_bucket_acl(self, principal: Principal | None, name: str) -> dict[str, Any]:
        return self.require_bucket(principal, name, "READ_ACP").acl

    def put_bucket_acl(self, principal: Principal, name: str, spec: WriteSpec) -> None:
        bucket = self.require_bucket(principal, name, "WRITE_ACP")
        owner = Principal(bucket.owner, "") if principal.name != bucket.owner else principal
        acl = self.new_acl(principal, spec) if owner is principal else _reowned(self.new_acl(principal, spec), bucket)
        with self.bucket_write() as db:
            db.execute("UPDATE buckets SET acl=? WHERE name=?", (access.dump(acl), name))

    # -- tagging, versioning, CORS ------------------------------------------------------------------

    def get_bucket_tags(self, principal: Principal, name: str) -> dict[str, str]:
        tags = self.require_owner(principal, name).tags
        if tags is None:
            raise WalrusError("NoSuchTagSet", "The TagSet does not exist", resource=name, BucketName=name)
        return tags

    def put_bucket_tags(self, principal: Principal, name: str, tags: dict[str, str] | None) -> None:
        self.require_owner(principal, name)
        if tags is not None:
            check_tags(tags, MAX_BUCKET_TAGS)
        with self.bucket_write() as db:
            db.execute("UPDATE buckets SET tags=? WHERE name=?", (json.dumps(tags) if tags is not None else None, name))

    def get_versioning(self, principal: Principal, name: str) -> str:
        return self.require_owner(principal, name).versioning

    def put_versioning(self, principal: Principal, name: str, status: str) -> None:
        self.require_owner(principal, name)
        if status not in ("Enabled", "Suspended"):
            raise WalrusError("IllegalVersioningConfigurationException",
                              "The Versioning element must be specified")  # fmt: skip
        with self.bucket_write() as db:
            db.execute("UPDATE buckets SET versioning=? WHERE name=?", (status, name))

    def get_cors(self, principal: Principal, name: str) -> list[dict[str, Any]]:
        cors = self.require_owner(principal, name).cors
        if not cors:
            raise WalrusError(
                "NoSuchCORSConfiguration", "The CORS configuration does not exist", resource=name, BucketName=name
            )
        return cors

    def put_cors(self, principal: Principal, name: str, rules: list[dict[str, Any]] | None) -> None:
        self.require_owner(principal, name)
        for rule in rules or []:
            methods = set(rule.get("AllowedMethods") or [])
            if not methods or not methods <= CORS_METHODS:
                raise WalrusError(
                    "InvalidRequest", f"Found unsupported HTTP method in CORS config: {sorted(methods - CORS_METHODS)}"
                )
            if not rule.get("AllowedOrigins"):
                raise WalrusError("MalformedXML", "Each CORSRule must have at least one AllowedOrigin")
        with self.bucket_write() as db:
            db.execute("UPDATE buckets SET cors=? WHERE name=?", (json.dumps(rules) if rules else None, name))

    def cors_rules(self, name: str) -> list[dict[str, Any]]:
        """The bucket's CORS rules for a preflight or a cross-origin request (no principal: browsers send none)."""
        try:
            return self.bucket(name).cors or []
        except WalrusError:
            return []


def _reowned(acl: dict[str, Any], bucket: Bucket) -> dict[str, Any]:
    """An ACL set by someone with WRITE_ACP stays owned by the bucket's owner."""
    return {"owner": bucket.owner, "grants": acl["grants"]}
