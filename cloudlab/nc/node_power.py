"""A node's power, as Eucalyptus' POWERSAVE drives it: the cluster controller powers an idle host down and
wakes it when a request needs its room.

Mixed into :class:`~cloudlab.nc.node.NodeController`. A simulated host cannot cut its own power, so "off" is
a state the node controller keeps honestly: it answers nothing but HELLO and the CC's signed ``wake`` (the
wake-on-LAN packet of a real cluster), it does not touch its host's libvirt, it does not re-register with its
CC, and a wake costs ``wake_s`` seconds (the host's boot) before it answers heartbeats again. It keeps its
registration and its name: the CC still lists it, as ``powered-off``. A node that holds a domain refuses to
power down (the CC only asks idle nodes, but a start may have raced the question).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cloudlab import contract as c
from cloudlab.errors import CloudError

log = logging.getLogger(__name__)

DEFAULT_WAKE_S = 2.0  # a simulated host's boot after a wake (the CC waits for it before starting instances)
ON, OFF, WAKING = "on", "off", "waking"


class NodePower:
    """The power state of one node controller, and the guard that keeps a powered-off node silent."""

    name: str
    _held: dict[str, tuple[int, int]]
    _starting: set[str]
    _lock: Any

    def _init_power(self, wake_s: float = DEFAULT_WAKE_S) -> None:
        self.wake_s = wake_s
        self.power = ON
        self.power_since = time.time()
        self._power_lock = threading.Lock()
        self._wakes = 0  # so that a wake thread of an earlier wake does not end a later power-off
        self.warming = False

    def warm_up_in_background(self, warm_up: Callable[[], None]) -> None:
        """Run the node's start-up probes in a thread; until they end the node is not idle (no power-off)."""
        self.warming = True

        def run() -> None:
            try:
                warm_up()
            finally:
                self.warming = False

        threading.Thread(target=run, name=f"warm-{self.name}", daemon=True).start()

    def _refresh_held(self) -> tuple[dict[str, tuple[int, int]], Any]:  # (the node controller's: room, domains)
        raise NotImplementedError

    def _power_busy(self) -> str | None:
        """What keeps an empty node from powering down: its start-up probes, or a template being built."""
        if self.warming:
            return "warming up (QEMU probe, accelerator probe)"
        launcher = getattr(self, "launcher", None)
        if launcher is not None and launcher.building:
            return "building a boot template"
        return None

    def power_state(self) -> c.PowerState:
        return c.PowerState(self.name, self.power, self.power_since)

    def powered(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """``handler``, refused while the node is powered off or still booting (no libvirt is touched)."""

        def guarded(request: Any, message: Any) -> Any:
            if self.power != ON:
                raise CloudError("Unavailable", f"node {self.name} is powered {'off' if self.power == OFF else 'on'}"
                                 f" ({self.power}): it answers only a wake", status=503)  # fmt: skip
            return handler(request, message)

        return guarded

    def power_off(self) -> c.PowerState:
        """Power the host down, if it holds nothing (an instance, or one being started, refuses it)."""
        with self._lock, self._power_lock:
            if self.power == OFF:
                return self.power_state()
            held = self._refresh_held()[0] if self.power == ON else dict(self._held)
            if held or self._starting:
                raise CloudError(
                    "IncorrectState",
                    f"node {self.name} holds {len(held) + len(self._starting)} instance(s): it does not power down",
                )
            busy = self._power_busy()
            if busy:
                raise CloudError("IncorrectState", f"node {self.name} is {busy}: it does not power down yet")
            self.power, self.power_since = OFF, time.time()
            self._wakes += 1
        log.info("node %s powered down (POWERSAVE)", self.name)
        return self.power_state()

    def wake(self) -> c.PowerState:
        """Boot a powered-off host: ``waking`` now, ``on`` after :attr:`wake_s` (answered at once, as a
        wake-on-LAN packet is; the CC learns that the node is up from its first heartbeat that answers)."""
        with self._power_lock:
            if self.power != OFF:
                return self.power_state()
            self.power, self.power_since = WAKING, time.time()
            self._wakes += 1
            wake = self._wakes
        log.info("node %s waking (boot of %.1f s)", self.name, self.wake_s)

        def boot() -> None:
            time.sleep(self.wake_s)
            with self._power_lock:
                if self._wakes != wake or self.power != WAKING:
                    return
                self.power, self.power_since = ON, time.time()
            log.info("node %s is on again", self.name)

        threading.Thread(target=boot, name=f"wake-{self.name}", daemon=True).start()
        return self.power_state()
