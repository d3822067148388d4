"""The fast VDE profile between clusters: a TCP cable per (VPC subnet segment, other cluster).

The classic fabric (:mod:`cloudlab.cc.fabric`) joins the clusters' first ``vde_switch``es by one cable each and
tags every VPC subnet's VLAN on it. The fast profile has no VLANs to tag: a segment is a vdeplug4 switch of its
own on each host (:mod:`cloudlab.cc.segments`), and segments stay apart because they share no switch. So the
fabric gives each segment a cable of its own between clusters, the way the fast profile already does between
the hosts of one cluster: from the first host's switch of the segment in every other cluster to the first host's
switch of that segment in the first cluster (the *hub*, where the VPC's router is). Each segment is then one
tree of switches across the whole cloud (a star of stars: hosts to their cluster's first host, clusters to the
hub), with no loop, which matters because vdeplug4's switch runs no spanning tree.

- The cable is dialled from the other cluster's outside namespace to the hub's edge address on the WAN, as the
  classic fabric's cable is, so a cluster behind a NAT (``--nat-cluster``) is joined by its own dialling. The hub
  listens on one TCP port per (segment, cluster): :func:`fabric_tcp_port`.
- It is made when the cluster first carries the segment (``FastSegments.carry``, from the network plan: a VPC
  subnet's segment exists in every cluster of the fabric as soon as the subnet has an instance in any of them,
  because slots are the hub's, one numbering for the fabric). Slots are never given back (the cloud keeps a
  subnet's segment for its lifetime), so a cable lives as long as its segment: until the network's teardown.
- It carries the segment's jumbo frames as they are: a TCP stream has no MTU of its own (vde_plug writes each
  frame with a length header, and vdeplug4's buffer holds 9216 bytes), so MTU 9000 holds end to end however small
  the WAN's and the NAT's MTU is. ``tests/test_fabric_fast.py`` pings 8900-byte frames across it.
- Supervision is the network's (``cluster cable <peer> vlan <vid>`` in :meth:`ClusterNetwork.processes`): a dialer
  whose cable was cut dials again within a round, and the event goes into the network's history; the hub's
  listener stays and takes the new connection. A dialer that cannot reach the hub at first (its plan arrived
  before the hub's) is left dead for the supervisor to dial, and the reason is in the history.
- Accounting is unchanged: an instance's bytes are its tap's counters, wherever the segment's cables run.

Measured (``cloudlab bench network --vpc-only``, one VPC's pair of TCG guests, 2 cores, two runs with the profiles
in opposite order, median load 2.6 and 5.5): across clusters, through the NAT, fast moved 0.44 and 0.26 Gbit/s
against classic's 0.14 and 0.13 (2.1-3.2x); cross-cluster/same-cluster 0.69 and 0.78 on fast, 0.62 and 0.66 on
classic; against the same path built by hand in fast's shape (vdeplug4 switches, MTU 9000) 0.86 and 0.71.

Group segments of the classic network model (VLANs below ``FIRST_SUBNET_VLAN``) belong to one cluster and are
never joined across clusters.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cloudlab.contract import FIRST_SUBNET_VLAN
from cloudlab.net import NetError, vde_plugs

log = logging.getLogger(__name__)

#: TCP port of cluster i's cable for subnet segment v on the hub: FABRIC_TCP_PORT_BASE + (v - FIRST_SUBNET_VLAN) *
#: CLUSTERS_PER_SEGMENT_PORTS + i (below the ephemeral range, and clear of the classic fabric's 7300 + i).
FABRIC_TCP_PORT_BASE = 10000
CLUSTERS_PER_SEGMENT_PORTS = 16
#: Segments the fabric can join: every VPC subnet segment a cluster can have (``cloudlab.clc.vpc_network``).
MAX_SEGMENTS = 64


def joined(vid: int) -> bool:
    """Whether segment ``vid`` is joined across clusters (a VPC subnet's; a classic group's stays in its cluster)."""
    return FIRST_SUBNET_VLAN <= int(vid) < FIRST_SUBNET_VLAN + MAX_SEGMENTS


def fabric_tcp_port(vid: int, cluster_index: int) -> int:
    """The TCP port the hub listens on for the ``cluster_index``-th cluster's (1-based) cable of segment ``vid``."""
    if not 2 <= cluster_index < CLUSTERS_PER_SEGMENT_PORTS:
        raise NetError(f"the fast VDE fabric joins at most {CLUSTERS_PER_SEGMENT_PORTS - 1} clusters: use fewer")
    if not joined(vid):
        raise NetError(f"segment {vid} is not a VPC subnet's: only those are joined across clusters")
    return FABRIC_TCP_PORT_BASE + (int(vid) - FIRST_SUBNET_VLAN) * CLUSTERS_PER_SEGMENT_PORTS + cluster_index


class SegmentUplinks:
    """One cluster network's cables to the other clusters, a cable per (segment, peer cluster) (fast profile).

    ``peers`` maps each peer cluster to the 1-based index that numbers its cables' ports. On the hub the peers
    are every other cluster and the cables are listeners on ``address`` (the hub's edge); elsewhere the one peer
    is the hub, dialled at ``address`` from the cluster's outside namespace."""

    def __init__(self, network: Any, *, listen: bool, address: str, peers: dict[str, int]) -> None:
        self.network = network  # the cloudlab.cc.network.ClusterNetwork whose first host's switches are joined
        self.listen = listen
        self.address = address
        self.peers = dict(peers)
        self.cables: dict[tuple[str, int], Any] = {}  # (peer cluster, segment) -> listener or dialer

    def carry(self, vid: int) -> None:
        """Segment ``vid``'s cable to every peer (its switch on the first host exists already; idempotent)."""
        if not joined(vid):
            return
        first = next(iter(self.network.hosts.values()))
        sock = self.network.segments.switch(first.node, vid).sock
        for peer, index in self.peers.items():
            if (peer, vid) in self.cables:
                continue
            port = fabric_tcp_port(vid, index)
            if self.listen:
                cable: Any = vde_plugs.TcpCableListener(sock, self.address, port, self.network.outside)
                cable.start()  # a port taken is a fault of the build: said at once
            else:
                cable = vde_plugs.TcpCableDialer(sock, self.address, port, self.network.outside)
                try:
                    cable.start()
                except NetError as exc:  # the hub does not listen yet: the supervisor dials on its next round
                    event = f"{time.strftime('%H:%M:%S')} cluster cable {peer} vlan {vid} not dialled yet: {exc}"
                    log.warning("cluster %s: %s", self.network.cluster, event)
                    self.network.history.append(event)
            self.cables[(peer, vid)] = cable

    def processes(self) -> list[tuple[str, Any]]:
        """(role, process) of every cable, by segment then peer (after the switches they plug into)."""
        return [
            (f"cluster cable {peer} vlan {vid}", cable)
            for (peer, vid), cable in sorted(self.cables.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        ]

    def reattach(self, vid: int) -> None:
        """Segment ``vid``'s switch on the first host was restarted: a dialer into it that has not noticed yet
        dials again (a listener stays; its peer dials again and it takes the new connection)."""
        for (_peer, cable_vid), cable in self.cables.items():
            if cable_vid == vid and not self.listen and cable.alive():
                cable.restart()
