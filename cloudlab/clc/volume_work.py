"""Carrying volume and snapshot records forward: the storage controller and the nodes do the work.

The EC2 actions only record what is wanted (``creating``, ``deleting``, ``attaching``,
``detaching``, a snapshot ``pending``); one thread here looks at the unfinished rows whenever it is
woken (and every :data:`SWEEP_S` anyway) and asks the cluster's SC or node for the next step. Every
step is idempotent on the SC and the NC, so after a crash the same rows are simply carried forward
again. A cluster without a registered SC answers ``Unavailable``: the row waits for the next pass.

What happens when (EC2's states on the left):

==========================  ===============================================================
creating → available         the SC makes the file (blank, a copy of a snapshot)
deleting → deleted           the SC drops its export and deletes the file
attaching → attached         instance running: the SC exports it, the node hot-plugs it;
                             instance stopped: nothing yet (it is plugged in at the next start);
                             instance pending: its start plugs it in (:meth:`disks_for_start`)
detaching → (available)      the node unplugs it (the guest must let go, unless forced), the SC
                             stops exporting it
instance stopped             still attached; its exports are closed until it starts again
instance terminated          DeleteOnTermination: deleted; otherwise detached (available)
snapshot pending → completed the SC copies the volume (through its export when attached)
==========================  ===============================================================

Every :data:`EXPORTS_CHECK_S` the exports themselves are reconciled against the records
(:meth:`VolumeWork.reconcile_exports`), for what a crash leaves behind: an export whose volume is
no running instance's any more (its instance terminated or stopped while the service or the SC was
down, the volume detached or deleted) is closed; a volume attached to a running instance whose
export vanished (its ``qemu-nbd`` killed, the SC's host restarted) is exported again, on its old
port, where the guest's QEMU reconnects (its disk stops the guest on an I/O error meanwhile, and
the node resumes it: see ``cloudlab.nc.disks``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from cloudlab import contract as c
from cloudlab.clc.ebs_images import EbsImages
from cloudlab.clc.snapshot_imports import SnapshotImports
from cloudlab.clc.snapshots import Snapshots
from cloudlab.clc.volumes import Volumes
from cloudlab.errors import CloudError

log = logging.getLogger(__name__)

SWEEP_S = 2.0
EXPORTS_CHECK_S = 5.0  # how often the SC's exports are compared with the records
DETACH_RETRY_S = 10.0  # a guest that did not let a disk go is asked again after this long


class VolumeWork:
    """The one thread that turns volume and snapshot records into files, exports and attachments."""

    def __init__(self, clc: Any) -> None:
        self.clc = clc
        self.volumes = clc.service(Volumes)
        self.snapshots = clc.service(Snapshots)
        # Two workers: volumes, and snapshots (a copy of a large volume takes a while, and must not hold
        # up attachments meanwhile). Each is woken when there is news, and looks every SWEEP_S anyway.
        self._wakes = {"volumes": threading.Event(), "snapshots": threading.Event()}
        self._stop = threading.Event()
        self._pass_lock = threading.Lock()  # one volume pass at a time
        self._threads: list[threading.Thread] = []
        self._detach_tried: dict[str, float] = {}
        self._unserved: set[str] = set()  # volumes of stopped instances whose export was closed
        self._export_lock = threading.Lock()  # a start's exports and a stopped instance's unexports
        self._exports_checked = float("-inf")
        self.volumes.wake = self.wake

    def wake(self) -> None:
        for event in self._wakes.values():
            event.set()

    def start(self) -> None:
        if not self._threads:
            for name, work in (("volumes", self.run_once), ("snapshots", self._snapshot_steps)):
                thread = threading.Thread(target=self._run, args=(name, work), name=f"clc-{name}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, name: str, work: Any) -> None:
        wake = self._wakes[name]
        while not self._stop.is_set():
            wake.wait(SWEEP_S)
            wake.clear()
            try:
                work()
            except Exception:
                log.exception("carrying %s forward failed; will try again", name)

    def _channel(self, cluster: str) -> Any:
        link = self.clc.clusters.get(cluster)
        if link is None:
            raise CloudError("Unavailable", f"cluster {cluster} is not connected")
        return link.channel

    def run_once(self) -> None:
        """One pass over every unfinished volume record (snapshots have their own worker)."""
        with self._pass_lock:
            for step in (self._ended, self._stopped, self._creating, self._attaching, self._detaching, self._deleting):
                self._each(step)
            if time.monotonic() - self._exports_checked >= EXPORTS_CHECK_S:
                self._exports_checked = time.monotonic()
                self.reconcile_exports()

    # -- the exports against the records -----------------------------------------------------------------------
    def reconcile_exports(self) -> dict[str, list[str]]:
        """Close the exports no running instance needs, restore those a running instance lost.

        Runs in the volume pass (no attach or detach step meanwhile) under the export lock (no start
        exports meanwhile), and reads the SC's exports before the records: an export can appear only
        through those steps, so one the records do not want now is not wanted. Instances in between
        (pending, stopping, shutting down) are left to their own steps. Returns what it did, by cluster
        action ("closed", "restored"), for the log and the tests."""
        done: dict[str, list[str]] = {"closed": [], "restored": []}
        with self._export_lock:
            for link in self.clc.clusters.all():
                try:
                    report = link.channel.ask(c.DESCRIBE_STORAGE, c.Empty())
                except CloudError as exc:
                    log.info("cluster %s: exports not checked: %s", link.name, exc.message)
                    continue
                rows = {
                    r["volume_id"]: dict(r)
                    for r in self.clc.store.query(
                        "SELECT v.volume_id, v.state, v.attach_state, v.guest_device, v.instance_id,"
                        " i.state AS instance_state, i.node, i.dispatched_at FROM volumes v"
                        " LEFT JOIN instances i ON i.instance_id = v.instance_id"
                        " WHERE v.cluster=? AND v.state != 'deleted'",
                        (link.name,),
                    )
                }
                for volume_id in report.exports:
                    row = rows.get(volume_id)
                    if row is None or row["instance_id"] is None or row["instance_state"] in ("terminated", "stopped"):
                        self._close_export(link, volume_id, done)
                for volume_id, row in rows.items():
                    wanted = (
                        row["state"] == "in-use"
                        and row["attach_state"] in ("attached", "detaching")
                        and row["instance_state"] == "running"
                        and row["dispatched_at"] is not None
                        and row["node"]
                    )
                    if wanted and volume_id not in report.exports and volume_id in report.volumes:
                        self._restore_export(link, row, done)
        return done

    def _close_export(self, link: Any, volume_id: str, done: dict[str, list[str]]) -> None:
        try:
            link.channel.ask(c.UNEXPORT_VOLUME, c.VolumeRef(volume_id))
        except CloudError as exc:
            log.warning("cluster %s: the stray export of %s not closed yet: %s", link.name, volume_id, exc.message)
            return
        log.warning("cluster %s: closed the export of %s, which no running instance uses", link.name, volume_id)
        done["closed"].append(volume_id)

    def _restore_export(self, link: Any, row: dict[str, Any], done: dict[str, list[str]]) -> None:
        """Export the volume again; the node is told where (it re-plugs the disk only if that moved)."""
        try:
            export = link.channel.ask(c.EXPORT_VOLUME, c.VolumeRef(row["volume_id"]))
            disk = c.DiskPlan(row["volume_id"], row["guest_device"], export)
            link.channel.ask(c.ATTACH_VOLUME, c.DiskOnNode(row["node"], c.AttachDisk(row["instance_id"], disk)))
        except CloudError as exc:
            log.warning("cluster %s: the export of %s not restored yet: %s", link.name, row["volume_id"], exc.message)
            return
        log.warning(
            "cluster %s: restored the vanished export of %s for %s (nbd port %d)",
            link.name,
            row["volume_id"],
            row["instance_id"],
            export.port,
        )
        done["restored"].append(row["volume_id"])

    def _each(self, step: Any) -> None:
        for row in step(None):
            try:
                step(row)
            except CloudError as exc:
                if exc.code == "Unavailable":
                    log.info("volume %s waits: %s", row["volume_id"], exc.message)
                    continue
                log.warning("volume %s: %s", row["volume_id"], exc)
                self._failed(row, exc)

    def _failed(self, row: dict[str, Any], exc: CloudError) -> None:
        if row["state"] == "creating" and row["instance_id"] is None:
            self.volumes._set(row["volume_id"], state="error", error=exc.message)
        elif row["attach_state"] == "attaching":
            self._clear_attachment(row, error=exc.message)

    def _rows(self, where: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self.clc.store.query(f"SELECT * FROM volumes WHERE {where}", params)]

    # -- the steps: called with None they list their rows, with a row they do one ---------------------------
    def _creating(self, row: dict[str, Any] | None) -> list[dict[str, Any]]:
        if row is None:
            return self._rows("state='creating' AND instance_id IS NULL")
        self._make(row)
        self.volumes._set(row["volume_id"], expect=("creating",), ledger=True, state="available")
        return []

    def _make(self, row: dict[str, Any]) -> None:
        self._channel(row["cluster"]).ask(
            c.CREATE_VOLUME,
            c.CreateVolume(row["volume_id"], row["size_gib"], snapshot_id=row["snapshot_id"], backing=row["backing"]),
        )

    def _ended(self, row: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Volumes of instances that are gone: deleted (DeleteOnTermination) or detached."""
        if row is None:  # from the few attached volumes to their instances (not from every terminated instance)
            rows = self.clc.store.query(
                "SELECT v.* FROM volumes v JOIN instances i ON i.instance_id = v.instance_id"
                " WHERE i.state='terminated' AND v.state != 'deleted'"
            )
            return [dict(r) for r in rows]
        channel = self._channel(row["cluster"])
        channel.ask(c.UNEXPORT_VOLUME, c.VolumeRef(row["volume_id"]))
        if row["delete_on_termination"]:
            self.volumes._set(row["volume_id"], state="deleting", instance_id=None, attach_state=None)
        else:
            self._clear_attachment(row)
        return []

    def _stopped(self, row: dict[str, Any] | None) -> list[dict[str, Any]]:
        """A stopped instance's volumes stay attached but are not served (its next start exports them again)."""
        if row is None:
            rows = self.clc.store.query(
                "SELECT v.* FROM volumes v JOIN instances i ON i.instance_id = v.instance_id"
                " WHERE i.state='stopped' AND v.state='in-use'"
            )
            return [dict(r) for r in rows if r["volume_id"] not in self._unserved]
        with self._export_lock:  # never between a start's export and its boot
            if (self.clc.records.get(row["instance_id"]) or {}).get("state") != "stopped":
                return []
            self._channel(row["cluster"]).ask(c.UNEXPORT_VOLUME, c.VolumeRef(row["volume_id"]))
            self._unserved.add(row["volume_id"])
        return []

    def _attaching(self, row: dict[str, Any] | None) -> list[dict[str, Any]]:
        if row is None:
            return self._rows("attach_state='attaching' AND state='in-use'")
        instance = self.clc.records.get(row["instance_id"]) or {}
        state = instance.get("state")
        if state == "stopped":
            self.volumes._set(row["volume_id"], attach_state="attached")
        elif state == "running" and instance.get("dispatched_at") is not None:
            channel = self._channel(row["cluster"])
            export = channel.ask(c.EXPORT_VOLUME, c.VolumeRef(row["volume_id"]))
            disk = c.DiskPlan(row["volume_id"], row["guest_device"], export)
            channel.ask(c.ATTACH_VOLUME, c.DiskOnNode(instance["node"], c.AttachDisk(row["instance_id"], disk)))
            self.volumes._set(row["volume_id"], attach_state="attached")
        return []  # pending: its start plugs it in; ending: _ended takes it

    def _detaching(self, row: dict[str, Any] | None) -> list[dict[str, Any]]:
        if row is None:
            now = time.monotonic()
            return [
                r
                for r in self._rows("attach_state='detaching'")
                if now - self._detach_tried.get(r["volume_id"], 0.0) > DETACH_RETRY_S or r["force_detach"]
            ]
        instance = self.clc.records.get(row["instance_id"]) or {}
        channel = self._channel(row["cluster"])
        if instance.get("state") in ("running", "pending") and instance.get("node"):
            request = c.DetachDisk(row["instance_id"], row["volume_id"], force=bool(row["force_detach"]))
            done = channel.ask(c.DETACH_VOLUME, c.DetachOnNode(instance["node"], request))
            if not done.done and not row["force_detach"]:
                self._detach_tried[row["volume_id"]] = time.monotonic()
                return []  # the guest holds on to it: ask again later (or until forced)
        channel.ask(c.UNEXPORT_VOLUME, c.VolumeRef(row["volume_id"]))
        self._detach_tried.pop(row["volume_id"], None)
        self._clear_attachment(row)
        return []

    def _deleting(self, row: dict[str, Any] | None) -> list[dict[str, Any]]:
        if row is None:
            return self._rows("state='deleting'")
        self._channel(row["cluster"]).ask(c.DELETE_VOLUME, c.VolumeRef(row["volume_id"]))
        from cloudlab.clc.tags import Tags

        self.volumes._set(row["volume_id"], expect=("deleting",), ledger=False, state="deleted", deleted_at=time.time())
        with self.clc.store.transaction() as db:
            Tags.remove_resource(db, row["volume_id"])
        return []

    def _clear_attachment(self, row: dict[str, Any], error: str | None = None) -> None:
        """The volume is no instance's any more: available (or still to be made, if its instance never started)."""
        self.volumes._set(
            row["volume_id"],
            state="creating" if row["state"] == "creating" else "available",
            instance_id=None,
            device=None,
            guest_device=None,
            attach_state=None,
            attach_time=None,
            force_detach=0,
            delete_on_termination=0,
            error=error,
        )

    # -- snapshots ---------------------------------------------------------------------------------------------
    def _snapshot_steps(self) -> None:
        for row in [dict(r) for r in self.clc.store.query("SELECT * FROM snapshots WHERE state='pending'")]:
            try:
                made = self._snapshot(row)
            except CloudError as exc:
                if exc.code != "Unavailable":
                    self.snapshots.set(row["snapshot_id"], state="error", error=exc.message)
                    self.clc.service(EbsImages).snapshot_finished(row["snapshot_id"], completed=False)
                continue
            self.snapshots.set(
                row["snapshot_id"],
                ledger=True,
                state="completed",
                progress=100,
                completed=time.time(),
                size_bytes=made.size_bytes,
                seconds=made.seconds,
            )
            self.clc.service(EbsImages).snapshot_finished(row["snapshot_id"], completed=True)
        for row in [dict(r) for r in self.clc.store.query("SELECT * FROM snapshots WHERE state='deleting'")]:
            try:
                self._channel(row["cluster"]).ask(c.DELETE_SNAPSHOT, c.SnapshotRef(row["snapshot_id"]))
            except CloudError as exc:
                log.info("snapshot %s not deleted yet: %s", row["snapshot_id"], exc.message)
                continue
            self.snapshots.set(row["snapshot_id"], ledger=False, state="deleted", deleted_at=time.time())

    def _snapshot(self, row: dict[str, Any]) -> c.SnapshotMade:
        """Copy the volume on the SC; while a running guest uses it, with the guest paused (crash-consistent).
        An imported snapshot (ImportSnapshot) is made from its disk image in the object store instead."""
        channel = self._channel(row["cluster"])
        imports = self.clc.service(SnapshotImports)
        imported = imports.request_for(row)
        if imported is not None:
            made = channel.ask(c.IMPORT_SNAPSHOT, imported)
            imports.sized(row["snapshot_id"], made.size_bytes)
            return made
        request = c.SnapshotRequest(row["snapshot_id"], row["volume_id"])
        volume = self.volumes.get(row["volume_id"]) or {}
        instance = self.clc.records.get(volume.get("instance_id") or "") or {}
        if instance.get("state") != "running" or not instance.get("node") or volume.get("attach_state") != "attached":
            return channel.ask(c.CREATE_SNAPSHOT, request)
        on_node = c.OnNode(instance["node"], instance["instance_id"])
        channel.ask(c.PAUSE_INSTANCE, on_node)
        try:
            return channel.ask(c.CREATE_SNAPSHOT, request)
        finally:
            channel.ask(c.RESUME_INSTANCE, on_node)

    # -- starting an instance ----------------------------------------------------------------------------------
    def disks_for_start(self, instance_id: str) -> tuple[c.DiskPlan, ...]:
        """The volumes an instance boots with, each made (a root volume the first time) and exported."""
        rows = self.volumes.of_instances([instance_id]).get(instance_id, [])
        if not rows:
            return ()
        # No pass lock: the volume worker leaves a pending instance's volumes to its start.
        with self._export_lock:
            return self._start_disks(rows)

    def _start_disks(self, rows: list[dict[str, Any]]) -> tuple[c.DiskPlan, ...]:
        plans = []
        for row in rows:
            if row["attach_state"] == "detaching":
                continue
            channel = self._channel(row["cluster"])
            fresh_from = None
            if row["state"] == "creating":
                self._make(row)
                self.volumes._set(row["volume_id"], expect=("creating",), ledger=True, state="in-use")
                if row["is_root"] and row["backing"] and not row["snapshot_id"]:
                    fresh_from = row["backing"]  # made just now from the image's disk: nothing wrote it yet
            export = channel.ask(c.EXPORT_VOLUME, c.VolumeRef(row["volume_id"]))
            self._unserved.discard(row["volume_id"])
            plans.append(c.DiskPlan(row["volume_id"], row["guest_device"], export, fresh_from, row["size_gib"]))
            if row["attach_state"] == "attaching":
                self.volumes._set(row["volume_id"], attach_state="attached")
        return tuple(plans)
