"""libvirt domain states, as a node controller reports them.

The node reports what the hypervisor sees (``pending``, ``running``, ``shutting-down``,
``shutoff``, and ``absent`` for a domain that is not there); the cloud controller, which owns the EC2
state machine, decides what that means for the instance (a guest that shut itself off is terminated,
as EC2 does for instance-store images).

A domain found by a listing or a lookup may be undefined (terminated) before the next call asks it
anything: libvirt then answers ``VIR_ERR_NO_DOMAIN``. That domain is gone, not an error
(:func:`vanished`, :func:`state_of`).
"""

from __future__ import annotations

from typing import Any

import libvirt

_STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "pending",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "running",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting-down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "shutoff",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "running",
}

#: libvirt's lifecycle events by name, as the node's reports carry them
EVENT_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}


def node_state(libvirt_state: int) -> str:
    """The node-level state name for a libvirt ``virDomainState``."""
    return _STATE_NAMES.get(libvirt_state, "pending")


def vanished(exc: libvirt.libvirtError) -> bool:
    """Whether libvirt's error says the domain is not there (any more): undefined since it was found."""
    return exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN


def state_of(dom: Any) -> str:
    """The node-level state of ``dom`` now; ``absent`` if it vanished since it was found."""
    try:
        return node_state(dom.state()[0])
    except libvirt.libvirtError as exc:
        if vanished(exc):
            return "absent"
        raise
