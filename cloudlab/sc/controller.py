"""The storage controller's actions: what the cluster controller may ask of it.

Every action is idempotent (a volume made twice is made once, deleting what is gone is not an
error), so the cloud controller can simply send again whatever a crash left unfinished.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cloudlab import contract as c
from cloudlab.errors import CloudError
from cloudlab.ids import is_valid_id
from cloudlab.rpc import Dispatcher
from cloudlab.sc.exports import Exports
from cloudlab.sc.files import RESERVE_BYTES, VolumeFiles
from cloudlab.sc.imports import import_snapshot

log = logging.getLogger(__name__)


class StorageController:
    """Volumes and snapshots in ``root``, exported on ``nbd_host``."""

    def __init__(self, name: str, root: Path, nbd_host: str, url: str | None = None) -> None:
        self.name = name
        self.url = url
        self.files = VolumeFiles(root)
        self.exports = Exports(root / "exports", nbd_host)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def register_routes(self, dispatcher: Dispatcher) -> None:
        """Only a cluster controller may command its SC (the contract's actions say so)."""
        dispatcher.serve(c.SC_CREATE_VOLUME, lambda r, m: self.create_volume(r))
        dispatcher.serve(c.SC_DELETE_VOLUME, lambda r, m: self.delete_volume(r.volume_id))
        dispatcher.serve(c.SC_EXPORT_VOLUME, lambda r, m: self.export_volume(r.volume_id))
        dispatcher.serve(c.SC_UNEXPORT_VOLUME, lambda r, m: self.unexport_volume(r.volume_id))
        dispatcher.serve(c.SC_CREATE_SNAPSHOT, lambda r, m: self.create_snapshot(r))
        dispatcher.serve(c.SC_DELETE_SNAPSHOT, lambda r, m: self.delete_snapshot(r.snapshot_id))
        dispatcher.serve(c.SC_IMPORT_SNAPSHOT, lambda r, m: self.import_snapshot(r))
        dispatcher.serve(c.SC_DESCRIBE_STORAGE, lambda r, m: self.describe())

    def _lock(self, key: str) -> threading.Lock:
        """One operation at a time per volume or snapshot (a retry waits for the first attempt)."""
        with self._locks_lock:
            return self._locks.setdefault(key, threading.Lock())

    @staticmethod
    def _check(value: str, prefix: str) -> str:
        if not is_valid_id(value, prefix):
            raise CloudError("InvalidParameterValue", f"not a {prefix} id: {value[:64]!r}")
        return value

    def create_volume(self, request: c.CreateVolume) -> c.VolumeMade:
        self._check(request.volume_id, "vol")
        if request.snapshot_id is not None:
            self._check(request.snapshot_id, "snap")
        if not 1 <= request.size_gib <= 16384:
            raise CloudError("InvalidParameterValue", f"volume size {request.size_gib} GiB is not in 1-16384")
        with self._lock(request.volume_id):
            made = self.files.create(request)
        log.info("volume %s: %d bytes", request.volume_id, made.size_bytes)
        return made

    def delete_volume(self, volume_id: str) -> c.Done:
        self._check(volume_id, "vol")
        with self._lock(volume_id):
            self.exports.unexport(volume_id)
            self.files.delete(volume_id)
        return c.Done()

    def export_volume(self, volume_id: str) -> c.NbdExport:
        self._check(volume_id, "vol")
        with self._lock(volume_id):
            return self.exports.export(volume_id, self.files.volume(volume_id))

    def unexport_volume(self, volume_id: str) -> c.Done:
        self._check(volume_id, "vol")
        with self._lock(volume_id):
            self.exports.unexport(volume_id)
        return c.Done()

    def create_snapshot(self, request: c.SnapshotRequest) -> c.SnapshotMade:
        self._check(request.snapshot_id, "snap")
        self._check(request.volume_id, "vol")
        with self._lock(request.volume_id):
            export = self.exports.current().get(request.volume_id)
            return self.files.take_snapshot(request.snapshot_id, request.volume_id, export)

    def import_snapshot(self, request: c.ImportSnapshot) -> c.SnapshotMade:
        """A snapshot made from a disk image in the object store (see ``sc/imports.py``)."""
        self._check(request.snapshot_id, "snap")
        with self._lock(request.snapshot_id):
            return import_snapshot(self.files, request)

    def delete_snapshot(self, snapshot_id: str) -> c.Done:
        self._check(snapshot_id, "snap")
        with self._lock(snapshot_id):
            self.files.delete_snapshot(snapshot_id)
        return c.Done()

    def describe(self) -> c.StorageReport:
        return c.StorageReport(
            name=self.name,
            url=self.url,
            alive=True,
            volumes=tuple(self.files.volume_ids()),
            snapshots=tuple(self.files.snapshot_ids()),
            exports=self.exports.current(),
            free_bytes=self.files.free_bytes(),
            reserve_bytes=RESERVE_BYTES,
        )
