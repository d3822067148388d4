"""Sending starts and terminations to the clusters, one in flight per instance, retried until done.

Rules (see :mod:`cloudlab.clc.cloud`): a start is sent only for a ``pending`` record that is already
committed; ``dispatched_at`` is set only once the node confirmed the start; starting and terminating
are idempotent on the node, so anything unfinished is simply sent again (by the reconciler, at most
every :data:`RETRY_AFTER_S`). A VM is never left running for a record that is gone or terminated.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from cloudlab import contract as c
from cloudlab.clc.clusters import ClusterLink, Clusters
from cloudlab.clc.images import BootFile, Images
from cloudlab.clc.instances import InstanceRecords
from cloudlab.clc.usage import NetworkBytes
from cloudlab.errors import CloudError
from cloudlab.guest import DEFAULT_KERNEL_CMDLINE

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5.0
SCRATCH_GIB = 1  # the scratch disk (vda) of an instance without a root volume, as EC2's instance store
BATCH_TIMEOUT_S = 300.0  # a cluster starting a thousand instances answers when all are started
REASON_START_FAILED = "Server.InternalError: {message}"


class Dispatch:
    """A pool of workers that carry the CLC's commands to the nodes, with per-instance bookkeeping."""

    def __init__(
        self,
        records: InstanceRecords,
        clusters: Clusters,
        images: Images,
        network_bytes: NetworkBytes,
        *,
        nic_of: Callable[[str], c.NicPlan | None],
        before_start: Callable[[str], Any],
        disks_of: Callable[[str], tuple[c.DiskPlan, ...]] = lambda instance_id: (),
        objects_of: Callable[[], Any] = lambda: None,
        workers: int = 8,
    ) -> None:
        self.records = records
        self.clusters = clusters
        self.images = images
        self.network_bytes = network_bytes
        self._nic_of = nic_of  # the instance's port, if its cluster has a network
        self._before_start = before_start  # (cluster) -> None: its router must know the instance first
        self._disks_of = disks_of  # the instance's volumes, made and exported (the root volume as vda)
        self._objects_of = objects_of  # the object store (cloudlab.clc.objects.ObjectStore), if Walrus runs
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clc-dispatch")
        self._lock = threading.Lock()
        self._last_attempt: dict[str, float] = {}
        self._inflight: set[str] = set()

    # -- bookkeeping --------------------------------------------------------------------------------------
    def hold(self, instance_ids: list[str]) -> None:
        """Count ``instance_ids`` as just attempted, so the reconciler does not start them before we do."""
        now = time.monotonic()
        with self._lock:
            for instance_id in instance_ids:
                self._last_attempt[instance_id] = now

    def due(self, instance_id: str) -> bool:
        with self._lock:
            if instance_id in self._inflight:
                return False
            last = self._last_attempt.get(instance_id)
        return last is None or time.monotonic() - last > RETRY_AFTER_S

    def submit(self, fn: Callable[..., None], instance_id: str, *args: Any) -> Future[None]:
        """Queue one command for ``instance_id``; none other is queued while it is in flight."""
        return self._submit_for([instance_id], lambda: fn(instance_id, *args))

    def _submit_for(self, instance_ids: list[str], work: Callable[[], None]) -> Future[None]:
        with self._lock:
            now = time.monotonic()
            for instance_id in instance_ids:
                self._inflight.add(instance_id)
                self._last_attempt[instance_id] = now

        def run() -> None:
            try:
                work()
            finally:
                with self._lock:
                    now = time.monotonic()
                    for instance_id in instance_ids:
                        self._inflight.discard(instance_id)
                        self._last_attempt[instance_id] = now

        return self._pool.submit(run)

    def stop(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    # -- the commands -------------------------------------------------------------------------------------
    def start(self, instance_id: str) -> Future[None]:
        return self.submit(self._run, instance_id)

    def start_many(self, instance_ids: list[str]) -> Future[None]:
        """Start a whole reservation with one message to its cluster (which sends one per node)."""
        return self._submit_for(list(instance_ids), lambda: self._run_many(instance_ids))

    def terminate(self, instance_id: str) -> Future[None]:
        return self.submit(self._terminate, instance_id)

    def remove_leftover(self, instance_id: str, link: ClusterLink, node: str) -> Future[None]:
        return self.submit(self._remove_leftover, instance_id, link, node)

    def start_request(self, row: dict[str, Any]) -> c.StartInstance:
        """What the node needs to boot ``row``: its image's files, its size, its NIC."""
        image = self.images.get(row["image_id"])
        if image is None:
            raise CloudError("InvalidAMIID.Unavailable", f"the image of {row['instance_id']} is gone")
        kernel, ramdisk = self.images.boot_files(image)
        parts = (("kernel", kernel), ("ramdisk", ramdisk))
        fetch = tuple(self._fetch(role, p, row["cluster"]) for role, p in parts if p is not None and p.path is None)
        disks = self._disks_of(row["instance_id"])
        on_volume = any(d.device == "vda" for d in disks)
        return c.StartInstance(
            instance_id=row["instance_id"],
            vcpus=row["vcpus"],
            memory_mb=row["memory_mb"],
            kernel=str(kernel.path or ""),
            ramdisk=str(ramdisk.path or "") if ramdisk else None,
            fetch=fetch,
            # An image's disk is the backing of the instance's root volume, never attached itself.
            disk=None,
            disks=disks,
            scratch_gib=0 if on_volume else SCRATCH_GIB,
            cmdline=f"{DEFAULT_KERNEL_CMDLINE} root=/dev/vda rw" if on_volume else None,
            owner=row["owner"],
            image_id=row["image_id"],
            instance_type=row["instance_type"],
            nic=self._nic_of(row["instance_id"]),
        )

    def _fetch(self, role: str, part: BootFile, cluster: str) -> c.FetchFile:
        """A boot file kept in a bucket, as a URL the cluster's node can fetch it from (signed as its owner)."""
        objects = self._objects_of()
        if objects is None or part.bucket is None or part.key is None or part.sha256 is None:
            raise CloudError("Unavailable", f"the {role} {part.image_id} is in a bucket and Walrus is not running")
        url = objects.presign(part.owner, part.bucket, part.key, part.version_id, cluster)
        return c.FetchFile(role, url, part.sha256, part.size)

    def _run(self, instance_id: str) -> None:
        row = self.records.get(instance_id)
        if row is None or row["state"] != "pending":
            return
        link = self.clusters.get(row["cluster"])
        if link is None:
            return
        try:
            request = self.start_request(row)
            self._before_start(link.name)  # the instance's gateway must exist before its init asks for metadata
            started = link.channel.ask(c.RUN_INSTANCE, c.RunOnNode(node=row["node"], instance=request))
        except CloudError as exc:
            if exc.code == "Unavailable":
                log.warning("start of %s deferred: %s", instance_id, exc.message)
                return  # retried by the reconciler
            self._start_failed(instance_id, exc.message)
            return
        except Exception:
            log.exception("start of %s failed unexpectedly; will retry", instance_id)
            return
        self.records.mark_dispatched(instance_id)
        if started.state == "running":
            self.records.transition(instance_id, "running", None, expect=("pending",))
        after = self.records.get(instance_id)
        if after is not None and after["state"] in ("shutting-down", "terminated"):
            # Terminated while the node was starting it: make sure no VM outlives its record.
            self._terminate(instance_id)

    def _run_many(self, instance_ids: list[str]) -> None:
        rows = [r for r in self.records.get_many(instance_ids) if r["state"] == "pending"]
        by_cluster: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_cluster.setdefault(row["cluster"], []).append(row)
        for cluster, members in by_cluster.items():
            link = self.clusters.get(cluster)
            if link is not None:
                self._run_batch(link, members)

    def _run_batch(self, link: ClusterLink, rows: list[dict[str, Any]]) -> None:
        starts = []
        for row in rows:
            try:
                starts.append(c.RunOnNode(node=row["node"], instance=self.start_request(row)))
            except CloudError as exc:
                self._start_failed(row["instance_id"], exc.message)
        if not starts:
            return
        try:
            self._before_start(link.name)
            outcomes = link.channel.ask(c.RUN_INSTANCES, c.StartMany(tuple(starts)), timeout=BATCH_TIMEOUT_S).outcomes
        except CloudError as exc:
            if exc.code == "Unavailable":
                log.warning("start of %d instance(s) deferred: %s", len(starts), exc.message)
                return  # retried by the reconciler, one by one
            for start in starts:
                self._start_failed(start.instance.instance_id, exc.message)
            return
        except Exception:
            log.exception("start of %d instance(s) failed unexpectedly; will retry", len(starts))
            return
        started = [o for o in outcomes if o.started is not None]
        self.records.mark_dispatched(*(o.instance_id for o in started))
        self.records.transition_many(
            [o.instance_id for o in started if o.started and o.started.state == "running"],
            "running",
            expect=("pending",),
        )
        for outcome in outcomes:
            if outcome.started is None and outcome.error_code != "Unavailable":
                self._start_failed(outcome.instance_id, outcome.error_message or outcome.error_code or "unknown")
        for row in self.records.get_many([o.instance_id for o in started]):
            if row["state"] in ("shutting-down", "terminated"):
                self._terminate(row["instance_id"])  # terminated while its node was starting it

    def _start_failed(self, instance_id: str, message: str) -> None:
        log.warning("start of %s failed: %s", instance_id, message)
        self.records.transition(
            instance_id, "terminated", REASON_START_FAILED.format(message=message), expect=("pending",)
        )

    def _terminate(self, instance_id: str) -> None:
        """Remove the VM of a ``shutting-down`` (→ terminated) or ``stopping`` (→ stopped) instance."""
        row = self.records.get(instance_id)
        if row is None or row["state"] not in ("shutting-down", "stopping"):
            return
        final = "terminated" if row["state"] == "shutting-down" else "stopped"
        link = self.clusters.get(row["cluster"])
        if link is not None and row["node"]:
            try:
                removed = link.channel.ask(c.TERMINATE_INSTANCE, c.OnNode(node=row["node"], instance_id=instance_id))
            except Exception as exc:
                log.warning("%s of %s on %s not done yet: %s", final, instance_id, row["node"], exc)
                return  # the reconciler retries
            self.network_bytes.final(instance_id, removed.net_rx_bytes, removed.net_tx_bytes)
        self.records.transition(instance_id, final, expect=(row["state"],))

    def _remove_leftover(self, instance_id: str, link: ClusterLink, node: str) -> None:
        log.info("cleaning up the VM of terminated instance %s on %s", instance_id, node)
        quietly(link, c.TERMINATE_INSTANCE, c.OnNode(node=node, instance_id=instance_id))


def quietly(link: ClusterLink, action: c.Action[Any, Any], request: Any) -> Any:
    """Ask ``link``'s cluster, logging rather than raising a failure (for clean-ups)."""
    try:
        return link.channel.ask(action, request)
    except Exception as exc:
        log.warning("cluster %s: %s %s failed: %s", link.name, action.name, request, exc)
        return None
