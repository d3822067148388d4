"""The clusters of a running cloud service: each one's CC, endpoint, network and metadata services.

Split from :mod:`cloudlab.service` so that the service reads as its start and stop sequence. A cloud has
``clusters`` clusters (``cloud.json``); the first one's network is named after the state folder, the others
``<prefix>-c<n>``, inside the first's prefix, so that the first's sweep also finds what they left.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from cloudlab.cc.cluster import ClusterController
from cloudlab.config import CloudConfig
from cloudlab.paths import StateLayout
from cloudlab.rpc import Dispatcher

log = logging.getLogger(__name__)


@dataclass
class ClusterRuntime:
    """One cluster of the cloud as the service runs it: its CC, the CC's endpoint, its network, its nodes."""

    index: int
    name: str
    zone: str
    nodes: list[str]
    cc: ClusterController
    dispatcher: Dispatcher
    server: Any
    url: str
    network: Any = None  # cloudlab.cc.network.ClusterNetwork when the cluster has one
    metadata_server: Any = None
    vpc_metadata_servers: dict[str, Any] = field(default_factory=dict)  # vpc id -> its router's metadata server

    def stop_metadata(self) -> None:
        for server in [self.metadata_server, *self.vpc_metadata_servers.values()]:
            if server is not None:
                server.stop()


def build_network(layout: StateLayout, config: CloudConfig, index: int, name: str) -> Any:
    """The network of the ``index``-th cluster, checked and built."""
    from cloudlab.cc.network import ClusterNetwork

    if index == 0:
        network = ClusterNetwork.for_cloud(config, layout)
    else:
        run_dir = layout.network_run_dir
        network = ClusterNetwork(
            name,
            config.network,
            prefix=f"{layout.network_prefix}-c{index + 1}",
            nodes=config.node_names(index),
            subnet=config.subnet,
            underlay="auto",
            run_dir=run_dir.with_name(f"{run_dir.name}{index + 1}"),
            cable=config.cable,
            profile=config.vde_profile_in_use,
        )
    network.check(config.public_pool)
    network.build()
    log.info("cluster %s: %s network built (outside namespace %s)", name, config.network, network.outside)
    return network


def join_clusters(layout: StateLayout, config: CloudConfig, clusters: list[ClusterRuntime]) -> Any:
    """What joins the clusters' networks, built (else None): on vde with the VPC model the fabric (the WAN
    between their sites, NATs for ``nat_clusters``, a cable from each cluster to the first); on direct with the
    VPC model a WAN between their public sides, so zones reach each other's public addresses."""
    from cloudlab.cc import fabric, public_wan

    fabric.check_config(config)
    public_wan.check_config(config)
    if public_wan.wanted(config) and all(c.network is not None for c in clusters):
        joined_wan = public_wan.PublicWan(layout.network_prefix, [c.network for c in clusters], config.public_pool)
        joined_wan.build()
        return joined_wan
    if not fabric.wanted(config):
        return None
    joined = fabric.Fabric(layout.network_prefix, [c.network for c in clusters], config.nat_clusters)
    joined.build()
    return joined


def start_metadata_services(clc: Any, runtime: ClusterRuntime) -> None:
    """The EC2 metadata service on 169.254.169.254:80 inside the cluster's outside namespace, and one in
    each VPC router the network makes from now on."""
    from cloudlab.clc.network import InstanceNetworks
    from cloudlab.net import netns
    from cloudlab.net.metadata import InstanceMetadata, MetadataServer, listen_socket

    networks = clc.service(InstanceNetworks)
    cluster = runtime.name

    def lookup(address: str) -> InstanceMetadata | None:
        found = networks.metadata(cluster, address)
        return None if found is None else InstanceMetadata(**found)

    with netns.entered(runtime.network.outside):
        sock = listen_socket()
    runtime.metadata_server = MetadataServer(lookup, sock)
    runtime.metadata_server.start()
    runtime.network.vpc_routers.on_router = lambda vpc_id, ns: start_vpc_metadata_service(clc, runtime, vpc_id, ns)


def start_vpc_metadata_service(clc: Any, runtime: ClusterRuntime, vpc_id: str, namespace: str) -> None:
    """The metadata service of one VPC, in its router's namespace (VPCs' ranges may overlap)."""
    from cloudlab.clc.network import InstanceNetworks
    from cloudlab.net import netns
    from cloudlab.net.metadata import InstanceMetadata, MetadataServer, listen_socket

    networks = clc.service(InstanceNetworks)
    cluster = runtime.name

    def lookup(address: str) -> InstanceMetadata | None:
        found = networks.vpc_metadata(cluster, vpc_id, address)
        return None if found is None else InstanceMetadata(**found)

    old = runtime.vpc_metadata_servers.pop(vpc_id, None)
    if old is not None:
        old.stop()
    with netns.entered(namespace):
        sock = listen_socket()
    server = runtime.vpc_metadata_servers[vpc_id] = MetadataServer(lookup, sock)
    server.start()


def _process(child: Any) -> dict[str, Any] | None:
    if child is None or child.process is None:
        return None
    return {
        "pid": child.process.pid,
        "running": child.process.poll() is None,
        "restarts": child.restarts,
        "history": child.history[-5:],
    }


def node_state(node: dict[str, Any]) -> str:
    """What ``cloudlab status`` and ``nodes()`` call a node: ``up``, ``powered-off`` (POWERSAVE: registered,
    not polled), ``waking`` (booting after a wake) or ``dead`` (it does not answer its CC)."""
    power = node.get("power", "on")
    if power == "off":
        return "powered-off"
    if power == "waking":
        return "waking"
    return "up" if node["alive"] else "dead"


def cluster_status(service: Any, runtime: ClusterRuntime) -> dict[str, Any]:
    """One cluster as ``cloudlab status`` shows it: its zone and that zone's state (as DescribeAvailabilityZones
    says it), its CC, scheduler, network, nodes (with their power and process) and storage controller."""
    from cloudlab.contract import encode

    cluster = encode(runtime.cc.describe_cluster())
    for node in cluster["nodes"]:
        node["process"] = _process(service.children.get(node["name"]))
        node["instances"] = len(node["instances"])
        node["state"] = node_state(node)
    health = service.clc.cluster_health()
    return {
        "name": runtime.name,
        "zone": runtime.zone,
        "state": "available" if health.get(runtime.name, True) else "unavailable",
        "network": service.config.network,
        "nat": bool(service.config.setting(runtime.index, "nat")),
        "scheduler": cluster["policy"],
        "powersave": {"enabled": runtime.cc.power.enabled, "idle_s": runtime.cc.power.idle_s},
        "power_history": list(runtime.cc.power.history[-5:]),
        "cc_url": runtime.url,
        "nodes": cluster["nodes"],
        "network_detail": cluster.get("network"),
        "storage": storage_status(service) if runtime.index == 0 else None,
    }


def remote_cluster_status(service: Any, name: str, url: str) -> dict[str, Any]:
    """A cluster whose CC runs as a process of its own (``cloudlab cc``), as ``cloudlab status`` shows it: what
    its CC said at the CLC's last reconcile pass (its nodes as they were then, if it no longer answers)."""
    from cloudlab.contract import encode

    link = service.clc.clusters.get(name)
    report = service.clc.cluster_reports().get(name)
    nodes = [encode(node) for node in report.nodes] if report is not None else []
    for node in nodes:
        node["process"] = None  # not a child of this service: it runs beside its CC
        node["instances"] = len(node["instances"])
        node["state"] = node_state(node)
    return {
        "name": name,
        "zone": link.zone if link is not None else None,
        "state": "available" if service.clc.cluster_health().get(name, True) else "unavailable",
        "network": link.network if link is not None else "none",
        "nat": False,
        "scheduler": report.policy if report is not None else None,
        "remote": True,
        "cc_url": url,
        "nodes": nodes,
        "network_detail": None,
        "storage": None,
    }


def storage_status(service: Any) -> dict[str, Any]:
    """The cluster's SC as ``cloudlab status`` shows it: where it is, its process, what it serves."""
    from cloudlab import contract as c

    cc = service.cc
    found: dict[str, Any] = {
        "name": service.config.cluster,
        "url": cc.storage_url,
        "registered": cc.storage is not None,
        "process": _process(service.children.get(f"sc-{service.config.cluster}")),
    }
    if cc.storage is not None:
        try:
            report = cc.storage_call(c.SC_DESCRIBE_STORAGE, c.Empty())
            found |= {
                "volumes": len(report.volumes),
                "snapshots": len(report.snapshots),
                "exports": len(report.exports),
                "free_bytes": report.free_bytes,
            }
        except Exception as exc:  # status must answer even when the SC does not
            found["last_error"] = str(exc)[:200]
    return found
