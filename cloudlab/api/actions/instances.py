"""Instance actions: run, describe, terminate, reboot, console."""

from __future__ import annotations

from itertools import groupby
from typing import Any

from cloudlab.api import filters, views
from cloudlab.api.actions import Context, action, owner_ids
from cloudlab.api.errors import ApiError

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
    owners = owner_ids(ctx)
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
