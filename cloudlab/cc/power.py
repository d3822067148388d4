"""POWERSAVE at the cluster controller: power down nodes idle past a threshold, wake them when needed.

As in Eucalyptus (the CC's ``POWERSAVE`` scheduling policy, ``POWER_IDLETHRESH`` and ``POWER_WAKETHRESH``):
- a node that has held no instance and no reservation for ``idle_s`` is sent a signed ``power_off``; the
  decision is taken under the scheduler's lock, so no placement can land on a node while it goes down;
- a node the policy chose for an instance while it was off is sent a signed ``wake`` at once (the
  placement answer does not wait for it), and a start sent to it waits until the woken node answers
  its heartbeat again, at most ``wake_timeout_s`` (a node that does not come back fails the start with
  ``InsufficientInstanceCapacity``, and its room is given back).
Only a policy that declares ``powers_down`` enables the first; the second applies to any policy that
chooses a powered-down node.
"""

from __future__ import annotations

import logging
import threading
import time

from cloudlab import contract as c
from cloudlab.cc.registry import NodeRegistry
from cloudlab.errors import CloudError

log = logging.getLogger(__name__)

DEFAULT_IDLE_S = 300.0  # Eucalyptus' POWER_IDLETHRESH default (seconds)
WAKE_TIMEOUT_S = 120.0  # how long a start waits for a woken node to answer


class PowerManager:
    """Powers the cluster's idle nodes down (when enabled) and wakes the ones a placement needs."""

    def __init__(
        self,
        cluster: str,
        registry: NodeRegistry,
        schedule_lock: threading.Lock,
        *,
        enabled: bool,
        idle_s: float = DEFAULT_IDLE_S,
        wake_timeout_s: float = WAKE_TIMEOUT_S,
    ) -> None:
        self.cluster = cluster
        self.registry = registry
        self._schedule_lock = schedule_lock
        self.enabled = enabled
        self.idle_s = idle_s
        self.wake_timeout_s = wake_timeout_s
        self.history: list[str] = []  # what ``cloudlab status`` shows: the last power changes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.enabled:
            return
        interval = min(max(self.idle_s / 4, 0.05), self.registry.interval_s)

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.power_down_idle()
                except Exception:
                    log.exception("cluster %s: powering idle nodes down failed", self.cluster)

        self._thread = threading.Thread(target=loop, name=f"cc-powersave-{self.cluster}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _note(self, text: str) -> None:
        self.history.append(f"{time.strftime('%H:%M:%S')} {text}")
        del self.history[:-20]
        log.info("cluster %s: %s", self.cluster, text)

    # -- down -----------------------------------------------------------------------------------------
    def power_down_idle(self) -> list[str]:
        """Power down every node that is on, alive and idle past the threshold; returns their names."""
        done = []
        now = time.monotonic()
        with self._schedule_lock:  # no placement between the idle check and the node going down
            for name in self.registry.names():
                entry = self.registry.entry(name)
                idle_since = entry.idle_since if entry is not None else None
                if (
                    entry is None
                    or entry.power != "on"
                    or not self.registry.alive(entry)
                    or entry.reservations
                    or idle_since is None
                    or now - idle_since < self.idle_s
                ):
                    continue
                self.registry.set_power(name, "off")  # first, so that no heartbeat asks it while it goes down
                try:
                    entry.channel.ask(c.NODE_POWER_OFF, c.Empty(), timeout=10)
                except Exception as exc:  # it holds something after all (or does not answer): it stays on
                    log.info("cluster %s: node %s stays on: %s", self.cluster, name, exc)
                    self.registry.set_power(name, "on")
                    continue
                self._note(f"{name} powered down after {now - idle_since:.0f} s idle")
                done.append(name)
        return done

    # -- up -------------------------------------------------------------------------------------------
    def wake(self, name: str) -> None:
        """Send ``name`` its wake (the cluster's wake-on-LAN, signed); it is ``waking`` until it answers."""
        entry = self.registry.entry(name)
        if entry is None or entry.power != "off":
            return
        try:
            entry.channel.ask(c.NODE_WAKE, c.Empty(), timeout=10)
        except Exception as exc:  # the start that needs it will wait and fail with a clear error
            log.warning("cluster %s: waking %s failed: %s", self.cluster, name, exc)
            return
        self.registry.set_power(name, "waking")
        self.registry.poll_soon(name)
        self._note(f"{name} woken for a placement")

    def wait_awake(self, name: str) -> None:
        """Return once ``name`` is on; a node still off is woken first. Refuses after the wake timeout."""
        entry = self.registry.entry(name)
        if entry is None or entry.power == "on":
            return
        if entry.power == "off":
            self.wake(name)
        deadline = time.monotonic() + self.wake_timeout_s
        while time.monotonic() < deadline:
            if self.registry.wait_power_on(name, min(self.registry.interval_s, deadline - time.monotonic())):
                return
            self.registry.poll_soon(name)  # ask again: its boot may be over
        raise CloudError(
            "InsufficientInstanceCapacity",
            f"node {name} of cluster {self.cluster} was woken but did not answer within {self.wake_timeout_s:.0f} s",
        )
