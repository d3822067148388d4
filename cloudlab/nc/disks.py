"""A node's disks: the scratch disk of an instance, and volumes hot-plugged over NBD.

The volumes are served by the cluster's storage controller (``cloudlab.sc``); the node only tells
libvirt where (``<disk type='network'><source protocol='nbd'>``), so a node on another host attaches
the same way. On libvirt's test driver, whose domains do not run and which cannot hot-plug, the disk
goes into the domain's definition instead.

A volume's disk stops its guest on an I/O error (``error_policy='stop'``): when its export vanishes,
the guest's requests wait, paused, instead of failing. Every heartbeat the node resumes the guests
that an I/O error paused (:meth:`NodeDisks.resume_io_paused`, at most every :data:`RESUME_IO_S`);
once the cloud has the volume served again, QEMU's NBD client reconnects and the request goes through.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt

from cloudlab import contract as c
from cloudlab.errors import CloudError
from cloudlab.nc.domain_xml import (
    Volume,
    attached_volumes,
    disk_element_of,
    volume_disk_xml,
    volume_serial,
    volume_source,
)
from cloudlab.nc.states import vanished
from cloudlab.sc.files import qemu_img
from cloudlab.waiting import WaitTimeout, wait_until

log = logging.getLogger(__name__)

SCRATCH_FILE = "scratch.qcow2"  # an instance's scratch disk (vda of an image without a disk)
DETACH_WAIT_S = 20.0  # how long a guest has to release a hot-unplugged disk
RESUME_IO_S = 2.0  # a guest paused by an I/O error is resumed at most this often (the export may still be gone)
IO_WARNED_S = 60.0  # a guest paused again within this long of its last resume is not logged again


def _blank_qcow2(folder: Path, size_gib: int) -> Path:
    """An empty qcow2 of ``size_gib`` in ``folder``, made the first time (an empty qcow2 is the same bytes
    every time: a header and empty tables, no identity of its own)."""
    blank = folder / f"blank-{size_gib}G.qcow2"
    if not blank.is_file():
        work = folder / f".{blank.name}.{threading.get_ident()}.tmp"
        qemu_img("create", "-q", "-f", "qcow2", str(work), f"{size_gib}G")
        work.rename(blank)
    return blank


class NodeDisks:
    """The node controller's disk operations (mixed into :class:`~cloudlab.nc.node.NodeController`)."""

    name: str
    kind: str
    conn: Any
    _lock: threading.RLock
    _io_resumed: dict[str, float]  # guest -> when it was last resumed after an I/O error paused it

    def _lookup(self, instance_id: str) -> Any:
        raise NotImplementedError

    def _not_found(self, instance_id: str) -> CloudError:
        """What a call on an instance this node does not hold (or no longer: terminated meanwhile) raises."""
        return CloudError(
            "InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist on node {self.name}"
        )

    @staticmethod
    def _scratch_disk(instance_dir: Path, size_gib: int) -> Path:
        """A fresh, sparse scratch disk for the instance (EC2's instance store: empty at every start).

        A copy of an empty qcow2 of that size made once per node folder: a start runs under the node's
        lock, and running ``qemu-img`` there for each of 20 starts at once made them wait in line.
        """
        path = instance_dir / SCRATCH_FILE
        path.unlink(missing_ok=True)
        shutil.copyfile(_blank_qcow2(instance_dir.parent.parent, size_gib), path)
        return path

    def attach_volume(self, request: c.AttachDisk) -> c.Done:
        """Hot-plug an NBD-exported volume into a running instance (nothing to do if it is there)."""
        disk = request.disk
        volume = Volume(disk.volume_id, disk.device, disk.export.host, disk.export.port, disk.export.name)
        with self._lock:
            dom = self._lookup(request.instance_id)
            xml = self._disks_xml(dom)
            if volume_serial(disk.volume_id) in attached_volumes(xml):
                source = volume_source(xml, disk.volume_id)
                if source is None or source == (disk.export.host, disk.export.port):
                    return c.Done()
                # the SC serves it elsewhere now (its old port was taken): plug the disk in again
                log.warning("node %s: %s moved to %s:%d; plugging it in again", self.name, disk.volume_id, *source)
                self._unplug(dom, disk.volume_id)
            try:
                if self.kind == "test":  # its domains do not run: the disk goes into the definition
                    self._redefine(dom, add=volume_disk_xml(volume))
                else:
                    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
                    if dom.isActive():
                        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
                    dom.attachDeviceFlags(volume_disk_xml(volume), flags)
            except libvirt.libvirtError as exc:
                what = f"{disk.volume_id} to {request.instance_id}"
                raise CloudError("InternalError", f"node {self.name} could not attach {what}: {exc}") from exc
        log.info("node %s attached %s to %s as %s", self.name, disk.volume_id, request.instance_id, disk.device)
        return c.Done()

    def detach_volume(self, request: c.DetachDisk) -> c.Done:
        """Unplug a volume and wait (bounded) until the guest let it go; ``done`` says whether it did."""
        with self._lock:
            try:
                dom = self._lookup(request.instance_id)
            except CloudError:
                return c.Done()  # no instance here, so no disk either
            element = disk_element_of(self._disks_xml(dom), request.volume_id)
            if element is None:
                return c.Done()
            try:
                if self.kind == "test":
                    self._redefine(dom, remove=request.volume_id)
                    return c.Done()
                flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
                if dom.isActive():
                    flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
                dom.detachDeviceFlags(element, flags)
            except libvirt.libvirtError as exc:
                raise CloudError(
                    "InternalError", f"node {self.name} could not detach {request.volume_id}: {exc}"
                ) from exc

        def gone() -> bool:
            try:
                return disk_element_of(self._disks_xml(dom), request.volume_id) is None
            except libvirt.libvirtError as exc:  # terminated while the guest let go: no disk left
                if vanished(exc):
                    return True
                raise

        try:
            wait_until(gone, DETACH_WAIT_S, what=f"{request.volume_id} to leave {request.instance_id}", interval_s=0.2)
        except WaitTimeout:
            log.warning("node %s: the guest %s has not released %s", self.name, request.instance_id, request.volume_id)
            return c.Done(done=False)
        log.info("node %s detached %s from %s", self.name, request.volume_id, request.instance_id)
        return c.Done()

    def _disks_xml(self, dom: Any) -> str:
        """The domain's disks as they are: live, or on the test driver (whose running domains keep the
        live definition they started with) the definition the disks go into."""
        return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if self.kind == "test" else 0)

    def _unplug(self, dom: Any, volume_id: str) -> None:
        """Take a volume's disk out of a domain at once (under the node's lock; the guest loses it)."""
        element = disk_element_of(self._disks_xml(dom), volume_id)
        if element is None:
            return
        if self.kind == "test":
            self._redefine(dom, remove=volume_id)
            return
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
        try:
            dom.detachDeviceFlags(element, flags)
            wait_until(
                lambda: disk_element_of(self._disks_xml(dom), volume_id) is None, DETACH_WAIT_S, what="the unplug"
            )
        except (libvirt.libvirtError, WaitTimeout) as exc:
            raise CloudError("InternalError", f"node {self.name} could not re-plug {volume_id}: {exc}") from exc

    def resume_io_paused(self) -> list[str]:
        """Resume the guests an I/O error paused (a vanished export); returns the ones resumed now.

        One listing of the paused domains only (usually none), so a heartbeat costs no call per guest."""
        resumed = []
        now = time.monotonic()
        tried = self._io_resumed
        try:
            paused = {dom.name(): dom for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PAUSED)}
        except libvirt.libvirtError:
            return []
        for name in [n for n, when in tried.items() if now - when > IO_WARNED_S]:
            del tried[name]  # (kept a while after its last resume: a guest that keeps failing is logged once)
        for name, dom in paused.items():
            try:
                reason = dom.state()[1]
            except libvirt.libvirtError:
                continue
            if not name.startswith("i-") or reason != libvirt.VIR_DOMAIN_PAUSED_IOERROR:
                continue
            if now - tried.get(name, float("-inf")) < RESUME_IO_S:
                continue
            if name not in tried:
                log.warning("node %s: %s paused by a disk I/O error: resumed until the disk answers", self.name, name)
            tried[name] = now
            try:
                dom.resume()
                resumed.append(name)
            except libvirt.libvirtError as exc:
                log.info("node %s: %s not resumed: %s", self.name, name, exc)
        return resumed

    def pause_instance(self, instance_id: str) -> c.InstanceState:
        """Pause the guest's vCPUs (QEMU drains and flushes its disks first), so a snapshot taken now
        is crash-consistent: every disk as it would be after a power cut at this instant."""
        dom = self._lookup(instance_id)
        try:
            if dom.isActive() and dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
                dom.suspend()
        except libvirt.libvirtError as exc:
            if vanished(exc):  # terminated since it was looked up
                raise self._not_found(instance_id) from exc
            raise CloudError("IncorrectInstanceState", f"{instance_id} cannot be paused now: {exc}") from exc
        return c.InstanceState(instance_id, "paused")

    def resume_instance(self, instance_id: str) -> c.InstanceState:
        dom = self._lookup(instance_id)
        try:
            if dom.isActive() and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
        except libvirt.libvirtError as exc:
            if vanished(exc):
                raise self._not_found(instance_id) from exc
            raise CloudError("InternalError", f"{instance_id} cannot be resumed: {exc}") from exc
        return c.InstanceState(instance_id, "running")

    def _redefine(self, dom: Any, *, add: str | None = None, remove: str | None = None) -> None:
        """Change a (test driver) domain's definition: add a disk, or remove a volume's disk."""
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        devices = root.find("devices")
        assert devices is not None
        if add is not None:
            devices.append(ET.fromstring(add))
        for disk in list(devices.iterfind("disk")):
            serial = disk.find("serial")
            if remove is not None and serial is not None and serial.text == volume_serial(remove):
                devices.remove(disk)
        self.conn.defineXML(ET.tostring(root, encoding="unicode"))
