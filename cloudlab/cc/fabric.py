"""The fabric: VDE cables between the clusters' switches, so that a VPC spans zones, and NATs.

The seed's trade-off, built: on ``vde`` with several clusters and the VPC model, every cluster's first
host switch is joined to the first cluster's (the *hub*) by a TCP cable, and a VPC's subnets are VLANs
tagged on those cables. A VPC has one router, on the hub (``cloudlab.clc.vpc_network`` decides it, the
hub's :class:`~cloudlab.cc.vpc_routers.VpcRouters` builds it); the other clusters only carry the VLANs
(:meth:`~cloudlab.cc.network.ClusterNetwork.carry_segment`). So two instances of one VPC in two zones
talk over the cable: on one subnet, as one Ethernet; across subnets, through their router on the hub.
(A router per cluster would keep traffic between a cluster's own subnets local, at the price of routes
between routers kept in step; one router is the simplest design that is honest about the path.)

On one machine the clusters' sites are joined by a WAN namespace ``<prefix>-wan`` (one bridge; the
addresses are TEST-NET-3, 203.0.113.0/24, standing for the internet between sites). Each cluster's outside
namespace has an edge on it, directly, or, for a cluster named in ``nat_clusters`` (``--nat-cluster``),
behind a NAT namespace ``<cluster prefix>-edge`` that masquerades what the cluster dials out and forwards
nothing in: only what that cluster dials passes. The hub listens on its edge address, one TCP port per
other cluster; every other cluster dials it from its outside namespace, so a NATed cluster is joined by
its own dialling. (The cluster controllers run in the cloud service and reach their nodes over each
cluster's underlay veth, as a CC on its own site would; the NAT stands between sites, where the cables run.)

The cables are supervised by the networks they end in (``ClusterNetwork.uplinks``, role
``cluster cable <peer>``): a dialer whose cable is cut dials again within a supervision round, and the
event goes into that cluster's network history, which ``cloudlab status`` shows.

That is the classic VDE profile, whose ``vde_switch`` tags VLANs. On the fast profile (the default) a segment is
a switch of its own per host and there are no VLANs to tag, so the fabric gives each VPC subnet's segment a
cable of its own per cluster instead, dialled the same way, made when the cluster first carries the segment
(:mod:`cloudlab.cc.fabric_cables`; role ``cluster cable <peer> vlan <vid>``). The WAN and the NATs are the same.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from cloudlab.cc.fabric_cables import SegmentUplinks
from cloudlab.config import CloudConfig
from cloudlab.net import NetError, links, netns, vde_plugs

log = logging.getLogger(__name__)

#: The internet between the clusters' sites (TEST-NET-3, RFC 5737: never routed anywhere).
WAN = ipaddress.IPv4Network("203.0.113.0/24")
FABRIC_TCP_PORT_BASE = 7300  # the hub listens for cluster i's cable on FABRIC_TCP_PORT_BASE + i
#: Between a NATed cluster's outside namespace and its NAT: (the NAT's address, the outside's), a /30.
EDGE_INNER = ("192.168.254.1", "192.168.254.2")
EDGE_LINK = "wan0"  # the outside namespace's link towards the WAN (its edge, or its NAT)


def wanted(config: CloudConfig) -> bool:
    """Whether ``config``'s clusters are joined into one fabric (vde, the VPC model, several clusters)."""
    return config.network == "vde" and config.network_model == "vpc" and config.clusters > 1


def check_config(config: CloudConfig) -> None:
    """Refuse ``nat_clusters`` that cannot be built, with the reason, before anything starts."""
    names = config.cluster_names()
    for name in config.nat_clusters:
        if name not in names:
            raise NetError(f"--nat-cluster {name} is not a cluster of this cloud ({', '.join(names)})")
    if config.nat_clusters and not wanted(config):
        raise NetError(
            "--nat-cluster needs clusters joined by VDE cables: --network vde --network-model vpc --clusters 2 or more"
        )
    if names[0] in config.nat_clusters:
        raise NetError(
            f"the first cluster ({names[0]}) holds the VPC routers and listens for the other clusters' cables,"
            " so it cannot sit behind a NAT: put another cluster behind it"
        )
    for what, cidr in (("--subnet", config.subnet), ("the public pool", config.public_pool)) if wanted(config) else ():
        if WAN.overlaps(ipaddress.IPv4Network(cidr, strict=False)):
            raise NetError(f"{what} {cidr} overlaps the clusters' WAN {WAN}: choose another range")


class Fabric:
    """The WAN, the clusters' edges (NATs) and the cables between clusters, over built cluster networks."""

    def __init__(self, prefix: str, networks: list[Any], nat_clusters: list[str]) -> None:
        if len(networks) < 2:
            raise NetError("a fabric joins two clusters or more")
        if networks[0].cluster in nat_clusters:
            raise NetError(f"the hub cluster {networks[0].cluster} cannot sit behind a NAT")
        profiles = {n.profile for n in networks}
        if len(profiles) > 1:  # a VLAN trunk and a cable per segment do not meet
            raise NetError(f"the clusters of one fabric need one VDE profile, not {' and '.join(sorted(profiles))}")
        self.namespace = f"{prefix}-wan"
        self.networks = networks  # cloudlab.cc.network.ClusterNetwork, the hub first
        self.nat_clusters = list(nat_clusters)

    @property
    def hub(self) -> Any:
        return self.networks[0]

    @staticmethod
    def edge_address(index: int) -> str:
        """The WAN address of the ``index``-th cluster's edge (1-based)."""
        return str(WAN[10 + index])

    @staticmethod
    def nat_namespace(network: Any) -> str:
        return f"{network.prefix}-edge"

    def _names(self) -> list[str]:
        return [self.namespace, *(self.nat_namespace(n) for n in self.networks)]

    # -- build --------------------------------------------------------------------------------------------
    def build(self) -> None:
        """The WAN, every cluster's edge and a cable from every other cluster to the hub; undone on failure."""
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
            self._edge(index, network)
        if self.hub.segments is not None:  # fast: a cable per segment and cluster, made with the segments
            self._segment_cables()
        else:
            for index, network in enumerate(self.networks[1:], start=2):
                self._cable(index, network)
        log.info("fabric: %d clusters joined to %s over %s", len(self.networks) - 1, self.hub.cluster, self.namespace)

    def _edge(self, index: int, network: Any) -> None:
        """Put cluster ``network`` on the WAN: its outside namespace directly, or behind a masquerading NAT."""
        address = f"{self.edge_address(index)}/{WAN.prefixlen}"
        port = f"e{index}"
        if network.cluster not in self.nat_clusters:
            links.veth(network.outside, EDGE_LINK, self.namespace, port)
            links.set_master(self.namespace, port, "wan0")
            links.add_address(network.outside, EDGE_LINK, address)
            network.edge = {"address": self.edge_address(index), "behind_nat": False, "wan": self.namespace}
            return
        nat = self.nat_namespace(network)
        netns.create(nat)
        links.veth(nat, "wan0", self.namespace, port)
        links.set_master(self.namespace, port, "wan0")
        links.add_address(nat, "wan0", address)
        links.veth(nat, "in0", network.outside, EDGE_LINK)
        links.add_address(nat, "in0", f"{EDGE_INNER[0]}/30")
        links.add_address(network.outside, EDGE_LINK, f"{EDGE_INNER[1]}/30")
        links.add_route(network.outside, str(WAN), gateway=EDGE_INNER[0])
        links.sysctl(nat, "net.ipv4.ip_forward", 1)
        # Only what the cluster dials out passes: new connections from the WAN are dropped, not forwarded.
        netns.run(
            nat,
            ["nft", "-f", "-"],
            input=(
                "table ip cloudlab_edge {\n"
                "  chain forward {\n"
                "    type filter hook forward priority filter; policy drop;\n"
                "    ct state established,related accept\n"
                '    iifname "in0" oifname "wan0" accept\n'
                "  }\n"
                "  chain postrouting {\n"
                "    type nat hook postrouting priority srcnat;\n"
                '    oifname "wan0" masquerade\n'
                "  }\n"
                "}\n"
            ),
        )
        network.edge = {
            "address": self.edge_address(index),
            "behind_nat": True,
            "nat_namespace": nat,
            "private_address": EDGE_INNER[1],
            "wan": self.namespace,
        }

    def _cable(self, index: int, network: Any) -> None:
        """Cluster ``network`` dials the hub: a listener on the hub's edge, a dialer in the cluster's outside."""
        hub = self.hub
        tcp_port = FABRIC_TCP_PORT_BASE + index
        hub_port = hub.uplink_port(network.cluster)
        listener = vde_plugs.TcpCableListener(
            hub.first_switch.sock, self.edge_address(1), tcp_port, hub.outside, port_on_switch=hub_port
        )
        listener.start()
        hub.add_uplink(network.cluster, listener, hub_port)
        port = network.uplink_port(hub.cluster)
        dialer = vde_plugs.TcpCableDialer(
            network.first_switch.sock, self.edge_address(1), tcp_port, network.outside, port_on_switch=port
        )
        dialer.start()
        network.add_uplink(hub.cluster, dialer, port)

    def _segment_cables(self) -> None:
        """Fast profile: the hub listens and every other cluster dials, per segment, for the segments carried now
        and every one carried later (:class:`~cloudlab.cc.fabric_cables.SegmentUplinks`). The hub first, so that
        its listeners exist when the others dial."""
        hub_address = self.edge_address(1)
        others = {n.cluster: index for index, n in enumerate(self.networks[1:], start=2)}
        self.hub.segments.join(SegmentUplinks(self.hub, listen=True, address=hub_address, peers=others))
        for network in self.networks[1:]:
            peer = {self.hub.cluster: others[network.cluster]}
            network.segments.join(SegmentUplinks(network, listen=False, address=hub_address, peers=peer))

    # -- views and teardown -----------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "wan": self.namespace,
            "hub": self.hub.cluster,
            "nat_clusters": list(self.nat_clusters),
            "edges": {n.cluster: getattr(n, "edge", None) for n in self.networks},
            "cables": "one per cluster, VLANs tagged" if self.hub.segments is None else "one per segment and cluster",
        }

    def teardown(self) -> None:
        """Remove the WAN and the NAT namespaces (the cables stop with their networks; idempotent)."""
        for name in self._names():
            if netns.exists(name):
                netns.kill_all(name)
                netns.remove(name)
