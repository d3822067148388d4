"""Re-pluggable VDE NICs: an instance's NIC stays in the kernel, and a supervised ``vde_plug`` joins it to the switch.

QEMU's own VDE back-end holds the switch connection inside the guest's process and never dials again: a
restarted ``vde_switch`` left every instance on it without a link until it was stopped and started. Here each
instance on switch port ``P`` gets, in its host's namespace, a small Linux bridge ``vbP`` holding the tap that
libvirt makes for the guest and a persistent tap ``vpP`` that a ``vde_plug`` process joins to port ``P``. The
plug is the only thing that talks to the switch, so when the switch (or the plug, or the NC) is restarted the
node simply plugs ``vpP`` in again and puts the port back in the instance's VLAN; the guest sees its link blink.
The network benchmark measured the extra tap + bridge hop as costing nothing at MTU 1500, and the NIC is now a
kernel interface that byte counters (``interfaceStats``) and packet filters can see.

Where each plug goes is kept in the domain's cloudlab metadata, so an NC restarted after a kill adopts the
plugs of the instances it finds (ending the plug processes its predecessor left, which hold the taps).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from cloudlab import processes
from cloudlab.net import NetError, links, vde, vde_plugs

log = logging.getLogger(__name__)

#: Metadata keys a VDE NIC's domain carries (strings, as all cloudlab metadata).
META_SOCK, META_MGMT, META_PORT, META_VLAN, META_NETNS = "vde_sock", "vde_mgmt", "vde_port", "vde_vlan", "vde_netns"
META_MTU = "vde_mtu"  # only on a fast segment's NIC (cloudlab.cc.segments), whose links all run at that MTU


def bridge_name(port: int) -> str:
    """The per-instance bridge that holds the guest's tap and the plug's tap."""
    return f"vb{port}"


def plug_tap_name(port: int) -> str:
    """The persistent tap the ``vde_plug`` process holds."""
    return f"vp{port}"


@dataclass(frozen=True)
class PlugPlace:
    """Where one instance's NIC is plugged: the switch, its port, the VLAN of the port, the host namespace.

    On the fast profile's segment switch (``mgmt`` empty) there is no management: the switch is the segment's
    own, so no VLAN is set, the port number only names the bridge and tap, and every link runs at ``mtu``."""

    sock: str
    mgmt: str
    port: int
    vlan: int
    netns: str
    mtu: int = 0  # 0: the kernel's default (1500)

    @property
    def managed(self) -> bool:
        """Whether the switch is a ``vde_switch`` whose port must be put in the instance's VLAN."""
        return bool(self.mgmt)

    def metadata(self) -> dict[str, str]:
        meta = {
            META_SOCK: self.sock,
            META_MGMT: self.mgmt,
            META_PORT: str(self.port),
            META_VLAN: str(self.vlan),
            META_NETNS: self.netns,
        }
        if self.mtu:
            meta[META_MTU] = str(self.mtu)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> PlugPlace | None:
        """The place recorded in a domain's metadata; None for a domain without a VDE NIC."""
        try:
            return cls(
                meta[META_SOCK],
                meta[META_MGMT],
                int(meta[META_PORT]),
                int(meta[META_VLAN]),
                meta[META_NETNS],
                int(meta.get(META_MTU, 0)),
            )
        except (KeyError, ValueError):
            return None


class VdeNics:
    """The node's VDE plugs: made at start, checked at every heartbeat, plugged in again when they lost the switch."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.replugs = 0
        self._plugs: dict[int, vde_plugs.TapPlug] = {}
        self._in_vlan: set[int] = set()  # ports whose VLAN is set on the switch the plug is connected to
        self._lock = threading.Lock()

    def prepare(self, place: PlugPlace) -> str:
        """Make the bridge and the plugged tap for ``place`` (idempotent); return the bridge for libvirt."""
        bridge = bridge_name(place.port)
        with self._lock:
            if not links.exists(place.netns, bridge):
                links.bridge(place.netns, bridge, vlan_filtering=False)
            if place.mtu:
                links.set_mtu(place.netns, bridge, place.mtu)
            self._plug(place)
        return bridge

    def _plug(self, place: PlugPlace) -> None:
        """(Re)start the plug of ``place`` and put its port in the instance's VLAN (the lock is held)."""
        plug = self._plugs.get(place.port)
        if plug is None:
            _end_stale_plugs(place)
            plug = _tap_plug(place)
            self._plugs[place.port] = plug
        else:
            plug.stop()
        self._in_vlan.discard(place.port)
        plug.start()
        links.set_master(place.netns, plug.tap, bridge_name(place.port))
        links.up(place.netns, plug.tap)
        self._join_vlan(place)

    def _join_vlan(self, place: PlugPlace) -> None:
        """Put the port in the instance's VLAN: fails while a restarted switch does not have the VLAN yet."""
        if not place.managed:
            return  # a segment switch of its own: nothing to join
        with vde.VdeManagement(Path(place.mgmt)) as management:
            management.set_port_vlan(place.port, place.vlan)
        self._in_vlan.add(place.port)

    def check(self, places: list[PlugPlace], active_ports: dict[str, set[int] | None]) -> list[str]:
        """Plug in again every running instance's NIC whose plug died or whose port the switch lost.

        ``active_ports`` maps a switch's management socket to the ports it has connected (None when the
        switch does not answer: it is being restarted, so nothing can be plugged now; the next check will).
        A segment switch has no management: its plug ends when the switch does, so a dead plug is the sign
        (plugging in fails while the switch is not back, and the next check tries again).
        """
        events = []
        with self._lock:
            for place in places:
                ports = active_ports.get(place.mgmt) if place.managed else {place.port}
                if ports is None:
                    continue
                plug = self._plugs.get(place.port)
                try:
                    if plug is not None and plug.alive() and place.port in ports:
                        if not place.managed:
                            continue
                        if place.port not in self._in_vlan:
                            self._join_vlan(place)
                            events.append(f"port {place.port} put in VLAN {place.vlan} again")
                        continue
                    self._plug(place)
                except (NetError, OSError) as exc:
                    log.warning("node %s: plugging port %d in again failed: %s", self.node, place.port, exc)
                    continue
                self.replugs += 1
                events.append(f"port {place.port} plugged in again")
                log.info("node %s: VDE port %d of %s plugged in again", self.node, place.port, place.sock)
        return events

    def remove(self, place: PlugPlace) -> None:
        """Unplug and delete the NIC's tap and bridge (the instance is gone)."""
        with self._lock:
            plug = self._plugs.pop(place.port, None)
            self._in_vlan.discard(place.port)
            if plug is None:
                _end_stale_plugs(place)
                plug = _tap_plug(place)
            with contextlib.suppress(NetError, OSError):
                plug.remove()
            with contextlib.suppress(NetError, OSError):
                links.delete(place.netns, bridge_name(place.port))

    def close(self) -> None:
        """Stop the plug processes (their taps stay, so the next NC plugs them in again)."""
        with self._lock:
            for plug in self._plugs.values():
                plug.stop()
            self._plugs.clear()


def _tap_plug(place: PlugPlace) -> vde_plugs.TapPlug:
    """The plug of ``place``'s tap: on a ``vde_switch`` pinned to the instance's port; on a segment switch
    (which numbers its ports itself) unpinned, its tap at the segment's MTU."""
    if not place.managed:
        return vde_plugs.TapPlug(place.sock, plug_tap_name(place.port), place.netns, mtu=place.mtu or None)
    return vde_plugs.TapPlug(place.sock, plug_tap_name(place.port), place.netns, port=place.port)


def _end_stale_plugs(place: PlugPlace) -> None:
    """End ``vde_plug`` processes an earlier NC left on this tap: a tap has one reader, so a new plug needs it."""
    tap, switch = f"tap://{plug_tap_name(place.port)}".encode(), f"vde://{place.sock}".encode()
    stale = [
        pid
        for pid, words in processes.command_lines()
        if words
        and Path(words[0].decode(errors="replace")).name == "vde_plug"
        and tap in words
        and any(w.startswith(switch) for w in words)
    ]
    if stale:  # the tap is free only once they are gone
        log.info("ending stale plugs %s on %s", stale, tap.decode())
        processes.end(stale, timeout_s=5.0)
