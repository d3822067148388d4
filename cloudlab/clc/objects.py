"""The cloud's object store (Walrus) as the cloud controller reads it: images and snapshots from buckets.

The CLC reads objects *as the user* who asks (RegisterImage from a bucket, ImportSnapshot), so S3's
access rules decide, and another user's private bucket reads as inaccessible. A node or the storage
controller, which boot or convert what the CLC has checked, fetch the bytes themselves over HTTP from
a presigned GET (SigV4 in the query, expiring, naming one object version) signed with the owner's key:
they never hold a user's secret, and the URL grants one read of one version for a short while.

The running service sets :attr:`CloudController.objects` when Walrus is up (the CLC does not start
the S3 face: ``presign`` is the service's, made from the face's signer, so the core imports no face).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloudlab.clc.users import User
from cloudlab.errors import CloudError
from cloudlab.walrus import Principal, WalrusError

#: How long a presigned fetch stays valid (a node's download of a large disk must fit in it).
FETCH_URL_S = 3600

#: presign(owner user name, bucket, key, version id, cluster or None) -> URL reachable from that cluster
Presign = Callable[[str, str, str, str | None, str | None], str]


@dataclass
class ObjectStore:
    """Walrus's engine in the service's process, and how to give a controller a URL for one object."""

    engine: Any  # cloudlab.walrus.Walrus
    presign: Presign


@dataclass(frozen=True)
class ObjectRef:
    """One object version, checked readable by its user: where it is, how big, what it holds."""

    bucket: str
    key: str
    version_id: str | None
    size: int
    etag: str | None


def principal_of(user: User) -> Principal:
    return Principal(user.name, user.user_id, user.is_admin)


def require(objects: ObjectStore | None) -> ObjectStore:
    if objects is None:
        raise CloudError("InvalidParameterValue", "the cloud's object store (Walrus) is not running")
    return objects


def inaccessible(code: str, bucket: str, key: str, why: str) -> CloudError:
    return CloudError(code, f"s3://{bucket}/{key} cannot be read: {why}")


def lookup(
    objects: ObjectStore, user: User, bucket: str, key: str, code: str, version_id: str | None = None
) -> ObjectRef:
    """The current (or named) version of ``bucket/key`` if ``user`` may read it; else ``code``."""
    try:
        version = objects.engine.lookup(principal_of(user), bucket, key, version_id)
    except WalrusError as exc:
        why = {"NoSuchBucket": "no such bucket", "NoSuchKey": "no such key", "AccessDenied": "access denied"}
        raise inaccessible(code, bucket, key, why.get(exc.code, exc.message)) from None
    # "null" is the version of an object written while the bucket was unversioned: naming it pins nothing
    pinned = version.version_id if version.version_id not in (None, "null") else None
    return ObjectRef(bucket, key, pinned, version.size, version.etag)


def read_all(objects: ObjectStore, user: User, ref: ObjectRef, limit: int, code: str) -> bytes:
    """A small object's bytes (a manifest), at most ``limit``."""
    if ref.size > limit:
        raise inaccessible(code, ref.bucket, ref.key, f"{ref.size} bytes, more than {limit}")
    with _open(objects, user, ref, code) as data:
        return b"".join(data.chunks())


def sha256_of(objects: ObjectStore, user: User, ref: ObjectRef, code: str) -> str:
    """The object's SHA-256, read through (what a node will check its fetch against)."""
    digest = hashlib.sha256()
    with _open(objects, user, ref, code) as data:
        for chunk in data.chunks():
            digest.update(chunk)
    return digest.hexdigest()


def _open(objects: ObjectStore, user: User, ref: ObjectRef, code: str) -> Any:
    try:
        return objects.engine.open_object(principal_of(user), ref.bucket, ref.key, ref.version_id)
    except WalrusError as exc:
        raise inaccessible(code, ref.bucket, ref.key, exc.message) from None
