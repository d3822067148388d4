"""EC2 tags: key/value labels on the cloud's resources (instances, images, groups, key pairs, addresses).

A tag belongs to a resource, and so to the resource's owner: a user sees and changes the tags of
their own resources only (an admin, of all). The kind of a resource follows from its id's prefix,
as in EC2, and its owner from the table that records it; a resource type whose table does not
exist yet (a module not loaded in this cloud) simply has no resources.

EC2's limits hold: at most 50 tags per resource, keys of 1-128 characters, values of 0-256, and no
key starting with ``aws:`` (reserved for the cloud itself). Control characters (NUL, newline, DEL,
...) are refused in keys and values: EC2's XML answers cannot carry most of them, so a tag that
held one would be described as something other than what was stored. A request that fails for one resource
changes none: every write happens in one transaction.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cloudlab.errors import CloudError
from cloudlab.ids import is_valid_id

MAX_TAGS_PER_RESOURCE = 50
MAX_KEY_LENGTH = 128
MAX_VALUE_LENGTH = 256
RESERVED_PREFIX = "aws:"
_CHUNK = 500  # ids per ``IN (...)``, well below SQLite's parameter limit

SCHEMA = """
CREATE TABLE IF NOT EXISTS tags (
    resource_id TEXT NOT NULL, resource_type TEXT NOT NULL, owner TEXT NOT NULL, key TEXT NOT NULL,
    value TEXT NOT NULL DEFAULT '', PRIMARY KEY (resource_id, key));
CREATE INDEX IF NOT EXISTS tags_by_owner ON tags(owner);
"""


@dataclass(frozen=True)
class ResourceKind:
    """Where a taggable resource is recorded, and how EC2 names it."""

    resource_type: str  # EC2's ResourceType (DescribeTags, TagSpecifications)
    table: str
    id_column: str
    noun: str  # for messages
    not_found: str  # EC2's error code for an unknown id of this kind


_IMAGE = ResourceKind("image", "images", "image_id", "image", "InvalidAMIID.NotFound")
KINDS: dict[str, ResourceKind] = {
    "i": ResourceKind("instance", "instances", "instance_id", "instance", "InvalidInstanceID.NotFound"),
    "ami": _IMAGE,
    "aki": _IMAGE,
    "ari": _IMAGE,
    "sg": ResourceKind("security-group", "security_groups", "group_id", "security group", "InvalidGroup.NotFound"),
    "key": ResourceKind("key-pair", "key_pairs", "key_pair_id", "key pair", "InvalidKeyPair.NotFound"),
    "eipalloc": ResourceKind("elastic-ip", "addresses", "allocation_id", "allocation", "InvalidAllocationID.NotFound"),
    "vol": ResourceKind("volume", "volumes", "volume_id", "volume", "InvalidVolume.NotFound"),
    "snap": ResourceKind("snapshot", "snapshots", "snapshot_id", "snapshot", "InvalidSnapshot.NotFound"),
    "r": ResourceKind("reservation", "reservations", "reservation_id", "reservation", "InvalidReservationID.NotFound"),
}


def kind_of(resource_id: str) -> ResourceKind | None:
    """The kind of resource an id names, or None for an id that names no taggable resource."""
    prefix = resource_id.partition("-")[0]
    kind = KINDS.get(prefix)
    return kind if kind is not None and is_valid_id(resource_id, prefix) else None


def _invalid(message: str) -> CloudError:
    return CloudError("InvalidParameterValue", message)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def _check_characters(what: str, text: str) -> None:
    bad = _CONTROL.search(text)
    if bad is not None:
        raise _invalid(f"Tag {what} contains a control character (U+{ord(bad.group()):04X}), which is not allowed")


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise _invalid("Tag keys must be between 1 and 128 characters long (got an empty key)")
    if len(key) > MAX_KEY_LENGTH:
        raise _invalid(f"Tag key exceeds the maximum length of {MAX_KEY_LENGTH} characters: '{key[:40]}...'")
    _check_characters("key", key)
    if key.lower().startswith(RESERVED_PREFIX):
        raise _invalid(f"Tag keys starting with 'aws:' are reserved for internal use: '{key}'")
    return key


def _check_value(key: str, value: Any) -> str:
    value = "" if value is None else value
    if not isinstance(value, str):
        raise _invalid(f"Tag value for key '{key}' must be a string")
    if len(value) > MAX_VALUE_LENGTH:
        raise _invalid(f"Tag value for key '{key}' exceeds the maximum length of {MAX_VALUE_LENGTH} characters")
    _check_characters("value", value)
    return value


def validate_tags(tags: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``[{"Key", "Value"}]`` → ``{key: value}``, checked against EC2's rules (a missing value is "")."""
    wanted: dict[str, str] = {}
    for tag in tags:
        key = _check_key(tag.get("Key"))
        if key in wanted:
            raise _invalid(f"Duplicate tag key '{key}' specified")
        wanted[key] = _check_value(key, tag.get("Value"))
    if len(wanted) > MAX_TAGS_PER_RESOURCE:
        raise CloudError("TagLimitExceeded", f"at most {MAX_TAGS_PER_RESOURCE} tags per resource")
    return wanted


def validate_specifications(resource_type: str, specs: Sequence[Mapping[str, Any]] | None) -> dict[str, str]:
    """The tags that ``TagSpecifications`` ask for on a new resource of ``resource_type``.

    A specification for another resource type (or none) is refused as EC2 does
    (``InvalidParameterValue``); several specifications of the right type are merged.
    """
    merged: list[Mapping[str, Any]] = []
    for spec in specs or []:
        given = spec.get("ResourceType")
        if given != resource_type:
            raise _invalid(
                f"'{given}' is not a valid taggable resource type for this operation (expected '{resource_type}')"
            )
        merged.extend(spec.get("Tags") or [])
    return validate_tags(merged)


class Tags:
    """The tags of every resource in the cloud."""

    def __init__(self, clc: Any) -> None:
        self.clc = clc
        self.store = clc.store
        self.store.ensure_schema(SCHEMA)

    # -- ownership ----------------------------------------------------------------------------------------
    def _resolve(self, db: sqlite3.Connection, user: Any, resource_id: str) -> tuple[ResourceKind, str]:
        """The kind and owner of a resource ``user`` may tag; EC2's NotFound error otherwise."""
        kind = kind_of(resource_id) if isinstance(resource_id, str) else None
        if kind is None:
            raise CloudError("InvalidID", f"The ID '{resource_id}' is not valid")
        try:
            row = db.execute(
                f"SELECT owner FROM {kind.table} WHERE {kind.id_column}=?",  # table and column are constants
                (resource_id,),
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            row = None  # that kind of resource is not part of this cloud (yet): none exists
        if row is None or (not user.is_admin and row["owner"] != user.name):
            raise CloudError(kind.not_found, f"The {kind.noun} ID '{resource_id}' does not exist")
        return kind, row["owner"]

    def _resolve_all(
        self, db: sqlite3.Connection, user: Any, resource_ids: Sequence[str] | None
    ) -> list[tuple[str, ResourceKind, str]]:
        if not resource_ids:
            raise CloudError("MissingParameter", "The request must contain the parameter ResourceId")
        return [(rid, *self._resolve(db, user, rid)) for rid in dict.fromkeys(resource_ids)]

    @staticmethod
    def _write(
        db: sqlite3.Connection, resource_id: str, resource_type: str, owner: str, wanted: dict[str, str]
    ) -> None:
        if not wanted:
            return
        existing = {r["key"] for r in db.execute("SELECT key FROM tags WHERE resource_id=?", (resource_id,))}
        if len(existing | set(wanted)) > MAX_TAGS_PER_RESOURCE:
            raise CloudError(
                "TagLimitExceeded",
                f"The maximum number of tags ({MAX_TAGS_PER_RESOURCE}) for resource '{resource_id}' has been reached",
            )
        db.executemany(
            "INSERT INTO tags (resource_id, resource_type, owner, key, value) VALUES (?,?,?,?,?)"
            " ON CONFLICT(resource_id, key) DO UPDATE SET value=excluded.value",
            [(resource_id, resource_type, owner, key, value) for key, value in wanted.items()],
        )

    # -- CreateTags / DeleteTags / DescribeTags ------------------------------------------------------------
    def create(self, user: Any, resource_ids: Sequence[str], tags: Sequence[Mapping[str, Any]]) -> None:
        """Add or overwrite ``tags`` on every resource; all or nothing."""
        if not tags:
            raise CloudError("MissingParameter", "The request must contain the parameter Tag")
        wanted = validate_tags(tags)
        with self.store.transaction() as db:
            for resource_id, kind, owner in self._resolve_all(db, user, resource_ids):
                self._write(db, resource_id, kind.resource_type, owner, wanted)

    def delete(self, user: Any, resource_ids: Sequence[str], tags: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Remove tags: a tag with only a key goes whatever its value; with a value, only if it has that
        value; with no tags at all, every tag of the resources goes."""
        wanted: list[tuple[str, str | None]] = []
        for tag in tags or []:
            key = _check_key(tag.get("Key"))
            value = tag.get("Value")
            wanted.append((key, None if value is None else _check_value(key, value)))
        with self.store.transaction() as db:
            for resource_id, _kind, _owner in self._resolve_all(db, user, resource_ids):
                if not wanted:
                    db.execute("DELETE FROM tags WHERE resource_id=?", (resource_id,))
                for key, value in wanted:
                    if value is None:
                        db.execute("DELETE FROM tags WHERE resource_id=? AND key=?", (resource_id, key))
                    else:
                        db.execute(
                            "DELETE FROM tags WHERE resource_id=? AND key=? AND value=?", (resource_id, key, value)
                        )

    def describe(self, user: Any) -> list[dict[str, str]]:
        """Every tag ``user`` may see, as EC2's TagDescription (filters are the API layer's job)."""
        sql = "SELECT resource_id, resource_type, key, value FROM tags"
        params: tuple[str, ...] = ()
        if not user.is_admin:
            sql, params = sql + " WHERE owner=?", (user.name,)
        rows = self.store.query(sql + " ORDER BY resource_type, resource_id, key", params)
        return [
            {"ResourceId": r["resource_id"], "ResourceType": r["resource_type"], "Key": r["key"], "Value": r["value"]}
            for r in rows
        ]

    # -- for other services and actions ------------------------------------------------------------------
    def for_resources(self, resource_ids: Iterable[str]) -> dict[str, list[dict[str, str]]]:
        """``{resource_id: [{"Key", "Value"}, ...]}`` for the given resources that have tags (sorted by key).

        Resources without tags are absent, so ``.get(resource_id)`` gives None and EC2's ``Tags``
        member is left out for them, as EC2 does.
        """
        ids = list(dict.fromkeys(resource_ids))
        found: dict[str, list[dict[str, str]]] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            rows = self.store.query(
                f"SELECT resource_id, key, value FROM tags WHERE resource_id IN ({','.join('?' * len(chunk))})"
                " ORDER BY resource_id, key",
                chunk,
            )
            for row in rows:
                found.setdefault(row["resource_id"], []).append({"Key": row["key"], "Value": row["value"]})
        return found

    def apply_specifications(
        self,
        db: sqlite3.Connection,
        user: Any,
        resource_type: str,
        resource_ids: Sequence[str],
        specs: Sequence[Mapping[str, Any]] | None,
    ) -> dict[str, str]:
        """Tag new resources from a request's ``TagSpecifications``, inside the caller's transaction.

        ``resource_type`` is the EC2 ResourceType the call creates (``instance`` for RunInstances,
        ``elastic-ip`` for AllocateAddress); the resources belong to ``user``. Returns the tags
        written. Raises (so the caller's transaction rolls back) on any invalid specification.
        """
        wanted = validate_specifications(resource_type, specs)
        for resource_id in resource_ids:
            kind = kind_of(resource_id)
            self._write(db, resource_id, kind.resource_type if kind else resource_type, user.name, wanted)
        return wanted

    @staticmethod
    def remove_resource(db: sqlite3.Connection, resource_id: str) -> None:
        """Forget the tags of a resource that is gone (call in the transaction that deletes it).

        Harmless when the cloud has no tags table yet, so it may be called as ``Tags.remove_resource``
        without building the service (which must not happen inside a transaction).
        """
        try:
            db.execute("DELETE FROM tags WHERE resource_id=?", (resource_id,))
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
