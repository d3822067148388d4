"""VPC actions: VPCs, subnets, internet gateways, route tables and network interfaces, as EC2 shows them.

The rules (ranges, dependencies, the default VPC, zones) are the domain's (:mod:`cloudlab.clc.vpcs`,
:mod:`cloudlab.clc.gateways`); here records become EC2's shapes, with tags, filters and paging.
"""

from __future__ import annotations

from typing import Any

from cloudlab.api import enrich, filters
from cloudlab.api.actions import Context, action, owner_ids
from cloudlab.api.errors import ApiError
from cloudlab.clc.gateways import Gateways, InternetGateway, RouteTable
from cloudlab.clc.interfaces import NetworkInterfaces
from cloudlab.clc.regions import zone_id
from cloudlab.clc.vpcs import Subnet, Vpc, Vpcs


def _with_tags(ctx: Context, items: list[dict[str, Any]], id_member: str, tags_member: str = "Tags") -> None:
    tags = enrich.tags_of(ctx, [i[id_member] for i in items])
    for item in items:
        item[tags_member] = tags.get(item[id_member]) or None


def _page(ctx: Context, req: dict[str, Any], items: list[dict[str, Any]], getters: Any, name: str) -> Any:
    items = filters.apply_filters(items, req.get("Filters"), getters, name)
    return filters.paginate(items, req.get("MaxResults"), req.get("NextToken"))


# -- VPCs ------------------------------------------------------------------------------------------------------
def vpc_item(vpc: Vpc, owners: dict[str, str]) -> dict[str, Any]:
    return {
        "VpcId": vpc.vpc_id,
        "CidrBlock": vpc.cidr,
        "State": "available",
        "DhcpOptionsId": "default",
        "InstanceTenancy": "default",
        "IsDefault": vpc.is_default,
        "OwnerId": owners.get(vpc.owner, ""),
        "CidrBlockAssociationSet": [
            {"AssociationId": vpc.cidr_association_id, "CidrBlock": vpc.cidr, "CidrBlockState": {"State": "associated"}}
        ],
    }


VPC_FILTERS: dict[str, filters.Getter] = {
    "vpc-id": lambda v: v["VpcId"],
    "cidr": lambda v: v["CidrBlock"],
    "cidr-block-association.cidr-block": lambda v: [a["CidrBlock"] for a in v["CidrBlockAssociationSet"]],
    "is-default": lambda v: v["IsDefault"],
    "owner-id": lambda v: v["OwnerId"],
    "state": lambda v: v["State"],
    "dhcp-options-id": lambda v: v["DhcpOptionsId"],
}


@action("CreateVpc")
def create_vpc(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    if req.get("Ipv6CidrBlock") or req.get("AmazonProvidedIpv6CidrBlock") or req.get("Ipv6Pool"):
        raise ApiError("InvalidParameterValue", "cloudlab VPCs are IPv4 only: leave out the IPv6 parameters")
    if not req.get("CidrBlock"):
        raise ApiError("MissingParameter", "The request must contain the parameter CidrBlock")
    vpc = ctx.clc.service(Vpcs).create_vpc(ctx.user, req["CidrBlock"], req.get("TagSpecifications"))
    item = vpc_item(vpc, owner_ids(ctx))
    _with_tags(ctx, [item], "VpcId")
    return {"Vpc": item}


@action("CreateDefaultVpc")
def create_default_vpc(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    vpc = ctx.clc.service(Vpcs).create_default_vpc(ctx.user)
    return {"Vpc": vpc_item(vpc, owner_ids(ctx))}


@action("DescribeVpcs")
def describe_vpcs(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    owners = owner_ids(ctx)
    items = [vpc_item(v, owners) for v in ctx.clc.service(Vpcs).describe_vpcs(ctx.user, req.get("VpcIds"))]
    _with_tags(ctx, items, "VpcId")
    page, token = _page(ctx, req, items, VPC_FILTERS, "DescribeVpcs")
    return {"Vpcs": page, "NextToken": token}


@action("DeleteVpc")
def delete_vpc(ctx: Context, req: dict[str, Any]) -> None:
    ctx.clc.service(Vpcs).delete_vpc(ctx.user, req["VpcId"])
    return None


_VPC_ATTRIBUTES = {"enableDnsSupport": "EnableDnsSupport", "enableDnsHostnames": "EnableDnsHostnames"}


@action("DescribeVpcAttribute")
def describe_vpc_attribute(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    vpc = ctx.clc.service(Vpcs).get_vpc(ctx.user, req["VpcId"])
    attribute = req["Attribute"]
    values = {
        "enableDnsSupport": vpc.dns_support,
        "enableDnsHostnames": vpc.dns_hostnames,
        "enableNetworkAddressUsageMetrics": False,
    }
    if attribute not in values:
        raise ApiError(
            "InvalidParameterValue",
            f"Value ({attribute[:80]}) for parameter attribute is invalid: use " + ", ".join(values),
        )
    member = _VPC_ATTRIBUTES.get(attribute, "EnableNetworkAddressUsageMetrics")
    return {"VpcId": vpc.vpc_id, member: {"Value": values[attribute]}}


@action("ModifyVpcAttribute")
def modify_vpc_attribute(ctx: Context, req: dict[str, Any]) -> None:
    given = [(name, req[member]["Value"]) for name, member in _VPC_ATTRIBUTES.items() if req.get(member)]
    if len(given) != 1 or not isinstance(given[0][1], bool):
        raise ApiError(
            "InvalidParameterCombination", "Give exactly one attribute: EnableDnsSupport or EnableDnsHostnames"
        )
    ctx.clc.service(Vpcs).set_attribute(ctx.user, req["VpcId"], given[0][0], given[0][1])
    return None


# -- subnets ---------------------------------------------------------------------------------------------------
def subnet_item(ctx: Context, subnet: Subnet, owners: dict[str, str], used: int) -> dict[str, Any]:
    return {
        "SubnetId": subnet.subnet_id,
        "SubnetArn": f"arn:aws:ec2:{ctx.clc.region}:{owners.get(subnet.owner, '')}:subnet/{subnet.subnet_id}",
        "VpcId": subnet.vpc_id,
        "CidrBlock": subnet.cidr,
        "State": "available",
        "AvailabilityZone": subnet.zone,
        "AvailabilityZoneId": zone_id(ctx.clc.region, subnet.zone),
        "AvailableIpAddressCount": subnet.size - used,
        "DefaultForAz": subnet.is_default,
        "MapPublicIpOnLaunch": subnet.map_public_ip,
        "MapCustomerOwnedIpOnLaunch": False,
        "AssignIpv6AddressOnCreation": False,
        "Ipv6Native": False,
        "EnableDns64": False,
        "OwnerId": owners.get(subnet.owner, ""),
        "Ipv6CidrBlockAssociationSet": [],
    }


SUBNET_FILTERS: dict[str, filters.Getter] = {
    "subnet-id": lambda s: s["SubnetId"],
    "vpc-id": lambda s: s["VpcId"],
    "cidr-block": lambda s: s["CidrBlock"],
    "cidr": lambda s: s["CidrBlock"],
    "cidrBlock": lambda s: s["CidrBlock"],
    "availability-zone": lambda s: s["AvailabilityZone"],
    "availabilityZone": lambda s: s["AvailabilityZone"],
    "availability-zone-id": lambda s: s["AvailabilityZoneId"],
    "default-for-az": lambda s: s["DefaultForAz"],
    "defaultForAz": lambda s: s["DefaultForAz"],
    "map-public-ip-on-launch": lambda s: s["MapPublicIpOnLaunch"],
    "available-ip-address-count": lambda s: s["AvailableIpAddressCount"],
    "owner-id": lambda s: s["OwnerId"],
    "state": lambda s: s["State"],
    "subnet-arn": lambda s: s["SubnetArn"],
}


def _subnet_items(ctx: Context, subnets: list[Subnet]) -> list[dict[str, Any]]:
    owners = owner_ids(ctx)
    used = ctx.clc.service(Vpcs).used_addresses([s.subnet_id for s in subnets])
    items = [subnet_item(ctx, s, owners, used.get(s.subnet_id, 0)) for s in subnets]
    _with_tags(ctx, items, "SubnetId")
    return items


def _zone_of(ctx: Context, req: dict[str, Any]) -> str | None:
    if req.get("AvailabilityZone"):
        return req["AvailabilityZone"]
    if req.get("AvailabilityZoneId"):
        by_id = {zone_id(ctx.clc.region, z): z for z in ctx.clc.service(Vpcs).zones()}
        if req["AvailabilityZoneId"] not in by_id:
            raise ApiError(
                "InvalidParameterValue",
                f"Value ({req['AvailabilityZoneId'][:80]}) for parameter availabilityZoneId is invalid: zones are "
                + ", ".join(sorted(by_id)),
            )
        return by_id[req["AvailabilityZoneId"]]
    return None


@action("CreateSubnet")
def create_subnet(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    if req.get("Ipv6CidrBlock") or req.get("Ipv6Native"):
        raise ApiError("InvalidParameterValue", "cloudlab subnets are IPv4 only: leave out the IPv6 parameters")
    if not req.get("CidrBlock"):
        raise ApiError("MissingParameter", "The request must contain the parameter CidrBlock")
    subnet = ctx.clc.service(Vpcs).create_subnet(
        ctx.user, req["VpcId"], req["CidrBlock"], _zone_of(ctx, req), req.get("TagSpecifications")
    )
    return {"Subnet": _subnet_items(ctx, [subnet])[0]}


@action("DescribeSubnets")
def describe_subnets(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    items = _subnet_items(ctx, ctx.clc.service(Vpcs).describe_subnets(ctx.user, req.get("SubnetIds")))
    page, token = _page(ctx, req, items, SUBNET_FILTERS, "DescribeSubnets")
    return {"Subnets": page, "NextToken": token}


@action("DeleteSubnet")
def delete_subnet(ctx: Context, req: dict[str, Any]) -> None:
    ctx.clc.service(Vpcs).delete_subnet(ctx.user, req["SubnetId"])
    return None


@action("ModifySubnetAttribute")
def modify_subnet_attribute(ctx: Context, req: dict[str, Any]) -> None:
    others = [
        m
        for m in ("AssignIpv6AddressOnCreation", "MapCustomerOwnedIpOnLaunch", "EnableDns64")
        if (req.get(m) or {}).get("Value")
    ]
    if others:
        raise ApiError("InvalidParameterValue", f"cloudlab subnets do not support {others[0]}")
    value = (req.get("MapPublicIpOnLaunch") or {}).get("Value")
    if value is None:
        raise ApiError("MissingParameter", "The request must contain the parameter MapPublicIpOnLaunch")
    ctx.clc.service(Vpcs).set_map_public_ip(ctx.user, req["SubnetId"], bool(value))
    return None


# -- internet gateways ------------------------------------------------------------------------------------------
def gateway_item(gateway: InternetGateway, owners: dict[str, str]) -> dict[str, Any]:
    attachments = [{"VpcId": gateway.vpc_id, "State": "available"}] if gateway.vpc_id else []
    return {
        "InternetGatewayId": gateway.gateway_id,
        "OwnerId": owners.get(gateway.owner, ""),
        "Attachments": attachments,
    }


GATEWAY_FILTERS: dict[str, filters.Getter] = {
    "internet-gateway-id": lambda g: g["InternetGatewayId"],
    "attachment.vpc-id": lambda g: [a["VpcId"] for a in g["Attachments"]],
    "attachment.state": lambda g: [a["State"] for a in g["Attachments"]],
    "owner-id": lambda g: g["OwnerId"],
}


@action("CreateInternetGateway")
def create_internet_gateway(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    gateway = ctx.clc.service(Gateways).create(ctx.user, req.get("TagSpecifications"))
    item = gateway_item(gateway, owner_ids(ctx))
    _with_tags(ctx, [item], "InternetGatewayId")
    return {"InternetGateway": item}


@action("DescribeInternetGateways")
def describe_internet_gateways(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    owners = owner_ids(ctx)
    gateways = ctx.clc.service(Gateways).describe(ctx.user, req.get("InternetGatewayIds"))
    items = [gateway_item(g, owners) for g in gateways]
    _with_tags(ctx, items, "InternetGatewayId")
    page, token = _page(ctx, req, items, GATEWAY_FILTERS, "DescribeInternetGateways")
    return {"InternetGateways": page, "NextToken": token}


@action("AttachInternetGateway")
def attach_internet_gateway(ctx: Context, req: dict[str, Any]) -> None:
    ctx.clc.service(Gateways).attach(ctx.user, req["InternetGatewayId"], req["VpcId"])
    return None


@action("DetachInternetGateway")
def detach_internet_gateway(ctx: Context, req: dict[str, Any]) -> None:
    ctx.clc.service(Gateways).detach(ctx.user, req["InternetGatewayId"], req["VpcId"])
    return None


@action("DeleteInternetGateway")
def delete_internet_gateway(ctx: Context, req: dict[str, Any]) -> None:
    ctx.clc.service(Gateways).delete(ctx.user, req["InternetGatewayId"])
    return None


# -- route tables ----------------------------------------------------------------------------------------------
def route_table_item(table: RouteTable, owners: dict[str, str]) -> dict[str, Any]:
    routes = [
        {"DestinationCidrBlock": table.vpc.cidr, "GatewayId": "local", "State": "active", "Origin": "CreateRouteTable"}
    ]
    if table.gateway_id:
        routes.append(
            {
                "DestinationCidrBlock": "0.0.0.0/0",
                "GatewayId": table.gateway_id,
                "State": "active",
                "Origin": "CreateRoute",
            }
        )
    return {
        "RouteTableId": table.route_table_id,
        "VpcId": table.vpc.vpc_id,
        "OwnerId": owners.get(table.vpc.owner, ""),
        "Routes": routes,
        "Associations": [
            {
                "Main": True,
                "RouteTableAssociationId": table.vpc.main_association_id,
                "RouteTableId": table.route_table_id,
                "AssociationState": {"State": "associated"},
            }
        ],
        "PropagatingVgws": [],
    }


ROUTE_TABLE_FILTERS: dict[str, filters.Getter] = {
    "route-table-id": lambda t: t["RouteTableId"],
    "vpc-id": lambda t: t["VpcId"],
    "owner-id": lambda t: t["OwnerId"],
    "association.main": lambda t: [a["Main"] for a in t["Associations"]],
    "association.route-table-association-id": lambda t: [a["RouteTableAssociationId"] for a in t["Associations"]],
    "route.destination-cidr-block": lambda t: [r["DestinationCidrBlock"] for r in t["Routes"]],
    "route.gateway-id": lambda t: [r["GatewayId"] for r in t["Routes"]],
    "route.state": lambda t: [r["State"] for r in t["Routes"]],
    "route.origin": lambda t: [r["Origin"] for r in t["Routes"]],
}


@action("DescribeRouteTables")
def describe_route_tables(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    owners = owner_ids(ctx)
    tables = ctx.clc.service(Gateways).route_tables(ctx.user, req.get("RouteTableIds"))
    items = [route_table_item(t, owners) for t in tables]
    _with_tags(ctx, items, "RouteTableId")
    page, token = _page(ctx, req, items, ROUTE_TABLE_FILTERS, "DescribeRouteTables")
    return {"RouteTables": page, "NextToken": token}


# -- network interfaces -----------------------------------------------------------------------------------------
NETWORK_INTERFACE_FILTERS: dict[str, filters.Getter] = {
    "network-interface-id": lambda n: n["NetworkInterfaceId"],
    "subnet-id": lambda n: n["SubnetId"],
    "vpc-id": lambda n: n["VpcId"],
    "availability-zone": lambda n: n["AvailabilityZone"],
    "private-ip-address": lambda n: n["PrivateIpAddress"],
    "addresses.private-ip-address": lambda n: [a["PrivateIpAddress"] for a in n["PrivateIpAddresses"]],
    "mac-address": lambda n: n["MacAddress"],
    "owner-id": lambda n: n["OwnerId"],
    "status": lambda n: n["Status"],
    "attachment.instance-id": lambda n: n["Attachment"]["InstanceId"],
    "attachment.status": lambda n: n["Attachment"]["Status"],
    "group-id": lambda n: [g["GroupId"] for g in n["Groups"]],
    "group-name": lambda n: [g["GroupName"] for g in n["Groups"]],
}


@action("DescribeNetworkInterfaces")
def describe_network_interfaces(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    nics = ctx.clc.service(NetworkInterfaces).describe(ctx.user, req.get("NetworkInterfaceIds"))
    owners = owner_ids(ctx)
    ids = [n.instance_id for n in nics]
    groups, public = enrich.groups_of(ctx, ids), enrich.public_ips_of(ctx, ids)
    items = []
    for nic in nics:
        item = enrich.interface_item(ctx, nic, owners.get(nic.owner, ""), groups.get(nic.instance_id, []), None)
        item["Attachment"] |= {"InstanceId": nic.instance_id, "InstanceOwnerId": owners.get(nic.owner, "")}
        item["AvailabilityZone"] = nic.zone
        item["RequesterManaged"] = False
        if nic.instance_id in public:
            item["Association"] = {"PublicIp": public[nic.instance_id], "IpOwnerId": owners.get(nic.owner, "")}
        items.append(item)
    _with_tags(ctx, items, "NetworkInterfaceId", "TagSet")
    page, token = _page(ctx, req, items, NETWORK_INTERFACE_FILTERS, "DescribeNetworkInterfaces")
    return {"NetworkInterfaces": page, "NextToken": token}
