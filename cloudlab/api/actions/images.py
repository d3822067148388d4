"""Image actions."""

from __future__ import annotations

from typing import Any

from cloudlab.api import filters, views
from cloudlab.api.actions import Context, action, owner_ids
from cloudlab.api.errors import ApiError

# -- images ------------------------------------------------------------------------------------------------

IMAGE_FILTERS: dict[str, filters.Getter] = {
    "image-id": lambda i: i["ImageId"],
    "name": lambda i: i["Name"],
    "state": lambda i: i["State"],
    "image-type": lambda i: i["ImageType"],
    "owner-id": lambda i: i["OwnerId"],
    "is-public": lambda i: i["Public"],
    "kernel-id": lambda i: i.get("KernelId"),
    "ramdisk-id": lambda i: i.get("RamdiskId"),
    "architecture": lambda i: i["Architecture"],
    "description": lambda i: i.get("Description"),
}


@action("DescribeImages")
def describe_images(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    owners = owner_ids(ctx)
    wanted_ids = req.get("ImageIds") or []
    records = [r for r in ctx.clc.images.list() if r.is_public or r.owner == ctx.user.name or ctx.user.is_admin]
    if wanted_ids:
        known = {r.image_id for r in records}
        missing = [i for i in wanted_ids if i not in known]
        if missing:
            raise ApiError("InvalidAMIID.NotFound", f"The image id '[{', '.join(missing)}]' does not exist")
        records = [r for r in records if r.image_id in wanted_ids]
    items = [views.image(r, owners.get(r.owner, "")) for r in records]
    if req.get("Owners"):
        wanted = {ctx.user.user_id if o == "self" else owners.get(o, o) for o in req["Owners"]}
        items = [i for i in items if i["OwnerId"] in wanted]
    items = filters.apply_filters(items, req.get("Filters"), IMAGE_FILTERS)
    page, token = filters.paginate(items, req.get("MaxResults"), req.get("NextToken"))
    return {"Images": page, "NextToken": token}
