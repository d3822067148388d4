"""Links, addresses, routes and bridge VLANs inside cloudlab's namespaces, through netlink (pyroute2).

Every function takes the namespace first and opens a netlink socket bound to that namespace for the call only,
so nothing here can touch the host's own network by accident and no socket outlives its use.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cloudlab.net import NetError
from cloudlab.net import netns as _netns

BRIDGE_FLAGS_SELF = 2  # IFLA_BRIDGE_FLAGS: the VLAN entry is for the bridge device itself, not a port


@contextmanager
def _ipr(ns: str) -> Iterator[IPRoute]:
    """A netlink socket inside ``ns`` that never creates the namespace (flags=0): a typo must fail, not build."""
    if not _netns.exists(ns):
        raise NetError(f"network namespace {ns} does not exist: create it first (netns.create)")
    ipr = IPRoute(netns=ns, flags=0)
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: IPRoute, ns: str, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetError(f"no interface {ifname} in namespace {ns}: create it first")
    return int(found[0])


def _fail(what: str, exc: NetlinkError) -> NetError:
    return NetError(f"{what} failed: {exc.args[-1] if exc.args else exc} (errno {exc.code})")


def exists(ns: str, ifname: str) -> bool:
    """Whether interface ``ifname`` exists in ``ns``."""
    with _ipr(ns) as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


def names_of_kind(ns: str, kind: str) -> list[str]:
    """The interfaces of ``ns`` whose link kind is ``kind`` (``veth``, ``bridge``, ``tun``...)."""
    found = []
    with _ipr(ns) as ipr:
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            if info is not None and info.get_attr("IFLA_INFO_KIND") == kind:
                found.append(link.get_attr("IFLA_IFNAME"))
    return sorted(found)


def index(ns: str, ifname: str) -> int:
    """The ifindex of ``ifname`` in ``ns`` (NetError if absent)."""
    with _ipr(ns) as ipr:
        return _index(ipr, ns, ifname)


def up(ns: str, ifname: str) -> None:
    """Bring ``ifname`` up (links are created down; nothing flows until this)."""
    with _ipr(ns) as ipr:
        try:
            ipr.link("set", index=_index(ipr, ns, ifname), state="up")
        except NetlinkError as exc:
            raise _fail(f"bringing {ifname} up in {ns}", exc) from exc


def delete(ns: str, ifname: str) -> None:
    """Delete ``ifname`` from ``ns`` (idempotent: an absent link is already deleted)."""
    with _ipr(ns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            try:
                ipr.link("del", index=found[0])
            except NetlinkError as exc:
                if exc.code != 19:  # ENODEV: vanished meanwhile (e.g. the veth peer went)
                    raise _fail(f"deleting {ifname} in {ns}", exc) from exc


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """A veth pair with ``name_a`` in ``ns_a`` and ``name_b`` in ``ns_b``, both up: the cable between two hosts."""
    if not _netns.exists(ns_b):
        raise NetError(f"network namespace {ns_b} does not exist: create it first (netns.create)")
    with _ipr(ns_a) as ipr:
        try:
            if ns_a == ns_b:
                ipr.link("add", ifname=name_a, kind="veth", peer=name_b)
            else:
                ipr.link("add", ifname=name_a, kind="veth", peer={"ifname": name_b, "net_ns_fd": ns_b})
        except NetlinkError as exc:
            raise _fail(f"creating veth {ns_a}:{name_a} <-> {ns_b}:{name_b} (names must be free)", exc) from exc
    try:
        up(ns_a, name_a)
        up(ns_b, name_b)
    except NetError:
        delete(ns_a, name_a)
        raise


def dummy(ns: str, name: str) -> None:
    """A dummy interface (up): an address holder that needs no peer, e.g. a public-address anchor."""
    try:
        _add_link(ns, name, kind="dummy")
    except NetError as exc:
        if "errno 95" in str(exc):
            raise NetError(
                f"creating dummy {name} in {ns} failed: this kernel lacks CONFIG_DUMMY; "
                "hold the address on a veth end instead (veth() into a spare namespace)"
            ) from exc
        raise


def bridge(ns: str, name: str, vlan_filtering: bool = True) -> None:
    """A Linux bridge (up); with VLAN filtering each port carries only the VLANs (security groups) it is given.

    Some kernels are built without CONFIG_BRIDGE_VLAN_FILTERING; there the fallback is one bridge per VLAN
    (``vlan_filtering=False``), see :func:`supports_vlan_filtering`.
    """
    if vlan_filtering:
        try:
            _add_link(ns, name, kind="bridge", br_vlan_filtering=1)
        except NetError as exc:
            if "errno 95" in str(exc):
                raise NetError(
                    f"creating VLAN-filtering bridge {name} in {ns} failed: this kernel lacks "
                    "CONFIG_BRIDGE_VLAN_FILTERING; use one bridge per VLAN (bridge(..., vlan_filtering=False))"
                ) from exc
            raise
    else:
        _add_link(ns, name, kind="bridge")


def _probe(kind: str, **spec: Any) -> bool:
    """Whether the kernel can create a link of ``kind`` (tried in a throwaway namespace, never the host's)."""
    probe = f"clprobe{os.getpid():x}"
    _netns.create(probe)
    try:
        with _ipr(probe) as ipr:
            try:
                ipr.link("add", ifname="p0", kind="veth", peer="p0peer")
                if kind == "vlan":
                    spec["link"] = _index(ipr, probe, "p0")
                ipr.link("add", ifname="p1", kind=kind, **spec)
            except NetlinkError:
                return False
            return True
    finally:
        _netns.remove(probe)


_SUPPORT: dict[str, bool] = {}


def supports_vlan_filtering() -> bool:
    """Whether this kernel has bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING); probed once."""
    if "vlan_filtering" not in _SUPPORT:
        _SUPPORT["vlan_filtering"] = _probe("bridge", br_vlan_filtering=1)
    return _SUPPORT["vlan_filtering"]


def supports_dummy() -> bool:
    """Whether this kernel has dummy interfaces (CONFIG_DUMMY); probed once."""
    if "dummy" not in _SUPPORT:
        _SUPPORT["dummy"] = _probe("dummy")
    return _SUPPORT["dummy"]


def supports_8021q() -> bool:
    """Whether this kernel has 802.1Q sub-interfaces (CONFIG_VLAN_8021Q); probed once."""
    if "8021q" not in _SUPPORT:
        _SUPPORT["8021q"] = _probe("vlan", vlan_id=5)
    return _SUPPORT["8021q"]


def _add_link(ns: str, name: str, **spec: Any) -> None:
    with _ipr(ns) as ipr:
        try:
            ipr.link("add", ifname=name, **spec)
        except NetlinkError as exc:
            raise _fail(f"creating {spec.get('kind')} {name} in {ns}", exc) from exc
    try:
        up(ns, name)
    except NetError:
        delete(ns, name)
        raise


def tap(ns: str, name: str) -> None:
    """A persistent tap (up) in ``ns``: a vde_plug or QEMU attaches to it, and it outlives their restarts.

    Idempotent: the kernel re-opens an existing persistent tap of that name instead of failing.
    """
    _add_link(ns, name, kind="tuntap", mode="tap")


def set_mtu(ns: str, ifname: str, mtu: int) -> None:
    """Set ``ifname``'s MTU (jumbo frames on a fast VDE segment: every link of the segment carries the same)."""
    with _ipr(ns) as ipr:
        try:
            ipr.link("set", index=_index(ipr, ns, ifname), mtu=int(mtu))
        except NetlinkError as exc:
            raise _fail(f"setting the MTU of {ifname} in {ns} to {mtu}", exc) from exc


def mtu(ns: str, ifname: str) -> int:
    """``ifname``'s MTU."""
    with _ipr(ns) as ipr:
        return int(ipr.link("get", index=_index(ipr, ns, ifname))[0].get_attr("IFLA_MTU"))


def set_master(ns: str, ifname: str, bridge: str) -> None:
    """Enslave ``ifname`` to ``bridge`` (a port; with VLAN filtering it starts as an access port of VLAN 1)."""
    with _ipr(ns) as ipr:
        try:
            ipr.link("set", index=_index(ipr, ns, ifname), master=_index(ipr, ns, bridge))
        except NetlinkError as exc:
            raise _fail(f"adding {ifname} to bridge {bridge} in {ns}", exc) from exc


def _check_vid(vid: int) -> None:
    if not 1 <= int(vid) <= 4094:
        raise NetError(f"VLAN id {vid} out of range: use 1-4094")


def _is_bridge(ipr: IPRoute, idx: int) -> bool:
    link = ipr.link("get", index=idx)[0]
    info = link.get_attr("IFLA_LINKINFO")
    return bool(info) and info.get_attr("IFLA_INFO_KIND") == "bridge"


def bridge_vlan_add(ns: str, ifname: str, vid: int, pvid: bool = False, untagged: bool = False) -> None:
    """Make ``ifname`` (a bridge port, or the bridge itself) a member of VLAN ``vid``."""
    _check_vid(vid)
    flags = (2 if pvid else 0) | (4 if untagged else 0)
    with _ipr(ns) as ipr:
        idx = _index(ipr, ns, ifname)
        extra = {"vlan_flags": BRIDGE_FLAGS_SELF} if _is_bridge(ipr, idx) else {}
        try:
            ipr.vlan_filter("add", index=idx, vlan_info={"vid": int(vid), "flags": flags}, **extra)
        except NetlinkError as exc:
            raise _fail(f"adding VLAN {vid} to {ifname} in {ns} (port of a vlan_filtering bridge?)", exc) from exc


def bridge_vlan_del(ns: str, ifname: str, vid: int) -> None:
    """Remove VLAN ``vid`` from ``ifname`` (idempotent)."""
    _check_vid(vid)
    with _ipr(ns) as ipr:
        idx = _index(ipr, ns, ifname)
        extra = {"vlan_flags": BRIDGE_FLAGS_SELF} if _is_bridge(ipr, idx) else {}
        try:
            ipr.vlan_filter("del", index=idx, vlan_info={"vid": int(vid)}, **extra)
        except NetlinkError as exc:
            if exc.code not in (2, 22):  # ENOENT / EINVAL: not a member, nothing to remove
                raise _fail(f"removing VLAN {vid} from {ifname} in {ns}", exc) from exc


def bridge_vlan_info(ns: str) -> dict[str, list[dict[str, Any]]]:
    """Per interface, its VLAN entries as ``{"vid", "pvid", "untagged"}`` (what `bridge vlan show` prints)."""
    out: dict[str, list[dict[str, Any]]] = {}
    with _ipr(ns) as ipr:
        for msg in ipr.get_vlans():
            name = msg.get_attr("IFLA_IFNAME")
            spec = msg.get_attr("IFLA_AF_SPEC")
            entries = []
            if spec is not None:
                for key, value in spec["attrs"]:
                    if key == "IFLA_BRIDGE_VLAN_INFO":
                        flags = int(value["flags"])
                        entries.append({"vid": int(value["vid"]), "pvid": bool(flags & 2), "untagged": bool(flags & 4)})
            out.setdefault(name, []).extend(entries)
    return out


def bridge_vlans(ns: str) -> dict[str, list[int]]:
    """Per interface (ports and bridges) of ``ns``, the sorted VLAN ids it is a member of."""
    return {name: sorted(e["vid"] for e in entries) for name, entries in bridge_vlan_info(ns).items()}


def access_port(ns: str, ifname: str, vid: int) -> None:
    """Make ``ifname`` an access port of VLAN ``vid`` only (untagged, PVID): an instance NIC in one group."""
    for entry in bridge_vlan_info(ns).get(ifname, []):
        if entry["vid"] != vid:
            bridge_vlan_del(ns, ifname, entry["vid"])
    bridge_vlan_add(ns, ifname, vid, pvid=True, untagged=True)


def trunk_port(ns: str, ifname: str, vids: list[int]) -> None:
    """Make ``ifname`` a tagged member of each VLAN in ``vids`` (and nothing else): an uplink or router leg."""
    wanted = {int(v) for v in vids}
    for entry in bridge_vlan_info(ns).get(ifname, []):
        if entry["vid"] not in wanted or entry["pvid"] or entry["untagged"]:
            bridge_vlan_del(ns, ifname, entry["vid"])
    for vid in sorted(wanted):
        bridge_vlan_add(ns, ifname, vid)


def vlan_subif(ns: str, parent: str, vid: int, name: str | None = None) -> str:
    """An 802.1Q sub-interface of ``parent`` for ``vid`` (up); returns its name (default ``parent.vid``)."""
    _check_vid(vid)
    name = name or f"{parent}.{vid}"
    if len(name) > 15:
        raise NetError(f"interface name {name!r} is longer than 15 characters: pass a shorter name")
    with _ipr(ns) as ipr:
        try:
            ipr.link("add", ifname=name, kind="vlan", link=_index(ipr, ns, parent), vlan_id=int(vid))
        except NetlinkError as exc:
            if exc.code == 95 or "Unknown device type" in str(exc):
                raise NetError(
                    f"creating VLAN {vid} sub-interface {name} in {ns} failed: this kernel lacks CONFIG_VLAN_8021Q; "
                    "give each VLAN its own untagged link instead (e.g. a vde access port per VLAN)"
                ) from exc
            raise _fail(f"creating VLAN {vid} sub-interface {name} of {parent} in {ns}", exc) from exc
    try:
        up(ns, name)
    except NetError:
        delete(ns, name)
        raise
    return name


def _interface(cidr: str) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    try:
        return ipaddress.ip_interface(cidr)
    except ValueError as exc:
        raise NetError(f"bad address {cidr!r}: write it as ADDRESS/PREFIX, e.g. 10.0.1.1/24") from exc


def addresses(ns: str, ifname: str) -> list[str]:
    """The addresses of ``ifname`` as ``ADDRESS/PREFIX`` strings."""
    with _ipr(ns) as ipr:
        idx = _index(ipr, ns, ifname)
        return [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx)]


def add_address(ns: str, ifname: str, cidr: str) -> None:
    """Give ``ifname`` the address ``cidr`` (idempotent, so reconciling a network can re-run it)."""
    iface = _interface(cidr)
    if str(iface) in addresses(ns, ifname):
        return
    with _ipr(ns) as ipr:
        try:
            ipr.addr("add", index=_index(ipr, ns, ifname), address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST
                raise _fail(f"adding {cidr} to {ifname} in {ns}", exc) from exc


def del_address(ns: str, ifname: str, cidr: str) -> None:
    """Remove ``cidr`` from ``ifname`` (idempotent)."""
    iface = _interface(cidr)
    if str(iface) not in addresses(ns, ifname):
        return
    with _ipr(ns) as ipr:
        try:
            ipr.addr("del", index=_index(ipr, ns, ifname), address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if exc.code not in (99, 2):  # EADDRNOTAVAIL / ENOENT
                raise _fail(f"removing {cidr} from {ifname} in {ns}", exc) from exc


def add_route(ns: str, dst: str, gateway: str | None = None, dev: str | None = None) -> None:
    """Add (or replace) the route to ``dst`` (a CIDR or ``default``) via ``gateway`` and/or out of ``dev``."""
    if gateway is None and dev is None:
        raise NetError(f"route to {dst} in {ns} needs a gateway or a device")
    spec: dict[str, Any] = {"dst": "0.0.0.0/0" if dst == "default" else dst}
    if dst != "default":
        try:
            spec["dst"] = str(ipaddress.ip_network(dst, strict=False))
        except ValueError as exc:
            raise NetError(f"bad route destination {dst!r}: use a CIDR such as 10.0.2.0/24 or 'default'") from exc
    if gateway is not None:
        spec["gateway"] = gateway
    with _ipr(ns) as ipr:
        if dev is not None:
            spec["oif"] = _index(ipr, ns, dev)
        try:
            ipr.route("replace", **spec)
        except NetlinkError as exc:
            raise _fail(f"adding route {dst} via {gateway or dev} in {ns}", exc) from exc


def del_route(ns: str, dst: str) -> None:
    """Remove the route to ``dst`` (a CIDR) from ``ns``; gone already is fine."""
    try:
        net = str(ipaddress.ip_network(dst, strict=False))
    except ValueError as exc:
        raise NetError(f"bad route destination {dst!r}: use a CIDR such as 10.0.2.0/24") from exc
    with _ipr(ns) as ipr:
        try:
            ipr.route("del", dst=net)
        except NetlinkError as exc:
            if exc.code not in (3, 2):  # ESRCH / ENOENT: no such route
                raise _fail(f"removing route {dst} in {ns}", exc) from exc


def route_get(ns: str, address: str) -> dict[str, Any]:
    """The route the kernel of ``ns`` picks for ``address``: ``{"dev", "gateway", "prefsrc"}`` (None if absent)."""
    with _ipr(ns) as ipr:
        try:
            msg = ipr.route("get", dst=address)[0]
        except NetlinkError as exc:
            raise _fail(f"looking up the route to {address} in {ns} (no route?)", exc) from exc
        oif = msg.get_attr("RTA_OIF")
        dev = None
        if oif is not None:
            links = ipr.link("get", index=oif)
            dev = links[0].get_attr("IFLA_IFNAME") if links else None
        return {"dev": dev, "gateway": msg.get_attr("RTA_GATEWAY"), "prefsrc": msg.get_attr("RTA_PREFSRC")}


def counters(ns: str, ifname: str) -> tuple[int, int]:
    """``(rx_bytes, tx_bytes)`` of ``ifname``: lets tests and benchmarks see where traffic actually went."""
    with _ipr(ns) as ipr:
        link = ipr.link("get", index=_index(ipr, ns, ifname))[0]
        stats = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS")
        return int(stats["rx_bytes"]), int(stats["tx_bytes"])


def sysctl(ns: str, key: str, value: str | int) -> None:
    """Set a ``net.*`` sysctl inside ``ns`` (e.g. ``net.ipv4.ip_forward=1`` on a router namespace).

    /proc/sys/net reflects the namespace of the thread that opens it, so the write happens inside
    :func:`netns.entered`.
    """
    if not key.startswith("net.") or ".." in key or "/" in key:
        raise NetError(f"sysctl {key!r} is not a per-namespace net.* key")
    path = "/proc/sys/" + key.replace(".", "/")
    with _netns.entered(ns):
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, f"{value}\n".encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise NetError(f"cannot set {key}={value} in {ns}: {exc.strerror}") from exc


def check_free_subnet(cidr: str, taken: list[str]) -> None:
    """NetError when ``cidr`` overlaps any subnet in ``taken``: two groups must never share addresses."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise NetError(f"bad subnet {cidr!r}: write it as NETWORK/PREFIX, e.g. 10.0.1.0/24") from exc
    for other in taken:
        try:
            other_net = ipaddress.ip_network(other, strict=False)
        except ValueError as exc:
            raise NetError(f"bad subnet {other!r} in the taken list") from exc
        if net.version == other_net.version and net.overlaps(other_net):
            raise NetError(f"subnet {cidr} overlaps {other}, already in use: choose a free range")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(ns: str, address: str, count: int = 2, timeout: float = 1.0) -> int:
    """ICMP echo ``address`` from inside ``ns`` ``count`` times; the number of replies (bounded: count * timeout).

    Done in Python on a raw socket because the ``ping`` binary is not guaranteed to be installed.
    """
    ident = (os.getpid() ^ int(time.monotonic_ns())) & 0xFFFF
    with _netns.entered(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    replies = 0
    with sock:
        for seq in range(count):
            payload = b"cloudlab-ping" + seq.to_bytes(2, "big")
            header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, seq) + payload
            try:
                sock.sendto(packet, (address, 0))
            except OSError:
                time.sleep(timeout)
                continue
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                data, (src, _) = sock.recvfrom(2048)
                ihl = (data[0] & 0x0F) * 4
                kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
                if kind == 0 and rid == ident and rseq == seq and src == address:
                    replies += 1
                    break
    return replies
