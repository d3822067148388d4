"""libvirt domain XML for an instance: direct kernel boot, serial console to a log file.

Built with ElementTree from a small spec so that escaping is never hand-made. The instance's
cloudlab facts (owner, image, type) ride along in ``<metadata>`` so that a node controller that
restarts can tell its own domains apart from anything else on the host.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from cloudlab.guest import DEFAULT_KERNEL_CMDLINE, IDENTITY_PORT

METADATA_NS = "https://cloudlab.invalid/xmlns/instance/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


@dataclass(frozen=True)
class DomainSpec:
    """What the node controller needs to know to start one instance."""

    instance_id: str
    vcpus: int
    memory_mb: int
    kernel: Path
    ramdisk: Path | None
    console_log: Path
    cmdline: str = DEFAULT_KERNEL_CMDLINE
    accel: str = "tcg"  # "kvm", "tcg" or "test" (libvirt's test driver)
    disk: Path | None = None  # the image's disk, attached read-only (shared by every instance of the image)
    metadata: dict[str, str] = field(default_factory=dict)
    nic: Nic | None = None
    #: the guest's identity port (virtio-serial ``org.cloudlab.identity``, a unix socket QEMU listens on):
    #: a booted template waits on it, and an instance restored from one is handed its identity there
    identity_socket: Path | None = None
    #: QEMU starts waiting for a migration stream (``-incoming defer``): the booted template's state
    incoming: bool = False
    uuid: str | None = None  # a domain defined again keeps its UUID (libvirt picks one the first time)
    volumes: tuple[Volume, ...] = ()  # NBD-exported volumes (the root volume as vda)
    scratch: Path | None = None  # the instance's own scratch disk (qcow2) as vda, when no volume is vda
    #: guest RAM as a file (a booted template's, see :mod:`cloudlab.nc.templates`): the template's QEMU
    #: writes its RAM into it (``memory_shared``), a restored instance maps it copy-on-write (private), so
    #: siblings share the template's pages in the host's page cache until they write them
    memory_file: Path | None = None
    memory_shared: bool = False
    #: the image disk that the root volume (``vda`` among ``volumes``) was made from for this very start, a
    #: copy-on-write overlay of it nothing has written yet, and its size: such an instance may be restored
    #: from a booted template of that disk (the guest's page cache is the disk's content exactly)
    root_backing: Path | None = None
    root_gib: int = 0


@dataclass(frozen=True)
class Volume:
    """A volume served by the cluster's storage controller over NBD, as guest disk ``device``."""

    volume_id: str
    device: str
    host: str
    port: int
    export: str


def volume_serial(volume_id: str) -> str:
    """The disk's serial as the guest sees it (``/dev/disk/by-id/virtio-vol...``): EC2's NVMe style,
    the volume id without its dash (20 characters, virtio-blk's limit)."""
    return volume_id.replace("-", "")[:20]


def volume_disk_xml(volume: Volume) -> str:
    """The ``<disk>`` of one volume (also what the node hot-plugs and unplugs)."""
    return ET.tostring(_volume_element(volume), encoding="unicode")


def _volume_element(volume: Volume) -> ET.Element:
    disk = ET.Element("disk", type="network", device="disk")
    # The export is the guest's raw bytes (the qcow2 stays on the SC); no host page cache on the node.
    # An I/O error (the export gone: its server killed, the SC's host restarted) stops the guest
    # instead of failing its request: the node resumes it once the SC serves the volume again, and
    # QEMU sends the request again over a new connection (the guest never sees an error).
    ET.SubElement(disk, "driver", name="qemu", type="raw", cache="none", error_policy="stop", rerror_policy="stop")
    source = ET.SubElement(disk, "source", protocol="nbd", name=volume.export)
    ET.SubElement(source, "host", name=volume.host, port=str(volume.port))
    ET.SubElement(disk, "target", dev=volume.device, bus="virtio")
    ET.SubElement(disk, "serial").text = volume_serial(volume.volume_id)
    return disk


def attached_volumes(xml: str) -> dict[str, str]:
    """volume serial -> guest device of a domain's NBD disks."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    found = {}
    for disk in root.iterfind("devices/disk"):
        serial, target = disk.find("serial"), disk.find("target")
        if disk.get("type") == "network" and serial is not None and target is not None:
            found[serial.text or ""] = target.get("dev", "")
    return found


def volume_source(xml: str, volume_id: str) -> tuple[str, int] | None:
    """Where a domain's disk of ``volume_id`` is served from (NBD host and port), if it has one."""
    element = disk_element_of(xml, volume_id)
    host = None if element is None else ET.fromstring(element).find("source/host")
    if host is None:
        return None
    return host.get("name", ""), int(host.get("port", "0") or 0)


def disk_element_of(xml: str, volume_id: str) -> str | None:
    """The ``<disk>`` element of ``volume_id`` in a domain's XML, as libvirt wrote it (for detaching)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for disk in root.iterfind("devices/disk"):
        serial = disk.find("serial")
        if serial is not None and serial.text == volume_serial(volume_id):
            return ET.tostring(disk, encoding="unicode")
    return None


@dataclass(frozen=True)
class Nic:
    """The instance's one NIC: a tap on a bridge, the group's (direct) or its own plugged into a VDE switch (vde).

    On VDE the bridge is the instance's own (see :mod:`cloudlab.nc.vde_nics`): the switch connection lives in
    a supervised ``vde_plug`` beside it, not in QEMU, so a restarted switch can be plugged in again.
    """

    mac: str
    address: str  # ADDR/PREFIX, set by the guest's init from the kernel command line
    gateway: str
    bridge: str  # "" for a booted template's NIC: a tap on no bridge (the same device; the back-end differs)
    #: Not 0: the NIC's MTU (libvirt's ``<mtu>``: the tap's MTU, and virtio-net's ``host_mtu``, which the guest's
    #: driver takes as its MTU at probe; a fast VDE segment's jumbo frames, see cloudlab.cc.segments).
    mtu: int = 0


def build_domain_xml(spec: DomainSpec) -> str:
    """The domain XML for ``spec``."""
    domain_type = {"kvm": "kvm", "tcg": "qemu", "test": "test"}[spec.accel]
    dom = ET.Element("domain", type=domain_type)
    args = _qemu_args(spec)
    if args:
        commandline = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        for arg in args:
            ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=arg)
    ET.SubElement(dom, "name").text = spec.instance_id
    if spec.uuid is not None:
        ET.SubElement(dom, "uuid").text = spec.uuid
    ET.SubElement(dom, "title").text = f"cloudlab instance {spec.instance_id}"
    meta = ET.SubElement(dom, "metadata")
    inst = ET.SubElement(meta, f"{{{METADATA_NS}}}instance")
    for key, value in sorted(spec.metadata.items()):
        inst.set(key, value)
    ET.SubElement(dom, "memory", unit="MiB").text = str(spec.memory_mb)
    ET.SubElement(dom, "vcpu").text = str(spec.vcpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "kernel").text = str(spec.kernel)
    if spec.ramdisk is not None:
        ET.SubElement(os_el, "initrd").text = str(spec.ramdisk)
    cmdline = f"{spec.cmdline} cloudlab.hostname={spec.instance_id}"
    if spec.nic is not None and spec.nic.address:
        cmdline += f" cloudlab.ip={spec.nic.address},{spec.nic.gateway}"
    ET.SubElement(os_el, "cmdline").text = cmdline
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    if spec.accel == "kvm":
        ET.SubElement(dom, "cpu", mode="host-passthrough")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    if spec.scratch is not None and not any(v.device == "vda" for v in spec.volumes):
        scratch = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(scratch, "driver", name="qemu", type="qcow2", discard="unmap")
        ET.SubElement(scratch, "source", file=str(spec.scratch))
        ET.SubElement(scratch, "target", dev="vda", bus="virtio")
    for volume in sorted(spec.volumes, key=lambda v: (len(v.device), v.device)):
        devices.append(_volume_element(volume))
    if spec.disk is not None and spec.scratch is None and not spec.volumes:
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="raw")
        ET.SubElement(disk, "source", file=str(spec.disk))
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
        ET.SubElement(disk, "readonly")
    if spec.accel != "test":
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=str(spec.console_log), append="on")
        ET.SubElement(serial, "target", port="0")
        console = ET.SubElement(devices, "console", type="file")
        ET.SubElement(console, "source", path=str(spec.console_log), append="on")
        ET.SubElement(console, "target", type="serial", port="0")
        ET.SubElement(devices, "memballoon", model="none")
        ET.SubElement(devices, "controller", type="usb", model="none")  # nothing to plug in; one device less to boot
        rng = ET.SubElement(devices, "rng", model="virtio")
        ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
        if spec.identity_socket is not None:
            channel = ET.SubElement(devices, "channel", type="unix")
            ET.SubElement(channel, "source", mode="bind", path=str(spec.identity_socket))
            ET.SubElement(channel, "target", type="virtio", name=IDENTITY_PORT)
    if spec.nic is not None:
        _add_nic(devices, spec.nic)
    ET.register_namespace("cloudlab", METADATA_NS)
    ET.register_namespace("qemu", QEMU_NS)
    return ET.tostring(dom, encoding="unicode")


#: The id of the file-backed RAM object (also the RAM block's name in a migration stream: the same in a
#: template and in every instance restored from it).
MEMORY_FILE_ID = "cloudlab.ram"


def _qemu_args(spec: DomainSpec) -> list[str]:
    """Arguments libvirt cannot express, passed through to QEMU.

    * ``-incoming defer``: libvirt has no way to start a domain from a bare QEMU migration stream, so QEMU
      is told to wait for one; the node feeds it the template's file over the monitor.
    * RAM from a file of our choosing: libvirt's ``<memoryBacking><source type='file'/>`` puts the file in
      a folder of its own, made at start, so a template's RAM could not be named there. A second
      ``-machine memory-backend=`` overrides libvirt's (its ``pc.ram`` then backs nothing and is never touched).
    """
    args: list[str] = []
    if spec.memory_file is not None:
        path = str(spec.memory_file).replace(",", ",,")  # QEMU's option syntax doubles a literal comma
        share = "on" if spec.memory_shared else "off"
        args += [
            "-object",
            f"memory-backend-file,id={MEMORY_FILE_ID},size={spec.memory_mb << 20},mem-path={path},share={share}",
            "-machine",
            f"memory-backend={MEMORY_FILE_ID}",
        ]
    if spec.incoming:
        args += ["-incoming", "defer"]
    return args


def _add_nic(devices: ET.Element, nic: Nic) -> None:
    iface = ET.SubElement(devices, "interface", type="bridge" if nic.bridge else "ethernet")
    ET.SubElement(iface, "mac", address=nic.mac)
    if nic.bridge:
        ET.SubElement(iface, "source", bridge=nic.bridge)
    ET.SubElement(iface, "model", type="virtio")
    if nic.mtu:
        ET.SubElement(iface, "mtu", size=str(int(nic.mtu)))


def tap_of(xml: str) -> str | None:
    """The tap libvirt made for a running domain's NIC."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    target = root.find("devices/interface/target")
    return target.get("dev") if target is not None else None


def read_metadata(xml: str) -> dict[str, str] | None:
    """The cloudlab metadata of a domain, or None for a domain cloudlab did not create."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    inst = root.find(f"metadata/{{{METADATA_NS}}}instance")
    return dict(inst.attrib) if inst is not None else None
