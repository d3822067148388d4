"""Security group actions: create, delete, describe, and authorize/revoke ingress and egress rules.

Authorize and Revoke take EC2's ``IpPermissions`` or the older flat form (``IpProtocol``,
``FromPort``, ``ToPort``, ``CidrIp``, ``SourceSecurityGroupName``/``SourceSecurityGroupOwnerId`` at
the top level); the flat form is turned into ``IpPermissions`` here, the rules' meaning is the
domain's (:mod:`cloudlab.clc.groups`).
"""

from __future__ import annotations

from typing import Any

from cloudlab.api import enrich, filters
from cloudlab.api.actions import Context, action, owner_ids
from cloudlab.api.errors import ApiError, missing_parameter, quote_value
from cloudlab.clc.groups import Group, Rule, SecurityGroups


def _all(permissions: list[dict[str, Any]], get: Any) -> list[Any]:
    return [v for p in permissions for v in get(p) if v is not None]


GROUP_FILTERS: dict[str, filters.Getter] = {
    "group-id": lambda g: g["GroupId"],
    "group-name": lambda g: g["GroupName"],
    "description": lambda g: g["Description"],
    "owner-id": lambda g: g["OwnerId"],
    "vpc-id": lambda g: g.get("VpcId"),
    "ip-permission.protocol": lambda g: _all(g["IpPermissions"], lambda p: [p["IpProtocol"]]),
    "ip-permission.from-port": lambda g: _all(g["IpPermissions"], lambda p: [p.get("FromPort")]),
    "ip-permission.to-port": lambda g: _all(g["IpPermissions"], lambda p: [p.get("ToPort")]),
    "ip-permission.cidr": lambda g: _all(g["IpPermissions"], lambda p: [r["CidrIp"] for r in p["IpRanges"]]),
    "ip-permission.group-id": lambda g: _all(
        g["IpPermissions"], lambda p: [u["GroupId"] for u in p["UserIdGroupPairs"]]
    ),
    "ip-permission.group-name": lambda g: _all(
        g["IpPermissions"], lambda p: [u.get("GroupName") for u in p["UserIdGroupPairs"]]
    ),
    "egress.ip-permission.protocol": lambda g: _all(g["IpPermissionsEgress"], lambda p: [p["IpProtocol"]]),
    "egress.ip-permission.from-port": lambda g: _all(g["IpPermissionsEgress"], lambda p: [p.get("FromPort")]),
    "egress.ip-permission.to-port": lambda g: _all(g["IpPermissionsEgress"], lambda p: [p.get("ToPort")]),
    "egress.ip-permission.cidr": lambda g: _all(
        g["IpPermissionsEgress"], lambda p: [r["CidrIp"] for r in p["IpRanges"]]
    ),
    "egress.ip-permission.group-id": lambda g: _all(
        g["IpPermissionsEgress"], lambda p: [u["GroupId"] for u in p["UserIdGroupPairs"]]
    ),
}


def _permissions(rules: tuple[Rule, ...], owners: dict[str, str], names: dict[str, str]) -> list[dict[str, Any]]:
    """Rules grouped as EC2 shows them: one IpPermission per (protocol, ports), with its sources."""
    grouped: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rule in rules:
        permission = grouped.get((rule.protocol, rule.from_port, rule.to_port))
        if permission is None:
            permission = grouped[(rule.protocol, rule.from_port, rule.to_port)] = {
                "IpProtocol": rule.protocol,
                "FromPort": rule.from_port,
                "ToPort": rule.to_port,
                "IpRanges": [],
                "UserIdGroupPairs": [],
                "Ipv6Ranges": [],
                "PrefixListIds": [],
            }
            if rule.from_port is None:
                del permission["FromPort"], permission["ToPort"]
        if rule.cidr is not None:
            permission["IpRanges"].append(_pruned({"CidrIp": rule.cidr, "Description": rule.description}))
        else:
            permission["UserIdGroupPairs"].append(
                _pruned(
                    {
                        "GroupId": rule.source_group_id,
                        "GroupName": names.get(rule.source_group_id or ""),
                        "UserId": owners.get(rule.source_owner or ""),
                        "Description": rule.description,
                    }
                )
            )
    return list(grouped.values())


def _pruned(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v is not None}


def _group(group: Group, owners: dict[str, str], names: dict[str, str]) -> dict[str, Any]:
    return {
        "GroupId": group.group_id,
        "GroupName": group.name,
        "Description": group.description,
        "OwnerId": owners.get(group.owner, ""),
        "VpcId": group.vpc_id,
        "IpPermissions": _permissions(group.rules, owners, names),
        "IpPermissionsEgress": _permissions(group.egress, owners, names),
    }


def _target(req: dict[str, Any]) -> str:
    if req.get("GroupId"):
        if not req["GroupId"].startswith("sg-"):  # the domain reads a reference without sg- as a name
            raise ApiError("InvalidGroupId.Malformed", f'Invalid id: "{quote_value(req["GroupId"])}"')
        return req["GroupId"]
    if req.get("GroupName"):
        return req["GroupName"]
    raise ApiError("MissingParameter", "The request must contain the parameter GroupName or GroupId")


_FLAT = ("IpProtocol", "FromPort", "ToPort", "CidrIp", "SourceSecurityGroupName", "SourceSecurityGroupOwnerId")


def _ip_permissions(req: dict[str, Any], *, required: bool = True) -> list[dict[str, Any]]:
    """``IpPermissions``, or the same built from the flat parameters."""
    flat = {name: req[name] for name in _FLAT if req.get(name) is not None}
    if not flat:
        permissions = req.get("IpPermissions") or []
        if not permissions and required:
            raise missing_parameter("IpPermissions")
        return permissions
    if req.get("IpPermissions"):
        raise ApiError(
            "InvalidParameterCombination",
            "The parameter IpPermissions cannot be used with IpProtocol, FromPort, ToPort, CidrIp"
            " or SourceSecurityGroupName",
        )
    source = flat.get("SourceSecurityGroupName")
    if source is None and flat.get("SourceSecurityGroupOwnerId"):
        raise missing_parameter("SourceSecurityGroupName")
    if source is not None:
        pair = _pruned({"GroupName": source, "UserId": flat.get("SourceSecurityGroupOwnerId")})
        if "IpProtocol" not in flat:  # EC2-Classic: a source group alone opens tcp, udp and icmp
            return [
                {"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535, "UserIdGroupPairs": [pair]},
                {"IpProtocol": "udp", "FromPort": 0, "ToPort": 65535, "UserIdGroupPairs": [pair]},
                {"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "UserIdGroupPairs": [pair]},
            ]
        sources: dict[str, Any] = {"UserIdGroupPairs": [pair]}
    else:
        if "CidrIp" not in flat:
            raise missing_parameter("CidrIp")
        sources = {"IpRanges": [{"CidrIp": flat["CidrIp"]}]}
    if "IpProtocol" not in flat:
        raise missing_parameter("IpProtocol")
    return [
        {"IpProtocol": flat["IpProtocol"], "FromPort": flat.get("FromPort"), "ToPort": flat.get("ToPort"), **sources}
    ]


def _rule_items(rules: list[Rule], owners: dict[str, str], owner: str) -> list[dict[str, Any]]:
    return [
        _pruned(
            {
                "SecurityGroupRuleId": rule.rule_id,
                "GroupId": rule.group_id,
                "GroupOwnerId": owners.get(owner),
                "IsEgress": rule.egress,
                "IpProtocol": rule.protocol,
                "FromPort": rule.from_port if rule.from_port is not None else -1,
                "ToPort": rule.to_port if rule.to_port is not None else -1,
                "CidrIpv4": rule.cidr,
                "ReferencedGroupInfo": _pruned(
                    {"GroupId": rule.source_group_id, "UserId": owners.get(rule.source_owner or "")}
                )
                if rule.source_group_id
                else None,
                "Description": rule.description,
            }
        )
        for rule in rules
    ]


@action("CreateSecurityGroup")
def create_security_group(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    group_id = ctx.clc.service(SecurityGroups).create(
        ctx.user,
        req["GroupName"],
        req["Description"],
        tag_specifications=req.get("TagSpecifications"),
        vpc_id=req.get("VpcId"),
    )
    return {"GroupId": group_id}


@action("DeleteSecurityGroup")
def delete_security_group(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    group_id = ctx.clc.service(SecurityGroups).delete(ctx.user, group_id=req.get("GroupId"), name=req.get("GroupName"))
    return {"Return": True, "GroupId": group_id}


@action("DescribeSecurityGroups")
def describe_security_groups(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    groups = ctx.clc.service(SecurityGroups).describe(ctx.user, req.get("GroupIds"), req.get("GroupNames"))
    owners = owner_ids(ctx)
    names = {g.group_id: g.name for g in groups}
    items = [_group(g, owners, names) for g in groups]
    tags = enrich.tags_of(ctx, [i["GroupId"] for i in items])
    for item in items:
        item["Tags"] = tags.get(item["GroupId"]) or None
    items = filters.apply_filters(items, req.get("Filters"), GROUP_FILTERS, "DescribeSecurityGroups")
    page, token = filters.paginate(items, req.get("MaxResults"), req.get("NextToken"))
    return {"SecurityGroups": page, "NextToken": token}


@action("AuthorizeSecurityGroupIngress")
def authorize_security_group_ingress(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    service = ctx.clc.service(SecurityGroups)
    rules = service.authorize_ingress(ctx.user, _target(req), _ip_permissions(req))
    owner = service.owner_of(rules[0].group_id) if rules else None
    return {"Return": True, "SecurityGroupRules": _rule_items(rules, owner_ids(ctx), owner or ctx.user.name)}


@action("RevokeSecurityGroupIngress")
def revoke_security_group_ingress(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    rule_ids = req.get("SecurityGroupRuleIds") or []
    ctx.clc.service(SecurityGroups).revoke_ingress(
        ctx.user, _target(req), _ip_permissions(req, required=not rule_ids), rule_ids
    )
    return {"Return": True}


@action("AuthorizeSecurityGroupEgress")
def authorize_security_group_egress(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    service = ctx.clc.service(SecurityGroups)
    rules = service.authorize(ctx.user, _target(req), _ip_permissions(req), egress=True)
    owner = service.owner_of(rules[0].group_id) if rules else None
    return {"Return": True, "SecurityGroupRules": _rule_items(rules, owner_ids(ctx), owner or ctx.user.name)}


@action("RevokeSecurityGroupEgress")
def revoke_security_group_egress(ctx: Context, req: dict[str, Any]) -> dict[str, Any]:
    rule_ids = req.get("SecurityGroupRuleIds") or []
    ctx.clc.service(SecurityGroups).revoke(
        ctx.user, _target(req), _ip_permissions(req, required=not rule_ids), rule_ids, egress=True
    )
    return {"Return": True}
