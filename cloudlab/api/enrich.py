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


def interfaces_of(ctx: Any, instance_ids: list[str]) -> dict[str, Any]:
    from cloudlab.clc.interfaces import NetworkInterfaces

    return ctx.clc.service(NetworkInterfaces).of_instances(instance_ids) if instance_ids else {}


def interface_item(ctx: Any, nic: Any, owner_id: str, groups: list[dict[str, str]], public_ip: str | None) -> dict:
    """One network interface as DescribeInstances (``InstanceNetworkInterface``) shows it."""
    association = {"PublicIp": public_ip, "PublicDnsName": "", "IpOwnerId": owner_id} if public_ip else None
    item = {
        "NetworkInterfaceId": nic.interface_id,
        "SubnetId": nic.subnet_id,
        "VpcId": nic.vpc_id,
        "OwnerId": owner_id,
        "Status": "in-use",
        "MacAddress": nic.mac,
        "PrivateIpAddress": nic.private_ip,
        "PrivateDnsName": "",
        "SourceDestCheck": True,
        "InterfaceType": "interface",
        "Description": "",
        "Groups": groups,
        "Attachment": {
            "AttachmentId": "eni-attach-" + nic.interface_id[4:],
            "DeviceIndex": 0,
            "NetworkCardIndex": 0,
            "Status": "attached",
            "DeleteOnTermination": True,
            "AttachTime": nic.created,
        },
        "PrivateIpAddresses": [
            {"Primary": True, "PrivateIpAddress": nic.private_ip, "PrivateDnsName": "", "Association": association}
        ],
        "Ipv6Addresses": [],
        "Association": association,
    }
    return {k: v for k, v in item.items() if v is not None}


def instances(ctx: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add Tags, SecurityGroups, the network interface and the public and private addresses to EC2-shaped
    instance items (in place)."""
    ids = [item["InstanceId"] for item in items]
    tags, groups, public = tags_of(ctx, ids), groups_of(ctx, ids), public_ips_of(ctx, ids)
    private, nics = private_ips_of(ctx, ids), interfaces_of(ctx, ids)
    owners = {u.name: u.user_id for u in ctx.clc.users.list()} if nics else {}
    for item in items:
        instance_id = item["InstanceId"]
        if tags.get(instance_id):
            item["Tags"] = tags[instance_id]
        item["SecurityGroups"] = groups.get(instance_id, [])
        if instance_id in public:
            item["PublicIpAddress"] = public[instance_id]
        if instance_id in private:
            item["PrivateIpAddress"] = private[instance_id]
        nic = nics.get(instance_id)
        if nic is not None:
            item["VpcId"], item["SubnetId"], item["PrivateIpAddress"] = nic.vpc_id, nic.subnet_id, nic.private_ip
            item["SourceDestCheck"] = True
            owner = owners.get(nic.owner, "")
            item["NetworkInterfaces"] = [
                interface_item(ctx, nic, owner, item["SecurityGroups"], public.get(instance_id))
            ]
    return items


def images(ctx: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tags = tags_of(ctx, [item["ImageId"] for item in items])
    for item in items:
        if tags.get(item["ImageId"]):
            item["Tags"] = tags[item["ImageId"]]
    return items
