"""Instance actions: run, describe, terminate, reboot, console."""

from __future__ import annotations

from itertools import groupby
from typing import Any

from cloudlab.api import enrich, filters, views
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
    "instance.group-id": lambda i: [g["GroupId"] for g in i.get("SecurityGroups", [])],
    "instance.group-name": lambda i: [g["GroupName"] for g in i.get("SecurityGroups", [])],
    "group-id": lambda i: [g["GroupId"] for g in i.get("SecurityGroups", [])],
    "group-name": lambda i: [g["GroupName"] for g in i.get("SecurityGroups", [])],
    "ip-address": lambda i: i.get("PublicIpAddress"),
    "private-ip-address": lambda i: i.get("PrivateIpAddress"),
    "tag-key": lambda i: [t["Key"] for t in i.get("Tags", [])],
    "tag-value": lambda i: [t["Value"] for t in i.get("Tags", [])],
}
# Filters answered by the instance record alone (enrichment adds or changes none of their fields): applied
# before the enrichment, so a describe of one instance among 10,000 enriches one, not 10,000.
RECORD_FILTERS = frozenset(
    {
        "instance-id", "image-id", "instance-type", "instance-state-name", "instance-state-code",
        "availability-zone", "host-id", "kernel-id", "ramdisk-id", "key-name", "launch-index", "reservation-id",
        "owner-id", "architecture",
    }
)  # fmt: skip


#: Filters that are an exact match on one column of the instance record, answered in SQL when their values hold no
#: wildcard (``*``, ``?``; and ``[``, which the Python matcher would read as a set).
SQL_FILTERS = {
    "instance-id": "instance_id", "image-id": "image_id", "instance-type": "instance_type",
    "instance-state-name": "state", "availability-zone": "zone", "host-id": "node", "kernel-id": "kernel_id",
    "ramdisk-id": "ramdisk_id", "key-name": "key_name", "reservation-id": "reservation_id",
}  # fmt: skip


def _in_sql(wanted: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The filters SQL can answer exactly, as (column, values) (the rest are applied to the items after)."""
    matching = []
    for flt in wanted:
        column, values = SQL_FILTERS.get(flt.get("Name") or ""), [str(v) for v in flt.get("Values") or []]
        if column and values and not any(c in v for v in values for c in "*?["):
            matching.append((column, values))
    return matching


def _network_of(req: dict[str, Any]) -> tuple[str | None, str | None, list[str] | None]:
    """(subnet, private address, group ids) from ``SubnetId``/``PrivateIpAddress``/``SecurityGroupIds`` or,
    as EC2 also takes them, from the one entry of ``NetworkInterfaces``."""
    interfaces = req.get("NetworkInterfaces") or []
    if not interfaces:
        return req.get("SubnetId"), req.get("PrivateIpAddress"), req.get("SecurityGroupIds")
    if len(interfaces) > 1 or (interfaces[0].get("DeviceIndex") or 0) != 0:
        raise ApiError("InvalidParameterValue", "cloudlab instances have one network interface (DeviceIndex 0)")
    [nic] = interfaces
    if nic.get("NetworkInterfaceId"):
        raise ApiError("InvalidParameterValue", "cloudlab makes each instance's interface: give SubnetId, not an eni")
    if req.get("SubnetId") or req.get("SecurityGroupIds") or req.get("SecurityGroups") or req.get("PrivateIpAddress"):
        raise ApiError(
            "InvalidParameterCombination",
            "Network interfaces and an instance-level subnet, security groups or private IP address may not be"
            " specified on the same request",
        )
    addresses = [a["PrivateIpAddress"] for a in nic.get("PrivateIpAddresses") or [] if a.get("Primary", True)]
    private_ip = nic.get("PrivateIpAddress") or (addresses[0] if addresses else None)
    return nic.get("SubnetId"), private_ip, nic.get("Groups")


@action("RunInstances")
def run_instances(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    if not req.get("ImageId"):  # optional in the model (for launch templates, which this cloud has not)
        raise ApiError("MissingParameter", "The request must contain the parameter ImageId")
    placement = req.get("Placement") or {}
    subnet_id, private_ip, group_ids = _network_of(req)
    nic = (req.get("NetworkInterfaces") or [{}])[0]
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
        security_groups=req.get("SecurityGroups"),
        security_group_ids=group_ids,
        tag_specifications=req.get("TagSpecifications"),
        subnet_id=subnet_id,
        private_ip=private_ip,
        associate_public_ip=nic.get("AssociatePublicIpAddress"),
        block_device_mappings=req.get("BlockDeviceMappings"),
    )
    answer = views.reservation(result["reservation_id"], ctx.user.user_id, result["instances"])
    enrich.instances(ctx, answer["Instances"])
    answer["Groups"] = answer["Instances"][0]["SecurityGroups"] if answer["Instances"] else []
    return answer


@action("DescribeInstances")
def describe_instances(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    if req.get("MaxResults") is not None and req.get("InstanceIds"):
        raise ApiError(
            "InvalidParameterCombination", "The parameter instancesSet cannot be used with the parameter maxResults"
        )
    instance_ids = req.get("InstanceIds") or None
    wanted = req.get("Filters") or []
    matching = [] if instance_ids else _in_sql(wanted)  # named instances: unknown ids are refused first
    owners = owner_ids(ctx)

    def items_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        items = []
        for row in rows:
            item = views.instance(row)
            item["_reservation"], item["_owner_id"], item["_owner"] = (
                row["reservation_id"],
                owners.get(row["owner"]),
                row["owner"],
            )
            items.append(item)
        return items

    if not instance_ids and len(matching) == len(wanted):  # SQL answers every filter: read only the page
        page, token = filters.windowed_page(
            lambda offset, limit: ctx.clc.describe_instances(ctx.user, None, matching, (offset, limit)),
            req.get("MaxResults"),
            req.get("NextToken"),
        )
        page = items_of(page)
        enrich.instances(ctx, page)
    else:
        items = items_of(ctx.clc.describe_instances(ctx.user, instance_ids, matching))
        early = [f for f in wanted if f.get("Name") in RECORD_FILTERS]
        items = filters.apply_filters(items, early, INSTANCE_FILTERS)
        if len(early) == len(wanted):  # nothing left that needs the enrichment: enrich only the page
            page, token = filters.paginate(items, req.get("MaxResults"), req.get("NextToken"))
            enrich.instances(ctx, page)
        else:
            enrich.instances(ctx, items)
            items = filters.apply_filters(items, wanted, INSTANCE_FILTERS, "DescribeInstances")
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


def _state_changes(changes: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    return [
        {"InstanceId": i, "PreviousState": views.state(prev), "CurrentState": views.state(cur)}
        for i, prev, cur in changes
    ]


@action("StopInstances")
def stop_instances(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    return {"StoppingInstances": _state_changes(ctx.clc.stop_instances(ctx.user, req["InstanceIds"]))}


@action("StartInstances")
def start_instances(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    return {"StartingInstances": _state_changes(ctx.clc.start_instances(ctx.user, req["InstanceIds"]))}


STATUS_FILTERS: dict[str, filters.Getter] = {
    "availability-zone": lambda s: s["AvailabilityZone"],
    "instance-state-name": lambda s: s["InstanceState"]["Name"],
    "instance-state-code": lambda s: s["InstanceState"]["Code"],
    "instance-status.status": lambda s: s["InstanceStatus"]["Status"],
    "instance-status.reachability": lambda s: s["InstanceStatus"]["Details"][0]["Status"],
    "system-status.status": lambda s: s["SystemStatus"]["Status"],
    "system-status.reachability": lambda s: s["SystemStatus"]["Details"][0]["Status"],
}


def _status(state: str, healthy: bool | None) -> dict[str, Any]:
    """EC2's status checks: ``ok`` once running on a live node, ``initializing`` before, else n/a."""
    if state != "running":
        return {"Status": "not-applicable", "Details": [{"Name": "reachability", "Status": "not-applicable"}]}
    if healthy is None:
        return {"Status": "initializing", "Details": [{"Name": "reachability", "Status": "initializing"}]}
    word = "ok" if healthy else "impaired"
    return {"Status": word, "Details": [{"Name": "reachability", "Status": "passed" if healthy else "failed"}]}


@action("DescribeInstanceStatus")
def describe_instance_status(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    if req.get("MaxResults") is not None and req.get("InstanceIds"):
        raise ApiError("InvalidParameterCombination", "The parameter instancesSet cannot be used with maxResults")
    rows = ctx.clc.describe_instances(ctx.user, req.get("InstanceIds") or None)
    nodes_alive = ctx.clc.node_health()
    items = []
    for row in rows:
        if row["state"] != "running" and not req.get("IncludeAllInstances"):
            continue
        node_ok = nodes_alive.get(row["node"]) if row["node"] else None
        items.append(
            {
                "InstanceId": row["instance_id"],
                "AvailabilityZone": row["zone"],
                "InstanceState": views.state(row["state"]),
                "InstanceStatus": _status(row["state"], node_ok),
                "SystemStatus": _status(row["state"], node_ok),
            }
        )
    items = filters.apply_filters(items, req.get("Filters"), STATUS_FILTERS, "DescribeInstanceStatus")
    page, token = filters.paginate(items, req.get("MaxResults"), req.get("NextToken"))
    return {"InstanceStatuses": page, "NextToken": token}


TYPE_FILTERS: dict[str, filters.Getter] = {
    "instance-type": lambda t: t["InstanceType"],
    "vcpu-info.default-vcpus": lambda t: t["VCpuInfo"]["DefaultVCpus"],
    "memory-info.size-in-mib": lambda t: t["MemoryInfo"]["SizeInMiB"],
    "current-generation": lambda t: t["CurrentGeneration"],
    "processor-info.supported-architecture": lambda t: t["ProcessorInfo"]["SupportedArchitectures"],
}


@action("DescribeInstanceTypes")
def describe_instance_types(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    from cloudlab.clc.vmtypes import list_vm_types

    known = {t.name: t for t in list_vm_types(ctx.clc.store)}
    wanted = req.get("InstanceTypes") or list(known)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ApiError(
            "InvalidInstanceType", f"The following supplied instance types do not exist: [{', '.join(unknown)}]"
        )
    items = [
        {
            "InstanceType": t.name,
            "CurrentGeneration": True,
            "SupportedUsageClasses": ["on-demand"],
            "SupportedRootDeviceTypes": ["ebs", "instance-store"],
            "SupportedVirtualizationTypes": ["hvm"],
            "BareMetal": False,
            "ProcessorInfo": {"SupportedArchitectures": ["x86_64"]},
            "VCpuInfo": {"DefaultVCpus": t.vcpus, "DefaultCores": t.vcpus, "DefaultThreadsPerCore": 1},
            "MemoryInfo": {"SizeInMiB": t.memory_mb},
            "InstanceStorageSupported": False,
            "FreeTierEligible": t.name in ("t2.micro", "t2.nano"),
        }
        for t in known.values()
        if t.name in wanted
    ]
    items = filters.apply_filters(items, req.get("Filters"), TYPE_FILTERS, "DescribeInstanceTypes")
    page, token = filters.paginate(items, req.get("MaxResults"), req.get("NextToken"), bounds=(5, 100))
    return {"InstanceTypes": page, "NextToken": token}


@action("DescribeInstanceAttribute")
def describe_instance_attribute(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    [row] = ctx.clc.describe_instances(ctx.user, [req["InstanceId"]])
    attribute = req["Attribute"]
    answer: dict[str, Any] = {"InstanceId": row["instance_id"]}
    simple = {
        "instanceType": ("InstanceType", row["instance_type"]),
        "kernel": ("KernelId", row["kernel_id"]),
        "ramdisk": ("RamdiskId", row["ramdisk_id"]),
        "userData": ("UserData", row["user_data"]),
        "instanceInitiatedShutdownBehavior": ("InstanceInitiatedShutdownBehavior", "terminate"),
        "disableApiTermination": ("DisableApiTermination", False),
        "disableApiStop": ("DisableApiStop", False),
        "rootDeviceName": ("RootDeviceName", None),
        "sourceDestCheck": ("SourceDestCheck", True),
        "ebsOptimized": ("EbsOptimized", False),
        "enaSupport": ("EnaSupport", False),
    }
    if attribute in simple:
        member, value = simple[attribute]
        answer[member] = {"Value": value} if value is not None else {}
    elif attribute == "groupSet":
        answer["Groups"] = enrich.groups_of(ctx, [row["instance_id"]]).get(row["instance_id"], [])
    elif attribute == "blockDeviceMapping":
        from cloudlab.api.volume_views import instance_block_devices

        attached = enrich.volumes_of(ctx, [row["instance_id"]]).get(row["instance_id"], [])
        answer["BlockDeviceMappings"] = instance_block_devices(attached)
    elif attribute == "productCodes":
        answer["ProductCodes"] = []
    else:
        raise ApiError(
            "InvalidParameterValue", f"Value ({attribute}) for parameter attribute is invalid. Unknown attribute."
        )
    return answer
