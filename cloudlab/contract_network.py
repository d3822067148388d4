"""The network part of the controllers' contract: the plan the CLC sends each cluster's network, its pieces.

A cluster's router and hosts are made from the plan alone (applying it twice changes nothing); its actions are
named with all the others in ``cloudlab.contract``, which re-exports every class here. Kept apart, as
:mod:`cloudlab.contract_storage` is, so that the contract stays under the house's 600 lines.
"""

from __future__ import annotations

from dataclasses import dataclass


# -- the network plan ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupSegment:
    """One security group's VLAN and subnet in one cluster."""

    group_id: str
    vlan: int
    subnet: str
    gateway: str


@dataclass(frozen=True)
class IngressRule:
    """One ingress permission of a group (EC2 semantics; for icmp the ports are type and code, -1 = any)."""

    group_id: str
    protocol: str
    from_port: int | None
    to_port: int | None
    cidr: str | None
    source_group_id: str | None


@dataclass(frozen=True)
class ElasticNat:
    """A public address translated 1:1 to an instance's private address."""

    public_ip: str
    private_ip: str


@dataclass(frozen=True)
class SubnetSegment:
    """One VPC subnet's layer-2 segment in one cluster: its VLAN (or bridge), range and router address."""

    subnet_id: str
    vlan: int
    cidr: str
    gateway: str


@dataclass(frozen=True)
class VpcRouter:
    """One VPC's router in one cluster (a namespace of its own, so that VPCs' ranges may overlap).

    ``home`` empty: the router is in the cluster the plan is for. Else the cluster holding it, when the
    cluster networks are joined into one fabric (VDE, several clusters): the plan's cluster only carries the
    subnets' VLANs, over its cable to ``home`` (see :mod:`cloudlab.cc.fabric`).
    """

    vpc_id: str
    slot: int
    subnets: tuple[SubnetSegment, ...] = ()
    home: str = ""
    #: An internet gateway is attached: the router translates ``nats`` (elastic and auto-assigned public
    #: addresses) 1:1 to the cluster's public side, and lets only those instances out. Without one: nothing
    #: crosses its uplink.
    internet: bool = False
    nats: tuple[ElasticNat, ...] = ()


@dataclass(frozen=True)
class FilterRule:
    """One flow an instance's security groups allow: ``protocol`` (tcp, udp, icmp or -1) on ports
    ``from_port``-``to_port`` (icmp: type and code, -1 = any), from (ingress) or to (egress) ``cidrs``, group
    references already resolved to their members' addresses by the CLC (so the CC needs no records)."""

    protocol: str
    from_port: int | None
    to_port: int | None
    cidrs: tuple[str, ...]


@dataclass(frozen=True)
class InstanceFilter:
    """A VPC instance's security groups as one stateful filter on its port (see :mod:`cloudlab.net.instance_filters`).

    ``vlan``: its subnet's segment; ``private_ip``: its address there (unique on the segment, VPC ranges may
    overlap elsewhere); ``ingress``/``egress``: the union of its groups' rules.
    """

    instance_id: str
    vlan: int
    private_ip: str
    ingress: tuple[FilterRule, ...] = ()
    egress: tuple[FilterRule, ...] = ()


@dataclass(frozen=True)
class PortFilters:
    """Every VPC instance filter of a cluster, sent by the CC to each node on vde, where an instance's port is a
    bridge only its NC knows (``vb<port>``, :mod:`cloudlab.nc.vde_nics`): a node applies those of its instances."""

    filters: tuple[InstanceFilter, ...] = ()


@dataclass(frozen=True)
class NetworkPlan:
    """Everything a cluster's router needs, derived from the CLC's records alone (applying it twice changes nothing).

    ``groups``/``rules``/``nats``: Eucalyptus' managed mode (a VLAN per security group); ``vpcs``: the VPC
    subnets of a cluster whose network plumbs VPCs, ``filters`` its instances' security groups.
    """

    cluster: str
    groups: tuple[GroupSegment, ...] = ()
    rules: tuple[IngressRule, ...] = ()
    nats: tuple[ElasticNat, ...] = ()
    vpcs: tuple[VpcRouter, ...] = ()
    filters: tuple[InstanceFilter, ...] = ()  # VPC instances' security groups (network model vpc)


@dataclass(frozen=True)
class NetworkApplied:
    applied: bool
