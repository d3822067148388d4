"""Elastic address actions: allocate, release, associate, disassociate, describe."""

from __future__ import annotations

from typing import Any

from cloudlab.api import filters
from cloudlab.api.actions import Context, action
from cloudlab.clc.addresses import Addresses

ADDRESS_FILTERS: dict[str, filters.Getter] = {
    "public-ip": lambda a: a["PublicIp"],
    "allocation-id": lambda a: a["AllocationId"],
    "association-id": lambda a: a.get("AssociationId"),
    "instance-id": lambda a: a.get("InstanceId"),
    "domain": lambda a: a["Domain"],
    "network-border-group": lambda a: a.get("NetworkBorderGroup"),
    "tag-key": lambda a: [t["Key"] for t in a.get("Tags") or []],
}


def _address(row: dict[str, Any], region: str) -> dict[str, Any]:
    """One Address as EC2 shows it (members without a value are left out)."""
    item = {
        "PublicIp": row["public_ip"],
        "AllocationId": row["allocation_id"],
        "Domain": row["domain"],
        "InstanceId": row["instance_id"],
        "AssociationId": row["association_id"],
        "NetworkBorderGroup": region,
        "Tags": row.get("tags") or None,
    }
    return {k: v for k, v in item.items() if v is not None}


@action("AllocateAddress")
def allocate_address(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    row = ctx.clc.service(Addresses).allocate(
        ctx.user,
        req.get("Domain") or "vpc",
        address=req.get("Address"),
        tag_specifications=req.get("TagSpecifications"),
    )
    return {
        "PublicIp": row["public_ip"],
        "AllocationId": row["allocation_id"],
        "Domain": row["domain"],
        "NetworkBorderGroup": ctx.clc.region,
    }


@action("ReleaseAddress")
def release_address(ctx: Context, req: dict[str, Any]) -> None:
    ctx.clc.service(Addresses).release(ctx.user, public_ip=req.get("PublicIp"), allocation_id=req.get("AllocationId"))


@action("AssociateAddress")
def associate_address(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    association_id = ctx.clc.service(Addresses).associate(
        ctx.user,
        req.get("InstanceId"),
        public_ip=req.get("PublicIp"),
        allocation_id=req.get("AllocationId"),
        allow_reassociation=bool(req.get("AllowReassociation")),
        interface_id=req.get("NetworkInterfaceId"),
    )
    return {"AssociationId": association_id}


@action("DisassociateAddress")
def disassociate_address(ctx: Context, req: dict[str, Any]) -> None:
    ctx.clc.service(Addresses).disassociate(
        ctx.user, association_id=req.get("AssociationId"), public_ip=req.get("PublicIp")
    )


@action("DescribeAddresses")
def describe_addresses(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    rows = ctx.clc.service(Addresses).describe(ctx.user, req.get("PublicIps"), req.get("AllocationIds"))
    items = [_address(row, ctx.clc.region) for row in rows]
    return {"Addresses": filters.apply_filters(items, req.get("Filters"), ADDRESS_FILTERS, "DescribeAddresses")}
