"""The node controller (NC): one per host, speaks only libvirt.

It builds domain XML from what the cluster controller sends, starts, reboots and destroys domains,
answers with console output, and reports its resources and the instances it holds. It keeps no
database: libvirt's persistent domain definitions (with cloudlab metadata) are its state, so a
restarted NC finds its instances where it left them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import libvirt
import msgspec

from cloudlab import contract as c
from cloudlab.errors import CloudError
from cloudlab.guest import DEFAULT_KERNEL_CMDLINE
from cloudlab.nc.disks import SCRATCH_FILE, NodeDisks
from cloudlab.nc.domain_xml import (
    DomainSpec,
    Nic,
    Volume,
    build_domain_xml,
    read_metadata,
    tap_of,
)
from cloudlab.nc.hypervisor import driver_kind, open_connection
from cloudlab.nc.image_cache import ImageCache
from cloudlab.nc.node_launch import NodeLaunch, fresh_root
from cloudlab.nc.node_nics import NodeNics
from cloudlab.nc.node_power import DEFAULT_WAKE_S, NodePower
from cloudlab.nc.states import EVENT_NAMES, state_of, vanished
from cloudlab.nc.templates import DEFAULT_TEMPLATE_SCRATCH_GIB, DEFAULT_TEMPLATE_SIZE, Launcher, TemplateStore
from cloudlab.nc.vde_nics import PlugPlace, VdeNics
from cloudlab.net import NetError, vde
from cloudlab.rpc import Dispatcher

log = logging.getLogger(__name__)

CPU_OVERCOMMIT = 4  # vCPUs per host core offered to the scheduler on a QEMU host
MEMORY_SHARE = 0.8  # share of host memory offered to instances
CONSOLE_TAIL_BYTES = 64 * 1024  # EC2 returns the last 64 KiB of console output
EVENTS_KEPT = 50  # lifecycle events carried in each report
PARALLEL_STARTS = 4  # QEMU processes a node starts at once from one batch
#: Events after which the node's report differs in a way the cloud cannot know otherwise (a guest that
#: stopped or crashed by itself, a VM that is gone): the CC is nudged to ask at once. A start needs
#: no nudge (the start's own answer says so); the rest ride along with the next heartbeat.
NUDGING_EVENTS = frozenset({"stopped", "shutdown", "crashed", "undefined"})


class NodeController(NodeDisks, NodeNics, NodePower, NodeLaunch):
    """Runs instances on one host through one libvirt connection."""

    def __init__(
        self,
        name: str,
        uri: str,
        node_dir: Path,
        *,
        vcpus: int | None = None,
        memory_mb: int | None = None,
        accel: str = "auto",
        accel_cache: Path | None = None,
        on_change: Callable[[], None] | None = None,
        launch: str = "restore",
        template_nic: bool = False,
        template_nic_mtu: int = 0,
        templates_dir: Path | None = None,
        wake_s: float = DEFAULT_WAKE_S,
    ) -> None:
        self.name = name
        self._init_power(wake_s)  # powered down and woken by the CC's POWERSAVE (cloudlab/nc/node_power.py)
        self.on_change = on_change  # told of every lifecycle event (the daemon nudges its CC)
        self.uri = uri
        self.node_dir = node_dir
        self.kind = driver_kind(uri)
        self._accel_setting = accel
        self._accel_cache = accel_cache
        self._accel: str | None = "test" if self.kind == "test" else None
        node_dir.mkdir(parents=True, exist_ok=True)
        self.image_cache = ImageCache(node_dir / "image-cache")  # boot files of images kept in buckets
        self.conn = open_connection(uri)
        info = self.conn.getInfo()
        host_memory_mb, host_cpus = int(info[1]), int(info[2])
        if self.kind == "qemu":
            # getInfo()'s memory is one NUMA cell's on some hosts; the host total is in the stats.
            with contextlib.suppress(libvirt.libvirtError, KeyError):
                host_memory_mb = int(self.conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)["total"]) // 1024
        if self.kind == "qemu":
            self.vcpus_total = vcpus or host_cpus * CPU_OVERCOMMIT
            self.memory_mb_total = memory_mb or int(host_memory_mb * MEMORY_SHARE)
        else:
            self.vcpus_total = vcpus or host_cpus
            self.memory_mb_total = memory_mb or host_memory_mb
        self._lock = threading.RLock()
        self._io_resumed: dict[str, float] = {}
        self._metadata: dict[str, dict[str, str]] = {}
        self._starting: set[str] = set()
        # the room each of our domains holds (instance -> vCPUs, MiB): kept on define and undefine, and
        # refreshed from libvirt at every heartbeat, so a start checks capacity without listing the host
        self._held: dict[str, tuple[int, int]] = {}
        # network byte counters: where each running domain's NIC is counted, keyed by (UUID, domain id)
        self._nic_where: dict[tuple[str, int], str] = {}  # (UUID, domain id) -> the NIC's tap
        self._port_filters_applied: dict[str, str] = {}  # host namespace -> the filter table applied there
        self._vde_mgmt: dict[str, vde.VdeManagement] = {}
        self._vde_lock = threading.Lock()
        self.vde_nics = VdeNics(name)
        self.events: list[c.LifecycleEvent] = []
        self._event_seq = 0
        self._events_lock = threading.Lock()
        self._refresh_held()
        # restore booted templates (cloudlab.nc.templates) or boot cold; the templates built at start have
        # a NIC when the cloud has a network (``template_nic``), at the fast VDE profile's MTU on one
        self.launcher: Launcher | None = None
        self._template_nic, self._template_nic_mtu = template_nic, template_nic_mtu
        if self.kind == "qemu":
            from cloudlab.images.cached import default_cache_dir

            store = TemplateStore(templates_dir or default_cache_dir() / "templates")
            self.launcher = Launcher(self.conn, name, store, launch)
        self.conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
        if self.kind == "qemu":
            self.warm_up_in_background(self._warm_up)  # (not idle meanwhile: see NodePower)

    def _warm_up(self) -> None:
        """Probe what the first RunInstances would otherwise wait for: QEMU's capabilities (~4 s
        under TCG, once per driver root) and the accelerator (a boot of the default image, cached)."""
        try:
            self.conn.getDomainCapabilities(None, "x86_64", None, "qemu", 0)
        except libvirt.libvirtError as exc:
            log.warning("node %s: QEMU capability probe failed: %s", self.name, exc)
        if self._accel is None:
            from cloudlab.images.cached import find_built_image

            built = find_built_image()
            if built is not None:
                with self._lock:
                    self.accelerator(built.kernel, built.ramdisk)
                self._prebuild_template(built.kernel, built.ramdisk)

    def _prebuild_template(self, kernel: Path, ramdisk: Path) -> None:
        """Queue the template of the default image at the default size (what most launches ask for)."""
        launcher = self.launcher
        if launcher is None or launcher.mode != "restore" or self._accel is None:
            return
        launcher.store.remove_stale(launcher.qemu_version, launcher.libvirt_version)
        vcpus, memory_mb = DEFAULT_TEMPLATE_SIZE
        spec = DomainSpec(
            instance_id="template",
            vcpus=vcpus,
            memory_mb=memory_mb,
            kernel=kernel,
            ramdisk=ramdisk,
            console_log=self.node_dir / "template-console.log",
            accel=self._accel,
            nic=Nic("", "", "", "", mtu=self._template_nic_mtu) if self._template_nic else None,
            scratch=self._scratch_disk(self.node_dir, DEFAULT_TEMPLATE_SCRATCH_GIB),  # only its size counts
        )
        key = launcher.key_for(spec)
        if key is not None:
            launcher.want(key, spec)

    # -- wiring -------------------------------------------------------------------------------
    def register_routes(self, dispatcher: Dispatcher) -> None:
        """Only a cluster controller may command a node (the contract's actions say so); a powered-off node
        answers only ``wake`` (and ``power_off`` again)."""
        serve = lambda action, handler: dispatcher.serve(action, self.powered(handler))  # noqa: E731
        serve(c.DESCRIBE_RESOURCE, lambda r, m: self.describe_resource())
        serve(c.DESCRIBE_RESOURCE_IF_CHANGED, lambda r, m: self.report_if_changed(r.unchanged))
        serve(c.NODE_RUN_INSTANCE, lambda r, m: self.run_instance(r))
        serve(c.NODE_RUN_INSTANCES, lambda r, m: self.run_instances(r.instances))
        serve(c.NODE_TERMINATE_INSTANCE, lambda r, m: self.terminate_instance(r.instance_id))
        serve(c.NODE_REBOOT_INSTANCE, lambda r, m: self.reboot_instance(r.instance_id))
        serve(c.NODE_GET_CONSOLE_OUTPUT, lambda r, m: self.get_console_output(r.instance_id))
        serve(c.NODE_ATTACH_VOLUME, lambda r, m: self.attach_volume(r))
        serve(c.NODE_DETACH_VOLUME, lambda r, m: self.detach_volume(r))
        serve(c.NODE_PAUSE_INSTANCE, lambda r, m: self.pause_instance(r.instance_id))
        serve(c.NODE_RESUME_INSTANCE, lambda r, m: self.resume_instance(r.instance_id))
        serve(c.NODE_PORT_FILTERS, lambda r, m: self.set_port_filters(r))
        dispatcher.serve(c.NODE_POWER_OFF, lambda r, m: self.power_off())
        dispatcher.serve(c.NODE_WAKE, lambda r, m: self.wake())

    def close(self) -> None:
        if self.launcher is not None:
            self.launcher.close()
        self.vde_nics.close()
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.close()

    # -- libvirt events -----------------------------------------------------------------------
    def _on_lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        """Keep the event for the next report and say that something changed (runs on libvirt's event thread)."""
        name = EVENT_NAMES.get(event, str(event))
        with self._events_lock:  # never the node's lock: libvirt's event thread must not wait for a start
            self._event_seq += 1
            self.events.append(c.LifecycleEvent(self._event_seq, dom.name(), name, detail, time.time()))
            del self.events[:-EVENTS_KEPT]
        log.info("node %s: domain %s lifecycle event %s/%s", self.name, dom.name(), name, detail)
        if self.on_change is not None and name in NUDGING_EVENTS:
            try:
                self.on_change()
            except Exception as exc:  # the heartbeat will carry the change anyway
                log.debug("node %s: change notification failed: %s", self.name, exc)

    # -- instances ---------------------------------------------------------------------------
    def _domains(self) -> dict[str, tuple[libvirt.virDomain, dict[str, str]]]:
        """cloudlab's domains on this host with their metadata (cached by UUID: it never changes)."""
        found = {}
        for dom in self.conn.listAllDomains():
            name = dom.name()
            if not name.startswith("i-"):
                continue
            key = dom.UUIDString()
            meta = self._metadata.get(key)
            if meta is None:
                try:
                    meta = read_metadata(dom.XMLDesc(0))
                except libvirt.libvirtError:
                    continue
                if meta is None:
                    continue
                self._metadata[key] = meta
            found[name] = (dom, meta)
        if len(self._metadata) > 4 * len(found) + 64:
            live = {dom.UUIDString() for dom, _ in found.values()}
            self._metadata = {k: v for k, v in self._metadata.items() if k in live}
        return found

    def _own_domain(self, instance_id: str) -> libvirt.virDomain | None:
        """The domain ``instance_id`` if it is one of ours; a foreign domain of that name is refused."""
        try:
            dom = self.conn.lookupByName(instance_id)
            xml = dom.XMLDesc(0)
        except libvirt.libvirtError:
            return None  # not here, or no longer (undefined between the lookup and the question)
        if read_metadata(xml) is None:
            raise CloudError(
                "InvalidInstanceID.Duplicate", f"node {self.name} has a domain {instance_id} that is not cloudlab's"
            )
        return dom

    def _lookup(self, instance_id: str) -> libvirt.virDomain:
        """One of *cloudlab's* domains: a VM on the host without cloudlab metadata is not ours to touch."""
        found = self._domains().get(instance_id)
        if found is None:
            raise self._not_found(instance_id)
        return found[0]

    def instances(
        self, only: set[str] | None = None, domains: dict[str, tuple[Any, dict[str, str]]] | None = None
    ) -> list[c.InstanceReport]:
        """What this node holds, as the hypervisor sees it (with the NIC's byte counters where known).

        A domain whose state cannot be read right now is reported as ``unknown`` rather than left out:
        leaving it out would tell the cloud controller that it vanished. With ``only``, just those.
        """
        result = []
        domains = self._domains() if domains is None else domains
        for name, (dom, meta) in domains.items():
            if only is not None and name not in only:
                continue
            try:
                state_name = state_of(dom)
            except libvirt.libvirtError:
                state_name = "unknown"
            if state_name == "absent":
                continue  # vanished between listing and asking: truly gone
            if name in self._starting:
                state_name = "pending"  # defined, QEMU still starting: pending, not shut off
            counters = self._nic_counters(name, dom) if state_name == "running" else None
            result.append(
                c.InstanceReport(
                    instance_id=name,
                    state=state_name,
                    vcpus=int(meta.get("vcpus", 1)),
                    memory_mb=int(meta.get("memory_mb", 0)),
                    net_rx_bytes=counters[0] if counters else None,
                    net_tx_bytes=counters[1] if counters else None,
                )
            )
        if len(self._nic_where) > 4 * len(domains) + 64:
            self._nic_where.clear()
        return result

    def _refresh_held(self) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[libvirt.virDomain, dict[str, str]]]]:
        """The room our domains hold, and the domains, read from libvirt in one listing (under the node's
        lock, so no start is half counted)."""
        with self._lock:
            domains = self._domains()
            self._held = {n: (int(m.get("vcpus", 1)), int(m.get("memory_mb", 0))) for n, (_d, m) in domains.items()}
            return dict(self._held), domains

    def describe_resource(self) -> c.NodeReport:
        """Capacity, free capacity, instances and recent lifecycle events: the CC's heartbeat answer."""
        # The instances listed are exactly those counted, from the same listing (one listing per
        # heartbeat: at 50 domains a node, listing twice was a third of an idle cloud's CPU time).
        held, domains = self._refresh_held()
        instances = self.instances(domains=domains)
        if self.kind == "qemu":
            running = {i.instance_id for i in instances if i.state == "running"}
            try:
                self._check_plugs({name: found for name, found in domains.items() if name in running})
            except Exception:  # never let a plug cost the heartbeat: the next one tries again
                log.exception("node %s: checking the VDE plugs failed", self.name)
            try:
                self.resume_io_paused()
            except Exception:  # nor a paused guest
                log.exception("node %s: resuming guests paused by an I/O error failed", self.name)
        # Every defined domain holds its room: one being started is still shut off, and a guest
        # that powered itself off is cleaned up by the cloud controller within seconds.
        used_vcpus = sum(v for v, _ in held.values())
        used_memory = sum(m for _, m in held.values())
        with self._events_lock:
            events = tuple(self.events)
        return c.NodeReport(
            node=self.name,
            uri=self.uri,
            hypervisor=self.kind,
            accel=self._accel,
            vcpus_total=self.vcpus_total,
            vcpus_free=self.vcpus_total - used_vcpus,
            memory_mb_total=self.memory_mb_total,
            memory_mb_free=self.memory_mb_total - used_memory,
            instances=tuple(instances),
            time=time.time(),
            events=events,
        )

    def report_if_changed(self, unchanged: str | None) -> c.ReportIfChanged:
        """:meth:`describe_resource`, or only its digest when that is ``unchanged`` (the CC holds it already)."""
        report = self.describe_resource()
        digest = hashlib.blake2b(msgspec.json.encode(dataclasses.replace(report, time=0.0)), digest_size=16).hexdigest()
        return c.ReportIfChanged(digest, None if digest == unchanged else report)

    def accelerator(self, kernel: Path, ramdisk: Path | None) -> str:
        """KVM only where a real short boot proved it works (cached), else TCG."""
        if self._accel is None:
            if self._accel_setting in ("kvm", "tcg"):
                self._accel = self._accel_setting
            elif ramdisk is None:
                self._accel = "tcg"
            else:
                from cloudlab.nc.accel import probe_accelerator

                self._accel = probe_accelerator(kernel, ramdisk, cache_file=self._accel_cache)
            log.info("node %s uses accelerator %s", self.name, self._accel)
        return self._accel

    def run_instance(self, request: c.StartInstance) -> c.InstanceStarted:
        """Define and start one instance; idempotent for an instance already here.

        Only the capacity check and the definition happen under the node's lock (a defined domain
        counts against capacity); starting QEMU, the slow part, runs concurrently.
        """
        instance_id = request.instance_id
        vcpus, memory_mb = request.vcpus, request.memory_mb
        fetched = {wanted.role: self.image_cache.get(wanted) for wanted in request.fetch}  # before the lock: slow
        kernel = fetched.get("kernel") or Path(request.kernel)
        ramdisk = fetched.get("ramdisk") or (Path(request.ramdisk) if request.ramdisk else None)
        disk = Path(request.disk) if request.disk else None
        with self._lock:
            existing = self._own_domain(instance_id)
            if existing is not None and (state := state_of(existing)) != "absent":
                return c.InstanceStarted(instance_id, state, self.name)
            if self.kind == "qemu":
                for path in (kernel, ramdisk, disk):
                    if path is not None and not path.is_file():
                        raise CloudError(
                            "InvalidAMIID.Unavailable", f"image file {path} is missing on node {self.name}"
                        )
            vcpus_free = self.vcpus_total - sum(v for v, _ in self._held.values())
            memory_free = self.memory_mb_total - sum(m for _, m in self._held.values())
            if vcpus > vcpus_free or memory_mb > memory_free:
                raise CloudError(
                    "InsufficientInstanceCapacity",
                    f"node {self.name} has {vcpus_free} vCPUs and "
                    f"{memory_free} MiB free; {instance_id} needs {vcpus} and {memory_mb}",
                )
            instance_dir = self.node_dir / "instances" / instance_id
            instance_dir.mkdir(parents=True, exist_ok=True)
            console_log = instance_dir / "console.log"
            console_log.write_bytes(b"")
            accel = self.accelerator(kernel, ramdisk) if self.kind == "qemu" else "test"
            plan = request.nic if self.kind == "qemu" else None
            nic, place = self._nic(plan) if plan is not None else (None, None)
            # where a VDE NIC is plugged is kept with the domain, so a restarted NC plugs it in again
            nic_meta = place.metadata() if place is not None else {}
            volumes = tuple(
                Volume(d.volume_id, d.device, d.export.host, d.export.port, d.export.name) for d in request.disks
            )
            scratch = None
            if self.kind == "qemu" and request.scratch_gib > 0 and not any(v.device == "vda" for v in volumes):
                scratch = self._scratch_disk(instance_dir, request.scratch_gib)
            spec = DomainSpec(
                nic=nic,
                instance_id=instance_id,
                vcpus=vcpus,
                memory_mb=memory_mb,
                kernel=kernel,
                ramdisk=ramdisk,
                console_log=console_log,
                accel=accel,
                disk=disk,
                volumes=volumes,
                scratch=scratch,
                cmdline=request.cmdline or DEFAULT_KERNEL_CMDLINE,
                **fresh_root(request.disks),  # a root volume made for this start from an image's disk
                metadata={
                    "owner": request.owner,
                    "image_id": request.image_id,
                    "instance_type": request.instance_type,
                    "vcpus": str(vcpus),
                    "memory_mb": str(memory_mb),
                    "node": self.name,
                }
                | nic_meta,
            )
            template = self._template_for(spec)
            if template is not None:
                spec = dataclasses.replace(
                    spec, identity_socket=self._identity_socket(instance_id), incoming=True, memory_file=template.ram
                )
            try:
                dom = self.conn.defineXML(build_domain_xml(spec))
            except libvirt.libvirtError as exc:
                raise CloudError("InternalError", f"node {self.name} could not define {instance_id}: {exc}") from exc
            self._starting.add(instance_id)
            self._held[instance_id] = (vcpus, memory_mb)
        try:
            if place is not None:
                self.vde_nics.prepare(place)
            begun = time.monotonic()
            if template is not None:
                dom = self._restore(dom, spec, template)
            else:
                dom.create()
            how = f"restored from {template.name}" if template is not None else "booted"
            if nic is not None and tap_of(dom.XMLDesc(0)) is None:
                raise NetError(f"libvirt reported no tap for {dom.name()}")
        except (libvirt.libvirtError, NetError, OSError) as exc:
            if isinstance(exc, libvirt.libvirtError) and vanished(exc):
                # terminated while it started: the terminate undefined it and cleaned up after it (its
                # room and plug may be a new start's of the same instance by now, so they stay as they are)
                log.info("node %s: %s was terminated while it started", self.name, instance_id)
                return c.InstanceStarted(instance_id, "absent", self.name, accel)
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefine()
            if place is not None:
                self.vde_nics.remove(place)
            with self._lock:
                self._held.pop(instance_id, None)
            raise CloudError("InternalError", f"node {self.name} could not start {instance_id}: {exc}") from exc
        finally:
            self._starting.discard(instance_id)
        log.info(
            "node %s started %s (%s, %d vCPU, %d MiB; %s in %.2f s)",
            *(self.name, instance_id, accel, vcpus, memory_mb, how, time.monotonic() - begun),
        )
        return c.InstanceStarted(instance_id, state_of(dom), self.name, accel)

    def run_instances(self, requests: tuple[c.StartInstance, ...]) -> c.StartOutcomes:
        """Start several instances; each succeeds or fails on its own (as separate starts would).

        QEMU starts overlap (each is mostly a process start and a wait), up to
        :data:`PARALLEL_STARTS`; the test driver's are quicker one after the other.
        """

        def one(request: c.StartInstance) -> c.StartOutcome:
            try:
                return c.StartOutcome(request.instance_id, self.name, started=self.run_instance(request))
            except CloudError as exc:
                return c.StartOutcome(request.instance_id, self.name, error_code=exc.code, error_message=exc.message)
            except libvirt.libvirtError as exc:  # one start's surprise must not fail the others of its batch
                log.exception("node %s: the start of %s failed", self.name, request.instance_id)
                failed = {"error_code": "InternalError", "error_message": f"node {self.name}: {exc}"}
                return c.StartOutcome(request.instance_id, self.name, **failed)

        if self.kind != "qemu" or len(requests) < 2:
            return c.StartOutcomes(tuple(one(r) for r in requests))
        with ThreadPoolExecutor(max_workers=min(PARALLEL_STARTS, len(requests))) as pool:
            return c.StartOutcomes(tuple(pool.map(one, requests)))

    def terminate_instance(self, instance_id: str) -> c.InstanceRemoved:
        """Destroy and undefine; terminating something already gone is not an error."""
        with self._lock:
            try:
                dom = self._lookup(instance_id)
            except CloudError:
                self._held.pop(instance_id, None)
                return c.InstanceRemoved(instance_id, previous="absent", state="absent")
            previous = state_of(dom)
            counters = None
            if previous == "running":  # the NIC's last byte counts, for the accounting ledger
                counters = self._nic_counters(instance_id, dom)
            try:
                if previous != "absent" and dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError as exc:
                if not vanished(exc) and dom.isActive():
                    raise CloudError("InternalError", f"node {self.name} could not stop {instance_id}: {exc}") from exc
            try:
                dom.undefine()
            except libvirt.libvirtError as exc:
                if not vanished(exc):  # (undefined since the listing, by a failed start's clean-up: gone)
                    message = f"node {self.name} could not undefine {instance_id}: {exc}"
                    raise CloudError("InternalError", message) from exc
            log.info("node %s terminated %s", self.name, instance_id)
            # the instance store is the instance's while it runs here: gone when it stops or ends
            (self.node_dir / "instances" / instance_id / SCRATCH_FILE).unlink(missing_ok=True)
            place = PlugPlace.from_metadata(self._metadata.get(dom.UUIDString()) or {})
            if place is not None:
                self.vde_nics.remove(place)
            self._held.pop(instance_id, None)
            return c.InstanceRemoved(
                instance_id,
                previous=previous,
                state="absent",
                net_rx_bytes=counters[0] if counters else None,
                net_tx_bytes=counters[1] if counters else None,
            )

    def reboot_instance(self, instance_id: str) -> c.InstanceState:
        """Reset the guest (an instance-store guest has nothing to flush, and ACPI may be ignored)."""
        dom = self._lookup(instance_id)
        try:
            if self.kind == "test":
                dom.reboot(0)
            else:
                dom.reset(0)
        except libvirt.libvirtError as exc:
            if vanished(exc):
                raise self._not_found(instance_id) from exc
            raise CloudError("IncorrectInstanceState", f"{instance_id} cannot be rebooted now: {exc}") from exc
        return c.InstanceState(instance_id, state_of(dom))

    def get_console_output(self, instance_id: str) -> c.ConsoleOutput:
        """The last 64 KiB of the serial console, as text."""
        path = self.node_dir / "instances" / instance_id / "console.log"
        if not path.exists():
            self._lookup(instance_id)
            return c.ConsoleOutput(instance_id, "", time.time())
        size = path.stat().st_size
        with path.open("rb") as handle:
            handle.seek(max(0, size - CONSOLE_TAIL_BYTES))
            data = handle.read()
        return c.ConsoleOutput(instance_id, data.decode("utf-8", "replace"), path.stat().st_mtime)
