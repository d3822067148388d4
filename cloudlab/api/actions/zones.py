"""Availability zones (one per cluster) and the region."""

from __future__ import annotations

from typing import Any

from cloudlab.api import filters
from cloudlab.api.actions import Context, action
from cloudlab.api.errors import ApiError
from cloudlab.clc.regions import zone_id

# -- zones and regions -----------------------------------------------------------------------------------


VERBOSE = "verbose"  # euca-describe-availability-zones verbose: the admin's free / max instances per VM type


def _verbose_items(ctx: Context, zone: dict[str, Any], report: Any) -> list[dict[str, Any]]:
    """Eucalyptus' verbose lines for one zone, as extra ZoneInfo items after the zone's own (``|- m1.small``
    with its ``free / max   cpu   ram  disk`` as the message; State ``information``, EC2's word for a note)."""
    from cloudlab.clc.placement import type_capacity
    from cloudlab.clc.vmtypes import list_vm_types

    def item(name: str, message: str) -> dict[str, Any]:
        return {
            "ZoneName": name,
            "State": "information",
            "RegionName": zone["region"],
            "ZoneType": "availability-zone",
            "Messages": [{"Message": f"{name}  {message}"}],
        }

    items = [item("|- vm types", "free / max   cpu   ram  disk")]
    for vm_type, free, most in type_capacity(report, list_vm_types(ctx.clc.store)):
        disk = 0  # instances get a scratch disk sized at launch, not by type
        items.append(
            item(f"|- {vm_type.name}", f"{free:04d} / {most:04d} {vm_type.vcpus:3d} {vm_type.memory_mb:6d} {disk:5d}")
        )
    return items


@action("DescribeAvailabilityZones")
def describe_availability_zones(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    names = list(req.get("ZoneNames") or [])
    verbose = VERBOSE in names
    if verbose and not ctx.user.is_admin:
        raise ApiError(
            "InvalidParameterValue", "Invalid availability zone: [verbose] (the verbose listing is for administrators)"
        )
    names = [n for n in names if n != VERBOSE]
    health = ctx.clc.cluster_health()
    items = [
        {
            "ZoneName": z["zone"],
            "ZoneId": zone_id(z["region"], z["zone"]),
            # a zone is up while its cluster controller answers with a live node (not yet asked: up)
            "State": "available" if health.get(z["cluster"], True) else "unavailable",
            "RegionName": z["region"],
            "ZoneType": "availability-zone",
            "GroupName": z["region"],
            "NetworkBorderGroup": z["region"],
            "OptInStatus": "opt-in-not-required",
            "Messages": []
            if health.get(z["cluster"], True)
            else [{"Message": f"cluster {z['cluster']} does not answer, or has no live node"}],
        }
        for z in ctx.clc.zones()
    ]
    if names:
        unknown = [z for z in names if z not in {i["ZoneName"] for i in items}]
        if unknown:
            raise ApiError("InvalidParameterValue", f"Invalid availability zone: [{', '.join(unknown)}]")
        items = [i for i in items if i["ZoneName"] in names]
    items = filters.apply_filters(
        items,
        req.get("Filters"),
        {
            "zone-name": lambda z: z["ZoneName"],
            "zone-id": lambda z: z["ZoneId"],
            "state": lambda z: z["State"],
            "region-name": lambda z: z["RegionName"],
            "zone-type": lambda z: z["ZoneType"],
        },
        "DescribeAvailabilityZones",
    )
    if verbose:
        reports, zones = ctx.clc.cluster_reports(), {z["zone"]: z for z in ctx.clc.zones()}
        items = [
            line
            for i in items
            for line in [i, *_verbose_items(ctx, zones[i["ZoneName"]], reports.get(zones[i["ZoneName"]]["cluster"]))]
        ]
    return {"AvailabilityZones": items}


@action("DescribeRegions")
def describe_regions(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    items = [
        {
            "RegionName": ctx.clc.region,
            "Endpoint": ctx.host.split(":")[0] or "127.0.0.1",
            "OptInStatus": "opt-in-not-required",
        }
    ]
    if req.get("RegionNames"):
        unknown = [r for r in req["RegionNames"] if r != ctx.clc.region]
        if unknown:
            raise ApiError("InvalidParameterValue", f"Invalid region: {', '.join(unknown)}")
    items = filters.apply_filters(
        items,
        req.get("Filters"),
        {
            "region-name": lambda r: r["RegionName"],
            "endpoint": lambda r: r["Endpoint"],
            "opt-in-status": lambda r: r["OptInStatus"],
        },
        "DescribeRegions",
    )
    return {"Regions": items}
