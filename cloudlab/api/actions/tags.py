"""Tag actions: CreateTags, DeleteTags, DescribeTags."""

from __future__ import annotations

from typing import Any

from cloudlab.api import filters
from cloudlab.api.actions import Context, action
from cloudlab.clc.tags import Tags

TAG_FILTERS: dict[str, filters.Getter] = {
    "key": lambda t: t["Key"],
    "value": lambda t: t["Value"],
    "resource-id": lambda t: t["ResourceId"],
    "resource-type": lambda t: t["ResourceType"],
}


@action("CreateTags")
def create_tags(ctx: Context, req: dict[str, Any]) -> None:
    ctx.clc.service(Tags).create(ctx.user, req.get("Resources") or [], req.get("Tags") or [])


@action("DeleteTags")
def delete_tags(ctx: Context, req: dict[str, Any]) -> None:
    ctx.clc.service(Tags).delete(ctx.user, req.get("Resources") or [], req.get("Tags"))


@action("DescribeTags")
def describe_tags(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    items = ctx.clc.service(Tags).describe(ctx.user)
    if req.get("Filters"):
        # ``tag:<key>`` on DescribeTags means "this key with that value": give each tag itself as its Tags
        for item in items:
            item["Tags"] = [{"Key": item["Key"], "Value": item["Value"]}]
        items = filters.apply_filters(items, req["Filters"], TAG_FILTERS, "DescribeTags")
        for item in items:
            del item["Tags"]
    page, token = filters.paginate(items, req.get("MaxResults"), req.get("NextToken"))
    return {"Tags": page, "NextToken": token}
