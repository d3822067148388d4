"""A cloud's configuration (``cloud.json`` in its state folder), written by ``cloudlab up``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cloudlab.clc.regions import DEFAULT_REGION, zone_name
from cloudlab.files import write_atomic

DEFAULT_API_PORT = 8773  # Eucalyptus' port for its EC2 endpoint


@dataclass
class CloudConfig:
    """Everything ``cloudlab serve`` needs to start the same cloud again."""

    hypervisor: str = "qemu:///embed"  # the root= of an embedded driver is filled in per node
    nodes: int = 1
    network: str = "none"
    scheduler: str = "GREEDY"
    cluster: str = "cluster1"
    region: str = DEFAULT_REGION
    api_host: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    cc_host: str = "127.0.0.1"
    # Elastic (public) addresses come from this pool. TEST-NET-2 (RFC 5737) is never routed on the
    # internet; NAT into the cloud's own namespaces arrives with the networking issue.
    public_pool: str = "198.51.100.0/24"  # where the cluster controller listens for node controllers
    accel: str = "auto"
    launch: str = "restore"  # node controllers restore booted templates (cloudlab/nc/templates.py) or "boot"
    node_vcpus: int | None = None
    node_memory_mb: int | None = None
    heartbeat_s: float = 1.0
    # Cluster networks (``network`` vde or direct): instances' private range (a /24 per security group),
    # the controllers' underlay between host namespaces, nodes placed behind a NAT, and the transport
    # of the VDE cables between hosts.
    subnet: str = "10.211.0.0/16"
    underlay: str = "auto"  # a free 10.253.N.0/24, chosen at start
    nat_nodes: list[str] = field(default_factory=list)
    cable: str = "tcp"
    # RegisterImage: ordinary users register only from <images_root>/<user>/ (default <state>/uploads),
    # files of at most image_max_mb each (see cloudlab/clc/uploads.py).
    images_root: str | None = None
    image_max_mb: int = 16384
    # DescribeInstances shows a terminated instance this long (EC2: about an hour); its record stays.
    terminated_visible_s: float = 3600.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def zone(self) -> str:
        """The cluster's availability zone, named as EC2 names a region's first zone (``us-east-1a``)."""
        return zone_name(self.region, 0)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> CloudConfig:
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def node_names(self) -> list[str]:
        width = max(2, len(str(self.nodes)))
        return [f"node-{i:0{width}d}" for i in range(1, self.nodes + 1)]
