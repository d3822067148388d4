"""The public side shared by the zones of a ``direct`` cloud: where one zone's public addresses reach another's.

A ``direct`` cloud keeps a VPC in one cluster (its bridges do not span hosts), so issue 12's rule is that
instances in different zones reach each other only through public addresses, as two EC2 instances in VPCs of
different regions do over the internet. Each cluster's public side is its outside namespace (where its VPC
routers' uplinks end, :mod:`cloudlab.net.vpc_edge`), and each one routes only its own routers' public
addresses: on their own, the zones' public sides never meet.

This joins them: a WAN namespace ``<prefix>-wan`` (one bridge; TEST-NET-3, 203.0.113.0/24, the same stand-in
for the internet as the VDE fabric's, :mod:`cloudlab.cc.fabric`) with each cluster's outside namespace on it
(``wan0``, at ``203.0.113.(10 + index)``). Every outside namespace routes the whole public pool onto the WAN,
on-link, and answers ARP there for the public addresses it routes to its own routers (proxy ARP: the kernel
answers for an address whose route leaves by another link). So a packet from an instance of zone a, translated
to its public address at its router, goes up to zone a's public side, across the WAN to the zone whose router
holds the destination address, and down that router's uplink, where it is translated to the private address;
the reply comes back the same way. Nothing else is learnt or configured when an address moves: its /32 route
(which :class:`~cloudlab.cc.vpc_routers.VpcRouters` keeps in step with the plan) is the only record, and ARP asks
the zones afresh. Private addresses have no route on any public side, so they stay within their zone.

The outside namespaces forward from the WAN only to their routers' uplinks, and from an uplink to the WAN only
towards the public pool and the WAN's own addresses (:func:`cloudlab.net.vpc_edge.outside_ruleset`): the WAN
carries public addresses between cloudlab's own namespaces and nothing else.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from cloudlab.cc.fabric import EDGE_LINK, WAN
from cloudlab.config import CloudConfig
from cloudlab.net import NetError, firewall, links, netns, vpc_edge

log = logging.getLogger(__name__)


def wanted(config: CloudConfig) -> bool:
    """Whether ``config``'s zones share a public side (direct, the VPC model, several clusters)."""
    return config.network == "direct" and config.network_model == "vpc" and config.clusters > 1


def check_config(config: CloudConfig) -> None:
    """Refuse a public pool that overlaps the WAN, before anything starts."""
    if wanted(config) and WAN.overlaps(ipaddress.IPv4Network(config.public_pool, strict=False)):
        raise NetError(f"the public pool {config.public_pool} overlaps the zones' WAN {WAN}: choose another range")


def edge_address(index: int) -> str:
    """The WAN address of the ``index``-th cluster's public side (1-based, as the fabric numbers its edges)."""
    return str(WAN[10 + index])


class PublicWan:
    """The WAN between built cluster networks' outside namespaces, with the public pool routed over it."""

    def __init__(self, prefix: str, networks: list[Any], public_pool: str) -> None:
        if len(networks) < 2:
            raise NetError("a public WAN joins two clusters or more")
        self.namespace = f"{prefix}-wan"
        self.networks = networks  # cloudlab.cc.network.ClusterNetwork, in zone order
        self.pool = str(ipaddress.IPv4Network(public_pool, strict=False))

    def build(self) -> None:
        """The WAN and every cluster's edge on it; undone on failure."""
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise

    def _build(self) -> None:
        self.teardown()  # a killed cloud's leftovers
        netns.create(self.namespace)
        links.bridge(self.namespace, "wan0", vlan_filtering=False)
        for index, network in enumerate(self.networks, start=1):
            out, port = network.outside, f"e{index}"
            links.veth(out, EDGE_LINK, self.namespace, port)
            links.set_master(self.namespace, port, "wan0")
            links.add_address(out, EDGE_LINK, f"{edge_address(index)}/{WAN.prefixlen}")
            # Its own routers' addresses have /32 routes to their uplinks, which win over this one.
            links.add_route(out, self.pool, dev=EDGE_LINK)
            links.sysctl(out, f"net.ipv4.conf.{EDGE_LINK}.proxy_arp", 1)
            # (answered at once: the default delays proxied answers to broadcast requests by up to 0.8 s)
            links.sysctl(out, f"net.ipv4.neigh.{EDGE_LINK}.proxy_delay", 0)
            network.edge = {"address": edge_address(index), "behind_nat": False, "wan": self.namespace,
                            "public_pool_routed": self.pool, "wan_range": str(WAN)}  # fmt: skip
            firewall.apply(out, vpc_edge.outside_ruleset(self.pool, str(WAN)))
        log.info("public WAN %s: the public sides of %s joined", self.namespace,
                 ", ".join(n.cluster for n in self.networks))  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {"wan": self.namespace, "public_pool": self.pool, "edges": {n.cluster: n.edge for n in self.networks}}

    def teardown(self) -> None:
        """Remove the WAN (its veths go with it; the first cluster's sweep would find it too; idempotent)."""
        if netns.exists(self.namespace):
            netns.kill_all(self.namespace)
            netns.remove(self.namespace)
