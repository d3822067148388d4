"""The host side of a cluster network: the root namespace's routes (so ranges never collide with the host's),
a free underlay, a simulated host behind a home router, and the sweep that removes everything a cloud's
networks made (``cloudlab down``, a rebuild).

Split from :mod:`cloudlab.cc.network` (which re-exports these names) so that the cluster network reads as
its build, plan, supervision and teardown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cloudlab.images.cached import locked
from cloudlab.net import NetError, links, netns

T = TypeVar("T")


def host_routes(exclude: str | None = None) -> list[tuple[ipaddress.IPv4Network, str]]:
    """The root namespace's IPv4 routes (not the default route, loopback or ``exclude``'s) with their devices."""
    return _off_event_loop(lambda: _host_routes(exclude))


def _host_routes(exclude: str | None) -> list[tuple[ipaddress.IPv4Network, str]]:
    found = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for route in ipr.get_routes(family=2):
            dst = route.get_attr("RTA_DST")
            if dst is None:
                continue  # the default route: cloudlab never sends there, so it cannot collide
            net = ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False)
            dev = names.get(route.get_attr("RTA_OIF"), "?")
            if dev != exclude and not net.is_loopback:
                found.append((net, dev))
    return found


def free_underlay(prefix: str, prefer: str | None = None) -> ipaddress.IPv4Network:
    """The first 10.253.N.0/24 no route of this host uses (so several clouds can run side by side), or
    ``prefer`` (the underlay a killed run of this cloud left, see network_adoption) while no other route uses it."""
    taken = [net for net, dev in host_routes(exclude=prefix)]
    if prefer is not None:
        try:
            wanted = ipaddress.IPv4Network(prefer)
        except ValueError:
            wanted = None
        if wanted is not None and not any(wanted.overlaps(t) for t in taken):
            return wanted
    for n in range(256):
        candidate = ipaddress.IPv4Network(f"10.253.{n}.0/24")
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise NetError("no free /24 in 10.253.0.0/16 for the underlay: pass --underlay CIDR")


def underlay_lock_path() -> Path:
    """The host-wide lock file of automatic underlays (beside the clouds' short socket paths)."""
    return Path("/run/cloudlab" if os.access("/run", os.W_OK) else "/tmp/cloudlab") / "underlay.lock"


@contextlib.contextmanager
def underlay_lock() -> Iterator[None]:
    """Held from choosing an automatic underlay until its route is on the root veth: two clouds starting at
    once would otherwise both see the same 10.253.N.0/24 free (the route appears only when it is built)."""
    with locked(underlay_lock_path()):
        yield


def _off_event_loop(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a worker thread when this thread runs an asyncio loop (a Jupyter kernel's, say):
    pyroute2's synchronous netlink sockets refuse to open inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


def sweep(prefix: str) -> list[str]:
    """Remove every namespace named ``<prefix>-*`` (killing what runs inside) and the root veth ``prefix``."""
    return _off_event_loop(lambda: _sweep(prefix))


def _sweep(prefix: str) -> list[str]:
    removed = []
    for name in netns.names(prefix + "-"):
        netns.kill_all(name)
        netns.remove(name)
        removed.append(name)
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=prefix)
        if found:
            try:
                ipr.link("del", index=found[0])
                removed.append(prefix)
            except NetlinkError as exc:
                if exc.code != 19:
                    raise
    return removed


def behind_a_home_router(
    nat: str, ns: str, outside: str, index: int, public_cidr: str, address: str, nc_port: int
) -> None:
    """Host namespace ``ns`` behind NAT namespace ``nat``, whose ``wan0`` (``public_cidr``) is on the
    underlay bridge as ``n<index>``: what the host dials out (registration, cables) is masqueraded and only
    the NC's port is forwarded in, as an administrator would do for a node behind a home router."""
    netns.create(nat)
    links.veth(nat, "wan0", outside, f"n{index}")
    links.set_master(outside, f"n{index}", "lan0")
    links.add_address(nat, "wan0", public_cidr)
    links.veth(nat, "in0", ns, "eth0")
    inner = f"192.168.{100 + index}"
    links.add_address(nat, "in0", f"{inner}.1/24")
    links.add_address(ns, "eth0", f"{address}/24")
    links.add_route(ns, "0.0.0.0/0", gateway=f"{inner}.1")
    links.sysctl(nat, "net.ipv4.ip_forward", 1)
    rules = (
        "table ip cloudlab_nat {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat;\n"
        f'    iifname "wan0" tcp dport {nc_port} dnat to {address}:{nc_port}\n'
        "  }\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat;\n"
        '    oifname "wan0" masquerade\n'
        "  }\n"
        "}\n"
    )
    netns.run(nat, ["nft", "-f", "-"], input=rules)
