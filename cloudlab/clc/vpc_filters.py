"""VPC instances' security groups as the cluster enforces them: one filter per instance port, in the network plan.

In the vpc network model a security group filters each instance's own port (see
:mod:`cloudlab.net.instance_filters`), not a segment as in managed mode. The CLC resolves everything the
port needs from its records, so the CC needs none: the instance's segment and private address, the union of
its groups' ingress and egress rules, and every rule whose peer is a group turned into the private addresses
of that group's live members in the instance's VPC (EC2's group references work within a VPC). A changed
rule, a new member of a referenced group or a terminated one changes the plan, which the CLC's network sync
sends within :data:`cloudlab.clc.network.NETWORK_SYNC_S`.

A filter belongs to the cluster where the instance runs (where its port is), also in a VDE fabric whose
routers are elsewhere.
"""

from __future__ import annotations

from typing import Any

from cloudlab.clc.group_rules import Rule
from cloudlab.clc.groups import SecurityGroups
from cloudlab.clc.vpc_network import VpcNetworks
from cloudlab.contract import FIRST_SUBNET_VLAN, FilterRule, InstanceFilter

#: Instance states whose port may exist (a stopped instance's filter is harmless and ready for its start).
_LIVE = ("pending", "running", "stopping", "stopped", "shutting-down")


def _filter_rules(rules: list[Rule], vpc_id: str, members: dict[str, list[str]], ips: dict[tuple[str, str], str]):
    found: dict[FilterRule, None] = {}
    for rule in rules:
        if rule.source_group_id is not None:
            peers = sorted(
                {f"{ips[(vpc_id, m)]}/32" for m in members.get(rule.source_group_id, []) if (vpc_id, m) in ips}
            )
        else:
            peers = [rule.cidr] if rule.cidr else []
        found[FilterRule(rule.protocol, rule.from_port, rule.to_port, tuple(peers))] = None
    return tuple(found)


def instance_filters(clc: Any, cluster: str) -> tuple[InstanceFilter, ...]:
    """The filter of every live VPC instance port in ``cluster`` (for its network plan), by instance id."""
    home = clc.service(VpcNetworks).home(cluster)
    marks = ",".join("?" * len(_LIVE))
    ports = clc.store.query(
        "SELECT n.instance_id, n.private_ip, n.vpc_id, g.slot FROM network_interfaces n"
        " JOIN instances i ON i.instance_id = n.instance_id"
        " JOIN subnet_segments g ON g.subnet_id = n.subnet_id AND g.cluster = ?"
        f" WHERE i.cluster = ? AND i.state IN ({marks}) ORDER BY n.instance_id, n.interface_id",
        (home, cluster, *_LIVE),
    )
    if not ports:
        return ()
    groups = clc.service(SecurityGroups)
    group_ids = groups.groups_of([p["instance_id"] for p in ports])
    every = list(dict.fromkeys(g["GroupId"] for gs in group_ids.values() for g in gs))
    ingress = groups.rules_for(every)
    egress = groups.rules_for(every, egress=True)
    referenced = {r.source_group_id for r in ingress + egress if r.source_group_id is not None}
    members = groups.members(sorted(referenced))
    member_ids = sorted({m for ms in members.values() for m in ms})
    ips: dict[tuple[str, str], str] = {}
    if member_ids:
        rows = clc.store.query(
            "SELECT instance_id, vpc_id, private_ip FROM network_interfaces"
            f" WHERE instance_id IN ({','.join('?' * len(member_ids))}) ORDER BY interface_id DESC",
            member_ids,
        )
        ips = {(r["vpc_id"], r["instance_id"]): r["private_ip"] for r in rows}  # (the first NIC wins)
    filters = []
    for port in ports:
        mine = {g["GroupId"] for g in group_ids.get(port["instance_id"], [])}
        filters.append(
            InstanceFilter(
                port["instance_id"],
                FIRST_SUBNET_VLAN + port["slot"],
                port["private_ip"],
                _filter_rules([r for r in ingress if r.group_id in mine], port["vpc_id"], members, ips),
                _filter_rules([r for r in egress if r.group_id in mine], port["vpc_id"], members, ips),
            )
        )
    return tuple(filters)
