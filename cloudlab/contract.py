"""The typed contract between controllers: every action, its request and its reply, and one codec.

A controller action is named once, here, with the dataclass its request decodes to, the dataclass its
reply decodes to and the roles allowed to call it. Senders build a request dataclass and call
``channel.ask(ACTION, request)``; receivers register ``dispatcher.serve(ACTION, handler)`` and their
handler gets the decoded request. A field that is missing or of the wrong type never reaches a
handler: the codec refuses it with :class:`ContractError`, which the dispatcher answers as a clear
error reply (``MalformedMessage``).

The codec is msgspec's (``convert`` / ``to_builtins``): strict about types (no ``"1"`` for ``1``),
fast enough for node reports with thousands of instances, and it names the offending field
(``Expected `int`, got `str` - at `$.instances[0].vcpus```). Unknown fields are ignored, so a newer
sender can add optional fields without breaking an older receiver.

Who talks to whom (the arrows are the only ones allowed)::

    CLC ──► CC : schedule, release, run_instance(s), terminate_instance, reboot_instance,
                 get_console_output, describe_cluster, network_sync
    NC  ──► CC : register_node, node_changed
    CC  ──► NC : describe_resource, run_instance(s), terminate_instance, reboot_instance,
                 get_console_output, attach_volume, detach_volume, power_off, wake (POWERSAVE)
    SC  ──► CC : register_storage
    CLC ──► CC ──► SC : create_volume, delete_volume, export_volume, unexport_volume,
                 create_snapshot, delete_snapshot, describe_storage (the CC relays to its SC)
    CLC ──► CC ──► NC : attach_volume, detach_volume, pause_instance, resume_instance (relayed to the node)
    any ──► any: hello (who are you? the one message that names no receiver)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import msgspec

from cloudlab.contract_network import (  # noqa: F401 - re-exported: the contract names every message
    ElasticNat,
    FilterRule,
    GroupSegment,
    IngressRule,
    InstanceFilter,
    NetworkApplied,
    NetworkPlan,
    PortFilters,
    SubnetSegment,
    VpcRouter,
)
from cloudlab.contract_power import PowerState  # noqa: F401 - re-exported, as the storage messages are
from cloudlab.contract_storage import (  # noqa: F401 - re-exported: the contract names every message
    AttachDisk,
    CreateVolume,
    DetachDisk,
    DetachOnNode,
    DiskOnNode,
    DiskPlan,
    Done,
    ImportSnapshot,
    NbdExport,
    SnapshotMade,
    SnapshotRef,
    SnapshotRequest,
    StorageReport,
    VolumeMade,
    VolumeRef,
)
from cloudlab.errors import CloudError

Req = TypeVar("Req")
Rep = TypeVar("Rep")
T = TypeVar("T")

#: VLAN of a cluster's first network segment; segment n is VLAN FIRST_VLAN + n (VLAN 1 is every
#: bridge's default, so it is never used). The CLC numbers segments, the CC builds them.
FIRST_VLAN = 100
#: VLAN of a cluster's first VPC subnet segment (subnet segment n is FIRST_SUBNET_VLAN + n).
FIRST_SUBNET_VLAN = 1000


class ContractError(CloudError):
    """A message that does not fit its action's dataclass (missing field, wrong type)."""

    def __init__(self, message: str) -> None:
        super().__init__("MalformedMessage", message)


def encode(value: Any) -> Any:
    """A dataclass (or anything built of them) as plain JSON-able data."""
    return msgspec.to_builtins(value)


def decode(kind: type[T], data: Any, *, what: str = "message") -> T:
    """``data`` (parsed JSON) as a ``kind``; :class:`ContractError` naming the field otherwise."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise ContractError(f"{what} is malformed: {exc}") from None


@dataclass(frozen=True)
class Action(Generic[Req, Rep]):
    """One controller action: its wire name, request and reply types, and who may call it.

    Every message is addressed to its receiver, except for ``unaddressed`` actions, which are
    harmless to replay anywhere (asking a controller who it is).
    """

    name: str
    request: type[Req]
    reply: type[Rep]
    callers: frozenset[str]
    unaddressed: bool = False


def _action(name: str, request: type[Req], reply: type[Rep], *callers: str) -> Action[Req, Rep]:
    return Action(name, request, reply, frozenset(callers))


# -- small shared pieces ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Empty:
    """A request or reply with nothing in it."""


@dataclass(frozen=True)
class InstanceRef:
    """One instance on the node that receives the message."""

    instance_id: str


@dataclass(frozen=True)
class OnNode:
    """One instance on one node of the cluster (the CC relays to that node)."""

    node: str
    instance_id: str


# -- scheduling -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstanceNeed:
    instance_id: str
    vcpus: int
    memory_mb: int


@dataclass(frozen=True)
class ScheduleRequest:
    """Place as many of ``instances`` as fit, at least ``min_count``, and hold their room."""

    instances: tuple[InstanceNeed, ...]
    min_count: int = 1


@dataclass(frozen=True)
class Placements:
    placements: dict[str, str]  # instance id -> node
    policy: str


# -- starting an instance -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attachment:
    """Where on its host a NIC goes, filled in by the CC (the CLC knows ports, not hosts).

    ``bridge``: a tap on the Linux bridge ``bridge``. ``vde``: a port between ``first_port`` and
    ``last_port`` of the VDE switch at ``sock``, managed at ``mgmt`` (None: the fast profile's segment switch,
    which has no management: the port number then only names the NIC's bridge and tap).
    """

    kind: Literal["bridge", "vde"]
    netns: str
    bridge: str | None = None
    sock: str | None = None
    mgmt: str | None = None
    first_port: int | None = None
    last_port: int | None = None
    mtu: int | None = None  # the segment's MTU when not 1500 (the fast VDE profile's jumbo frames)


@dataclass(frozen=True)
class NicPlan:
    """An instance's NIC as the CLC allocated it: its segment (VLAN), address, gateway and MAC."""

    instance_id: str
    group_id: str
    vlan: int
    address: str  # ADDR/PREFIX, set by the guest's init from the kernel command line
    gateway: str
    mac: str
    attach: Attachment | None = None

    @property
    def private_ip(self) -> str:
        return self.address.split("/")[0]


@dataclass(frozen=True)
class FetchFile:
    """A boot file the node fetches over HTTP (a presigned GET from Walrus) unless its cache holds
    ``sha256`` already; the node boots only bytes whose digest it checked. ``role``: kernel or ramdisk."""

    role: str
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class StartInstance:
    """Everything a node needs to define and start one instance.

    ``disks`` are its volumes (the root volume as ``vda`` for an image with a disk); an instance with
    no ``vda`` among them gets a scratch disk of ``scratch_gib`` there (EC2's instance store).
    """

    instance_id: str
    vcpus: int
    memory_mb: int
    kernel: str
    ramdisk: str | None = None
    disk: str | None = None
    owner: str = ""
    image_id: str = ""
    instance_type: str = ""
    nic: NicPlan | None = None
    cmdline: str | None = None
    disks: tuple[DiskPlan, ...] = ()
    scratch_gib: int = 0
    fetch: tuple[FetchFile, ...] = ()  # boot files kept in a bucket (``kernel``/``ramdisk`` are then "")


@dataclass(frozen=True)
class RunOnNode:
    node: str
    instance: StartInstance


@dataclass(frozen=True)
class InstanceStarted:
    instance_id: str
    state: str
    node: str
    accel: str | None = None


@dataclass(frozen=True)
class StartMany:
    """Several starts in one message (a RunInstances of 1,000 is one CLC→CC message and one per node)."""

    instances: tuple[RunOnNode, ...]


@dataclass(frozen=True)
class NodeStartMany:
    instances: tuple[StartInstance, ...]


@dataclass(frozen=True)
class StartOutcome:
    """How one start of a batch went: ``started``, or the error code and message a single start raises."""

    instance_id: str
    node: str
    started: InstanceStarted | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class StartOutcomes:
    outcomes: tuple[StartOutcome, ...]


@dataclass(frozen=True)
class InstanceRemoved:
    """A node destroyed and undefined a VM (or had none); its NIC's last byte counts where known."""

    instance_id: str
    previous: str
    state: str
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None


@dataclass(frozen=True)
class InstanceState:
    instance_id: str
    state: str


@dataclass(frozen=True)
class ConsoleOutput:
    instance_id: str
    output: str
    time: float


# -- reports ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstanceReport:
    """One VM as its node's hypervisor sees it (``running``, ``shutoff``, ``pending``, ...)."""

    instance_id: str
    state: str
    vcpus: int
    memory_mb: int
    net_rx_bytes: int | None = None
    net_tx_bytes: int | None = None


@dataclass(frozen=True)
class LifecycleEvent:
    """A libvirt lifecycle event on a node (``started``, ``stopped``, ``shutdown``, ...), numbered per node."""

    seq: int
    instance_id: str
    event: str
    detail: int
    time: float


@dataclass(frozen=True)
class NodeReport:
    """A node's heartbeat answer: capacity, free capacity, its instances and its recent lifecycle events."""

    node: str
    uri: str
    hypervisor: str
    accel: str | None
    vcpus_total: int
    vcpus_free: int
    memory_mb_total: int
    memory_mb_free: int
    instances: tuple[InstanceReport, ...]
    time: float
    events: tuple[LifecycleEvent, ...] = ()


@dataclass(frozen=True)
class ReportAsk:
    """A heartbeat that names the digest of the report the CC already holds (None: it holds none)."""

    unchanged: str | None = None


@dataclass(frozen=True)
class ReportIfChanged:
    """The node's report, or None when its digest is the one asked about: an idle node's heartbeat is
    then a few bytes, not every instance it holds again (the report's ``time`` is not in the digest)."""

    digest: str
    report: NodeReport | None = None


@dataclass(frozen=True)
class NodeSummary:
    """A node as its cluster controller knows it: health, capacity and the last report's instances.

    ``age_s`` is how long before the ``describe_cluster`` request *arrived* the last good report was
    asked for (negative: asked while the request waited for a change; None: never answered). A reader
    that notes its own clock when it sends the request knows the report was asked for no earlier than
    that time minus ``age_s``, and so which instance states the report can speak for.
    """

    name: str
    url: str | None
    alive: bool
    age_s: float | None
    last_error: str | None
    vcpus_total: int = 0
    vcpus_free: int = 0
    memory_mb_total: int = 0
    memory_mb_free: int = 0
    hypervisor: str | None = None
    accel: str | None = None
    instances: tuple[InstanceReport, ...] = ()
    power: str = "on"  # "on", "off" (powered down by POWERSAVE: not polled, not dead) or "waking"
    power_since: float | None = None  # the CC's wall clock when the node entered ``power``
    registered: float | None = None  # the CC's wall clock when the node registered (it was on then)


@dataclass(frozen=True)
class DescribeCluster:
    """Ask for the cluster's report; with ``wait_s``, wait that long for one newer than ``after``.

    The CC numbers its reports (``version``); a caller that passes the version it last saw is
    answered as soon as a node reports a change (a lifecycle event, a new instance), or after
    ``wait_s`` with whatever there is. This replaces a poll on top of a poll.
    """

    after: int = 0
    wait_s: float = 0.0


@dataclass(frozen=True)
class ClusterReport:
    cluster: str
    policy: str
    version: int
    nodes: tuple[NodeSummary, ...]
    network: dict[str, Any] | None = None


# -- node registration -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegisterNode:
    """An NC announces where it listens; its name is its certificate's, never a field."""

    url: str


@dataclass(frozen=True)
class Registered:
    cluster: str
    node: str


@dataclass(frozen=True)
class ClusterRegistered:
    """The CLC's answer to a CC that registered: the cluster's name (from its certificate) and its zone."""

    cluster: str
    zone: str


@dataclass(frozen=True)
class Released:
    released: bool = True


# -- the actions --------------------------------------------------------------------------------------------
# anyone of the cloud -> any controller: who are you? (the signed reply names the receiver)
HELLO = Action("hello", Empty, Empty, frozenset({"clc", "cc", "nc", "sc"}), unaddressed=True)
# CLC -> CC
SCHEDULE = _action("schedule", ScheduleRequest, Placements, "clc")
RELEASE = _action("release", OnNode, Released, "clc")
RUN_INSTANCE = _action("run_instance", RunOnNode, InstanceStarted, "clc")
RUN_INSTANCES = _action("run_instances", StartMany, StartOutcomes, "clc")
TERMINATE_INSTANCE = _action("terminate_instance", OnNode, InstanceRemoved, "clc")
REBOOT_INSTANCE = _action("reboot_instance", OnNode, InstanceState, "clc")
GET_CONSOLE_OUTPUT = _action("get_console_output", OnNode, ConsoleOutput, "clc")
DESCRIBE_CLUSTER = _action("describe_cluster", DescribeCluster, ClusterReport, "clc")
NETWORK_SYNC = _action("network_sync", NetworkPlan, NetworkApplied, "clc")
CREATE_VOLUME = _action("create_volume", CreateVolume, VolumeMade, "clc")
DELETE_VOLUME = _action("delete_volume", VolumeRef, Done, "clc")
EXPORT_VOLUME = _action("export_volume", VolumeRef, NbdExport, "clc")
UNEXPORT_VOLUME = _action("unexport_volume", VolumeRef, Done, "clc")
CREATE_SNAPSHOT = _action("create_snapshot", SnapshotRequest, SnapshotMade, "clc")
DELETE_SNAPSHOT = _action("delete_snapshot", SnapshotRef, Done, "clc")
IMPORT_SNAPSHOT = _action("import_snapshot", ImportSnapshot, SnapshotMade, "clc")
DESCRIBE_STORAGE = _action("describe_storage", Empty, StorageReport, "clc")
PAUSE_INSTANCE = _action("pause_instance", OnNode, InstanceState, "clc")
RESUME_INSTANCE = _action("resume_instance", OnNode, InstanceState, "clc")
ATTACH_VOLUME = _action("attach_volume", DiskOnNode, Done, "clc")
DETACH_VOLUME = _action("detach_volume", DetachOnNode, Done, "clc")
# NC -> CC
REGISTER_NODE = _action("register_node", RegisterNode, Registered, "nc")
NODE_CHANGED = _action("node_changed", Empty, Empty, "nc")
# SC -> CC
REGISTER_STORAGE = _action("register_storage", RegisterNode, Registered, "sc")
# CC -> CLC (a cluster controller in a process of its own, maybe on another host: ``cloudlab cc``)
REGISTER_CLUSTER = _action("register_cluster", RegisterNode, ClusterRegistered, "cc")
# CC -> NC
DESCRIBE_RESOURCE = _action("describe_resource", Empty, NodeReport, "cc")
DESCRIBE_RESOURCE_IF_CHANGED = _action("describe_resource_if_changed", ReportAsk, ReportIfChanged, "cc")
NODE_RUN_INSTANCE = _action("run_instance", StartInstance, InstanceStarted, "cc")
NODE_RUN_INSTANCES = _action("run_instances", NodeStartMany, StartOutcomes, "cc")
NODE_TERMINATE_INSTANCE = _action("terminate_instance", InstanceRef, InstanceRemoved, "cc")
NODE_REBOOT_INSTANCE = _action("reboot_instance", InstanceRef, InstanceState, "cc")
NODE_GET_CONSOLE_OUTPUT = _action("get_console_output", InstanceRef, ConsoleOutput, "cc")
NODE_PAUSE_INSTANCE = _action("pause_instance", InstanceRef, InstanceState, "cc")
NODE_RESUME_INSTANCE = _action("resume_instance", InstanceRef, InstanceState, "cc")
NODE_PORT_FILTERS = _action("port_filters", PortFilters, NetworkApplied, "cc")
NODE_ATTACH_VOLUME = _action("attach_volume", AttachDisk, Done, "cc")
NODE_DETACH_VOLUME = _action("detach_volume", DetachDisk, Done, "cc")
NODE_POWER_OFF = _action("power_off", Empty, PowerState, "cc")
NODE_WAKE = _action("wake", Empty, PowerState, "cc")
# CC -> SC
SC_CREATE_VOLUME = _action("create_volume", CreateVolume, VolumeMade, "cc")
SC_DELETE_VOLUME = _action("delete_volume", VolumeRef, Done, "cc")
SC_EXPORT_VOLUME = _action("export_volume", VolumeRef, NbdExport, "cc")
SC_UNEXPORT_VOLUME = _action("unexport_volume", VolumeRef, Done, "cc")
SC_CREATE_SNAPSHOT = _action("create_snapshot", SnapshotRequest, SnapshotMade, "cc")
SC_DELETE_SNAPSHOT = _action("delete_snapshot", SnapshotRef, Done, "cc")
SC_IMPORT_SNAPSHOT = _action("import_snapshot", ImportSnapshot, SnapshotMade, "cc")
SC_DESCRIBE_STORAGE = _action("describe_storage", Empty, StorageReport, "cc")

CLUSTER_ACTIONS: tuple[Action[Any, Any], ...] = (
    HELLO,
    SCHEDULE,
    RELEASE,
    RUN_INSTANCE,
    RUN_INSTANCES,
    TERMINATE_INSTANCE,
    REBOOT_INSTANCE,
    GET_CONSOLE_OUTPUT,
    DESCRIBE_CLUSTER,
    NETWORK_SYNC,
    REGISTER_NODE,
    NODE_CHANGED,
    CREATE_VOLUME,
    DELETE_VOLUME,
    EXPORT_VOLUME,
    UNEXPORT_VOLUME,
    CREATE_SNAPSHOT,
    DELETE_SNAPSHOT,
    IMPORT_SNAPSHOT,
    DESCRIBE_STORAGE,
    ATTACH_VOLUME,
    DETACH_VOLUME,
    PAUSE_INSTANCE,
    RESUME_INSTANCE,
    REGISTER_STORAGE,
)
NODE_ACTIONS: tuple[Action[Any, Any], ...] = (
    HELLO,
    DESCRIBE_RESOURCE,
    DESCRIBE_RESOURCE_IF_CHANGED,
    NODE_RUN_INSTANCE,
    NODE_RUN_INSTANCES,
    NODE_TERMINATE_INSTANCE,
    NODE_REBOOT_INSTANCE,
    NODE_GET_CONSOLE_OUTPUT,
    NODE_ATTACH_VOLUME,
    NODE_DETACH_VOLUME,
    NODE_PAUSE_INSTANCE,
    NODE_RESUME_INSTANCE,
    NODE_PORT_FILTERS,
    NODE_POWER_OFF,
    NODE_WAKE,
)
CLOUD_ACTIONS: tuple[Action[Any, Any], ...] = (HELLO, REGISTER_CLUSTER)
STORAGE_ACTIONS: tuple[Action[Any, Any], ...] = (
    HELLO,
    SC_CREATE_VOLUME,
    SC_DELETE_VOLUME,
    SC_EXPORT_VOLUME,
    SC_UNEXPORT_VOLUME,
    SC_CREATE_SNAPSHOT,
    SC_DELETE_SNAPSHOT,
    SC_IMPORT_SNAPSHOT,
    SC_DESCRIBE_STORAGE,
)
