"""Availability zones (one per cluster) and the region."""

from __future__ import annotations

from typing import Any

from cloudlab.api import filters
from cloudlab.api.actions import Context, action
from cloudlab.api.errors import ApiError
from cloudlab.clc.regions import zone_id

# -- zones and regions -----------------------------------------------------------------------------------


@action("DescribeAvailabilityZones")
def describe_availability_zones(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
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
    if req.get("ZoneNames"):
        unknown = [z for z in req["ZoneNames"] if z not in {i["ZoneName"] for i in items}]
        if unknown:
            raise ApiError("InvalidParameterValue", f"Invalid availability zone: [{', '.join(unknown)}]")
        items = [i for i in items if i["ZoneName"] in req["ZoneNames"]]
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
