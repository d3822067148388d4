"""Image actions."""

from __future__ import annotations

from typing import Any

from cloudlab.api import enrich, filters, views
from cloudlab.api.actions import Context, action, owner_ids
from cloudlab.api.errors import ApiError, quote_value
from cloudlab.clc.bucket_images import BucketImages, is_bucket_location
from cloudlab.clc.ebs_images import EbsImages
from cloudlab.ids import is_valid_id

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
    "tag-key": lambda i: [t["Key"] for t in i.get("Tags", [])],
}


@action("DescribeImages")
def describe_images(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    owners = owner_ids(ctx)
    wanted_ids = req.get("ImageIds") or []
    for image_id in wanted_ids:
        _check_image_id(image_id)
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
    enrich.images(ctx, items)
    items = filters.apply_filters(items, req.get("Filters"), IMAGE_FILTERS, "DescribeImages")
    page, token = filters.paginate(items, req.get("MaxResults"), req.get("NextToken"))
    return {"Images": page, "NextToken": token}


def _check_image_id(image_id: str) -> None:
    """EC2's ``InvalidAMIID.Malformed`` for what cannot be an image id (ami-, aki- or ari-)."""
    if not any(is_valid_id(image_id, prefix) for prefix in ("ami", "aki", "ari")):
        raise ApiError("InvalidAMIID.Malformed", f'Invalid id: "{quote_value(image_id)}" (expecting "ami-...")')


def _visible_image(ctx: Context, image_id: str) -> Any:
    _check_image_id(image_id)
    image = ctx.clc.images.get(image_id)
    if (
        image is None
        or image.state == "deregistered"
        or not (image.is_public or image.owner == ctx.user.name or ctx.user.is_admin)
    ):
        raise ApiError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
    return image


@action("RegisterImage")
def register_image(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    images = ctx.clc.images
    name, description = req["Name"], req.get("Description") or ""
    if req.get("Architecture") not in (None, "x86_64"):
        raise ApiError("InvalidParameterValue", "this cloud runs x86_64 images only")
    root_snapshot = _root_snapshot(req.get("BlockDeviceMappings") or [], req.get("RootDeviceName"))
    if root_snapshot is not None:
        if not req.get("KernelId"):
            raise ApiError("MissingParameter", "RegisterImage with a root snapshot needs KernelId (and RamdiskId)")
        image_id = ctx.clc.service(EbsImages).register_with_root(
            ctx.user, name, req["KernelId"], req.get("RamdiskId"), root_snapshot, description
        )
        return {"ImageId": image_id}
    if req.get("ImageLocation") and is_bucket_location(req["ImageLocation"]):
        image = ctx.clc.service(BucketImages).register(ctx.user, name, req["ImageLocation"], description)
    elif req.get("ImageLocation"):
        image = images.register_location(
            ctx.user.name, name, req["ImageLocation"], description, admin=ctx.user.is_admin
        )
    elif req.get("KernelId"):

        def visible(part: Any) -> bool:
            return bool(part.is_public or part.owner == ctx.user.name or ctx.user.is_admin)

        image = images.register_parts(
            ctx.user.name, name, req["KernelId"], req.get("RamdiskId"), description, visible=visible
        )
    else:
        raise ApiError(
            "MissingParameter",
            "RegisterImage needs ImageLocation (BUCKET/NAME/manifest.json, or a folder the cloud can read with "
            "vmlinuz, initrd.img, disk.img) or KernelId (and RamdiskId) of registered images",
        )
    return {"ImageId": image.image_id}


def _root_snapshot(mappings: list[dict[str, Any]], root_device: str | None) -> str | None:
    """The snapshot of the root device in RegisterImage's BlockDeviceMappings, if one is given."""
    from cloudlab.clc.volumes import ROOT_DEVICES

    for mapping in mappings:
        name = mapping.get("DeviceName")
        snapshot_id = (mapping.get("Ebs") or {}).get("SnapshotId")
        if snapshot_id and (name == root_device or name in ROOT_DEVICES):
            return str(snapshot_id)
    return None


@action("CreateImage")
def create_image(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    """An EBS-backed AMI from an instance's root volume (see cloudlab.clc.ebs_images)."""
    image_id = ctx.clc.service(EbsImages).create_image(
        ctx.user, req["InstanceId"], req["Name"], req.get("Description") or "", no_reboot=bool(req.get("NoReboot"))
    )
    return {"ImageId": image_id}


@action("DeregisterImage")
def deregister_image(ctx: Context, req: dict[str, Any]) -> None:
    image = _visible_image(ctx, req["ImageId"])
    if image.owner != ctx.user.name and not ctx.user.is_admin:
        raise ApiError("AuthFailure", f"Not authorized for image:{image.image_id}")
    ctx.clc.images.deregister(image.image_id)
    return None


@action("DescribeImageAttribute")
def describe_image_attribute(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    image = _visible_image(ctx, req["ImageId"])
    attribute = req["Attribute"]
    answer: dict[str, Any] = {"ImageId": image.image_id}
    if attribute == "description":
        answer["Description"] = {"Value": image.description} if image.description else {}
    elif attribute == "kernel":
        answer["KernelId"] = {"Value": image.kernel_id} if image.kernel_id else {}
    elif attribute == "ramdisk":
        answer["RamdiskId"] = {"Value": image.ramdisk_id} if image.ramdisk_id else {}
    elif attribute == "launchPermission":
        answer["LaunchPermissions"] = [{"Group": "all"}] if image.is_public else []
    elif attribute == "productCodes":
        answer["ProductCodes"] = []
    elif attribute == "blockDeviceMapping":
        answer["BlockDeviceMappings"] = enrich.image_block_devices(ctx, [image.image_id]).get(image.image_id, [])
    elif attribute == "bootMode":
        answer["BootMode"] = {"Value": "legacy-bios"}
    else:
        raise ApiError(
            "InvalidParameterValue", f"Value ({attribute}) for parameter attribute is invalid. Unknown attribute."
        )
    return answer
