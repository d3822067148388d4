"""S3 operations: plain functions from the parsed input (boto3's dict) to the output dict, on the engine.

An operation is registered by its model name with :func:`operation`, as EC2's actions are. It gets an
:class:`S3Call` (the engine, who is asking, the parsed input, the request body as a stream and the
digests the client claimed for it) and returns the output in boto3's parsed form, which the face
serialises by the output shape. No XML and no HTTP here; no S3 semantics either (those are the
engine's): these functions translate names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cloudlab.walrus import Integrity, Principal, Walrus

OPERATIONS: dict[str, Callable[[S3Call], dict[str, Any]]] = {}


@dataclass
class S3Call:
    walrus: Walrus
    principal: Principal | None
    params: dict[str, Any]
    body: Iterable[Any] = ()
    integrity: Integrity = field(default_factory=Integrity)
    declared_size: int | None = None
    directory: Callable[[str], Principal | None] = lambda name: None  # user name -> principal
    by_canonical_id: Callable[[str], Principal | None] = lambda cid: None
    stream: Any = None  # set by GetObject: the ObjectData to send and its range

    owners: dict[str, dict[str, str]] = field(default_factory=dict)
    buckets: dict[str, Any] = field(default_factory=dict)

    def bucket(self, name: str) -> Any:
        """The bucket's record, read once per request (its versioning and owner for the answer's headers
        and the ledger): a request's answer describes one state of its bucket."""
        found = self.buckets.get(name)
        if found is None:
            found = self.buckets[name] = self.walrus.bucket(name)
        return found

    def owner(self, name: str) -> dict[str, str]:
        """S3's Owner element for a user of the cloud (looked up once per request and name)."""
        found = self.owners.get(name)
        if found is None:
            principal = self.directory(name)
            found = self.owners[name] = {"DisplayName": name, "ID": principal.canonical_id if principal else name}
        return found


def operation(name: str) -> Callable[[Callable[[S3Call], dict[str, Any]]], Callable[[S3Call], dict[str, Any]]]:
    def register(function: Callable[[S3Call], dict[str, Any]]) -> Callable[[S3Call], dict[str, Any]]:
        OPERATIONS[name] = function
        return function

    return register


def implemented() -> frozenset[str]:
    from cloudlab.api.s3.ops import buckets, listing, multipart, objects  # noqa: F401 - they register themselves

    return frozenset(OPERATIONS)
