"""EC2 actions: each turns a parsed request (botocore member names) into a domain call and an
EC2-shaped answer. No XML here and no protocol handling: parsing, signatures, serialisation and
errors are generic (``protocol``/``server``); state and rules live in the cloud controller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from cloudlab.api import filters, views
from cloudlab.api.errors import ApiError
from cloudlab.clc.cloud import CloudController
from cloudlab.clc.users import User


@dataclass
class Context:
    """What an action knows about its request."""

    clc: CloudController
    user: User
    request_id: str
    host: str


Action = Callable[[Context, dict[str, Any]], dict[str, Any] | None]
ACTIONS: dict[str, Action] = {}


def action(name: str) -> Callable[[Action], Action]:
    def register(fn: Action) -> Action:
        ACTIONS[name] = fn
        return fn

    return register


# -- instances ------------------------------------------------------------------------------------------

INSTANCE_FILTERS: dict[str, filters.Getter] = {
    "instance-id": lambda i: i["InstanceId"],
    "image-id": lambda i: i["ImageId"],
    "instance-type": lambda i: i["InstanceType"],
    "instance-state-name": lambda i: i["State"]["Name"],
    "instance-state-code": lambda i: i["State"]["Code"],
    "availability-zone": lambda i: i["Placement"]["AvailabilityZone"],
    "host-id": lambda i: i["Placement"].get("HostId"),
    "kernel-id": lambda i: i.get("KernelId"),
    "ramdisk-id": lambda i: i.get("RamdiskId"),
    "key-name": lambda i: i.get("KeyName"),
    "launch-index": lambda i: i.get("AmiLaunchIndex"),
    "reservation-id": lambda i: i["_reservation"],
    "owner-id": lambda i: i["_owner_id"],
    "architecture": lambda i: i["Architecture"],
    "root-device-type": lambda i: i["RootDeviceType"],
}


def _owner_ids(ctx: Context) -> dict[str, str]:
    return {u.name: u.user_id for u in ctx.clc.users.list()}


@action("RunInstances")
def run_instances(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    placement = req.get("Placement") or {}
    result = ctx.clc.run_instances(
        ctx.user,
        req["ImageId"],
        instance_type=req.get("InstanceType"),
        min_count=req["MinCount"],
        max_count=req["MaxCount"],
        zone=placement.get("AvailabilityZone"),
        client_token=req.get("ClientToken"),
        user_data=req.get("UserData"),
        key_name=req.get("KeyName"),
    )
    return views.reservation(result["reservation_id"], ctx.user.user_id, result["instances"])


@action("DescribeInstances")
def describe_instances(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    if req.get("MaxResults") is not None and req.get("InstanceIds"):
        raise ApiError(
            "InvalidParameterCombination", "The parameter instancesSet cannot be used with the parameter maxResults"
        )
    rows = ctx.clc.describe_instances(ctx.user, req.get("InstanceIds") or None)
    owners = _owner_ids(ctx)
    items = []
    for row in rows:
        item = views.instance(row)
        item["_reservation"], item["_owner_id"], item["_owner"] = (
            row["reservation_id"],
            owners.get(row["owner"]),
            row["owner"],
        )
        items.append(item)
    items = filters.apply_filters(items, req.get("Filters"), INSTANCE_FILTERS)
    page, token = filters.paginate(items, req.get("MaxResults"), req.get("NextToken"))
    reservations = []
    for reservation_id, group in groupby(page, key=lambda i: i["_reservation"]):
        members = list(group)
        owner = members[0]["_owner_id"]
        for item in members:
            del item["_reservation"], item["_owner_id"], item["_owner"]
        reservations.append({"ReservationId": reservation_id, "OwnerId": owner, "Groups": [], "Instances": members})
    return {"Reservations": reservations, "NextToken": token}


@action("TerminateInstances")
def terminate_instances(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    changes = ctx.clc.terminate_instances(ctx.user, req["InstanceIds"])
    return {
        "TerminatingInstances": [
            {"InstanceId": i, "PreviousState": views.state(prev), "CurrentState": views.state(cur)}
            for i, prev, cur in changes
        ]
    }


@action("RebootInstances")
def reboot_instances(ctx: Context, req: dict[str, Any]) -> None:
    ctx.clc.reboot_instances(ctx.user, req["InstanceIds"])
    return None


@action("GetConsoleOutput")
def get_console_output(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    text, when = ctx.clc.console_output(ctx.user, req["InstanceId"])
    return views.console_output(req["InstanceId"], text, when)


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
    owners = _owner_ids(ctx)
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


# -- zones and regions -----------------------------------------------------------------------------------


@action("DescribeAvailabilityZones")
def describe_availability_zones(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    items = [
        {
            "ZoneName": z["zone"],
            "ZoneId": f"{z['region']}-az{n}",
            "State": "available",
            "RegionName": z["region"],
            "ZoneType": "availability-zone",
            "GroupName": z["region"],
            "NetworkBorderGroup": z["region"],
            "OptInStatus": "opt-in-not-required",
            "Messages": [],
        }
        for n, z in enumerate(ctx.clc.zones(), start=1)
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
    )
    return {"Regions": items}
