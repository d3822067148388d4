"""The cluster controller's node registry: who is there, alive, and with how much room.

Heartbeats are the CC's periodic ``describe_resource`` calls (as Eucalyptus' CC polls its NCs):
a node that has not answered for ``dead_after_s`` is not offered to the scheduler. Resources
promised to instances that a node has not reported yet are held as reservations, so two requests
in quick succession never overcommit a node between heartbeats.

A node that sees a change (a libvirt lifecycle event) nudges the CC, which polls it at once
(:meth:`NodeRegistry.poll_soon`). Every report that changes what the cluster holds (an instance
appears, goes or changes state) bumps :attr:`NodeRegistry.version`, and :meth:`wait_for_change`
lets the cloud controller wait for that instead of polling on top of the heartbeat.

A node powered down by POWERSAVE (:mod:`cloudlab.cc.power`) keeps its entry with ``power`` ``off``: it is
not polled (a host that is off answers nothing), not dead, and offered to the scheduler with the room
it had; a woken one is ``waking`` until its first heartbeat answers, and ``on`` from then on.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cloudlab.cc.scheduler import NodeView
from cloudlab.contract import DESCRIBE_RESOURCE_IF_CHANGED, NodeReport, ReportAsk
from cloudlab.rpc import Channel

log = logging.getLogger(__name__)

NUDGE_COALESCE_S = 0.05  # nudges of one node within this span make one poll


@dataclass
class NodeEntry:
    name: str
    channel: Channel
    url: str | None = None
    report: NodeReport | None = None
    digest: str | None = None  # of ``report``, as the node computed it: "unchanged since" in the next heartbeat
    last_seen: float | None = None  # monotonic time at which the last good answer was *asked for*
    last_error: str | None = None
    reservations: dict[str, tuple[int, int]] = field(default_factory=dict)  # instance -> (vcpus, MiB)
    power: str = "on"  # "on", "off" (powered down: not polled) or "waking"
    power_since: float = field(default_factory=time.time)  # wall clock of the last power change
    registered: float = field(default_factory=time.time)  # wall clock of the registration
    idle_since: float | None = None  # monotonic time since which the node holds nothing (None: it holds some)


class NodeRegistry:
    """Thread-safe registry with a heartbeat thread."""

    def __init__(self, interval_s: float = 1.0, dead_after_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.dead_after_s = dead_after_s
        self._nodes: dict[str, NodeEntry] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="heartbeat")
        self._polling: set[str] = set()
        self._again: set[str] = set()  # nudged while a poll was running: poll once more after it
        self._soon: set[str] = set()  # nudged, poll queued
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition(self._lock)
        self.version = 0  # bumped by every report that changes the cluster's instances

    def add(self, name: str, channel: Channel, url: str | None = None) -> None:
        with self._lock:
            old = self._nodes.get(name)
            self._nodes[name] = NodeEntry(name, channel, url, reservations=old.reservations if old else {})
        self.poll_one(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._nodes)

    def entry(self, name: str) -> NodeEntry | None:
        with self._lock:
            return self._nodes.get(name)

    def alive(self, entry: NodeEntry) -> bool:
        """Whether ``entry`` answers its heartbeats (a node powered down or waking does not)."""
        return (
            entry.power == "on"
            and entry.last_seen is not None
            and time.monotonic() - entry.last_seen < self.dead_after_s
        )

    # -- heartbeats ------------------------------------------------------------------------------
    def poll_one(self, name: str) -> None:
        entry = self.entry(name)
        if entry is None:
            return
        asked = time.monotonic()  # the report shows at least everything that existed at this moment
        try:
            ask = ReportAsk(entry.digest if entry.report is not None else None)
            answer = entry.channel.ask(DESCRIBE_RESOURCE_IF_CHANGED, ask, timeout=max(2.0, self.dead_after_s))
        except Exception as exc:  # a dead node is a state, not a crash
            if entry.last_error != str(exc) and entry.power == "on":
                log.warning("node %s does not answer: %s", name, exc)
            entry.last_error = str(exc)
            return
        with self._lock:
            if entry.last_seen is not None and asked < entry.last_seen:
                return  # an older poll finished after a newer one
            entry.last_seen = asked
            entry.last_error = None
            changed = False
            if answer.report is not None:  # (None: the node holds exactly what its last report said)
                report, entry.digest = answer.report, answer.digest
                before = _holdings(entry.report)
                entry.report = report
                reported = {i.instance_id for i in report.instances}
                for instance_id in list(entry.reservations):
                    if instance_id in reported:
                        del entry.reservations[instance_id]
                changed = _holdings(report) != before
            report = entry.report
            if entry.power == "waking":  # a woken node answers: it is up (an "off" one is not asked)
                entry.power, entry.power_since, entry.idle_since = "on", time.time(), None
                changed = True
            if (report is not None and report.instances) or entry.reservations:
                entry.idle_since = None
            elif entry.idle_since is None:
                entry.idle_since = asked
            if changed:
                self.version += 1
                self._changed.notify_all()

    def wait_for_change(self, after: int, timeout_s: float) -> int:
        """Wait until :attr:`version` is past ``after`` (or ``timeout_s``); return the version."""
        with self._changed:
            self._changed.wait_for(lambda: self.version > after or self._stop.is_set(), timeout=timeout_s)
            return self.version

    def poll_soon(self, name: str) -> None:
        """Poll ``name`` shortly, in the background (a node said something changed).

        Nudges are coalesced: a burst of them (a hundred VMs starting on one node) costs one poll
        per :data:`NUDGE_COALESCE_S`, not one per event.
        """
        with self._lock:
            if name in self._soon:
                return
            self._soon.add(name)

        def later() -> None:
            if self._stop.wait(NUDGE_COALESCE_S):
                return
            with self._lock:
                self._soon.discard(name)
            self._submit_poll(name, again=True)

        try:
            self._pool.submit(later)
        except RuntimeError:  # the registry is stopping
            with self._lock:
                self._soon.discard(name)

    def poll_all(self) -> None:
        """Poll every node once and wait for the answers (used at start-up and by tests)."""
        for future in [self._submit_poll(name) for name in self.names()]:
            if future is not None:
                future.result()

    def _submit_poll(self, name: str, again: bool = False) -> Any:
        """Queue a poll of ``name`` unless one is still running: a hanging node must not delay the others.

        With ``again``, a poll already running is followed by one more (the change may have come
        after it asked)."""
        with self._lock:
            if name in self._polling:
                if again:
                    self._again.add(name)
                return None
            self._polling.add(name)

        def run() -> None:
            try:
                while True:
                    self.poll_one(name)
                    with self._lock:
                        if name not in self._again:
                            break
                        self._again.discard(name)
            finally:
                with self._lock:
                    self._polling.discard(name)

        try:
            return self._pool.submit(run)
        except RuntimeError:  # the pool is shut down: the registry is stopping
            with self._lock:
                self._polling.discard(name)
            return None

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                for name in self.names():
                    entry = self.entry(name)
                    if entry is not None and entry.power != "off":
                        self._submit_poll(name)

        self._thread = threading.Thread(target=loop, name="cc-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- capacity ----------------------------------------------------------------------------------
    def set_power(self, name: str, power: str) -> None:
        """Note that ``name`` was powered down (``off``) or woken (``waking``); readers see it as a change."""
        with self._lock:
            entry = self._nodes[name]
            entry.power, entry.power_since = power, time.time()
            if power != "on":
                entry.idle_since = None
            self.version += 1
            self._changed.notify_all()

    def wait_power_on(self, name: str, timeout_s: float) -> bool:
        """Wait until ``name`` is on (a woken node answered a heartbeat); False after ``timeout_s``."""
        with self._changed:
            entry = self._nodes.get(name)
            return entry is not None and self._changed.wait_for(
                lambda: entry.power == "on" or self._stop.is_set(), timeout=timeout_s
            ) and entry.power == "on"  # fmt: skip

    def views(self) -> list[NodeView]:
        """Live nodes with reservations subtracted, for a scheduling policy; powered-down and waking nodes
        too (``powered_on`` False), with the room of their last report."""
        views = []
        with self._lock:
            for entry in self._nodes.values():
                if entry.report is None or (entry.power == "on" and not self.alive(entry)):
                    continue
                r = entry.report
                vcpus = sum(v for v, _ in entry.reservations.values())
                memory = sum(m for _, m in entry.reservations.values())
                views.append(
                    NodeView(
                        entry.name,
                        r.vcpus_total,
                        r.memory_mb_total,
                        r.vcpus_free - vcpus,
                        r.memory_mb_free - memory,
                        len(r.instances) + len(entry.reservations),
                        powered_on=entry.power == "on",
                    )
                )
        return sorted(views, key=lambda v: v.name)

    def reserve(self, node: str, instance_id: str, vcpus: int, memory_mb: int) -> None:
        with self._lock:
            self._nodes[node].reservations[instance_id] = (vcpus, memory_mb)

    def release(self, node: str, instance_id: str) -> None:
        with self._lock:
            entry = self._nodes.get(node)
            if entry is not None:
                entry.reservations.pop(instance_id, None)


def _holdings(report: NodeReport | None) -> frozenset[tuple[str, str]]:
    """What a report says the node holds, without the counters that change all the time."""
    if report is None:
        return frozenset()
    return frozenset((i.instance_id, i.state) for i in report.instances)
