"""The reconciler: applies what the nodes report to the instance records, and retries what is unfinished.

It follows each cluster by waiting for its next report (``describe_cluster`` with ``after`` and
``wait_s``): the cluster controller answers as soon as a node reports a change (a VM started, shut
itself off, vanished), and at least every ``reconcile_s`` otherwise. Rules, per node report:
- a ``pending`` instance the node reports ``running`` becomes ``running``;
- one that the node reports shut off, or no longer reports at all, is judged only if the node had
  confirmed its start *before the report was asked for* (``dispatched_at < report_time``), so a
  report taken while a start was in flight can never make an instance look vanished;
- ``report_time`` is a lower bound of when the report was asked for: the CLC's clock when it sent its
  question, minus the report's age at the moment the question reached the CC (negative when the
  report was taken while the question waited for a change). Subtracting the age from the time the
  answer *arrived* instead overestimates it by the transfer time, which at 10,000 instances made
  instances look vanished seconds after their start was confirmed.
A VM the cloud has no record of is reported (``unknown_vms``), never adopted or killed; a VM whose
record is terminated or stopped is removed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from cloudlab import contract as c
from cloudlab.clc.clusters import ClusterLink, Clusters
from cloudlab.clc.dispatch import Dispatch
from cloudlab.clc.instances import InstanceRecords
from cloudlab.clc.node_hours import NodeHours
from cloudlab.clc.states import REASON_GUEST_SHUTDOWN
from cloudlab.clc.store import Store
from cloudlab.clc.usage import NetworkBytes
from cloudlab.errors import ControllerUnavailable

log = logging.getLogger(__name__)

REASON_VANISHED = "Server.InstanceVanished: the VM was no longer on node {node} when the cloud checked"
MIN_PASS_INTERVAL_S = 0.2  # a burst of changes is reconciled in passes at least this far apart
LONG_POLL_S = 2.0  # the longest the reconciler waits for a change before it looks anyway (and stops)
UNKNOWN_VM_REPORTED_S = 60.0  # a stranger VM stays in the status this long after it was last seen


class Reconciler:
    """Keeps the records in step with the nodes, one thread per cluster."""

    def __init__(
        self,
        store: Store,
        records: InstanceRecords,
        clusters: Clusters,
        dispatch: Dispatch,
        network_bytes: NetworkBytes,
        reconcile_s: float = 1.0,
        node_hours: NodeHours | None = None,
    ) -> None:
        self.store = store
        self.records = records
        self.clusters = clusters
        self.dispatch = dispatch
        self.network_bytes = network_bytes
        self.node_hours = node_hours
        self.reconcile_s = reconcile_s
        self.passes = 0  # completed cluster passes (tests wait for a pass instead of sleeping)
        self._node_alive: dict[str, bool] = {}
        self._cluster_alive: dict[str, bool] = {}  # did the cluster's CC answer its last report request?
        self._reports: dict[str, c.ClusterReport] = {}  # each cluster's last report (its zone's room)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._last_retry = float("-inf")
        self._started = False
        self._followed: set[str] = set()  # the clusters a thread follows

    # -- running ------------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            self._started = True
        for link in self.clusters.all():
            self.follow(link)

    def follow(self, link: ClusterLink) -> None:
        """Follow ``link``'s cluster from now on (at start, or a CC that registered later); once per cluster."""
        with self._lock:
            if not self._started or self._stop.is_set() or link.name in self._followed:
                return
            self._followed.add(link.name)
            thread = threading.Thread(target=self._follow, args=(link,), name=f"clc-reconcile-{link.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _follow(self, link: ClusterLink) -> None:
        version = 0
        unreachable = False
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                version = self.reconcile_cluster(link, after=version, wait_s=min(self.reconcile_s, LONG_POLL_S))
                self.retry_unfinished(min_interval_s=self.reconcile_s)
                unreachable = False
            except ControllerUnavailable as exc:  # its CC is down (or its host): one line when it goes, not each pass
                if not unreachable:
                    log.warning("cluster %s does not answer: %s", link.name, exc.message)
                unreachable, version = True, 0  # a CC that comes back numbers its reports from 0 again
                self._stop.wait(self.reconcile_s)
            except Exception:
                log.exception("reconcile pass of cluster %s failed", link.name)
                self._stop.wait(self.reconcile_s)
            self._stop.wait(max(0.0, MIN_PASS_INTERVAL_S - (time.monotonic() - started)))

    def reconcile_once(self) -> None:
        """One pass over every cluster, without waiting for changes (at start-up, and in tests)."""
        for link in self.clusters.all():
            try:
                self.reconcile_cluster(link)
            except Exception as exc:
                log.warning("cluster %s does not answer: %s", link.name, exc)
        self.retry_unfinished()

    def reconcile_cluster(self, link: ClusterLink, after: int = 0, wait_s: float = 0.0) -> int:
        """Ask ``link``'s cluster for its report (waiting up to ``wait_s`` for a change) and apply it."""
        asked = time.time()
        try:
            report = link.channel.ask(
                c.DESCRIBE_CLUSTER, c.DescribeCluster(after=after, wait_s=wait_s), timeout=wait_s + 30.0
            )
        except Exception:
            self._cluster_alive[link.name] = False
            raise
        self._reports[link.name] = report
        # a zone is up while its CC answers with a node that is alive, or powered down (it can be woken)
        self._cluster_alive[link.name] = any(node.alive or node.power != "on" for node in report.nodes)
        by_node = self.records.live_by_node(link.name)
        for node in report.nodes:
            self._node_alive[node.name] = node.alive
            self._note_node(link.name, node)
            if self.node_hours is not None:
                self.node_hours.note(link.name, node, answered=node.alive)
            if node.alive and node.age_s is not None:
                self._reconcile_node(link, node, asked - node.age_s, by_node.get(node.name, {}))
        with self._lock:
            self.passes += 1
        return report.version

    # -- one node -----------------------------------------------------------------------------------------
    def _reconcile_node(
        self, link: ClusterLink, node: c.NodeSummary, report_time: float, records: dict[str, Any]
    ) -> None:
        name = node.name
        reported = {i.instance_id: i.state for i in node.instances}
        for item in node.instances:
            row = records.get(item.instance_id)
            if (
                item.net_rx_bytes is not None
                and item.net_tx_bytes is not None
                and row is not None
                and row["state"] == "running"
                and row["running_at"] is not None
                and row["running_at"] < report_time  # counters of this VM, not of one before a stop/start
            ):
                self.network_bytes.note(row, item.net_rx_bytes, item.net_tx_bytes)
        for instance_id, row in records.items():
            self._reconcile_instance(instance_id, row, reported.get(instance_id), name, report_time)
        for instance_id in (i for i in reported if i not in records):
            row = self.records.get(instance_id)
            if row is not None and row["state"] in ("terminated", "stopped"):
                if self.dispatch.due(instance_id):
                    self.dispatch.remove_leftover(instance_id, link, name)
            elif row is None:
                self._note_unknown(name, instance_id, reported[instance_id])

    def _reconcile_instance(self, instance_id: str, row: Any, seen: str | None, node: str, report_time: float) -> None:
        state = row["state"]
        confirmed = row["dispatched_at"] is not None and row["dispatched_at"] < report_time
        if seen == "running" and state == "pending" and row["dispatched_at"] is not None:
            self.records.transition(instance_id, "running", None, expect=("pending",))
        elif seen == "shutoff" and state in ("pending", "running") and confirmed:
            # (a domain that is defined but not yet started also shows as shut off, hence the check
            # that the node had confirmed the start before this report was asked for)
            log.info("%s shut itself off on %s", instance_id, node)
            if self.records.transition(instance_id, "shutting-down", REASON_GUEST_SHUTDOWN, expect=(state,)):
                self.dispatch.terminate(instance_id)
        elif seen is None and state in ("pending", "running") and confirmed:
            log.warning("%s vanished from node %s", instance_id, node)
            self.records.transition(instance_id, "terminated", REASON_VANISHED.format(node=node), expect=(state,))
        elif seen is None and state in ("shutting-down", "stopping") and row["updated"] < report_time:
            final = "terminated" if state == "shutting-down" else "stopped"
            self.records.transition(instance_id, final, expect=(state,))

    def _note_node(self, cluster: str, node: c.NodeSummary) -> None:
        now = time.time()
        row = self.store.one("SELECT last_seen, accel FROM nodes WHERE name=?", (node.name,))
        if row is not None and now - row["last_seen"] < 30 and row["accel"] == node.accel:
            return
        if not node.alive and row is not None:
            return
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO nodes (name, cluster, hypervisor, accel, vcpus_total, memory_mb_total, first_seen,"
                " last_seen) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET cluster=excluded.cluster,"
                " hypervisor=excluded.hypervisor, accel=excluded.accel, vcpus_total=excluded.vcpus_total,"
                " memory_mb_total=excluded.memory_mb_total, last_seen=excluded.last_seen",
                (node.name, cluster, node.hypervisor, node.accel, node.vcpus_total, node.memory_mb_total, now, now),
            )

    def _note_unknown(self, node: str, instance_id: str, state: str) -> None:
        now = time.time()
        with self.store.transaction() as db:
            existing = db.execute(
                "SELECT 1 FROM unknown_vms WHERE node=? AND instance_id=?", (node, instance_id)
            ).fetchone()
            db.execute(
                "INSERT INTO unknown_vms (node, instance_id, state, first_seen, last_seen) VALUES (?,?,?,?,?)"
                " ON CONFLICT(node, instance_id) DO UPDATE SET state=excluded.state, last_seen=excluded.last_seen",
                (node, instance_id, state, now, now),
            )
        if existing is None:
            log.warning("node %s runs %s, which the cloud has no record of: reported, left alone", node, instance_id)

    # -- retries ------------------------------------------------------------------------------------------
    def retry_unfinished(self, min_interval_s: float = 0.0) -> None:
        """Send again what never finished: starts no node confirmed, stops and terminations.

        With ``min_interval_s``, a call sooner than that after the last one does nothing (the records of
        a launch of thousands are not read again at every reconcile pass)."""
        with self._lock:
            now = time.monotonic()
            if now - self._last_retry < min_interval_s:
                return
            self._last_retry = now
        for row in self.records.unfinished():
            instance_id = row["instance_id"]
            if not self.dispatch.due(instance_id):
                continue
            if row["state"] in ("shutting-down", "stopping"):
                self.dispatch.terminate(instance_id)
            else:
                self.dispatch.start(instance_id)

    # -- what the status shows ------------------------------------------------------------------------------
    def node_health(self) -> dict[str, bool]:
        """Whether each node answered its cluster controller at the last reconcile pass."""
        return dict(self._node_alive)

    def cluster_health(self) -> dict[str, bool]:
        """Whether each cluster's CC answered the last reconcile pass with at least one live node."""
        return dict(self._cluster_alive)

    def cluster_reports(self) -> dict[str, c.ClusterReport]:
        """Each cluster's last report (its nodes' health, power and free room), for zone placement."""
        return dict(self._reports)

    def unknown_vms(self) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self.store.query(
                "SELECT * FROM unknown_vms WHERE last_seen > ? ORDER BY node", (time.time() - UNKNOWN_VM_REPORTED_S,)
            )
        ]
