"""The cluster controller (CC): one per cluster (= one availability zone).

It keeps the node registry, schedules instances onto nodes with a pluggable policy, and relays the
cloud controller's commands to the right node. Only the CLC may command it; only NCs may register.
Every action it serves is a typed call of :mod:`cloudlab.contract`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cloudlab import contract as c
from cloudlab.cc.power import DEFAULT_IDLE_S, PowerManager
from cloudlab.cc.registry import NodeRegistry
from cloudlab.cc.scheduler import InstanceRequest, SchedulingPolicy, load_policy, place
from cloudlab.errors import CloudError
from cloudlab.net import NetError
from cloudlab.rpc import Channel, Dispatcher, HttpChannel
from cloudlab.security.messages import MessageSigner, MessageVerifier, VerifiedMessage

log = logging.getLogger(__name__)

#: The longest a ``describe_cluster`` caller may wait for a change (the CLC asks for about a second).
MAX_DESCRIBE_WAIT_S = 10.0
#: How long a node that registers a new URL has to answer there.
REGISTER_CHECK_S = 5.0
#: Nodes a batch of starts is sent to at once.
NODE_FANOUT = 16


class ClusterController:
    """Schedules and relays for one cluster."""

    def __init__(
        self,
        name: str,
        *,
        policy: SchedulingPolicy | str = "GREEDY",
        heartbeat_s: float = 1.0,
        dead_after_s: float = 5.0,
        signer: MessageSigner | None = None,
        verifier: MessageVerifier | None = None,
        powersave_idle_s: float = DEFAULT_IDLE_S,
    ) -> None:
        self.name = name
        self.policy = load_policy(policy) if isinstance(policy, str) else policy
        self.registry = NodeRegistry(heartbeat_s, dead_after_s)
        self._port_filters: tuple[c.InstanceFilter, ...] = ()  # the last sent, for a node that registers later
        self._signer = signer
        self._verifier = verifier
        self._schedule_lock = threading.Lock()
        # POWERSAVE: idle nodes powered down (if the policy says so), chosen ones woken (cloudlab/cc/power.py)
        self.power = PowerManager(
            name,
            self.registry,
            self._schedule_lock,
            enabled=bool(getattr(self.policy, "powers_down", False)),
            idle_s=powersave_idle_s,
        )
        self.network: Any = None  # a cloudlab.cc.network.ClusterNetwork when the cluster has one
        self.storage: Channel | None = None  # the cluster's storage controller, once it registered
        self.storage_url: str | None = None

    # -- wiring ------------------------------------------------------------------------------------
    def register_routes(self, dispatcher: Dispatcher) -> None:
        dispatcher.serve(c.SCHEDULE, lambda r, m: self.schedule(r))
        dispatcher.serve(c.RELEASE, lambda r, m: self.release(r.node, r.instance_id))
        dispatcher.serve(c.RUN_INSTANCE, lambda r, m: self.run_instance(r.node, r.instance))
        dispatcher.serve(c.RUN_INSTANCES, lambda r, m: self.run_instances(r.instances))
        dispatcher.serve(c.TERMINATE_INSTANCE, lambda r, m: self.terminate_instance(r.node, r.instance_id))
        dispatcher.serve(
            c.REBOOT_INSTANCE,
            lambda r, m: self.node_call(r.node, c.NODE_REBOOT_INSTANCE, c.InstanceRef(r.instance_id)),
        )
        dispatcher.serve(
            c.GET_CONSOLE_OUTPUT,
            lambda r, m: self.node_call(r.node, c.NODE_GET_CONSOLE_OUTPUT, c.InstanceRef(r.instance_id)),
        )
        dispatcher.serve(c.DESCRIBE_CLUSTER, lambda r, m: self.describe_cluster(r.after, r.wait_s))
        dispatcher.serve(c.NETWORK_SYNC, lambda r, m: self.network_sync(r))
        dispatcher.serve(c.REGISTER_NODE, lambda r, m: self.register_remote_node(m.sender, r.url))
        dispatcher.serve(c.NODE_CHANGED, self._node_changed)
        dispatcher.serve(c.REGISTER_STORAGE, lambda r, m: self.register_storage(m.sender, r.url))
        for relayed, to_sc in (
            (c.CREATE_VOLUME, c.SC_CREATE_VOLUME),
            (c.DELETE_VOLUME, c.SC_DELETE_VOLUME),
            (c.EXPORT_VOLUME, c.SC_EXPORT_VOLUME),
            (c.UNEXPORT_VOLUME, c.SC_UNEXPORT_VOLUME),
            (c.CREATE_SNAPSHOT, c.SC_CREATE_SNAPSHOT),
            (c.DELETE_SNAPSHOT, c.SC_DELETE_SNAPSHOT),
            (c.IMPORT_SNAPSHOT, c.SC_IMPORT_SNAPSHOT),
            (c.DESCRIBE_STORAGE, c.SC_DESCRIBE_STORAGE),
        ):
            dispatcher.serve(relayed, lambda r, m, to_sc=to_sc: self.storage_call(to_sc, r))
        dispatcher.serve(c.ATTACH_VOLUME, lambda r, m: self.node_call(r.node, c.NODE_ATTACH_VOLUME, r.attach))
        dispatcher.serve(c.DETACH_VOLUME, lambda r, m: self.node_call(r.node, c.NODE_DETACH_VOLUME, r.detach))
        paused = ((c.PAUSE_INSTANCE, c.NODE_PAUSE_INSTANCE), (c.RESUME_INSTANCE, c.NODE_RESUME_INSTANCE))
        for relayed, to_node in paused:
            dispatcher.serve(
                relayed, lambda r, m, to_node=to_node: self.node_call(r.node, to_node, c.InstanceRef(r.instance_id))
            )

    def add_node(self, name: str, channel: Channel, url: str | None = None) -> None:
        self.registry.add(name, channel, url)
        log.info("cluster %s: node %s registered", self.name, name)
        if self._port_filters:  # a (re)started NC gets its instances' security groups now, not at the next plan
            self._port_filters_to(name, self._port_filters)

    def register_remote_node(self, name: str, url: str) -> c.Registered:
        """An NC on another host (or process) announces its URL; its identity is its certificate's name.

        A new URL is taken only once the node answers there *as itself* (a signed HELLO reply from that
        node's certificate): a bad or hostile URL is refused and the node stays reachable where it was.
        """
        if self._signer is None or self._verifier is None:
            raise CloudError("UnsupportedOperation", "this cluster controller takes no remote nodes")
        entry = self.registry.entry(name)
        if entry is not None and entry.url == url:
            if entry.power == "off":  # a powered-down node sends nothing: one that registers was started again
                self.registry.set_power(name, "waking")
                self.registry.poll_soon(name)
            return c.Registered(cluster=self.name, node=name)
        try:
            channel = HttpChannel(name, "nc", self._signer, self._verifier, url)
        except ValueError as exc:
            raise CloudError("InvalidParameterValue", f"node {name}: {exc}") from None
        try:
            channel.ask(c.HELLO, c.Empty(), timeout=REGISTER_CHECK_S)
        except CloudError as exc:
            raise CloudError(
                "InvalidParameterValue", f"node {name} does not answer as itself at {url}: {exc.message}"
            ) from None
        self.add_node(name, channel, url)
        return c.Registered(cluster=self.name, node=name)

    def register_storage(self, name: str, url: str) -> c.Registered:
        """The cluster's SC announces its URL; taken, as a node's, once it answers there as itself."""
        if self._signer is None or self._verifier is None:
            raise CloudError("UnsupportedOperation", "this cluster controller takes no storage controller")
        if self.storage is not None and self.storage_url == url and self.storage.peer == name:
            return c.Registered(cluster=self.name, node=name)
        try:
            channel = HttpChannel(name, "sc", self._signer, self._verifier, url, timeout=600)
            channel.ask(c.HELLO, c.Empty(), timeout=REGISTER_CHECK_S)
        except ValueError as exc:
            raise CloudError("InvalidParameterValue", f"storage controller {name}: {exc}") from None
        except CloudError as exc:
            raise CloudError(
                "InvalidParameterValue", f"storage controller {name} does not answer as itself at {url}: {exc.message}"
            ) from None
        self.storage, self.storage_url = channel, url
        log.info("cluster %s: storage controller %s registered at %s", self.name, name, url)
        return c.Registered(cluster=self.name, node=name)

    def storage_call(self, action: c.Action[Any, Any], request: Any) -> Any:
        """Relay a storage request to the cluster's SC (Unavailable until one registered)."""
        if self.storage is None:
            raise CloudError("Unavailable", f"cluster {self.name} has no storage controller yet", status=503)
        return self.storage.ask(action, request)

    def _node_changed(self, request: c.Empty, message: VerifiedMessage) -> c.Empty:
        """A node saw a lifecycle event: ask it for its report now rather than at the next heartbeat."""
        if self.registry.entry(message.sender) is not None:
            self.registry.poll_soon(message.sender)
        return c.Empty()

    def start(self) -> None:
        self.registry.start()
        self.power.start()

    def stop(self) -> None:
        self.power.stop()
        self.registry.stop()

    # -- scheduling ----------------------------------------------------------------------------------
    def schedule(self, request: c.ScheduleRequest) -> c.Placements:
        """Place as many of the instances as fit (at least ``min_count``) and reserve their room."""
        requests = [InstanceRequest(i.instance_id, i.vcpus, i.memory_mb) for i in request.instances]
        with self._schedule_lock:
            views = self.registry.views()
            try:
                placements = place(self.policy, requests, views)
            except ValueError as exc:
                raise CloudError("InternalError", str(exc)) from exc
            if len(placements) < request.min_count:
                free = (
                    ", ".join(f"{v.name}: {v.vcpus_free} vCPU/{v.memory_mb_free} MiB" for v in views) or "no live nodes"
                )
                raise CloudError(
                    "InsufficientInstanceCapacity",
                    f"cluster {self.name} can place {len(placements)} of the {request.min_count} instances needed"
                    f" ({free})",
                )
            by_id = {r.instance_id: r for r in requests}
            for instance_id, node in placements.items():
                self.registry.reserve(node, instance_id, by_id[instance_id].vcpus, by_id[instance_id].memory_mb)
            off = {view.name for view in views if not view.powered_on}
            sleeping = sorted(off.intersection(placements.values()))
        for node in sleeping:  # woken now; their starts wait for them (PowerManager.wait_awake)
            self.power.wake(node)
        return c.Placements(placements=placements, policy=self.policy.name)

    def release(self, node: str, instance_id: str) -> c.Released:
        self.registry.release(node, instance_id)
        return c.Released()

    # -- relaying to nodes ---------------------------------------------------------------------------
    def node_call(self, node: str, action: c.Action[Any, Any], request: Any) -> Any:
        entry = self.registry.entry(node)
        if entry is None:
            raise CloudError("InternalError", f"cluster {self.name} has no node {node!r}")
        return entry.channel.ask(action, request)

    def run_instance(self, node: str, instance: c.StartInstance) -> c.InstanceStarted:
        """Start ``instance`` on ``node``, telling the node where its NIC goes.

        A failed start frees its reservation now; a successful one keeps it until the node's next
        heartbeat reports the instance, so the scheduler never sees the room twice.
        """
        try:
            self.power.wait_awake(node)
            return self.node_call(node, c.NODE_RUN_INSTANCE, self._with_attachment(node, instance))
        except Exception:
            self.registry.release(node, instance.instance_id)
            raise

    def run_instances(self, starts: tuple[c.RunOnNode, ...]) -> c.StartOutcomes:
        """Start many instances: one message per node, the nodes in parallel; each start stands alone."""
        by_node: dict[str, list[c.StartInstance]] = {}
        for start in starts:
            by_node.setdefault(start.node, []).append(self._with_attachment(start.node, start.instance))

        def on_node(node: str, requests: list[c.StartInstance]) -> list[c.StartOutcome]:
            try:
                self.power.wait_awake(node)
                outcomes = list(self.node_call(node, c.NODE_RUN_INSTANCES, c.NodeStartMany(tuple(requests))).outcomes)
            except CloudError as exc:
                outcomes = [
                    c.StartOutcome(r.instance_id, node, error_code=exc.code, error_message=exc.message)
                    for r in requests
                ]
            for outcome in outcomes:
                if outcome.started is None:
                    self.registry.release(node, outcome.instance_id)
            return outcomes

        with ThreadPoolExecutor(max_workers=max(1, min(NODE_FANOUT, len(by_node)))) as pool:
            results = list(pool.map(lambda item: on_node(*item), by_node.items()))
        return c.StartOutcomes(tuple(o for outcomes in results for o in outcomes))

    def terminate_instance(self, node: str, instance_id: str) -> c.InstanceRemoved:
        removed = self.node_call(node, c.NODE_TERMINATE_INSTANCE, c.InstanceRef(instance_id))
        self.registry.release(node, instance_id)
        return removed

    # -- network ---------------------------------------------------------------------------------------------
    def _with_attachment(self, node: str, instance: c.StartInstance) -> c.StartInstance:
        """Tell the NC where on its host the instance's NIC goes (the CLC knows ports, not hosts)."""
        if instance.nic is None or self.network is None:
            return instance
        attach = self.network.attachment(node, instance.nic.vlan)
        return dataclasses.replace(instance, nic=dataclasses.replace(instance.nic, attach=attach))

    def network_sync(self, plan: c.NetworkPlan) -> c.NetworkApplied:
        """Apply the CLC's network plan (groups' VLANs, ingress rules, elastic NAT) to the router."""
        if self.network is None:
            return c.NetworkApplied(applied=False)
        try:
            self.network.apply(plan)
        except NetError as exc:
            raise CloudError("InvalidParameterValue", str(exc)) from exc
        if self.network.flavour == "vde" and (plan.filters or self._port_filters):
            self._send_port_filters(plan.filters)
        return c.NetworkApplied(applied=True)

    def _send_port_filters(self, filters: tuple[c.InstanceFilter, ...]) -> None:
        """On vde an instance's port is a bridge its NC made (``vb<port>``): every node gets the cluster's VPC
        instance filters and applies its own instances' (each plan the CLC sends, so at least every resync)."""
        self._port_filters = filters
        for name in self.registry.names():
            self._port_filters_to(name, filters)

    def _port_filters_to(self, name: str, filters: tuple[c.InstanceFilter, ...]) -> None:
        entry = self.registry.entry(name)
        if entry is None:
            return
        try:
            entry.channel.ask(c.NODE_PORT_FILTERS, c.PortFilters(filters), timeout=5.0)
        except Exception as exc:  # a dead node gets them again with the next plan
            log.warning("node %s did not take the security-group filters: %s", name, exc)

    # -- reports -----------------------------------------------------------------------------------------------
    def describe_cluster(self, after: int = 0, wait_s: float = 0.0) -> c.ClusterReport:
        """Every node with its last report and how old that report is (so a caller can judge absence).

        With ``wait_s``, wait (at most :data:`MAX_DESCRIBE_WAIT_S`) for a report newer than ``after``.
        """
        arrived = time.monotonic()  # ages are told from here: see NodeSummary.age_s
        version = self.registry.version
        if wait_s > 0 and version <= after:
            version = self.registry.wait_for_change(after, min(wait_s, MAX_DESCRIBE_WAIT_S))
        nodes = []
        for name in self.registry.names():
            entry = self.registry.entry(name)
            if entry is None:
                continue
            report = entry.report
            nodes.append(
                c.NodeSummary(
                    name=name,
                    url=entry.url,
                    alive=self.registry.alive(entry),
                    age_s=None if entry.last_seen is None else arrived - entry.last_seen,
                    last_error=entry.last_error,
                    vcpus_total=report.vcpus_total if report else 0,
                    vcpus_free=report.vcpus_free if report else 0,
                    memory_mb_total=report.memory_mb_total if report else 0,
                    memory_mb_free=report.memory_mb_free if report else 0,
                    hypervisor=report.hypervisor if report else None,
                    accel=report.accel if report else None,
                    instances=report.instances if report else (),
                    power=entry.power,
                    power_since=entry.power_since,
                    registered=entry.registered,
                )
            )
        network = self.network.describe() if self.network is not None else None
        return c.ClusterReport(
            cluster=self.name, policy=self.policy.name, version=version, nodes=tuple(nodes), network=network
        )
