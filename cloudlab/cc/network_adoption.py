"""Rebuilding a cluster network around running guests, after the service that built it was killed.

A service killed with ``kill -9`` leaves its network behind: the host namespaces, in which the guests' QEMUs,
taps and bridges live, and the router's and NATs' namespaces, whose switches, cables and plugs died with the
service (a ``vde_switch`` exits when its console closes). Tearing it all down at the next ``cloudlab up`` would
end the guests, so when the leftover network was built for the same layout the next build keeps the host
namespaces, with everything the guests hold, and rebuilds the rest: the router, the NATs, the underlay links,
the switches and cables. The nodes then plug their instances' NICs in again (:mod:`cloudlab.nc.vde_nics`);
direct NICs sit on bridges that never went away.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cloudlab.net import links, netns

log = logging.getLogger(__name__)

BUILT_FILE = "built.json"  # in the network's run folder: what the network was built for
#: Programs in a host namespace that belong to the network, not to a guest: ended before the rebuild.
NETWORK_PROGRAMS = ("vde_switch", "vde_plug")


def signature(network: Any) -> dict[str, Any]:
    """What decides the network's shape: a leftover built for anything else is not adopted."""
    return {
        "cluster": network.cluster,
        "flavour": network.flavour,
        "subnet": network.subnet,
        "underlay": str(network.underlay),
        "cable": network.cable_kind,
        "profile": network.profile,
        "hosts": [[h.node, h.namespace, h.address, h.behind_nat] for h in network.hosts.values()],
    }


def note_built(network: Any) -> None:
    """Record what the network was built for, for the next build after a kill."""
    path = Path(network.run_dir) / BUILT_FILE
    path.write_text(json.dumps(signature(network)))


def recorded_underlay(run_dir: Path) -> str | None:
    """The underlay a leftover network of this state folder was built on (None: nothing left over).

    An automatic underlay is the first free /24 *at build time*: after a kill, the next ``up`` must pick
    the leftover's again, not the first one free now (other clouds come and go), or the leftover would
    not be adoptable and its guests would be ended with it."""
    try:
        recorded = json.loads((Path(run_dir) / BUILT_FILE).read_text())
    except (OSError, ValueError):
        return None
    underlay = recorded.get("underlay") if isinstance(recorded, dict) else None
    return underlay if isinstance(underlay, str) else None


def adoptable(network: Any) -> bool:
    """Whether a leftover network of the same shape still has every host namespace (with its guests)."""
    try:
        recorded = json.loads((Path(network.run_dir) / BUILT_FILE).read_text())
    except (OSError, ValueError):
        return False
    if recorded != signature(network):
        return False
    return all(netns.exists(h.namespace) for h in network.hosts.values())


def clear_around_guests(network: Any) -> list[str]:
    """Remove what the rebuild makes again, keep the host namespaces and the guests in them; return what went."""
    removed = []
    keep = {h.namespace for h in network.hosts.values()}
    for host in network.hosts.values():
        for pid in netns.processes_in(host.namespace):
            if _program(pid) in NETWORK_PROGRAMS:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        # The underlay and gateway veths lead into the namespaces about to go: deleted here, since a namespace
        # is destroyed asynchronously and its veth peers would linger for a moment.
        for name in links.names_of_kind(host.namespace, "veth"):
            links.delete(host.namespace, name)
    other_clusters = re.compile(re.escape(network.prefix) + r"-c\d+-")  # a cloud's further clusters' own
    for name in netns.names(network.prefix + "-"):
        if name in keep or other_clusters.match(name):
            continue
        netns.kill_all(name)
        netns.remove(name)
        removed.append(name)
    remove_root_link(network.root_link)
    log.info("cluster %s: rebuilding the network around its running guests (removed %s)", network.cluster, removed)
    return removed


def _program(pid: int) -> str:
    try:
        return Path(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")).name
    except (OSError, IndexError):
        return ""


def remove_root_link(name: str) -> None:
    """Delete the root namespace's end of the underlay veth, should it outlive its peer's namespace."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            with contextlib.suppress(NetlinkError):
                ipr.link("del", index=found[0])
