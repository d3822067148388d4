"""libvirt domain states, as a node controller reports them.

The node reports what the hypervisor sees (``pending``, ``running``, ``shutting-down``,
``shutoff``); the cloud controller, which owns the EC2 state machine, decides what that means for
the instance (a guest that shut itself off is terminated, as EC2 does for instance-store images).
"""

from __future__ import annotations

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


def node_state(libvirt_state: int) -> str:
    """The node-level state name for a libvirt ``virDomainState``."""
    return _STATE_NAMES.get(libvirt_state, "pending")
