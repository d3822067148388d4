"""The power part of the controllers' contract (POWERSAVE): what a node answers to ``power_off`` and ``wake``.

Re-exported by :mod:`cloudlab.contract`, which names the actions that carry it, as the storage messages are.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PowerState:
    """A node's power as the node itself tells it: ``on``, ``off`` or ``waking`` (booting after a wake)."""

    node: str
    power: str
    since: float
