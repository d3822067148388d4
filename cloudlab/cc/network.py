"""The cluster's network, built and owned by the cluster controller: namespaces, VDE or bridges, the router.

On one machine every host of the cluster is a network namespace (Mininet-style) and so is the
cluster's *outside*: the router and public side the cluster controller's host would have. The
root namespace gets one veth into the outside (the controllers' underlay link) and nothing else.

::

    root ns ── veth ──┐                outside ns  (cl<id>-out: router, NAT, metadata, `cloudlab exec`)
                      lan0 (underlay bridge, 10.253.0.0/24)
                      │       │ gateways g<vlan>, 169.254.169.254 and elastic addresses on lo
             host ns node-01  host ns node-02 (optionally behind a NAT namespace)
             NC + libvirt     NC + libvirt
             vde_switch ═════ vde_switch    (vde: switches joined by a cable the far host dials)
             or br<vlan> per group (direct: one host)

Each security group is one VLAN and one /24 (see ``cloudlab.clc.network``); the router holds every
group's gateway on its own link into that segment (a veth to the group's bridge, or a tap on an access
port of the group's VLAN on the first host's switch) and enforces the groups' ingress rules with
nftables. Everything here is recreated from the plan the CLC sends, so applying the same plan twice
changes nothing.

That is the classic VDE profile; the fast one (``profile="fast"``, :mod:`cloudlab.cc.segments`) gives each
segment a vdeplug4 switch of its own on every host instead, with jumbo frames and a cable per segment.

Clusters of one cloud on vde with VPCs are joined by :mod:`cloudlab.cc.fabric`: the first host's switch then
has *uplinks*, cables to other clusters' switches, which carry every VPC subnet's VLAN and are supervised
here like the cables between hosts (fast: a cable per segment instead, held by ``segments.uplinks``). The root
namespace's routes and the sweep are in :mod:`cloudlab.cc.network_host`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cloudlab.cc import network_adoption
from cloudlab.cc.network_host import behind_a_home_router, free_underlay, host_routes, sweep, underlay_lock
from cloudlab.cc.segments import FastSegments
from cloudlab.cc.vpc_routers import VpcRouters
from cloudlab.config import CloudConfig
from cloudlab.contract import FIRST_VLAN, Attachment, GroupSegment, NetworkPlan
from cloudlab.net import NetError, firewall, instance_filters, links, netns, vde, vde_plugs, vpc_edge
from cloudlab.paths import StateLayout, outside_namespace_of
from cloudlab.waiting import WaitTimeout, wait_until

log = logging.getLogger(__name__)

FLAVOURS = ("vde", "direct")
PROFILES = ("fast", "classic")  # how vde switches frames (cloudlab.cc.segments; CloudConfig.vde_profile)
#: Cable transports between hosts. (SSH cables work by hand, see the benchmark's cable paths, but on
#: one machine they need an sshd per host namespace that reads its own authorized_keys: not built in.)
CABLES = ("tcp", "unix")
NC_PORT = 8775  # every NC listens on this port in its own host namespace
CABLE_TCP_PORT_BASE = 7100  # host i's cable listener on the first host: TCP port CABLE_TCP_PORT_BASE + i
CABLE_SWITCH_PORT_BASE = 2  # cable ports on switches: 2 .. 15
GATEWAY_SWITCH_PORT_BASE = 16  # the router's tap into VLAN v: switch port 16 + (v - FIRST_VLAN) on the first host
FIRST_INSTANCE_PORT = 80  # instance ports on a switch: 80 .. SWITCH_PORTS-1
SWITCH_PORTS = 256
FIREWALL_TABLE = "cloudlab"
METADATA_ADDRESS = "169.254.169.254"
#: Elastic addresses are local addresses of the router (so they route, and DNAT sends them on to the
#: instance). A dummy link would be tidier, but kernels without the dummy module exist (this CI's).
PUBLIC_LINK = "lo"


@dataclass
class Host:
    """One simulated host of the cluster: a namespace, an NC, a switch or bridge."""

    node: str
    index: int
    namespace: str
    address: str  # its address on the underlay (or behind its NAT)
    behind_nat: bool = False
    nat_namespace: str | None = None
    public_address: str | None = None  # where the CC reaches it (its NAT's address when behind one)
    switch: vde.VdeSwitch | None = None
    cables: list[Any] = field(default_factory=list)


class ClusterNetwork:
    """Builds, supervises and tears down one cluster's network."""

    def __init__(
        self,
        cluster: str,
        flavour: str,
        *,
        prefix: str,
        nodes: list[str],
        subnet: str,
        underlay: str,
        run_dir: Path,
        nat_nodes: list[str] | None = None,
        cable: str = "tcp",
        profile: str = "classic",
    ) -> None:
        if flavour not in FLAVOURS:
            raise NetError(f"unknown network flavour {flavour!r}: use vde or direct")
        nat_nodes = list(nat_nodes or [])
        unknown = [n for n in nat_nodes if n not in nodes]
        if unknown:
            raise NetError(f"--nat-node {unknown[0]} is not a node of this cloud ({', '.join(nodes)})")
        if flavour == "direct" and len(nodes) > 1:
            raise NetError(
                f"the direct network cannot span hosts (cluster {cluster} has {len(nodes)} nodes): "
                "use --network vde for a cluster on several hosts, or --nodes 1"
            )
        if nodes and nodes[0] in nat_nodes:
            raise NetError(f"the first node ({nodes[0]}) hosts the router and cannot sit behind a NAT: pick another")
        if cable not in CABLES:
            raise NetError(f"unknown cable transport {cable!r}: use {' or '.join(CABLES)}")
        if profile not in PROFILES:
            raise NetError(f"unknown VDE profile {profile!r}: use {' or '.join(PROFILES)}")
        self.cluster = cluster
        self.flavour = flavour
        self.prefix = prefix
        self.subnet = subnet
        self.auto_underlay = underlay == "auto"
        self.run_dir = run_dir
        self.cable_kind = cable
        self.profile = profile if flavour == "vde" else None
        #: The fast profile's segment switches and their cables (cloudlab.cc.segments); None: classic or direct.
        self.segments = FastSegments(self) if self.profile == "fast" else None
        self.outside = outside_namespace_of(prefix)
        self.root_link = prefix  # the veth end in the root namespace
        self.hosts: dict[str, Host] = {}
        for i, node in enumerate(nodes, start=1):
            behind = node in nat_nodes
            host = Host(node, i, f"{prefix}-{node}", "", behind_nat=behind)
            if behind:
                host.nat_namespace = f"{prefix}-nat{i}"
                host.address = f"192.168.{100 + i}.2"
            self.hosts[node] = host
        self._place(self._free_underlay() if self.auto_underlay else ipaddress.IPv4Network(underlay))
        self.gateway_plugs: dict[int, vde_plugs.TapPlug] = {}
        #: Cables to other clusters' switches (cloudlab.cc.fabric), by peer cluster: (process, port on the first
        #: host's switch). They carry every VPC subnet's VLAN.
        self.uplinks: dict[str, tuple[Any, int]] = {}
        self.edge: dict[str, Any] | None = None  # where the fabric put it on the WAN between clusters
        self.vpc_routers = VpcRouters(self)
        self.vlans: set[int] = set()
        self.public_ips: set[str] = set()
        self.filtering = False  # whether the host holds VPC instance filters (applied once, then always kept)
        self.digest: str | None = None
        self.history: list[str] = []
        self._lock = threading.RLock()
        self.built = False

    def _free_underlay(self) -> ipaddress.IPv4Network:
        return free_underlay(self.prefix, prefer=network_adoption.recorded_underlay(self.run_dir))

    def _place(self, underlay: ipaddress.IPv4Network) -> None:
        """The root's, the router's and the hosts' addresses on ``underlay``."""
        self.underlay = underlay
        hosts = list(underlay.hosts())
        self.root_address = str(hosts[0])
        self.router_address = str(hosts[1])
        for host in self.hosts.values():
            if host.behind_nat:
                host.public_address = str(hosts[39 + host.index])
            else:
                host.address = host.public_address = str(hosts[9 + host.index])

    @classmethod
    def for_cloud(cls, config: CloudConfig, layout: StateLayout) -> ClusterNetwork:
        """The network ``config`` asks for, named after ``layout``'s state folder (not built yet)."""
        return cls(
            config.cluster,
            config.network,
            prefix=layout.network_prefix,
            nodes=config.node_names(),
            subnet=config.subnet,
            underlay=config.underlay,
            run_dir=layout.network_run_dir,
            nat_nodes=config.nat_nodes,
            cable=config.cable,
            profile=config.vde_profile_in_use,
        )

    # -- checks -------------------------------------------------------------------------------------------
    def check(self, public_pool: str) -> None:
        """Refuse, before building anything, what would collide: overlapping ranges, a missing tool."""
        ranges = {"--subnet": self.subnet, "--underlay": str(self.underlay), "public pool": public_pool,
                  "the VPC routers' uplinks": str(vpc_edge.UPLINKS)}  # fmt: skip
        ipaddress.IPv4Network(self.subnet)  # a bad CIDR fails here with its own message
        nets = {k: ipaddress.ip_network(v, strict=False) for k, v in ranges.items()}
        names = list(nets)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if nets[a].overlaps(nets[b]):
                    raise NetError(f"{a} {nets[a]} overlaps {b} {nets[b]}: choose ranges that do not overlap")
        taken = host_routes(exclude=self.root_link)
        for route, dev in taken:
            # Only the underlay appears in the root namespace (instance subnets live in namespaces).
            if self.underlay.overlaps(route):
                raise NetError(
                    f"--underlay {self.underlay} overlaps this host's route {route} on {dev}: "
                    "start the cloud with another --underlay (or the default, auto)"
                )
        if self.flavour == "vde":
            vde.require_binaries()
        if shutil.which("nft") is None:
            raise NetError("nft is missing: apt-get install nftables (or run make setup)")

    # -- build --------------------------------------------------------------------------------------------
    def build(self) -> None:
        """Namespaces, underlay, per-host switching, the router; undone completely if any step fails."""
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        self.built = True

    def _build(self) -> None:
        # An automatic underlay is chosen again, under the host's lock, until its route is in place: another
        # cloud starting at the same moment would otherwise see the same /24 free and take it too.
        out = self.outside
        with underlay_lock() if self.auto_underlay else contextlib.nullcontext():
            if self.auto_underlay:
                self._place(self._free_underlay())
            # Leftovers of a killed cloud with the same state folder: rebuilt around its guests when it has
            # the same shape (so they survive the kill), else removed.
            if network_adoption.adoptable(self):
                network_adoption.clear_around_guests(self)
            else:
                self.teardown()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            netns.create(out)
            links.bridge(out, "lan0", vlan_filtering=False)
            links.add_address(out, "lan0", f"{self.router_address}/{self.underlay.prefixlen}")
            links.sysctl(out, "net.ipv4.ip_forward", 1)
            self._root_veth()
        links.add_address(out, "lo", f"{METADATA_ADDRESS}/32")
        for host in self.hosts.values():
            self._build_host(host)
        first = next(iter(self.hosts.values()))
        if self.flavour == "vde" and self.segments is None:  # (fast: a cable per segment, made with the segment)
            for host in list(self.hosts.values())[1:]:
                self._cable(first, host)
        self.apply(NetworkPlan(cluster=self.cluster))
        network_adoption.note_built(self)

    def _root_veth(self) -> None:
        with IPRoute() as ipr:
            try:
                ipr.link("add", ifname=self.root_link, kind="veth", peer={"ifname": "up0", "net_ns_fd": self.outside})
            except NetlinkError as exc:
                raise NetError(f"cannot create the veth {self.root_link} into {self.outside}: {exc}") from exc
            idx = ipr.link_lookup(ifname=self.root_link)[0]
            ipr.addr("add", index=idx, address=self.root_address, prefixlen=self.underlay.prefixlen)
            ipr.link("set", index=idx, state="up")
        links.set_master(self.outside, "up0", "lan0")
        links.up(self.outside, "up0")

    def _build_host(self, host: Host) -> None:
        ns = host.namespace
        netns.create(ns)
        prefixlen = self.underlay.prefixlen
        if host.behind_nat:
            assert host.nat_namespace is not None and host.public_address is not None
            behind_a_home_router(
                host.nat_namespace,
                ns,
                self.outside,
                host.index,
                f"{host.public_address}/{prefixlen}",
                host.address,
                NC_PORT,
            )
        else:
            links.veth(ns, "eth0", self.outside, f"h{host.index}")
            links.set_master(self.outside, f"h{host.index}", "lan0")
            links.add_address(ns, "eth0", f"{host.address}/{prefixlen}")
        if self.flavour == "vde":
            host_dir = self.run_dir / host.node
            host_dir.mkdir(parents=True, exist_ok=True)
            if self.segments is not None:
                return  # its segments' switches come with the segments (carry_segment)
            host.switch = vde.VdeSwitch(
                host_dir / "sw", host_dir / "mgmt", numports=SWITCH_PORTS, log=host_dir / "switch.log", netns=ns
            )
            host.switch.start()

    def _cable(self, first: Host, host: Host) -> None:
        """Join ``host``'s switch to the first host's: the far host dials, so a NAT in between does not matter."""
        assert first.switch is not None and host.switch is not None
        port_here = CABLE_SWITCH_PORT_BASE + host.index
        if self.cable_kind == "unix":
            cable: Any = vde_plugs.UnixCable(
                first.switch.sock, host.switch.sock, port_a=port_here, port_b=CABLE_SWITCH_PORT_BASE
            )
            cable.start()
            first.cables.append(cable)
            return
        tcp_port = CABLE_TCP_PORT_BASE + host.index
        listener = vde_plugs.TcpCableListener(
            first.switch.sock, first.address, tcp_port, first.namespace, port_on_switch=port_here
        )
        listener.start()
        first.cables.append(listener)
        dialer = vde_plugs.TcpCableDialer(
            host.switch.sock, first.address, tcp_port, host.namespace, port_on_switch=CABLE_SWITCH_PORT_BASE
        )
        dialer.start()
        host.cables.append(dialer)

    @staticmethod
    def _wait_link(ns: str, ifname: str, timeout_s: float = 10.0) -> None:
        try:
            wait_until(lambda: links.exists(ns, ifname), timeout_s, what=f"{ifname} in {ns}", interval_s=0.05)
        except WaitTimeout:
            raise NetError(f"{ifname} did not appear in {ns} within {timeout_s:.0f} s (see the plug's log)") from None

    # -- the plan -------------------------------------------------------------------------------------------
    def apply(self, plan: NetworkPlan) -> None:
        """Make the router match ``plan`` (groups' VLANs and gateways, ingress rules, NAT)."""
        with self._lock:
            groups = list(plan.groups)
            for group in groups:
                if group.vlan not in self.vlans:
                    self._add_vlan(group)
            wanted_public = {n.public_ip for n in plan.nats}
            for ip in sorted(wanted_public - self.public_ips):
                links.add_address(self.outside, PUBLIC_LINK, f"{ip}/32")
            for ip in sorted(self.public_ips - wanted_public):
                links.del_address(self.outside, PUBLIC_LINK, f"{ip}/32")
            self.public_ips = wanted_public
            ruleset = firewall.cluster_ruleset(FIREWALL_TABLE, groups, list(plan.rules), list(plan.nats))
            firewall.apply(self.outside, ruleset)
            self.vpc_routers.apply(plan.vpcs)
            self._apply_filters(plan)

    def _apply_filters(self, plan: NetworkPlan) -> None:
        """VPC instances' security groups, on the host whose bridges hold their taps (direct: the one host).

        On vde each NIC has a bridge of its own that only its node knows (``vb<port>``): the nodes apply the
        filters there (:meth:`cloudlab.cc.cluster.ClusterController._send_port_filters`)."""
        if self.flavour != "direct" or not (plan.filters or self.filtering):
            return
        host = next(iter(self.hosts.values())).namespace
        if not self.filtering:
            links.sysctl(host, "net.bridge.bridge-nf-call-iptables", 1)  # bridged IPv4 through the inet hooks
        firewall.apply(host, instance_filters.ruleset(list(plan.filters)))
        self.filtering = True

    def _add_vlan(self, group: GroupSegment) -> None:
        """Give ``group`` its layer-2 segment on every host and its gateway ``g<vlan>`` on the router."""
        prefixlen = ipaddress.IPv4Network(group.subnet).prefixlen
        self.add_segment(group.vlan, f"{group.gateway}/{prefixlen}", self.outside, group.vlan - FIRST_VLAN)

    def add_segment(self, vid: int, gateway: str, router_ns: str, index: int) -> None:
        """A layer-2 segment ``vid`` on every host, with the router's address ``gateway`` (ADDR/PREFIX) on its
        link ``g<vid>`` in ``router_ns`` (the outside namespace, or a VPC's router); ``index`` numbers the
        segment's gateway port on a VDE switch.

        direct: one bridge per segment (``br<vlan>``) joined to the router by a veth. (A single
        VLAN-filtering bridge would do the same with one device, but kernels without
        CONFIG_BRIDGE_VLAN_FILTERING and 802.1Q exist, this CI's among them; a bridge per segment works on all.)
        vde: a VLAN on every switch, tagged on the cables, and a tap plugged into an access port of it.
        """
        first = next(iter(self.hosts.values()))
        gateway_link = f"g{vid}"
        if self.flavour == "direct":
            if not links.exists(first.namespace, f"br{vid}"):  # kept, with its guests' taps, by a rebuild
                links.bridge(first.namespace, f"br{vid}", vlan_filtering=False)
            links.veth(first.namespace, f"t{vid}", router_ns, gateway_link)
            links.set_master(first.namespace, f"t{vid}", f"br{vid}")
        elif self.segments is not None:
            self.carry_segment(vid)
            self.gateway_plugs[vid] = self.segments.gateway(vid, gateway_link, router_ns)
            self._wait_link(router_ns, gateway_link)
            links.up(router_ns, gateway_link)
        else:
            self.carry_segment(vid)
            assert first.switch is not None
            port = GATEWAY_SWITCH_PORT_BASE + index
            plug = vde_plugs.TapPlug(first.switch.sock, gateway_link, router_ns, port=port)
            plug.start()
            self._wait_link(router_ns, gateway_link)
            first.switch.set_port_vlan(port, vid)
            links.up(router_ns, gateway_link)
            self.gateway_plugs[vid] = plug
        links.add_address(router_ns, gateway_link, gateway)
        self.vlans.add(vid)

    def carry_segment(self, vid: int) -> None:
        """VLAN ``vid`` on every switch, tagged on the cables between hosts and to other clusters (vde only):
        all a cluster needs for a segment whose router is elsewhere (another cluster of the fabric).
        Fast profile: the segment's own switch on every host, and a cable of its own between hosts."""
        if self.segments is not None:
            self.segments.carry(vid)
            self.vlans.add(vid)
            return
        first = next(iter(self.hosts.values()))
        for host in self.hosts.values():
            assert host.switch is not None
            host.switch.create_vlan(vid)
            if host is first:
                trunk_ports = [CABLE_SWITCH_PORT_BASE + h.index for h in self.hosts.values() if h is not first]
                trunk_ports += [port for _, port in self.uplinks.values()]
            else:
                trunk_ports = [CABLE_SWITCH_PORT_BASE]
            for port in trunk_ports:
                host.switch.add_tagged(vid, port)
        self.vlans.add(vid)

    def uplink_port(self, peer: str) -> int:
        """The first host's switch port for the cable to cluster ``peer`` (after the cables between hosts)."""
        used = {port for _, port in self.uplinks.values()}
        if peer in self.uplinks:
            return self.uplinks[peer][1]
        first_free = CABLE_SWITCH_PORT_BASE + len(self.hosts) + 1
        port = next((p for p in range(first_free, GATEWAY_SWITCH_PORT_BASE) if p not in used), None)
        if port is None:
            raise NetError(
                f"cluster {self.cluster}: no switch port left for a cable to {peer}: fewer nodes or clusters"
            )
        return port

    def add_uplink(self, peer: str, cable: Any, port: int) -> None:
        """Supervise ``cable`` (to cluster ``peer``, on ``port``) and carry every segment already made over it."""
        with self._lock:
            self.uplinks[peer] = (cable, port)
            first = next(iter(self.hosts.values()))
            assert first.switch is not None
            for vid in sorted(self.vlans):
                first.switch.add_tagged(vid, port)

    @property
    def first_switch(self) -> vde.VdeSwitch:
        switch = next(iter(self.hosts.values())).switch
        if switch is None:
            raise NetError(f"cluster {self.cluster} has no switch (its network is {self.flavour})")
        return switch

    # -- what a node needs -----------------------------------------------------------------------------------
    def attachment(self, node: str, vlan: int) -> Attachment:
        """How ``node``'s NC attaches a NIC in ``vlan`` (added by the CC to each start request)."""
        host = self.hosts[node]
        if self.flavour == "direct":
            return Attachment(kind="bridge", bridge=f"br{vlan}", netns=host.namespace)
        if self.segments is not None:
            return Attachment(
                kind="vde",
                sock=str(self.segments.switch(node, vlan).sock),
                netns=host.namespace,
                first_port=FIRST_INSTANCE_PORT,
                last_port=SWITCH_PORTS - 1,
                mtu=self.segments.attach_mtu(),
            )
        assert host.switch is not None
        return Attachment(
            kind="vde",
            sock=str(host.switch.sock),
            mgmt=str(host.switch.mgmt),
            netns=host.namespace,
            first_port=FIRST_INSTANCE_PORT,
            last_port=SWITCH_PORTS - 1,
        )

    def nc_endpoint(self, node: str) -> tuple[str, str, str]:
        """(namespace, listen address, advertised URL) of ``node``'s NC."""
        host = self.hosts[node]
        return host.namespace, host.address, f"http://{host.public_address}:{NC_PORT}"

    # -- supervision ------------------------------------------------------------------------------------------
    def processes(self) -> list[tuple[str, Any]]:
        found: list[tuple[str, Any]] = []
        for host in self.hosts.values():
            if host.switch is not None:
                found.append((f"switch {host.node}", host.switch))
            for cable in host.cables:
                found.append((f"cable {host.node}", cable))
        for vid, plug in sorted(self.gateway_plugs.items()):
            found.append((f"gateway plug {vid}", plug))
        for peer, (cable, _port) in sorted(self.uplinks.items()):
            found.append((f"cluster cable {peer}", cable))
        if self.segments is not None:  # switches before the gateway plugs, which die with them and follow
            found = self.segments.processes() + found
        return found

    def supervise_once(self) -> list[str]:
        """Restart dead switches, cables and plugs; return what happened (for the log and status)."""
        events: list[str] = []
        with self._lock:
            for label, proc in self.processes():
                if proc.alive():
                    continue
                try:
                    proc.restart()
                    event = f"{time.strftime('%H:%M:%S')} {label} died; restarted"
                    if label.startswith("switch"):  # the nodes plug their instances in again themselves
                        self._reattach_after_switch(label.split(" ", 1)[1])
                    elif label.startswith("segment switch") and self.segments is not None:
                        _, _, node, _, vid = label.split(" ")
                        self.segments.reattach(node, int(vid))
                except Exception as exc:  # reported, retried on the next round
                    event = f"{time.strftime('%H:%M:%S')} {label} died; restart failed: {exc}"
                log.warning("cluster %s: %s", self.cluster, event)
                events.append(event)
                self.history.append(event)
        del self.history[:-20]
        return events

    def _reattach_after_switch(self, node: str) -> None:
        """A restarted switch loses its connections: the plugs and cables into it must dial again."""
        host = self.hosts[node]
        for cable in host.cables:
            if cable.alive():
                cable.restart()
        if host is next(iter(self.hosts.values())):
            for plug in self.gateway_plugs.values():
                plug.restart()
            for cable, _port in self.uplinks.values():  # (the far end's dialer sees its cable drop and dials again)
                cable.restart()
        for other in self.hosts.values():
            if other is not host:
                for cable in other.cables:
                    cable.restart()

    def describe(self) -> dict[str, Any]:
        return {
            "flavour": self.flavour,
            "vde_profile": self.profile,
            "subnet": self.subnet,
            "underlay": str(self.underlay),
            "namespaces": {
                "outside": self.outside,
                **{h.node: h.namespace for h in self.hosts.values()},
                **{f"nat {h.node}": h.nat_namespace for h in self.hosts.values() if h.nat_namespace},
            },
            "hosts": [
                {
                    "node": h.node,
                    "namespace": h.namespace,
                    "address": h.address,
                    "behind_nat": h.behind_nat,
                    "reached_at": h.public_address,
                }
                for h in self.hosts.values()
            ],
            "processes": [{"role": label} | proc.describe() for label, proc in self.processes()],
            "vlans": sorted(self.vlans),
            "vpc_routers": self.vpc_routers.describe(),
            "vpc_public_ips": self.vpc_routers.public_routes(),
            "edge": self.edge,
            "public_ips": sorted(self.public_ips),
            "history": self.history[-10:],
            "healthy": all(proc.alive() for _, proc in self.processes()),
        }

    # -- teardown ----------------------------------------------------------------------------------------------
    def teardown(self) -> None:
        """Stop every process and remove every namespace and link this cluster made (idempotent)."""
        for _label, proc in reversed(self.processes()):
            try:
                proc.stop()
            except Exception as exc:
                log.warning("stopping %s failed: %s", _label, exc)
        self.gateway_plugs = {}
        self.uplinks = {}
        self.edge = None
        for host in self.hosts.values():
            host.switch = None
            host.cables = []
        if self.segments is not None:
            self.segments.clear()
        sweep(self.prefix)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.vlans.clear()
        self.vpc_routers.reset()
        self.public_ips.clear()
        self.filtering = False
        self.built = False
