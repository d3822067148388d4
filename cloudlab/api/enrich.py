"""What other resource types add to an instance or image as EC2 shows it: tags, security groups,
the public address. One query per type for a whole page of items, never one per item."""

from __future__ import annotations

from typing import Any


def groups_of(ctx: Any, instance_ids: list[str]) -> dict[str, list[dict[str, str]]]:
    from cloudlab.clc.groups import SecurityGroups

    return ctx.clc.service(SecurityGroups).groups_of(instance_ids) if instance_ids else {}


def tags_of(ctx: Any, resource_ids: list[str]) -> dict[str, list[dict[str, str]]]:
    from cloudlab.clc.tags import Tags

    return ctx.clc.service(Tags).for_resources(resource_ids) if resource_ids else {}


def public_ips_of(ctx: Any, instance_ids: list[str]) -> dict[str, str]:
    from cloudlab.clc.addresses import Addresses

    return ctx.clc.service(Addresses).public_ips_of(instance_ids) if instance_ids else {}


def private_ips_of(ctx: Any, instance_ids: list[str]) -> dict[str, str]:
    from cloudlab.clc.network import InstanceNetworks

    return ctx.clc.service(InstanceNetworks).private_ips_of(instance_ids) if instance_ids else {}


def volumes_of(ctx: Any, instance_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    from cloudlab.clc.volumes import Volumes

    return ctx.clc.service(Volumes).of_instances(instance_ids) if instance_ids else {}


def instances(ctx: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add Tags, SecurityGroups, the public and private addresses and the block devices (its volumes;
    RootDeviceType ``ebs`` with a root volume) to EC2-shaped instance items (in place)."""
    from cloudlab.api.volume_views import instance_block_devices

    ids = [item["InstanceId"] for item in items]
    tags, groups, public = tags_of(ctx, ids), groups_of(ctx, ids), public_ips_of(ctx, ids)
    private, volumes = private_ips_of(ctx, ids), volumes_of(ctx, ids)
    for item in items:
        instance_id = item["InstanceId"]
        attached = volumes.get(instance_id, [])
        item["BlockDeviceMappings"] = instance_block_devices(attached)
        root = next((v for v in attached if v["is_root"]), None)
        if root is not None:
            item["RootDeviceType"], item["RootDeviceName"] = "ebs", root["device"]
        if tags.get(instance_id):
            item["Tags"] = tags[instance_id]
        item["SecurityGroups"] = groups.get(instance_id, [])
        if instance_id in public:
            item["PublicIpAddress"] = public[instance_id]
        if instance_id in private:
            item["PrivateIpAddress"] = private[instance_id]
    return items


def image_block_devices(ctx: Any, image_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """image id -> its BlockDeviceMappings: the root snapshot of an EBS-backed image."""
    from cloudlab.clc.ebs_images import EbsImages

    roots = ctx.clc.service(EbsImages).roots_of(image_ids)
    return {
        image_id: [
            {
                "DeviceName": root["device"],
                "Ebs": {"SnapshotId": root["snapshot_id"], "VolumeSize": root["size_gib"], "DeleteOnTermination": True},
            }
        ]
        for image_id, root in roots.items()
    }


def images(ctx: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add Tags and, for an EBS-backed image, its root snapshot (RootDeviceType ``ebs``)."""
    ids = [item["ImageId"] for item in items]
    tags, devices = tags_of(ctx, ids), image_block_devices(ctx, ids)
    for item in items:
        if tags.get(item["ImageId"]):
            item["Tags"] = tags[item["ImageId"]]
        if item["ImageId"] in devices:
            item["BlockDeviceMappings"] = devices[item["ImageId"]]
            item["RootDeviceType"], item["RootDeviceName"] = "ebs", devices[item["ImageId"]][0]["DeviceName"]
    return items
