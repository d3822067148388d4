"""A node's NICs: where each instance's NIC goes, its byte counters, and plugging VDE NICs in again.

Mixed into :class:`~cloudlab.nc.node.NodeController`, as :class:`~cloudlab.nc.disks.NodeDisks` is: the node's
one job is libvirt, and its NICs are the part of that job that also speaks to bridges and VDE switches.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

import libvirt

from cloudlab import contract as c
from cloudlab.errors import CloudError
from cloudlab.nc.domain_xml import Nic, tap_of
from cloudlab.nc.vde_nics import PlugPlace, VdeNics, bridge_name
from cloudlab.net import NetError, firewall, instance_filters, links, vde

log = logging.getLogger(__name__)


def vde_port_counters(text: str) -> dict[int, tuple[int, int]]:
    """Port → (bytes into the switch, bytes out of it), from vde_switch's ``port/print``.

    Each port's block reads ``Port 0005 untagged_vlan=... ACTIVE ...`` then ``IN:  pkts N bytes N`` and
    ``OUT: pkts N bytes N`` (IN is what the port's plug sent to the switch).
    """
    counters: dict[int, list[int]] = {}
    port: int | None = None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "Port" and parts[1].isdigit():
            port = int(parts[1])
            counters[port] = [0, 0]
        elif port is not None and parts and parts[0] in ("IN:", "OUT:") and "bytes" in parts[:-1]:
            with contextlib.suppress(ValueError):
                counters[port][0 if parts[0] == "IN:" else 1] = int(parts[parts.index("bytes") + 1])
    return {p: (c[0], c[1]) for p, c in counters.items()}


def places_of(domains: dict[str, tuple[Any, dict[str, str]]]) -> dict[str, PlugPlace]:
    """Where each of ``domains`` (by instance id) has its VDE NIC plugged (those without one left out)."""
    return {name: place for name, (_dom, meta) in domains.items() if (place := PlugPlace.from_metadata(meta))}


class NodeNics:
    """The node controller's NIC operations."""

    name: str
    kind: str
    vde_nics: VdeNics
    _nic_where: dict[tuple[str, int], str]
    _vde_mgmt: dict[str, vde.VdeManagement]
    _vde_lock: threading.Lock
    _port_filters: tuple[c.InstanceFilter, ...] = ()  # the cluster's, from the CC (PortFilters)
    _port_filters_applied: dict[str, str]

    def _domains(self) -> dict[str, tuple[Any, dict[str, str]]]:
        raise NotImplementedError

    # -- network byte counters (for the accounting ledger) -------------------------------------------------------
    def _nic_counters(self, name: str, dom: Any) -> tuple[int, int] | None:
        """(received, sent) bytes of a running domain's NIC, seen from the guest; None where unknown.

        Every NIC is a tap libvirt knows (on VDE too, see :mod:`cloudlab.nc.vde_nics`), whose counters
        ``interfaceStats`` reads from the guest's side; a new tap per start means no baseline to subtract.
        """
        if self.kind != "qemu":
            return None  # the test driver's domains have no NIC
        try:
            key = (dom.UUIDString(), dom.ID())
            tap = self._nic_where.get(key)
            if tap is None:
                tap = self._nic_where[key] = tap_of(dom.XMLDesc(0)) or ""
            if tap:
                stats = dom.interfaceStats(tap)
                return int(stats[0]), int(stats[4])
        except (libvirt.libvirtError, OSError, ValueError, IndexError) as exc:
            log.debug("node %s: no byte counters for %s: %s", self.name, name, exc)
        return None

    def _vde_ports(self, mgmt: str) -> dict[int, tuple[int, int]] | None:
        """The port counters of the switch managed at ``mgmt`` (a kept connection, made again once on failure)."""
        with self._vde_lock:
            for _attempt in range(2):
                link = self._vde_mgmt.get(mgmt)
                try:
                    if link is None:
                        link = self._vde_mgmt[mgmt] = vde.VdeManagement(Path(mgmt))
                    return vde_port_counters(link.command("port/print"))
                except (NetError, OSError) as exc:
                    stale = self._vde_mgmt.pop(mgmt, None)
                    if stale is not None:
                        with contextlib.suppress(Exception):
                            stale.close()
                    log.debug("node %s: switch %s: %s", self.name, mgmt, exc)
        return None

    def _check_plugs(self, running: dict[str, tuple[Any, dict[str, str]]]) -> None:
        """Plug the ``running`` instances' VDE NICs in again where a switch, a plug or an earlier NC was lost."""
        places = [place for _dom, meta in running.values() if (place := PlugPlace.from_metadata(meta)) is not None]
        if places:
            active = {}
            for mgmt in {p.mgmt for p in places if p.managed}:
                ports = self._vde_ports(mgmt)
                active[mgmt] = set(ports) if ports is not None else None
            self.vde_nics.check(places, active)
        self._apply_port_filters(places_of(running))

    # -- security groups on VDE ports (see cloudlab.net.instance_filters) ------------------------------------------
    def set_port_filters(self, request: c.PortFilters) -> c.NetworkApplied:
        """Keep the cluster's VPC instance filters and apply those of this node's running instances at once (the
        heartbeat applies them again as instances come and go: a port exists only once its instance runs)."""
        self._port_filters = request.filters
        running = {name: found for name, found in self._domains().items() if found[0].isActive()}
        self._apply_port_filters(places_of(running))
        return c.NetworkApplied(applied=True)

    def _apply_port_filters(self, places: dict[str, PlugPlace]) -> None:
        """One table per host namespace: each running instance's filter on its own bridge ``vb<port>``."""
        filters, applied = self._port_filters, self._port_filters_applied
        if not filters and not applied:
            return
        with self._vde_lock:
            for ns in {p.netns for p in places.values()} | set(applied):
                mine = [f for f in filters if f.instance_id in places and places[f.instance_id].netns == ns]
                ports = {
                    f.instance_id: (bridge_name(places[f.instance_id].port), places[f.instance_id].port) for f in mine
                }
                text = instance_filters.ruleset(mine, ports=ports)
                if applied.get(ns) == text:
                    continue
                if ns not in applied:
                    links.sysctl(ns, "net.bridge.bridge-nf-call-iptables", 1)  # bridged IPv4 through the inet hooks
                firewall.apply(ns, text)
                applied[ns] = text

    # -- NICs -------------------------------------------------------------------------------------------------
    def _nic(self, plan: c.NicPlan) -> tuple[Nic, PlugPlace | None]:
        """The NIC for a start request, and on VDE where it is plugged (the node's lock is held: a port is
        picked among those no domain of this node holds)."""
        attach = plan.attach
        if attach is None:
            raise CloudError("InvalidParameterValue", f"the NIC of {plan.instance_id} has no attachment on this host")
        if attach.kind == "bridge":
            assert attach.bridge is not None
            return Nic(plan.mac, plan.address, plan.gateway, bridge=attach.bridge), None
        if attach.sock is None:
            raise CloudError("InvalidParameterValue", f"the VDE attachment of {plan.instance_id} names no switch")
        first, last = attach.first_port or 0, attach.last_port or 0
        taken = set()
        for _dom, meta in self._domains().values():
            place = PlugPlace.from_metadata(meta)
            if place is not None:
                taken.add(place.port)
        port = next((p for p in range(first, last + 1) if p not in taken), None)
        if port is None:
            raise CloudError("InsufficientInstanceCapacity", f"node {self.name}'s VDE switch has no free port")
        place = PlugPlace(attach.sock, attach.mgmt or "", port, plan.vlan, attach.netns, attach.mtu or 0)
        return Nic(plan.mac, plan.address, plan.gateway, bridge=bridge_name(port), mtu=attach.mtu or 0), place
