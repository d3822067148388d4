"""A node's disks: the scratch disk of an instance, and volumes hot-plugged over NBD.

The volumes are served by the cluster's storage controller (``cloudlab.sc``); the node only tells
libvirt where (``<disk type='network'><source protocol='nbd'>``), so a node on another host attaches
the same way. On libvirt's test driver, whose domains do not run and which cannot hot-plug, the disk
goes into the domain's definition instead.
"""

from __future__ import annotations

import logging
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt

from cloudlab import contract as c
from cloudlab.errors import CloudError
from cloudlab.nc.domain_xml import Volume, attached_volumes, disk_element_of, volume_disk_xml, volume_serial
from cloudlab.sc.files import qemu_img
from cloudlab.waiting import WaitTimeout, wait_until

log = logging.getLogger(__name__)

SCRATCH_FILE = "scratch.qcow2"  # an instance's scratch disk (vda of an image without a disk)
DETACH_WAIT_S = 20.0  # how long a guest has to release a hot-unplugged disk


class NodeDisks:
    """The node controller's disk operations (mixed into :class:`~cloudlab.nc.node.NodeController`)."""

    name: str
    kind: str
    conn: Any
    _lock: threading.RLock

    def _lookup(self, instance_id: str) -> Any:
        raise NotImplementedError

    @staticmethod
    def _scratch_disk(instance_dir: Path, size_gib: int) -> Path:
        """A fresh, sparse scratch disk for the instance (EC2's instance store: empty at every start)."""
        path = instance_dir / SCRATCH_FILE
        path.unlink(missing_ok=True)
        qemu_img("create", "-q", "-f", "qcow2", str(path), f"{size_gib}G")
        return path

    def attach_volume(self, request: c.AttachDisk) -> c.Done:
        """Hot-plug an NBD-exported volume into a running instance (nothing to do if it is there)."""
        disk = request.disk
        volume = Volume(disk.volume_id, disk.device, disk.export.host, disk.export.port, disk.export.name)
        with self._lock:
            dom = self._lookup(request.instance_id)
            if volume_serial(disk.volume_id) in attached_volumes(dom.XMLDesc(0)):
                return c.Done()
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
            element = disk_element_of(dom.XMLDesc(0), request.volume_id)
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
            return disk_element_of(dom.XMLDesc(0), request.volume_id) is None

        try:
            wait_until(gone, DETACH_WAIT_S, what=f"{request.volume_id} to leave {request.instance_id}", interval_s=0.2)
        except WaitTimeout:
            log.warning("node %s: the guest %s has not released %s", self.name, request.instance_id, request.volume_id)
            return c.Done(done=False)
        log.info("node %s detached %s from %s", self.name, request.volume_id, request.instance_id)
        return c.Done()

    def pause_instance(self, instance_id: str) -> c.InstanceState:
        """Pause the guest's vCPUs (QEMU drains and flushes its disks first), so a snapshot taken now
        is crash-consistent: every disk as it would be after a power cut at this instant."""
        dom = self._lookup(instance_id)
        try:
            if dom.isActive() and dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
                dom.suspend()
        except libvirt.libvirtError as exc:
            raise CloudError("IncorrectInstanceState", f"{instance_id} cannot be paused now: {exc}") from exc
        return c.InstanceState(instance_id, "paused")

    def resume_instance(self, instance_id: str) -> c.InstanceState:
        dom = self._lookup(instance_id)
        try:
            if dom.isActive() and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
        except libvirt.libvirtError as exc:
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
