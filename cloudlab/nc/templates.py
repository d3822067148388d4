"""Booted templates: launch an instance by restoring a guest that already booted (issue 13).

A *template* is a guest of one image and one size, booted once (kernel command line option
``cloudlab.identity=channel``) to the point where its init waits for its identity on the virtio-serial
port ``org.cloudlab.identity``, then saved: its RAM is a file (:data:`RAM_FILE`, QEMU's
``memory-backend-file`` with ``share=on``, so the running template writes its RAM there), its devices a
QEMU migration stream that leaves that RAM out (``x-ignore-shared``). An instance launched from it is the
same domain XML as a cold boot (its own name, UUID, MAC, console, kernel command line) plus the identity
port, ``-incoming defer`` and the template's RAM file mapped privately (``share=off``: copy-on-write, so
nothing of the RAM is read at restore, and pages a guest only reads stay shared with its siblings in the
host's page cache, counted once); the node feeds QEMU the device stream over the monitor, resumes it and
writes the instance's identity line into the port. The guest's init then carries on as after a cold boot
(MAC, address, metadata, user data, SSH, boot marker). The RAM file is never written once saved (a new
build is a new folder, renamed into place; instances still mapping an old one keep its inode).

Why a bare migration stream and not libvirt's ``virDomainSave``/``virDomainRestore``: libvirt refuses to
restore a saved image under another UUID ("Target domain uuid ... does not match source"), so one saved
image could give one domain only. QEMU's stream holds guest state, not identity: the devices must be the
same (same XML, so the same PCI slots), the back-ends (tap, console file, socket) may differ. The stream
travels through file descriptors passed on the monitor (``getfd``), since QEMU's sandbox forbids
``exec:`` migration and QEMU 7.2 has no ``file:`` URI.

What siblings of one template would share, and what each gets instead (see ``images/init.sh``):

* the MAC: the stream carries the template's (virtio-net migrates its config space), so the guest sets
  the instance's own MAC on its NIC before bringing it up; the template's MAC never sends a frame;
* the kernel's random state: the identity line carries 32 fresh bytes from the host, written into
  ``/dev/urandom`` by a shell builtin before any program runs. Linux (6.1) mixes a write into its input
  pool and reseeds its generator from that pool on the next draw once the last reseed is older than
  ``max(1 s, uptime / 2)`` early in boot; the template is saved :data:`SETTLE_S` after it started waiting,
  long enough for that, so the first draw after resume reseeds with the host's bytes (the test compares
  siblings' random bytes). SSH host keys are made by dropbear on the first connection, after that;
* machine-id, hostname, boot id: made after the identity arrives;
* the clock: the stream resumes the guest's clock where the template stopped; the identity carries the
  host's time, and init sets it (to the second) before anything else runs.

An image with a disk (cloudlab-debian) has templates too, keyed also by the disk's sha256 and the root
volume's size: the template boots its root read-only (:func:`template_cmdline`) on a throwaway overlay of the
disk, which must hold nothing of its own after the save (:func:`written_clusters`), so the saved page cache
is the disk's content, and an instance is restored onto its own new root volume (an overlay of that disk,
which nothing has written yet: ``DiskPlan.fresh_from``; any other root volume boots cold).

Templates live in a machine-wide cache (``<cache>/templates``; on one machine every simulated node
shares it, as they share the image cache), one folder per :class:`TemplateKey` digest: the image files'
contents, the kernel command line, vCPUs and memory, NIC or none, accelerator and the QEMU and libvirt
versions. A changed image, command line or QEMU/libvirt is a different key, so it is never restored from a
stale template; stale ones are removed when a node starts. A launch with no template ready boots cold and
asks for a template to be built in the background (one build at a time per node).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import queue
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from cloudlab.errors import CloudError
from cloudlab.files import write_atomic
from cloudlab.guest import IDENTITY_ACK, TEMPLATE_CMDLINE_OPTION, TEMPLATE_WAITING_MARKER, has_booted
from cloudlab.images.cached import LockAbandoned, locked
from cloudlab.nc.domain_xml import DomainSpec, Nic, build_domain_xml
from cloudlab.nc.guest_state import TemplateError, check_restored, punch_zero_pages, restore_state, save_state
from cloudlab.waiting import WaitTimeout, wait_until

log = logging.getLogger(__name__)

#: Bump when the way a template is made changes (part of every key, so older templates are never restored).
#: 2: the RAM in a file of its own, mapped copy-on-write by each restored instance; 3: saved running
TEMPLATE_FORMAT = 3
#: ``init_on_free=1``: pages the kernel frees are zeroed, so the bootloader's copy of the initramfs and
#: the decompressed kernel's scratch become zero pages, which a migration stream skips: 67 MiB of state
#: instead of 106 and a load ~3× faster. The restored guest keeps zeroing what it frees (a small cost).
TEMPLATE_ONLY_CMDLINE = "init_on_free=1"
#: The name of every template's domain begins so (``control.leftover_qemu`` tells them from instances by it).
TEMPLATE_DOMAIN_PREFIX = "cloudlab-tpl-"
#: The template's MAC: never used on a wire (a restored guest sets its own before its NIC comes up).
TEMPLATE_MAC = "52:54:00:ff:ff:fe"
#: How long a template waits for identity before it is saved: longer than the kernel's early-boot reseed
#: interval (``max(1 s, uptime / 2)``, uptime ~3 s here), so the first random draw after a restore reseeds.
SETTLE_S = 3.0
BOOT_TIMEOUT_S = 90.0  # a template's boot to the waiting line (TCG on a busy host)
IDENTITY_TIMEOUT_S = 60.0  # from the resume: the state loading, then the guest reading its port (busy host)
RETRY_FAILED_AFTER_S = 600.0  # a template that failed to build is not tried again for this long
STATE_FILE = "state"
RAM_FILE = "ram"  # the template guest's RAM, as the guest left it (QEMU's memory-backend-file)
INFO_FILE = "template.json"
ROOT_FILE = "root.qcow2"  # a disk template's root while it boots: an overlay of the image's disk, never written
FAILED_FILE = "failed.json"
LAUNCH_MODES = ("restore", "boot")
#: The size a node builds a template for when it starts: the default instance type's (t2.micro, see
#: ``clc/vmtypes.py``; a test keeps the two equal). Other sizes get theirs at their first launch.
DEFAULT_TEMPLATE_SIZE = (1, 256)
#: The scratch disk (GiB) of the start-up template: what the cloud controller gives an instance of an image
#: without a disk (``clc/dispatch.py:SCRATCH_GIB``; a test keeps the two equal).
DEFAULT_TEMPLATE_SCRATCH_GIB = 1


@dataclasses.dataclass(frozen=True)
class TemplateKey:
    """Everything a template's state depends on; a change in any of it means another template."""

    kernel_sha256: str
    ramdisk_sha256: str
    cmdline: str
    vcpus: int
    memory_mb: int
    nic: bool
    accel: str
    qemu_version: int
    libvirt_version: int
    format: int = TEMPLATE_FORMAT
    scratch_gib: float = 0  # the scratch disk (vda) the template has, of the same size as the instance's
    nic_mtu: int = 0  # the NIC's MTU (virtio-net's host_mtu, taken by the guest at boot) when not the default
    #: an image with a disk (cloudlab-debian): the sha256 of the disk the root volume is an overlay of, and the
    #: root volume's size (the guest read its capacity); the template's file system state is that disk's
    disk_sha256: str = ""
    root_gib: int = 0

    @property
    def name(self) -> str:
        fields = dataclasses.asdict(self)
        for optional in ("nic_mtu", "disk_sha256", "root_gib"):
            if not fields[optional]:
                del fields[optional]  # so templates without them keep the names they had before these existed
        data = json.dumps(fields, sort_keys=True).encode()
        return "tpl-" + hashlib.sha256(data).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Template:
    """A finished template: its key and its saved state."""

    key: TemplateKey
    state: Path

    @property
    def name(self) -> str:
        return self.key.name

    @property
    def ram(self) -> Path:
        """The guest's RAM, which a restored instance maps copy-on-write (never written after the save)."""
        return self.state.parent / RAM_FILE


_digests: dict[tuple[str, int, int], str] = {}
_digests_lock = threading.Lock()


def file_digest(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime): images are read once per process."""
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    with _digests_lock:
        found = _digests.get(memo)
    if found is None:
        with path.open("rb") as handle:
            found = hashlib.file_digest(handle, "sha256").hexdigest()
        with _digests_lock:
            _digests[memo] = found
    return found


def qcow2_size(path: Path) -> int:
    """The virtual size of a qcow2 image, from its header (bytes 24-31, big-endian) without running qemu-img."""
    with path.open("rb") as handle:
        header = handle.read(32)
    if len(header) < 32 or header[:4] != b"QFI\xfb":
        raise ValueError(f"{path} is not a qcow2 image")
    return int.from_bytes(header[24:32], "big")


#: A disk template's root is mounted read-only until its identity came (systemd-remount-fs makes it
#: writable after that, as it does on a cold boot), and not checked (a cold boot's root, mounted writable
#: by the initrd, is not either): nothing is written to the disk before the save, so the template's page
#: cache and file system state are its image disk's, which is each restored instance's root volume.
DISK_TEMPLATE_CMDLINE = "fsck.mode=skip"


def template_cmdline(cmdline: str, *, disk: bool) -> str:
    """A template's kernel command line: the instance's, marked as a template; a disk's root read-only."""
    words = cmdline.split()
    if disk:
        words = ["ro" if word == "rw" else word for word in words]
        if "ro" not in words:
            words.append("ro")
        words.append(DISK_TEMPLATE_CMDLINE)
    return " ".join([*words, TEMPLATE_CMDLINE_OPTION, TEMPLATE_ONLY_CMDLINE])


def written_clusters(path: Path) -> int:
    """Bytes a qcow2 overlay holds of its own (``qemu-img map``: extents at depth 0 with data)."""
    from cloudlab.sc.files import qemu_img

    extents = json.loads(qemu_img("map", "--output=json", str(path), timeout=30))
    return sum(e["length"] for e in extents if e.get("depth") == 0 and e.get("data"))


def identity_line(spec: DomainSpec, template: Template, now: float | None = None) -> str:
    """What a restored guest learns over its identity port (the words of a cold boot's command line, and more)."""
    words = [f"cloudlab.hostname={spec.instance_id}"]
    if spec.nic is not None:
        words.append(f"cloudlab.mac={spec.nic.mac}")
        if spec.nic.address:
            words.append(f"cloudlab.ip={spec.nic.address},{spec.nic.gateway}")
    words += [
        f"cloudlab.seed={os.urandom(32).hex()}",
        f"cloudlab.time={now if now is not None else time.time():.3f}",
        f"cloudlab.launch={template.name}",
    ]
    return " ".join(words)


def hand_identity(path: Path, line: str, timeout_s: float = IDENTITY_TIMEOUT_S) -> None:
    """Write ``line`` into the guest's identity port until the guest confirms it.

    A line written just as the guest resumes can be lost inside QEMU's virtio-serial port, so it is
    written again every 0.05 s until the guest answers :data:`IDENTITY_ACK` (a second copy the guest never
    reads is harmless: the port is read once per boot).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        wait_until(lambda: sock.connect(str(path)) or True, 5.0, what=f"QEMU listening on {path}", ignore=(OSError,))
        sock.settimeout(0.05)
        got = bytearray()

        def confirmed() -> bool:
            sock.sendall(line.encode() + b"\n")
            with contextlib.suppress(TimeoutError):
                got.extend(sock.recv(256))
            return IDENTITY_ACK.encode() in got

        wait_until(confirmed, timeout_s, what="the guest confirming its identity", interval_s=0.01, ignore=(OSError,))


def find_template(
    root: Path,
    kernel: Path,
    ramdisk: Path,
    *,
    nic: bool,
    memory_mb: int,
    scratch_gib: float = 1,
    disk: Path | None = None,
) -> dict[str, Any] | None:
    """The finished template of these image files (``disk``: an image with a disk, no scratch), NIC or none
    and size in ``root``, as its info (and ``name``), or None: how a benchmark or a test waits for one."""
    disk_sha256 = file_digest(disk) if disk is not None else ""
    scratch_gib = 0 if disk is not None else scratch_gib
    want = (file_digest(kernel), file_digest(ramdisk), nic, memory_mb, scratch_gib, TEMPLATE_FORMAT, disk_sha256)
    fields = ("kernel_sha256", "ramdisk_sha256", "nic", "memory_mb", "scratch_gib", "format")
    for info_file in root.glob(f"tpl-*/{INFO_FILE}"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            info = json.loads(info_file.read_text())
            key = info["key"]
            found = (*(key.get(k) for k in fields), key.get("disk_sha256", ""))
            if found == want and (info_file.parent / STATE_FILE).is_file():
                return info | {"name": info_file.parent.name}
    return None


def _template_progress(console: bytes) -> str | None:
    """``waiting`` once a template's guest waits for its identity, ``booted`` if it booted as an instance."""
    if TEMPLATE_WAITING_MARKER.encode() in console:
        return "waiting"
    return "booted" if has_booted(console) else None


class TemplateStore:
    """The templates in one folder: finished ones, failed builds, and how to build one."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ready(self, key: TemplateKey) -> Template | None:
        folder = self.root / key.name
        try:
            info = json.loads((folder / INFO_FILE).read_text())
            if info.get("key") != dataclasses.asdict(key) or not all(
                (folder / name).is_file() for name in (STATE_FILE, RAM_FILE)
            ):
                return None
        except (OSError, ValueError):
            return None
        return Template(key, folder / STATE_FILE)

    def failed_recently(self, key: TemplateKey) -> bool:
        try:
            info = json.loads((self.root / f"{key.name}.{FAILED_FILE}").read_text())
            return time.time() - float(info["time"]) < RETRY_FAILED_AFTER_S
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def remove_stale(self, qemu_version: int, libvirt_version: int) -> None:
        """Remove templates made by another QEMU or libvirt (they can never be restored here)."""
        if not self.root.is_dir():
            return
        for info_file in self.root.glob(f"tpl-*/{INFO_FILE}"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                key = json.loads(info_file.read_text())["key"]
                if (key["qemu_version"], key["libvirt_version"]) != (qemu_version, libvirt_version):
                    log.info("removing template %s (QEMU/libvirt changed)", info_file.parent.name)
                    shutil.rmtree(info_file.parent, ignore_errors=True)

    def build(
        self, conn: libvirt.virConnect, key: TemplateKey, spec: DomainSpec, stopping: threading.Event | None = None
    ) -> Template:
        """Boot ``spec`` as a template, wait until it waits for its identity, save it (under a lock: once).

        ``stopping`` (the node is closing) abandons the wait for another builder's lock and the boot."""
        stopping = stopping or threading.Event()
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with locked(self.root / f".{key.name}.lock", abandon=stopping):
                return self._build_locked(conn, key, spec, stopping)
        except LockAbandoned as exc:
            raise TemplateError(f"template {key.name} not built: the node is stopping") from exc

    def _build_locked(
        self, conn: libvirt.virConnect, key: TemplateKey, spec: DomainSpec, stopping: threading.Event
    ) -> Template:
        found = self.ready(key)
        if found is not None:
            return found
        for stale in self.root.glob(f".{key.name}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build; we hold the lock
        work = self.root / f".{key.name}.{os.getpid()}.tmp"
        work.mkdir()
        started = time.monotonic()
        console = work / "console.log"
        console.write_bytes(b"")
        try:
            root_disk = self._root_overlay(work, spec, key) if key.disk_sha256 else None
            template_spec = dataclasses.replace(
                spec,
                instance_id=f"cloudlab-{key.name}",  # TEMPLATE_DOMAIN_PREFIX: not an instance (no "i-")
                console_log=console,
                cmdline=template_cmdline(spec.cmdline, disk=root_disk is not None),
                identity_socket=work / "identity.sock",
                incoming=False,
                metadata={},
                nic=Nic(TEMPLATE_MAC, "", "", "", mtu=spec.nic.mtu) if spec.nic is not None else None,
                # the root volume's stand-in (the same virtio-blk vda), or the scratch disk
                scratch=root_disk or self._scratch(work, key.scratch_gib),
                volumes=(),  # (never the instance's own root volume: the template reads its image's disk)
                memory_file=work / RAM_FILE,  # the same file in the folder it is renamed to
                memory_shared=True,
            )
            dom = conn.createXML(build_domain_xml(template_spec), 0)
        except (libvirt.libvirtError, OSError, RuntimeError, CloudError) as exc:
            self._failed(key, f"cannot start: {exc}")
            shutil.rmtree(work, ignore_errors=True)
            raise TemplateError(f"template {key.name} cannot start: {exc}") from exc
        try:
            seen = wait_until(
                lambda: _template_progress(console.read_bytes()) or ("stopping" if stopping.is_set() else None),
                BOOT_TIMEOUT_S,
                what=f"template {key.name} waiting for its identity",
                interval_s=0.1,
            )
            if seen == "stopping":
                raise TemplateError("the node is stopping")
            if seen == "booted":  # an init that knows no cloudlab.identity=channel: never a template
                raise TemplateError("the image booted through without waiting for an identity")
            time.sleep(SETTLE_S)
            save_state(dom, work / STATE_FILE)
        except (WaitTimeout, TemplateError, libvirt.libvirtError, OSError) as exc:
            if not stopping.is_set():  # a node that stops has not shown the template cannot be built
                self._failed(key, str(exc))
            shutil.rmtree(work, ignore_errors=True)
            raise TemplateError(f"template {key.name} not built: {exc}") from exc
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
        written = written_clusters(root_disk) if root_disk is not None else 0
        if written:
            # the guest wrote its disk before the save: its restored instances' page cache would not be
            # their root volume's content (a fresh overlay of the image's disk), so this is no template
            self._failed(key, f"the template wrote {written} bytes to its read-only root before the save")
            shutil.rmtree(work, ignore_errors=True)
            raise TemplateError(f"template {key.name} not built: its root disk was written before the save")
        folder = self.root / key.name
        info = {
            "key": dataclasses.asdict(key),
            "built_at": time.time(),
            "build_s": round(time.monotonic() - started, 2),
            "state_bytes": (work / STATE_FILE).stat().st_size,
            "ram_bytes_used": punch_zero_pages(work / RAM_FILE),
        }
        write_atomic(work / INFO_FILE, json.dumps(info, indent=2) + "\n")
        (work / "identity.sock").unlink(missing_ok=True)
        (work / "scratch.qcow2").unlink(missing_ok=True)  # empty, as every instance's is at its start
        (work / ROOT_FILE).unlink(missing_ok=True)  # unwritten: each instance's root volume is the image's disk
        shutil.rmtree(folder, ignore_errors=True)
        os.rename(work, folder)
        log.info(
            "template %s built in %.1f s (state %d KiB, RAM %d MiB used)",
            *(key.name, info["build_s"], info["state_bytes"] >> 10, info["ram_bytes_used"] >> 20),
        )
        return Template(key, folder / STATE_FILE)

    @staticmethod
    def _scratch(work: Path, size_gib: float) -> Path | None:
        """The template's own empty scratch disk, of the instance's size (the guest has probed it, so the
        device and its size are part of the state; its content, empty, is every instance's at start)."""
        if not size_gib:
            return None
        from cloudlab.sc.files import qemu_img

        path = work / "scratch.qcow2"
        qemu_img("create", "-q", "-f", "qcow2", str(path), str(int(size_gib * (1 << 30))))
        return path

    @staticmethod
    def _root_overlay(work: Path, spec: DomainSpec, key: TemplateKey) -> Path:
        """The template's root disk: a throwaway copy-on-write overlay of the image's disk at the root
        volume's size (what each instance's root volume is, so the guest sees the same vda), which the
        guest only reads until its identity comes (its root is mounted read-only): checked after the save."""
        from cloudlab.sc.files import image_info, qemu_img

        assert spec.root_backing is not None
        if file_digest(spec.root_backing) != key.disk_sha256:
            raise RuntimeError(f"the image disk {spec.root_backing} changed")
        path = work / ROOT_FILE
        backing_format = image_info(spec.root_backing)["format"]
        size = str(key.root_gib << 30)
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(spec.root_backing), "-F", backing_format, str(path), size)
        return path

    def _failed(self, key: TemplateKey, reason: str) -> None:
        log.warning("template %s failed: %s", key.name, reason)
        with contextlib.suppress(OSError):
            write_atomic(self.root / f"{key.name}.{FAILED_FILE}", json.dumps({"time": time.time(), "reason": reason}))


class Launcher:
    """How a node starts its instances: by restoring a template where one is ready, else by booting.

    Templates that are missing are built by one background thread per node, in the order asked for.
    """

    def __init__(self, conn: libvirt.virConnect, node: str, store: TemplateStore, mode: str = "restore") -> None:
        if mode not in LAUNCH_MODES:
            raise ValueError(f"launch mode {mode!r}: use restore or boot")
        self.conn = conn
        self.node = node
        self.store = store
        self.mode = mode
        self.qemu_version = conn.getVersion()
        self.libvirt_version = conn.getLibVersion()
        for dom in conn.listAllDomains():  # a build this node was doing when it stopped: its QEMU outlived it
            if dom.name().startswith(TEMPLATE_DOMAIN_PREFIX):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
        self._queue: queue.Queue[tuple[TemplateKey, DomainSpec]] = queue.Queue()
        self._wanted: set[TemplateKey] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.on_built: Callable[[Template], None] | None = None

    def key_for(self, spec: DomainSpec) -> TemplateKey | None:
        """The template ``spec`` could be restored from, or None (booted): an instance with no ramdisk, an
        attached image disk, or volumes other than a root volume made for this start from an image's disk."""
        if spec.ramdisk is None or spec.disk is not None or spec.accel not in ("tcg", "kvm"):
            return None
        on_fresh_root = spec.root_backing is not None and [v.device for v in spec.volumes] == ["vda"]
        if spec.volumes and not on_fresh_root:
            return None
        try:
            kernel, ramdisk = file_digest(spec.kernel), file_digest(spec.ramdisk)
            scratch_gib = qcow2_size(spec.scratch) / (1 << 30) if spec.scratch is not None else 0
            disk_sha256 = file_digest(spec.root_backing) if on_fresh_root and spec.root_backing else ""
        except (OSError, ValueError):
            return None
        return TemplateKey(
            kernel_sha256=kernel,
            ramdisk_sha256=ramdisk,
            cmdline=spec.cmdline,
            vcpus=spec.vcpus,
            memory_mb=spec.memory_mb,
            nic=spec.nic is not None,
            accel=spec.accel,
            qemu_version=self.qemu_version,
            libvirt_version=self.libvirt_version,
            scratch_gib=scratch_gib,
            nic_mtu=spec.nic.mtu if spec.nic is not None else 0,
            disk_sha256=disk_sha256,
            root_gib=spec.root_gib if disk_sha256 else 0,
        )

    def template_for(self, spec: DomainSpec) -> Template | None:
        """The ready template for ``spec`` in restore mode; a missing one is queued for building."""
        if self.mode != "restore":
            return None
        key = self.key_for(spec)
        if key is None:
            return None
        found = self.store.ready(key)
        if found is None:
            log.info("node %s: no template %s ready for %s: it boots cold", self.node, key.name, spec.instance_id)
            self.want(key, spec)
        return found

    def want(self, key: TemplateKey, spec: DomainSpec) -> None:
        """Build the template ``key`` in the background unless it is ready, queued or failed lately."""
        with self._lock:
            if key in self._wanted or self.store.ready(key) is not None or self.store.failed_recently(key):
                return
            self._wanted.add(key)
            self._queue.put((key, spec))
            if self._thread is None:
                self._thread = threading.Thread(target=self._build_loop, name=f"templates-{self.node}", daemon=True)
                self._thread.start()

    @property
    def building(self) -> bool:
        """Whether a template is queued or being built (a node that builds one is not idle)."""
        return bool(self._wanted)

    def wait_idle(self, timeout_s: float) -> None:
        """Wait until no template is queued or being built (tests and benchmarks)."""
        wait_until(lambda: not self._wanted, timeout_s, what="templates built", interval_s=0.2)

    def close(self, timeout_s: float = 10.0) -> None:
        """Abandon the build in progress (its QEMU destroyed, no failure recorded) before the node closes
        libvirt: a node told to stop must not go on booting a template for a cloud that is gone."""
        self._stopping.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)

    def _build_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                key, spec = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                template = self.store.build(self.conn, key, spec, self._stopping)
                if self.on_built is not None:
                    self.on_built(template)
            except TemplateError as exc:
                log.warning("node %s: %s", self.node, exc)
            except Exception:  # the builder thread must survive whatever one build does
                log.exception("node %s: template %s failed unexpectedly", self.node, key.name)
            finally:
                with self._lock:
                    self._wanted.discard(key)

    def restore(self, dom: libvirt.virDomain, spec: DomainSpec, template: Template) -> None:
        """Start ``dom`` (defined from ``spec`` with ``incoming``) from ``template`` and hand it its identity.

        Afterwards the persistent definition loses ``-incoming``: were the domain ever started again, it
        would boot cold with its own command line (a reboot of the running guest does so already).
        """
        try:
            begun = time.monotonic()
            dom.create()
            created = time.monotonic()
            restore_state(dom, template.state)
            resumed = time.monotonic()
            assert spec.identity_socket is not None
            try:
                hand_identity(spec.identity_socket, identity_line(spec, template))
            except WaitTimeout:
                check_restored(dom)  # a failed load says so rather than "no answer"
                raise
            log.info(
                "node %s: %s: QEMU started in %.2f s, state loaded in %.2f s, identity taken in %.2f s",
                *(self.node, spec.instance_id, created - begun, resumed - created, time.monotonic() - resumed),
            )
            self.conn.defineXML(
                build_domain_xml(dataclasses.replace(spec, incoming=False, memory_file=None, uuid=dom.UUIDString()))
            )
        except (WaitTimeout, OSError) as exc:
            raise TemplateError(str(exc)) from exc
