"""``DryRun``: answer whether the request *would* be allowed, without doing it.

EC2 answers ``DryRunOperation`` when the caller may perform the action and ``UnauthorizedOperation``
when not. Here a caller may act on resources they own (an admin on any); a request naming a resource
that does not exist gets that resource's NotFound error, as the real call would.
"""

from __future__ import annotations

from typing import Any

from cloudlab.api.errors import ApiError, dry_run_operation

# members that name resources the action would change (ImageId only where the image itself changes)
RESOURCE_MEMBERS = (
    "InstanceIds",
    "InstanceId",
    "Resources",
    "GroupId",
    "AllocationId",
    "VolumeId",
    "SnapshotId",
    "VpcId",
    "SubnetId",
    "InternetGatewayId",
)
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
    """Always raises: DryRunOperation, UnauthorizedOperation, or the NotFound of a missing resource.

    Who owns a resource is the cloud controller's to say (``CloudController.owner_of``): no SQL here."""
    for resource_id in _named_resources(action, request):
        owner = ctx.clc.owner_of(resource_id)  # CloudError NotFound for an id that names nothing
        if owner is not None and owner != ctx.user.name and not ctx.user.is_admin:
            raise ApiError(
                "UnauthorizedOperation", f"You are not authorized to perform this operation on {resource_id}."
            )
    raise dry_run_operation()
