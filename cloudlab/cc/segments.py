"""The fast VDE profile: a vdeplug4 switch per segment on every host, jumbo frames on every link of a segment.

``vde_switch`` (vde2 2.3.2) holds every segment of a host as a VLAN, but it drops frames over 1514 bytes, and
VDE's cost is per frame: each one is read and written by user-space processes (the plugs, the switch) on
its way between two guests. The network benchmark measured MTU 9000 on vdeplug4's ``switch://`` roughly
doubling VM-to-VM throughput, the datagram queue and the hub mode changing nothing beyond noise. So here:

- each segment (a security group's VLAN, a VPC subnet's) gets, on every host that carries it, a switch of its
  own (:class:`cloudlab.net.vde_plugs.SegmentSwitch`): isolation between segments is that they share no
  switch, as VLANs on one ``vde_switch`` did;
- the hosts' switches of a segment are joined to the first host's by a cable of their own (TCP, the far host
  dials as in the classic profile, so a NAT in between does not matter; or unix);
- every link of a segment runs at :data:`MTU`: the instances' NICs (libvirt's ``<mtu>``, which QEMU offers
  the guest as virtio-net's ``host_mtu``: the guest's driver takes it at probe, nothing in the image changes),
  their taps and per-instance bridges (``cloudlab.nc.vde_nics``), and the router's gateway link, so a TCP
  connection to the router or the metadata service negotiates its MSS as usual;
- accounting is unchanged: an instance's bytes are its tap's kernel counters (libvirt's ``interfaceStats``);
  the segment switch has no port counters and needs none;
- supervision is the same: every switch and cable is a child process with the common interface, listed in
  :meth:`cloudlab.cc.network.ClusterNetwork.processes`; a switch that ends takes its plugs with it (vdeplug4),
  so the CC restarts the switch, then the cables and the gateway plug that died, and the nodes plug their
  instances in again.

Measured (``cloudlab bench network --vde-only``, 2 cores at load 6-8, 3 runs of 3 s per path): the VDE penalty
(direct ÷ vde, VM to VM) 2.4× and 3.2× with fast against 5.2× and 8.1× with classic, in two runs. Tried and
measured worse beside the fast path: a longer datagram queue (``net.unix.max_dgram_qlen`` 512) and QEMU's own
vde netdev on the segment switch (no tap: the guest then segments and checksums its TCP itself). What is left
is per frame and out of reach here: ``vde_plug``'s taps carry no virtio-net header, so no offload crosses VDE
(the receiving guest checksums every frame under TCG), and each frame passes three user-space processes.

Between clusters (a VPC spanning zones, :mod:`cloudlab.cc.fabric`), a segment has a cable of its own too, from
each other cluster's first host to the first cluster's (:mod:`cloudlab.cc.fabric_cables`): the fabric installs
them as :attr:`FastSegments.uplinks`; each is made with its segment and kept as long as the segment, like the
cables between hosts.
"""

from __future__ import annotations

import logging
from typing import Any

from cloudlab.contract import FIRST_VLAN
from cloudlab.net import NetError, vde_plugs

log = logging.getLogger(__name__)

#: The fast profile's MTU on every link of a segment: vdeplug4 carries frames up to its 9216-byte buffer (MTU
#: 9000 measured working, 16000 not).
MTU = 9000
#: TCP port of host i's cable for segment v on the first host: SEGMENT_TCP_PORT_BASE + (v - FIRST_VLAN) * 16 + i.
SEGMENT_TCP_PORT_BASE = 20000
HOSTS_PER_SEGMENT_PORTS = 16


def cable_tcp_port(vid: int, host_index: int) -> int:
    """The TCP port the first host listens on for ``host_index``'s cable of segment ``vid``."""
    if not 1 <= host_index < HOSTS_PER_SEGMENT_PORTS:
        raise NetError(f"the fast VDE profile joins at most {HOSTS_PER_SEGMENT_PORTS - 1} hosts: use fewer nodes")
    port = SEGMENT_TCP_PORT_BASE + (int(vid) - FIRST_VLAN) * HOSTS_PER_SEGMENT_PORTS + host_index
    if not SEGMENT_TCP_PORT_BASE <= port < 65536:
        raise NetError(f"segment {vid} is out of the fast VDE profile's range of cable ports: use fewer segments")
    return port


class FastSegments:
    """A cluster network's segment switches and the cables between them (the fast profile)."""

    def __init__(self, network: Any) -> None:
        self.network = network
        self.switches: dict[tuple[str, int], vde_plugs.SegmentSwitch] = {}
        self.cables: dict[tuple[str, int], list[Any]] = {}
        #: The cables to other clusters (cloudlab.cc.fabric_cables.SegmentUplinks), set by the fabric; None: alone.
        self.uplinks: Any = None

    def _hosts(self) -> list[Any]:
        return list(self.network.hosts.values())

    def switch(self, node: str, vid: int) -> vde_plugs.SegmentSwitch:
        """The switch of segment ``vid`` on ``node``'s host (NetError if the segment is not carried there)."""
        found = self.switches.get((node, vid))
        if found is None:
            raise NetError(f"segment {vid} has no switch on {node} (the cluster does not carry it yet)")
        return found

    def carry(self, vid: int) -> None:
        """Segment ``vid`` on every host: its switch, and its cable from each other host to the first one's."""
        hosts = self._hosts()
        for host in hosts:
            if (host.node, vid) not in self.switches:
                sock = self.network.run_dir / host.node / f"seg{vid}"
                switch = vde_plugs.SegmentSwitch(sock, host.namespace, vid)
                switch.start()
                self.switches[(host.node, vid)] = switch
        first = hosts[0]
        for host in hosts[1:]:
            if (host.node, vid) not in self.cables:
                self.cables[(host.node, vid)] = self._cable(first, host, vid)
        if self.uplinks is not None:
            self.uplinks.carry(vid)

    def join(self, uplinks: Any) -> None:
        """Cables to other clusters from now on (the fabric's): for every segment carried already, and each new one."""
        with self.network._lock:  # (the plan's apply carries segments under it too)
            self.uplinks = uplinks
            for vid in sorted({vid for _node, vid in self.switches}):
                uplinks.carry(vid)

    def _cable(self, first: Any, host: Any, vid: int) -> list[Any]:
        here, there = self.switches[(first.node, vid)], self.switches[(host.node, vid)]
        if self.network.cable_kind == "unix":
            cable = vde_plugs.UnixCable(here.sock, there.sock)
            cable.start()
            return [cable]
        tcp_port = cable_tcp_port(vid, host.index)
        listener = vde_plugs.TcpCableListener(here.sock, first.address, tcp_port, first.namespace)
        listener.start()
        dialer = vde_plugs.TcpCableDialer(there.sock, first.address, tcp_port, host.namespace)
        try:
            dialer.start()
        except NetError:
            listener.stop()
            raise
        return [listener, dialer]

    def gateway(self, vid: int, link: str, router_ns: str) -> vde_plugs.TapPlug:
        """The router's link ``link`` in ``router_ns`` into segment ``vid`` (on the first host), at :data:`MTU`."""
        first = self._hosts()[0]
        plug = vde_plugs.TapPlug(self.switch(first.node, vid).sock, link, router_ns, mtu=MTU)
        plug.start()
        return plug

    def attach_mtu(self) -> int:
        """The MTU of an instance's NIC on a fast segment."""
        return MTU

    def processes(self) -> list[tuple[str, Any]]:
        """(role, process) of every segment switch, then every cable (restarted in this order)."""
        found: list[tuple[str, Any]] = []
        for (node, vid), switch in sorted(self.switches.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            found.append((f"segment switch {node} vlan {vid}", switch))
        for (node, vid), cables in sorted(self.cables.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            found += [(f"segment cable {node} vlan {vid}", cable) for cable in cables]
        return found + (self.uplinks.processes() if self.uplinks is not None else [])

    def reattach(self, node: str, vid: int) -> None:
        """After segment ``vid``'s switch on ``node`` was restarted, what still runs into it dials again.

        A plug on a vdeplug4 switch that ends normally ends with it (and the supervisor restarts it as dead); this
        catches one that has not noticed yet. A TCP listener stays: its peer dials again and it takes the new
        connection."""
        for (_node, cable_vid), cables in self.cables.items():
            for cable in cables:
                if cable_vid == vid and cable.alive() and not isinstance(cable, vde_plugs.TcpCableListener):
                    cable.restart()
        plug = self.network.gateway_plugs.get(vid)
        if plug is not None and node == self._hosts()[0].node and plug.alive():
            plug.restart()
        if self.uplinks is not None and node == self._hosts()[0].node:
            self.uplinks.reattach(vid)

    def clear(self) -> None:
        """Forget every switch and cable (the network's teardown has stopped them), and the fabric's cables: a
        rebuilt network is joined again by the fabric that is built after it."""
        self.switches.clear()
        self.cables.clear()
        self.uplinks = None
