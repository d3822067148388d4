"""VPC routers: one network namespace per VPC in a cluster, holding its subnets' gateways.

A VPC's subnets are segments of the cluster network like managed mode's group segments (a bridge on
direct, a VLAN on vde; see :meth:`cloudlab.cc.network.ClusterNetwork.add_segment`), but their gateways
live in the VPC's own namespace ``<prefix>-v<slot>`` rather than in the shared outside namespace: two
VPCs never share a routing table, so their ranges may overlap, and no route leads from one to the
other. The router forwards between its VPC's subnets and answers the metadata address
(169.254.169.254, on its ``lo``); the service listening there is started by whoever set
``on_router`` (the cloud service, which knows the instances). Everything is made from the plan, and
applying a plan twice changes nothing.

In a VDE fabric of several clusters (:mod:`cloudlab.cc.fabric`), a VPC has one router, on its home
cluster; the plan of every other cluster names that home (``VpcRouter.home``), and there this class only
makes the subnets' VLANs, which the cable to the home carries to the router.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from cloudlab.contract import FIRST_SUBNET_VLAN, VpcRouter
from cloudlab.net import links, netns

log = logging.getLogger(__name__)

METADATA_ADDRESS = "169.254.169.254"


class VpcRouters:
    """The VPC routers of one cluster network (its ``vpc_routers``)."""

    def __init__(self, network: Any) -> None:
        self.network = network  # the cloudlab.cc.network.ClusterNetwork these routers belong to
        self.namespaces: dict[str, str] = {}  # vpc id -> router namespace
        self.on_router: Callable[[str, str], None] | None = None  # (vpc id, namespace): a router was made

    def namespace(self, slot: int) -> str:
        return f"{self.network.prefix}-v{slot}"

    def apply(self, routers: tuple[VpcRouter, ...]) -> None:
        """Make a router for every VPC of the plan and a segment for every subnet (called under the network's lock)."""
        for router in routers:
            if router.home:  # the router is on another cluster of the fabric: carry its subnets' VLANs there
                for segment in router.subnets:
                    if segment.vlan not in self.network.vlans:
                        self.network.carry_segment(segment.vlan)
                continue
            ns = self.namespaces.get(router.vpc_id)
            if ns is None:
                ns = self._make(router)
            for segment in router.subnets:
                if segment.vlan in self.network.vlans:
                    continue
                prefixlen = ipaddress.IPv4Network(segment.cidr).prefixlen
                self.network.add_segment(
                    segment.vlan, f"{segment.gateway}/{prefixlen}", ns, segment.vlan - FIRST_SUBNET_VLAN
                )
                log.info("cluster %s: subnet %s (%s) on segment %d", self.network.cluster, segment.subnet_id,
                         segment.cidr, segment.vlan)  # fmt: skip

    def _make(self, router: VpcRouter) -> str:
        ns = self.namespace(router.slot)
        netns.create(ns)
        links.sysctl(ns, "net.ipv4.ip_forward", 1)
        links.add_address(ns, "lo", f"{METADATA_ADDRESS}/32")
        self.namespaces[router.vpc_id] = ns
        if self.on_router is not None:
            self.on_router(router.vpc_id, ns)
        log.info("cluster %s: router of %s in namespace %s", self.network.cluster, router.vpc_id, ns)
        return ns

    def describe(self) -> dict[str, str]:
        return dict(self.namespaces)

    def reset(self) -> None:
        """Forget the routers (their namespaces go with the cluster's sweep)."""
        self.namespaces.clear()
