"""VPC routers: one network namespace per VPC in a cluster, holding its subnets' gateways.

A VPC's subnets are segments of the cluster network like managed mode's group segments (a bridge on
direct, a VLAN on vde; see :meth:`cloudlab.cc.network.ClusterNetwork.add_segment`), but their gateways
live in the VPC's own namespace ``<prefix>-v<slot>`` rather than in the shared outside namespace: two
VPCs never share a routing table, so their ranges may overlap, and no route leads from one to the
other. The router forwards between its VPC's subnets and answers the metadata address
(169.254.169.254, on its ``lo``); the service listening there is started by whoever set
``on_router`` (the cloud service, which knows the instances). Everything is made from the plan, and
applying a plan twice changes nothing.

Each router has an uplink into the cluster's outside namespace (:mod:`cloudlab.net.vpc_edge`): while its VPC
has an internet gateway, its instances' public addresses are translated 1:1 there (instances without one do not
get out, as on EC2); the outside namespace routes each public address to its router. Without a gateway the uplink
carries nothing.

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
from cloudlab.net import firewall, links, netns, vpc_edge

log = logging.getLogger(__name__)

METADATA_ADDRESS = "169.254.169.254"


class VpcRouters:
    """The VPC routers of one cluster network (its ``vpc_routers``)."""

    def __init__(self, network: Any) -> None:
        self.network = network  # the cloudlab.cc.network.ClusterNetwork these routers belong to
        self.namespaces: dict[str, str] = {}  # vpc id -> router namespace
        self.edges: dict[str, str] = {}  # vpc id -> the edge ruleset in force on its router
        self.routes: dict[str, tuple[str, str]] = {}  # public address -> (outside link, router's uplink address)
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
            self._edge(router, ns)
        self._routes(routers)

    def _make(self, router: VpcRouter) -> str:
        ns = self.namespace(router.slot)
        netns.create(ns)
        links.sysctl(ns, "net.ipv4.ip_forward", 1)
        links.add_address(ns, "lo", f"{METADATA_ADDRESS}/32")
        if not self.namespaces:  # the first router: the outside namespace's guard on what comes up the uplinks
            edge = self.network.edge or {}  # (a direct cloud's zones share a WAN: cloudlab.cc.public_wan)
            guard = vpc_edge.outside_ruleset(edge.get("public_pool_routed"), edge.get("wan_range"))
            firewall.apply(self.network.outside, guard)
        outside_end, router_end = vpc_edge.uplink_addresses(router.slot)
        link = vpc_edge.outside_link(router.slot)
        links.veth(self.network.outside, link, ns, vpc_edge.UPLINK)
        links.add_address(self.network.outside, link, f"{outside_end}/30")
        links.add_address(ns, vpc_edge.UPLINK, f"{router_end}/30")
        # Towards the public side only: the outside namespace routes nothing further (no default route there).
        links.add_route(ns, "default", gateway=outside_end)
        self.namespaces[router.vpc_id] = ns
        if self.on_router is not None:
            self.on_router(router.vpc_id, ns)
        log.info("cluster %s: router of %s in namespace %s", self.network.cluster, router.vpc_id, ns)
        return ns

    def _edge(self, router: VpcRouter, ns: str) -> None:
        """The router's NAT and uplink filter as the plan says (applied again only when it changed)."""
        wanted = vpc_edge.ruleset(router.nats, router.internet)
        if self.edges.get(router.vpc_id) != wanted:
            firewall.apply(ns, wanted)
            self.edges[router.vpc_id] = wanted
            log.info("cluster %s: edge of %s: internet %s, %d public addresses", self.network.cluster,
                     router.vpc_id, "on" if router.internet else "off", len(router.nats))  # fmt: skip

    def _routes(self, routers: tuple[VpcRouter, ...]) -> None:
        """Each public address of a router here routed to its uplink in the outside namespace; the others gone."""
        wanted = {
            nat.public_ip: (vpc_edge.outside_link(r.slot), vpc_edge.uplink_addresses(r.slot)[1])
            for r in routers
            if not r.home and r.internet
            for nat in r.nats
        }
        out = self.network.outside
        for public_ip, (link, via) in sorted(wanted.items()):
            if self.routes.get(public_ip) != (link, via):
                links.add_route(out, f"{public_ip}/32", gateway=via, dev=link)
        for public_ip in sorted(set(self.routes) - set(wanted)):
            links.del_route(out, f"{public_ip}/32")
        self.routes = wanted

    def describe(self) -> dict[str, str]:
        return dict(self.namespaces)

    def public_routes(self) -> dict[str, str]:
        """Public address -> the router namespace it is translated in (for status)."""
        by_link = {vpc_edge.outside_link(int(ns.rsplit("-v", 1)[1])): ns for ns in self.namespaces.values()}
        return {ip: by_link.get(link, "?") for ip, (link, _via) in sorted(self.routes.items())}

    def reset(self) -> None:
        """Forget the routers (their namespaces go with the cluster's sweep)."""
        self.namespaces.clear()
        self.edges.clear()
        self.routes.clear()
