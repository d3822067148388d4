"""``DryRun``: answer whether the request *would* be allowed, without doing it.

EC2 answers ``DryRunOperation`` when the caller may perform the action and ``UnauthorizedOperation``
when not. Here a caller may act on resources they own (an admin on any); a request naming a resource
that does not exist gets that resource's NotFound error, as the real call would.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from cloudlab.api.errors import ApiError
from cloudlab.clc.tags import kind_of
from cloudlab.errors import CloudError

# members that name resources the action would change (ImageId only where the image itself changes)
RESOURCE_MEMBERS = ("InstanceIds", "InstanceId", "Resources", "GroupId", "AllocationId", "VolumeId", "SnapshotId")
IMAGE_CHANGING_ACTIONS = frozenset({"DeregisterImage"})


def _named_resources(action: str, request: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for member in RESOURCE_MEMBERS + (("ImageId",) if action in IMAGE_CHANGING_ACTIONS else ()):
        value = request.get(member)
        if isinstance(value, str):
            names.append(value)
        elif isinstance(value, list):
            names.extend(v for v in value if isinstance(v, str))
    return names


def dry_run(ctx: Any, action: str, request: dict[str, Any]) -> None:
    """Always raises: DryRunOperation, UnauthorizedOperation, or the NotFound of a missing resource."""
    for resource_id in _named_resources(action, request):
        kind = kind_of(resource_id)
        if kind is None:
            continue
        try:
            row = ctx.clc.store.one(f"SELECT owner FROM {kind.table} WHERE {kind.id_column}=?", (resource_id,))
        except sqlite3.OperationalError:
            row = None
        if row is None:
            raise CloudError(kind.not_found, f"The {kind.noun} ID '{resource_id}' does not exist")
        if row["owner"] != ctx.user.name and not ctx.user.is_admin:
            raise ApiError(
                "UnauthorizedOperation", f"You are not authorized to perform this operation on {resource_id}."
            )
    raise ApiError("DryRunOperation", "Request would have succeeded, but DryRun flag is set.")
