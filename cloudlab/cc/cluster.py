"""The cluster controller (CC): one per cluster (= one availability zone).

It keeps the node registry, schedules instances onto nodes with a pluggable policy, and relays the
cloud controller's commands to the right node. Only the CLC may command it; only NCs may register.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from cloudlab.cc.registry import NodeRegistry
from cloudlab.cc.scheduler import InstanceRequest, SchedulingPolicy, load_policy, place
from cloudlab.errors import CloudError
from cloudlab.net import NetError
from cloudlab.rpc import Channel, Dispatcher, HttpChannel
from cloudlab.security.messages import MessageSigner, MessageVerifier

log = logging.getLogger(__name__)


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
    ) -> None:
        self.name = name
        self.policy = load_policy(policy) if isinstance(policy, str) else policy
        self.registry = NodeRegistry(heartbeat_s, dead_after_s)
        self._signer = signer
        self._verifier = verifier
        self._schedule_lock = threading.Lock()
        self.network: Any = None  # a cloudlab.cc.network.ClusterNetwork when the cluster has one

    # -- wiring ------------------------------------------------------------------------------------
    def register_routes(self, dispatcher: Dispatcher) -> None:
        for action, handler in {
            "schedule": lambda m: self.schedule(m.body["instances"], int(m.body.get("min_count", 1))),
            "release": lambda m: self.release(m.body["node"], m.body["instance_id"]),
            "run_instance": lambda m: self.node_call(
                m.body["node"], "run_instance", self._with_attachment(m.body["node"], m.body["instance"])
            ),
            "network_sync": lambda m: self.network_sync(m.body["plan"]),
            "terminate_instance": lambda m: self.node_call(
                m.body["node"], "terminate_instance", {"instance_id": m.body["instance_id"]}
            ),
            "reboot_instance": lambda m: self.node_call(
                m.body["node"], "reboot_instance", {"instance_id": m.body["instance_id"]}
            ),
            "get_console_output": lambda m: self.node_call(
                m.body["node"], "get_console_output", {"instance_id": m.body["instance_id"]}
            ),
            "describe_cluster": lambda m: self.describe_cluster(),
        }.items():
            dispatcher.route(action, handler, {"clc"})
        dispatcher.route("register_node", lambda m: self.register_remote_node(m.sender, m.body["url"]), {"nc"})

    def add_node(self, name: str, channel: Channel, url: str | None = None) -> None:
        self.registry.add(name, channel, url)
        log.info("cluster %s: node %s registered", self.name, name)

    def register_remote_node(self, name: str, url: str) -> dict[str, Any]:
        """An NC on another host (or process) announces its URL; its identity is its certificate's name."""
        if self._signer is None or self._verifier is None:
            raise CloudError("UnsupportedOperation", "this cluster controller takes no remote nodes")
        entry = self.registry.entry(name)
        if entry is None or entry.url != url:
            self.add_node(name, HttpChannel(name, "nc", self._signer, self._verifier, url), url)
        return {"cluster": self.name, "node": name}

    def start(self) -> None:
        self.registry.start()

    def stop(self) -> None:
        self.registry.stop()

    # -- scheduling ----------------------------------------------------------------------------------
    def schedule(self, instances: list[dict[str, Any]], min_count: int = 1) -> dict[str, Any]:
        """Place as many of ``instances`` as fit (at least ``min_count``) and reserve their room."""
        requests = [InstanceRequest(str(i["instance_id"]), int(i["vcpus"]), int(i["memory_mb"])) for i in instances]
        with self._schedule_lock:
            views = self.registry.views()
            try:
                placements = place(self.policy, requests, views)
            except ValueError as exc:
                raise CloudError("InternalError", str(exc)) from exc
            if len(placements) < min_count:
                free = (
                    ", ".join(f"{v.name}: {v.vcpus_free} vCPU/{v.memory_mb_free} MiB" for v in views) or "no live nodes"
                )
                raise CloudError(
                    "InsufficientInstanceCapacity",
                    f"cluster {self.name} can place {len(placements)} of the {min_count} instances needed ({free})",
                )
            by_id = {r.instance_id: r for r in requests}
            for instance_id, node in placements.items():
                self.registry.reserve(node, instance_id, by_id[instance_id].vcpus, by_id[instance_id].memory_mb)
        return {"placements": placements, "policy": self.policy.name}

    def release(self, node: str, instance_id: str) -> dict[str, Any]:
        self.registry.release(node, instance_id)
        return {}

    def node_call(self, node: str, action: str, body: dict[str, Any]) -> Any:
        entry = self.registry.entry(node)
        if entry is None:
            raise CloudError("InternalError", f"cluster {self.name} has no node {node!r}")
        try:
            result = entry.channel.call(action, body)
        except Exception:
            # A failed start frees its reservation now; a successful one keeps it until the node's
            # next heartbeat reports the instance, so the scheduler never sees the room twice.
            if action == "run_instance":
                self.registry.release(node, str(body["instance_id"]))
            raise
        if action == "terminate_instance":
            self.registry.release(node, str(body["instance_id"]))
        return result

    # -- network ---------------------------------------------------------------------------------------------
    def _with_attachment(self, node: str, instance: dict[str, Any]) -> dict[str, Any]:
        """Tell the NC where on its host the instance's NIC goes (the CLC knows ports, not hosts)."""
        nic = instance.get("nic")
        if not nic or self.network is None:
            return instance
        return instance | {"nic": nic | {"attach": self.network.attachment(node, int(nic["vlan"]))}}

    def network_sync(self, plan: dict[str, Any]) -> dict[str, Any]:
        """Apply the CLC's network plan (groups' VLANs, ingress rules, elastic NAT) to the router."""
        if self.network is None:
            return {"applied": False}
        try:
            self.network.apply(plan)
        except NetError as exc:
            raise CloudError("InvalidParameterValue", str(exc)) from exc
        return {"applied": True}

    def describe_cluster(self) -> dict[str, Any]:
        """Every node with its last report and how old that report is (so a caller can judge absence)."""
        nodes = []
        now = time.monotonic()
        for name in self.registry.names():
            entry = self.registry.entry(name)
            if entry is None:
                continue
            report = entry.report or {}
            nodes.append(
                {
                    "name": name,
                    "url": entry.url,
                    "alive": self.registry.alive(entry),
                    "age_s": None if entry.last_seen is None else now - entry.last_seen,
                    "last_error": entry.last_error,
                    "vcpus_total": report.get("vcpus_total", 0),
                    "vcpus_free": report.get("vcpus_free", 0),
                    "memory_mb_total": report.get("memory_mb_total", 0),
                    "memory_mb_free": report.get("memory_mb_free", 0),
                    "hypervisor": report.get("hypervisor"),
                    "accel": report.get("accel"),
                    "instances": report.get("instances", []),
                }
            )
        network = self.network.describe() if self.network is not None else None
        return {"cluster": self.name, "policy": self.policy.name, "nodes": nodes, "network": network}
