"""The storage part of the controllers' contract: the messages about volumes, snapshots and their exports.

The storage controller (SC) and the nodes that attach its volumes speak these; the actions that carry
them are named with all the others in ``cloudlab.contract``, which re-exports every class here, so a
controller writes ``contract.CreateVolume`` like any other message. Kept apart so that the contract
stays readable (and under the house's 600 lines) as the storage grows.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NbdExport:
    """Where a storage controller serves one volume over NBD (``nbd://host:port/name``)."""

    host: str
    port: int
    name: str


@dataclass(frozen=True)
class DiskPlan:
    """One of an instance's block devices: a volume exported by the cluster's SC, as guest device ``device``."""

    volume_id: str
    device: str  # vda, vdb, ... (the guest sees the disks in this order)
    export: NbdExport
    #: Set only for a root volume made for this very start from an image's disk (its copy-on-write overlay,
    #: nothing has written it yet): that disk, and the volume's size. Its content is then the image disk's
    #: exactly, so the node may restore a booted template of that disk on it (``cloudlab.nc.templates``);
    #: a volume that was ever attached (a retried start, a StartInstances after a stop) boots cold.
    fresh_from: str | None = None
    size_gib: int = 0


@dataclass(frozen=True)
class CreateVolume:
    """Make ``volume_id``: blank of ``size_gib``, or a copy of snapshot ``snapshot_id`` grown to it, or a
    copy-on-write overlay of the image disk ``backing`` (a root volume)."""

    volume_id: str
    size_gib: int
    snapshot_id: str | None = None
    backing: str | None = None


@dataclass(frozen=True)
class VolumeRef:
    volume_id: str


@dataclass(frozen=True)
class VolumeMade:
    volume_id: str
    size_bytes: int
    allocated_bytes: int


@dataclass(frozen=True)
class SnapshotRequest:
    snapshot_id: str
    volume_id: str


@dataclass(frozen=True)
class ImportSnapshot:
    """Make snapshot ``snapshot_id`` from a disk image (``raw`` or ``qcow2``) fetched from ``url`` (a
    presigned GET of the object in Walrus), of at most ``size`` bytes as fetched."""

    snapshot_id: str
    url: str
    format: str
    size: int


@dataclass(frozen=True)
class SnapshotRef:
    snapshot_id: str


@dataclass(frozen=True)
class SnapshotMade:
    snapshot_id: str
    size_bytes: int
    seconds: float


@dataclass(frozen=True)
class Done:
    done: bool = True


@dataclass(frozen=True)
class StorageReport:
    """What a storage controller holds: its volumes and snapshots, its exports, its free space."""

    name: str
    url: str | None
    alive: bool
    volumes: tuple[str, ...] = ()
    snapshots: tuple[str, ...] = ()
    exports: dict[str, NbdExport] = field(default_factory=dict)
    free_bytes: int = 0
    reserve_bytes: int = 0  # kept free: a new volume may be as large as free_bytes - reserve_bytes


@dataclass(frozen=True)
class AttachDisk:
    """Hot-plug ``disk`` into the running instance ``instance_id``."""

    instance_id: str
    disk: DiskPlan


@dataclass(frozen=True)
class DetachDisk:
    instance_id: str
    volume_id: str
    force: bool = False


@dataclass(frozen=True)
class DiskOnNode:
    node: str
    attach: AttachDisk


@dataclass(frozen=True)
class DetachOnNode:
    node: str
    detach: DetachDisk
