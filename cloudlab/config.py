"""A cloud's configuration (``cloud.json`` in its state folder), written by ``cloudlab up``."""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cloudlab.clc.regions import DEFAULT_REGION, zone_name
from cloudlab.files import write_atomic

DEFAULT_API_PORT = 8773  # Eucalyptus' port for its EC2 endpoint

# Values a field may take beyond its type (cloud.json is edited by hand, and a bad one must be one clear line).
CHOICES = {
    "network": ("none", "vde", "direct"),
    "accel": ("auto", "kvm", "tcg"),
    "cable": ("tcp", "unix"),
    "network_model": ("classic", "vpc"),
    "launch": ("restore", "boot"),
    "vde_profile": ("fast", "classic"),
}
MINIMUM = {"nodes": 1, "clusters": 1, "api_port": 0, "clc_port": 0, "node_vcpus": 1, "node_memory_mb": 1,
           "heartbeat_s": 0.01, "image_max_mb": 1, "terminated_visible_s": 0, "powersave_idle_s": 0.1,
           "powersave_wake_s": 0}  # fmt: skip
# What ``cluster_settings`` may set for one cluster (``{"cluster2": {"nodes": 3, "nat": true}}``), each over the
# cloud-wide field of the same name; ``nat: true`` (the cluster's site behind a NAT) names it in ``nat_clusters``.
CLUSTER_FIELDS: dict[str, Any] = {"nodes": int, "node_vcpus": int, "node_memory_mb": int, "scheduler": str,
                                  "powersave_idle_s": float, "nat": bool}  # fmt: skip
MAXIMUM = {"api_port": 65535, "clc_port": 65535}


class ConfigError(ValueError):
    """``cloud.json`` cannot be used: the message names the file and the field."""


@dataclass
class CloudConfig:
    """Everything ``cloudlab serve`` needs to start the same cloud again."""

    hypervisor: str = "qemu:///embed"  # the root= of an embedded driver is filled in per node
    nodes: int = 1  # per cluster
    clusters: int = 1  # cluster1 .. clusterN, each its own availability zone (<region>a, <region>b, ...)
    network: str = "none"
    scheduler: str = "GREEDY"  # each cluster's node policy (GREEDY, ROUNDROBIN, POWERSAVE or module:Class)
    zone_policy: str = "FIRST"  # the CLC's cluster policy when a request names no zone (cloudlab/clc/placement.py)
    # POWERSAVE: a node idle this long is powered down; a woken one takes powersave_wake_s to boot.
    powersave_idle_s: float = 300.0
    powersave_wake_s: float = 2.0
    cluster: str = "cluster1"
    region: str = DEFAULT_REGION
    api_host: str = "127.0.0.1"
    api_port: int = DEFAULT_API_PORT
    cc_host: str = "127.0.0.1"
    # Where the CLC takes registrations of cluster controllers that run as processes of their own
    # (``cloudlab cc --clc URL``, maybe on another host): a fixed port lets them find a restarted cloud.
    clc_host: str = "127.0.0.1"
    clc_port: int = 0
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
    # How a vde network switches frames (cloudlab/cc/segments.py): "fast" gives each segment (VLAN) a vdeplug4
    # switch of its own on every host, with jumbo frames (MTU 9000) on every link of the segment, the guests'
    # NICs included; "classic" is the 2008-style one: one vde_switch per host with a VLAN per segment, MTU 1500.
    vde_profile: str = "fast"
    # Clusters whose whole site sits behind a masquerading NAT (vde, the VPC model, several clusters: they
    # dial the first cluster's cable; see cloudlab/cc/fabric.py).
    nat_clusters: list[str] = field(default_factory=list)
    # How a cluster network places instances: "vpc" (the default, as on EC2 today) plumbs the VPC subnets (a
    # segment per subnet, a router namespace per VPC with its internet gateway's NAT, security groups on each
    # instance's port); "classic" is Eucalyptus' managed mode (a VLAN and a /24 of ``subnet`` per security
    # group, EC2-Classic instances).
    network_model: str = "vpc"
    # RegisterImage: ordinary users register only from <images_root>/<user>/ (default <state>/uploads),
    # files of at most image_max_mb each (see cloudlab/clc/uploads.py).
    images_root: str | None = None
    image_max_mb: int = 16384
    # DescribeInstances shows a terminated instance this long (EC2: about an hour); its record stays.
    terminated_visible_s: float = 3600.0
    # Per-cluster settings over the cloud-wide ones, by cluster name (see CLUSTER_FIELDS).
    cluster_settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A cluster's own ``"nat": true`` is the same as naming it in ``nat_clusters`` (``--nat-cluster``): one
        # list, which the fabric builds and checks (cloudlab/cc/fabric.py).
        own = [c for c, s in self.cluster_settings.items() if isinstance(s, dict) and s.get("nat") is True]
        self.nat_clusters = [*self.nat_clusters, *(c for c in own if c not in self.nat_clusters)]

    @property
    def vde_profile_in_use(self) -> str:
        """The VDE profile the cloud's networks are built with: ``vde_profile``, for one cluster and for a fabric of
        several alike (cloudlab/cc/fabric.py trunks VLANs over one cable per cluster on classic, and gives fast a
        cable per VPC subnet and cluster, cloudlab/cc/fabric_cables.py). One name for what the networks, the
        nodes' NIC templates and ``status`` must agree on."""
        return self.vde_profile

    @property
    def zone(self) -> str:
        """The cluster's availability zone, named as EC2 names a region's first zone (``us-east-1a``)."""
        return zone_name(self.region, 0)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> CloudConfig:
        """The configuration saved in ``path``; :class:`ConfigError` (naming the file and the field) for a file
        that is not JSON, not an object, or holds a field of the wrong type or out of range. Unknown fields
        are ignored (a newer cloudlab may have written them)."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(
                f"{path} is not valid JSON ({exc}): fix it, or remove it to start from the defaults"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object of settings, not {json.dumps(data)[:40]}")
        hints = typing.get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        for name, value in data.items():
            if name in known:
                problem = _field_problem(name, hints[name], value)
                if problem:
                    raise ConfigError(f"{path}: field {name!r} {problem}")
        config = cls(**{k: v for k, v in data.items() if k in known})
        problem = config.cluster_settings_problem()
        if problem:
            raise ConfigError(f"{path}: field 'cluster_settings' {problem}")
        return config

    def cluster_settings_problem(self) -> str | None:
        """Why ``cluster_settings`` cannot be used (an unknown cluster or setting, a bad value), or None."""
        names = self.cluster_names()
        for cluster, settings in self.cluster_settings.items():
            if cluster not in names:
                return f"names {cluster!r}, which is not a cluster of this cloud ({', '.join(names)})"
            if not isinstance(settings, dict):
                return f"of {cluster} must be an object, not {json.dumps(settings)[:40]}"
            for key, value in settings.items():
                kind = CLUSTER_FIELDS.get(key)
                if kind is None:
                    return f"of {cluster}: {key!r} is not a per-cluster setting ({', '.join(CLUSTER_FIELDS)})"
                if kind is bool:
                    if not isinstance(value, bool):
                        return f"of {cluster}: {key!r} must be true or false, not {json.dumps(value)[:40]}"
                    if value is False and cluster in self.nat_clusters:
                        return f"of {cluster}: 'nat' is false, but nat_clusters (--nat-cluster) names {cluster}"
                    continue
                problem = _field_problem(key, kind, value)
                if problem:
                    return f"of {cluster}: {key!r} {problem}"
        return None

    def setting(self, cluster_index: int, key: str) -> Any:
        """``key`` for the ``cluster_index``-th cluster: its own setting, else the cloud-wide one (``nat``: whether
        it is in ``nat_clusters``)."""
        name = self.cluster_names()[cluster_index]
        if key == "nat":
            return name in self.nat_clusters
        own = self.cluster_settings.get(name, {})
        return own[key] if key in own else getattr(self, key)

    def node_names(self, cluster_index: int = 0) -> list[str]:
        """The nodes of the ``cluster_index``-th cluster (``node-01``...; ``cluster2-node-01``... after the first)."""
        count = self.setting(cluster_index, "nodes")
        width = max(2, len(str(count)))
        prefix = "" if cluster_index == 0 else f"{self.cluster_names()[cluster_index]}-"
        return [f"{prefix}node-{i:0{width}d}" for i in range(1, count + 1)]

    def cluster_names(self) -> list[str]:
        """``cluster`` first, then ``cluster2`` ... ``clusterN``."""
        return [self.cluster] + [f"cluster{i}" for i in range(2, max(1, self.clusters) + 1)]

    def zone_of(self, cluster_index: int) -> str:
        return zone_name(self.region, cluster_index)


def _field_problem(name: str, hint: Any, value: Any) -> str | None:
    """Why ``value`` cannot be field ``name`` (of type ``hint``), or None."""
    shown = json.dumps(value)[:40]
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, type(int | None)) else (hint,)
    if value is None:
        return None if type(None) in options else "must be set, not null"
    kind = next(o for o in options if o is not type(None))
    origin = typing.get_origin(kind) or kind
    if origin is int and (not isinstance(value, int) or isinstance(value, bool)):
        return f"must be a whole number, not {shown}"
    if origin is float and (not isinstance(value, int | float) or isinstance(value, bool)):
        return f"must be a number, not {shown}"
    if origin is str and not isinstance(value, str):
        return f"must be a string, not {shown}"
    if origin is list and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return f"must be a list of strings, not {shown}"
    if origin is dict and not isinstance(value, dict):
        return f"must be an object, not {shown}"
    if name in CHOICES and value not in CHOICES[name]:
        return f"must be one of {', '.join(CHOICES[name])}, not {shown}"
    if name in MINIMUM and value < MINIMUM[name]:
        return f"must be at least {MINIMUM[name]}, not {shown}"
    if name in MAXIMUM and value > MAXIMUM[name]:
        return f"must be at most {MAXIMUM[name]}, not {shown}"
    return None
