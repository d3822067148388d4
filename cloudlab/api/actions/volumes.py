"""EBS actions: volumes (create, delete, describe, attach, detach, status, attributes) and snapshots."""

from __future__ import annotations

from typing import Any

from cloudlab.api import enrich, filters, volume_views
from cloudlab.api.actions import Context, action, owner_ids
from cloudlab.api.errors import ApiError
from cloudlab.clc.snapshots import Snapshots
from cloudlab.clc.volumes import Volumes

VOLUME_FILTERS: dict[str, filters.Getter] = {
    "volume-id": lambda v: v["VolumeId"],
    "status": lambda v: v["State"],
    "size": lambda v: v["Size"],
    "availability-zone": lambda v: v["AvailabilityZone"],
    "snapshot-id": lambda v: v.get("SnapshotId"),
    "volume-type": lambda v: v["VolumeType"],
    "encrypted": lambda v: v["Encrypted"],
    "attachment.instance-id": lambda v: [a["InstanceId"] for a in v["Attachments"]],
    "attachment.device": lambda v: [a["Device"] for a in v["Attachments"]],
    "attachment.status": lambda v: [a["State"] for a in v["Attachments"]],
    "attachment.delete-on-termination": lambda v: [a["DeleteOnTermination"] for a in v["Attachments"]],
}
SNAPSHOT_FILTERS: dict[str, filters.Getter] = {
    "snapshot-id": lambda s: s["SnapshotId"],
    "volume-id": lambda s: s["VolumeId"],
    "status": lambda s: s["State"],
    "progress": lambda s: s["Progress"],
    "owner-id": lambda s: s.get("OwnerId"),
    "description": lambda s: s["Description"],
    "volume-size": lambda s: s["VolumeSize"],
}


def _volumes(ctx: Context) -> Volumes:
    return ctx.clc.service(Volumes)


def _snapshots(ctx: Context) -> Snapshots:
    return ctx.clc.service(Snapshots)


def _with_tags(ctx: Context, items: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    tags = enrich.tags_of(ctx, [i[key] for i in items])
    for item in items:
        if tags.get(item[key]):
            item["Tags"] = tags[item[key]]
    return items


def _volume_items(ctx: Context, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    owners = owner_ids(ctx)
    return _with_tags(ctx, [volume_views.volume(r, owners.get(r["owner"])) for r in rows], "VolumeId")


# -- volumes --------------------------------------------------------------------------------------------
@action("CreateVolume")
def create_volume(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    if req.get("Encrypted") or req.get("KmsKeyId"):
        raise ApiError("InvalidParameterValue", "this cloud's volumes are not encrypted (Encrypted must be false)")
    if req.get("MultiAttachEnabled"):
        raise ApiError("InvalidParameterValue", "Multi-Attach is not supported: a volume attaches to one instance")
    row = _volumes(ctx).create(
        ctx.user,
        zone=req.get("AvailabilityZone"),
        size_gib=req.get("Size"),
        snapshot_id=req.get("SnapshotId"),
        volume_type=req.get("VolumeType"),
        tag_specifications=req.get("TagSpecifications"),
    )
    return _volume_items(ctx, [row])[0]


@action("DeleteVolume")
def delete_volume(ctx: Context, req: dict[str, Any]) -> None:
    _volumes(ctx).delete(ctx.user, req["VolumeId"])
    return None


@action("DescribeVolumes")
def describe_volumes(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    if req.get("MaxResults") is not None and req.get("VolumeIds"):
        raise ApiError("InvalidParameterCombination", "The parameter volumeSet cannot be used with maxResults")
    items = _volume_items(ctx, _volumes(ctx).visible(ctx.user, req.get("VolumeIds") or None))
    items = filters.apply_filters(items, req.get("Filters"), VOLUME_FILTERS, "DescribeVolumes")
    page, token = filters.paginate(items, req.get("MaxResults"), req.get("NextToken"), bounds=(5, 500))
    return {"Volumes": page, "NextToken": token}


@action("AttachVolume")
def attach_volume(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    row = _volumes(ctx).attach(ctx.user, req["VolumeId"], req["InstanceId"], req["Device"])
    return volume_views.attachment(row)


@action("DetachVolume")
def detach_volume(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    row = _volumes(ctx).detach(
        ctx.user, req["VolumeId"], req.get("InstanceId"), req.get("Device"), force=bool(req.get("Force"))
    )
    return volume_views.attachment(row)


@action("DescribeVolumeStatus")
def describe_volume_status(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    """``ok`` for a volume the SC holds, ``insufficient-data`` while it is made, ``impaired`` on error."""
    items = []
    for row in _volumes(ctx).visible(ctx.user, req.get("VolumeIds") or None):
        status = {"error": "impaired", "creating": "insufficient-data"}.get(row["state"], "ok")
        check = {"ok": "passed", "impaired": "failed"}.get(status, "insufficient-data")
        items.append(
            {
                "VolumeId": row["volume_id"],
                "AvailabilityZone": row["zone"],
                "VolumeStatus": {
                    "Status": status,
                    "Details": [{"Name": "io-enabled", "Status": check}, {"Name": "io-performance", "Status": check}],
                },
                "Actions": [],
                "Events": [],
            }
        )
    getters: dict[str, filters.Getter] = {
        "volume-status.status": lambda s: s["VolumeStatus"]["Status"],
        "availability-zone": lambda s: s["AvailabilityZone"],
    }
    items = filters.apply_filters(items, req.get("Filters"), getters, "DescribeVolumeStatus")
    page, token = filters.paginate(items, req.get("MaxResults"), req.get("NextToken"), bounds=(5, 1000))
    return {"VolumeStatuses": page, "NextToken": token}


@action("DescribeVolumeAttribute")
def describe_volume_attribute(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    row = _volumes(ctx).one(ctx.user, req["VolumeId"])
    attribute = req["Attribute"]
    if attribute == "autoEnableIO":
        return {"VolumeId": row["volume_id"], "AutoEnableIO": {"Value": bool(row["auto_enable_io"])}}
    if attribute == "productCodes":
        return {"VolumeId": row["volume_id"], "ProductCodes": []}
    raise ApiError("InvalidParameterValue", f"Value ({attribute}) for parameter attribute is invalid")


@action("ModifyVolumeAttribute")
def modify_volume_attribute(ctx: Context, req: dict[str, Any]) -> None:
    value = (req.get("AutoEnableIO") or {}).get("Value")
    if value is None:
        raise ApiError("MissingParameter", "The request must contain the parameter AutoEnableIO")
    _volumes(ctx).set_auto_enable_io(ctx.user, req["VolumeId"], bool(value))
    return None


# -- snapshots ------------------------------------------------------------------------------------------
def _snapshot_items(ctx: Context, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    owners = owner_ids(ctx)
    items = [volume_views.snapshot(row, owners.get(row["owner"])) for row in rows]
    return _with_tags(ctx, items, "SnapshotId")


@action("CreateSnapshot")
def create_snapshot(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    row = _snapshots(ctx).create(ctx.user, req["VolumeId"], req.get("Description"), req.get("TagSpecifications"))
    return _snapshot_items(ctx, [row])[0]


@action("DeleteSnapshot")
def delete_snapshot(ctx: Context, req: dict[str, Any]) -> None:
    _snapshots(ctx).delete(ctx.user, req["SnapshotId"])
    return None


@action("DescribeSnapshots")
def describe_snapshots(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    if req.get("MaxResults") is not None and req.get("SnapshotIds"):
        raise ApiError("InvalidParameterCombination", "The parameter snapshotSet cannot be used with maxResults")
    items = _snapshot_items(ctx, _snapshots(ctx).visible(ctx.user, req.get("SnapshotIds") or None))
    owners = req.get("OwnerIds")
    if owners:  # "self", or account ids (a user sees only their own snapshots in any case)
        wanted = {ctx.user.user_id if o == "self" else o for o in owners}
        items = [i for i in items if i.get("OwnerId") in wanted]
    items = filters.apply_filters(items, req.get("Filters"), SNAPSHOT_FILTERS, "DescribeSnapshots")
    page, token = filters.paginate(items, req.get("MaxResults"), req.get("NextToken"), bounds=(5, 1000))
    return {"Snapshots": page, "NextToken": token}
