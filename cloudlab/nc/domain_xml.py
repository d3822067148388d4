"""libvirt domain XML for an instance: direct kernel boot, serial console to a log file.

Built with ElementTree from a small spec so that escaping is never hand-made. The instance's
cloudlab facts (owner, image, type) ride along in ``<metadata>`` so that a node controller that
restarts can tell its own domains apart from anything else on the host.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

METADATA_NS = "https://cloudlab.invalid/xmlns/instance/1"
# The image builder's tuned command line (fast TCG boot); see cloudlab.images.build.
DEFAULT_CMDLINE = "console=ttyS0 quiet panic=-1 tsc=reliable no_timer_check 8250.nr_uarts=1 cryptomgr.notests"


@dataclass(frozen=True)
class DomainSpec:
    """What the node controller needs to know to start one instance."""

    instance_id: str
    vcpus: int
    memory_mb: int
    kernel: Path
    ramdisk: Path | None
    console_log: Path
    cmdline: str = DEFAULT_CMDLINE
    accel: str = "tcg"  # "kvm", "tcg" or "test" (libvirt's test driver)
    disk: Path | None = None  # the image's disk, attached read-only (shared by every instance of the image)
    metadata: dict[str, str] = field(default_factory=dict)


def build_domain_xml(spec: DomainSpec) -> str:
    """The domain XML for ``spec``."""
    domain_type = {"kvm": "kvm", "tcg": "qemu", "test": "test"}[spec.accel]
    dom = ET.Element("domain", type=domain_type)
    ET.SubElement(dom, "name").text = spec.instance_id
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
    ET.SubElement(os_el, "cmdline").text = cmdline
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    if spec.accel == "kvm":
        ET.SubElement(dom, "cpu", mode="host-passthrough")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    if spec.disk is not None:
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
    ET.register_namespace("cloudlab", METADATA_NS)
    return ET.tostring(dom, encoding="unicode")


def read_metadata(xml: str) -> dict[str, str] | None:
    """The cloudlab metadata of a domain, or None for a domain cloudlab did not create."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    inst = root.find(f"metadata/{{{METADATA_NS}}}instance")
    return dict(inst.attrib) if inst is not None else None
