"""EBS volumes as the cloud controller records them: who owns which, and EC2's rules for each change.

Invariants kept here:
- a volume row is committed (``creating``, ``deleting``, an attachment ``attaching`` or
  ``detaching``) before its storage controller or node is asked to do anything, and the work itself
  is done by :class:`~cloudlab.clc.volume_work.VolumeWork`, which simply carries every unfinished
  row forward (every SC and NC action is idempotent), so a kill at any moment loses nothing;
- a user sees and touches only their own volumes (an admin all); another user's volume reads as
  ``InvalidVolume.NotFound``, as an unknown one does;
- a volume has at most one attachment; the guest sees volumes as ``/dev/vdb``, ``/dev/vdc``, ... in
  attach order (``guest_device``) and ``/dev/vda`` is the instance's own disk (its root volume, or a
  scratch disk); DescribeVolumes reports the device name the user gave;
- a root volume (``is_root``) is created with its instance at RunInstances, in the same
  transaction, and made on the SC just before the instance first starts;
- deleted volumes keep their row (``deleted``) for accounting, and are never shown again;
- CreateVolume of a volume larger than its SC can hold now is refused at once
  (``InsufficientVolumeCapacity``, nothing recorded); the SC checks again when it makes the file
  (see ``cloudlab.sc.files`` for why the whole size counts although volumes are sparse).
"""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Any

from cloudlab import contract as c
from cloudlab.clc import ebs_usage, quotas
from cloudlab.clc.store import Store
from cloudlab.clc.tags import Tags, validate_specifications
from cloudlab.clc.users import User
from cloudlab.errors import CloudError
from cloudlab.ids import is_valid_id, new_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS volumes (
    volume_id TEXT PRIMARY KEY, owner TEXT NOT NULL, zone TEXT NOT NULL, cluster TEXT NOT NULL,
    size_gib INTEGER NOT NULL, snapshot_id TEXT, backing TEXT, volume_type TEXT NOT NULL DEFAULT 'standard',
    state TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL, is_root INTEGER NOT NULL DEFAULT 0,
    instance_id TEXT, device TEXT, guest_device TEXT, attach_state TEXT, attach_time REAL,
    delete_on_termination INTEGER NOT NULL DEFAULT 0, force_detach INTEGER NOT NULL DEFAULT 0,
    auto_enable_io INTEGER NOT NULL DEFAULT 0, error TEXT, deleted_at REAL);
CREATE INDEX IF NOT EXISTS volumes_by_owner ON volumes(owner, state);
CREATE INDEX IF NOT EXISTS volumes_by_instance ON volumes(instance_id);
"""

#: Sizes EC2 allows per volume type (GiB).
SIZE_LIMITS = {"standard": (1, 1024), "gp2": (1, 16384), "gp3": (1, 16384)}
DEFAULT_SIZE_GIB = 1
#: Device names a user may attach at (the root is /dev/vda, /dev/xvda or /dev/sda1).
DEVICE_RE = re.compile(r"^/dev/(sd[b-z]|xvd[b-z]|vd[b-z])$")
ROOT_DEVICES = ("/dev/vda", "/dev/xvda", "/dev/sda1", "/dev/sda")
ROOT_DEVICE = "/dev/vda"
GUEST_DEVICES = tuple(f"vd{letter}" for letter in "bcdefghijklmnopqrstuvwxyz")
_SHOWN = "state != 'deleted'"
#: One volume of a launch: device, guest device, GiB, snapshot, backing disk, DeleteOnTermination, root.
LaunchVolume = tuple[str, str, int, str | None, str | None, bool, bool]


def volume_not_found(volume_ids: list[str]) -> CloudError:
    quoted = ", ".join(f"'{v}'" for v in volume_ids)
    return CloudError("InvalidVolume.NotFound", f"The volume {quoted} does not exist.")


def check_size(size: Any, volume_type: str = "standard") -> int:
    low, high = SIZE_LIMITS.get(volume_type, SIZE_LIMITS["standard"])
    if not isinstance(size, int) or isinstance(size, bool) or not low <= size <= high:
        raise CloudError(
            "InvalidParameterValue",
            f"Volume of {size} GiB is not valid: a {volume_type} volume is {low}-{high} GiB",
        )
    return size


class Volumes:
    """The ``volumes`` table as the EC2 actions use it (a CLC service: ``clc.service(Volumes)``)."""

    def __init__(self, clc: Any) -> None:
        self.clc = clc
        self.store: Store = clc.store
        self.store.ensure_schema(SCHEMA)
        quotas.ensure_schema(self.store)
        self.wake: Any = lambda: None  # set by VolumeWork: there is work to carry forward

    @property
    def tags(self) -> Tags:
        return self.clc.service(Tags)  # not in __init__: a service is built under the CLC's services lock

    # -- reads ----------------------------------------------------------------------------------------
    def visible(self, user: User, volume_ids: list[str] | None = None) -> list[dict[str, Any]]:
        """``user``'s volumes (all for an admin), or exactly ``volume_ids`` (NotFound for any missing)."""
        for volume_id in volume_ids or []:
            if not isinstance(volume_id, str) or not is_valid_id(volume_id, "vol"):
                raise CloudError("InvalidVolumeID.Malformed", f'Invalid id: "{volume_id}" (expecting "vol-...")')
        where, params = [_SHOWN], []
        if not user.is_admin:
            where.append("owner=?")
            params.append(user.name)
        if volume_ids:
            where.append(f"volume_id IN ({','.join('?' * len(volume_ids))})")
            params.extend(volume_ids)
        rows = [
            dict(r)
            for r in self.store.query(
                f"SELECT * FROM volumes WHERE {' AND '.join(where)} ORDER BY created, volume_id", params
            )
        ]
        if volume_ids:
            missing = sorted(set(volume_ids) - {r["volume_id"] for r in rows})
            if missing:
                raise volume_not_found(missing)
        return rows

    def one(self, user: User, volume_id: str) -> dict[str, Any]:
        return self.visible(user, [volume_id])[0]

    def get(self, volume_id: str) -> dict[str, Any] | None:
        row = self.store.one("SELECT * FROM volumes WHERE volume_id=?", (volume_id,))
        return dict(row) if row else None

    def of_instances(self, instance_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        """instance id -> its attached volumes (root first, then in attach order)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for i in range(0, len(instance_ids), 500):
            chunk = instance_ids[i : i + 500]
            rows = self.store.query(
                f"SELECT * FROM volumes WHERE instance_id IN ({','.join('?' * len(chunk))}) AND {_SHOWN}"
                " ORDER BY is_root DESC, attach_time, volume_id",
                chunk,
            )
            for row in rows:
                found.setdefault(row["instance_id"], []).append(dict(row))
        return found

    # -- CreateVolume / DeleteVolume --------------------------------------------------------------------
    def create(
        self,
        user: User,
        *,
        zone: str | None,
        size_gib: int | None = None,
        snapshot_id: str | None = None,
        volume_type: str | None = None,
        tag_specifications: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Record a new volume (``creating``); the SC makes it next (see VolumeWork)."""
        volume_type = volume_type or "standard"
        if volume_type not in SIZE_LIMITS:
            raise CloudError(
                "InvalidParameterValue", f"Volume type {volume_type!r} is not one of {', '.join(SIZE_LIMITS)}"
            )
        link = self.clc.clusters.for_zone(zone)
        if zone is None:
            raise CloudError("MissingParameter", "The request must contain the parameter AvailabilityZone")
        if snapshot_id is not None:
            snapshot = self.clc.snapshots.one(user, snapshot_id, usable=True)
            if size_gib is None:
                size_gib = snapshot["volume_size"]
            elif size_gib < snapshot["volume_size"]:
                raise CloudError(
                    "InvalidParameterValue",
                    f"The volume size ({size_gib} GiB) is less than the size of snapshot {snapshot_id} "
                    f"({snapshot['volume_size']} GiB)",
                )
        elif size_gib is None:
            raise CloudError("MissingParameter", "The request must contain the parameter Size or SnapshotId")
        size_gib = check_size(size_gib, volume_type)
        validate_specifications("volume", tag_specifications)
        check_capacity(link, size_gib)
        volume_id = new_id("vol")
        now = time.time()
        with self.store.transaction() as db:
            check_volume_quota(db, user.name, 1, size_gib)
            db.execute(
                "INSERT INTO volumes (volume_id, owner, zone, cluster, size_gib, snapshot_id, volume_type, state,"
                " created, updated) VALUES (?,?,?,?,?,?,?,'creating',?,?)",
                (volume_id, user.name, link.zone, link.name, size_gib, snapshot_id, volume_type, now, now),
            )
            if tag_specifications:
                self.tags.apply_specifications(db, user, "volume", [volume_id], tag_specifications)
        self.wake()
        row = self.get(volume_id)
        assert row is not None
        return row

    def delete(self, user: User, volume_id: str) -> None:
        row = self.one(user, volume_id)
        if row["instance_id"] is not None:
            raise CloudError("VolumeInUse", f"Volume {volume_id} is currently attached to {row['instance_id']}")
        if row["state"] in ("deleting",):
            return
        if row["state"] not in ("available", "error"):
            raise CloudError("IncorrectState", f"The volume '{volume_id}' is '{row['state']}' and cannot be deleted")
        self._set(volume_id, expect=(row["state"],), state="deleting")
        self.wake()

    # -- AttachVolume / DetachVolume --------------------------------------------------------------------
    def attach(self, user: User, volume_id: str, instance_id: str, device: str) -> dict[str, Any]:
        """Record the attachment (``attaching``); the node hot-plugs the volume next (VolumeWork)."""
        if not isinstance(device, str) or not DEVICE_RE.match(device):
            raise CloudError(
                "InvalidParameterValue",
                f"Value ({device}) for parameter device is invalid. {device} is not a valid EBS device name "
                "(use /dev/sd[b-z], /dev/xvd[b-z] or /dev/vd[b-z])",
            )
        volume = self.one(user, volume_id)
        [instance] = self.clc.records.visible(user, [instance_id])
        if volume["instance_id"] is not None or volume["state"] == "in-use":
            raise CloudError("VolumeInUse", f"{volume_id} is already attached to an instance")
        if volume["state"] != "available":
            raise CloudError("IncorrectState", f"vol '{volume_id}' is not 'available' (it is '{volume['state']}')")
        if instance["state"] not in ("running", "stopped"):
            raise CloudError(
                "IncorrectInstanceState",
                f"The instance '{instance_id}' is not 'running' or 'stopped' (it is '{instance['state']}')",
            )
        if instance["zone"] != volume["zone"]:
            raise CloudError(
                "InvalidVolume.ZoneMismatch",
                f"The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'",
            )
        now = time.time()
        with self.store.transaction() as db:
            attached = db.execute(
                f"SELECT device, guest_device FROM volumes WHERE instance_id=? AND {_SHOWN}", (instance_id,)
            ).fetchall()
            if device in {r["device"] for r in attached}:
                raise CloudError("InvalidParameterValue", f"Attachment point {device} is already in use")
            taken = {r["guest_device"] for r in attached}
            guest = next((d for d in GUEST_DEVICES if d not in taken), None)
            if guest is None:
                raise CloudError("AttachmentLimitExceeded", f"instance {instance_id} has no free disk slot left")
            changed = db.execute(
                "UPDATE volumes SET state='in-use', instance_id=?, device=?, guest_device=?, attach_state=?,"
                " attach_time=?, delete_on_termination=0, force_detach=0, updated=? WHERE volume_id=?"
                " AND state='available' AND instance_id IS NULL",
                (instance_id, device, guest, "attaching", now, now, volume_id),
            ).rowcount
            if not changed:
                raise CloudError("VolumeInUse", f"{volume_id} is already attached to an instance")
        self.wake()
        row = self.get(volume_id)
        assert row is not None
        return row

    def detach(
        self, user: User, volume_id: str, instance_id: str | None = None, device: str | None = None, force: bool = False
    ) -> dict[str, Any]:
        volume = self.one(user, volume_id)
        if volume["instance_id"] is None:
            raise CloudError("IncorrectState", f"Volume '{volume_id}' is in the '{volume['state']}' state.")
        if (instance_id and instance_id != volume["instance_id"]) or (device and device != volume["device"]):
            raise CloudError(
                "InvalidAttachment.NotFound",
                f"The volume {volume_id} is not attached to {instance_id or ''} at {device or 'any device'}",
            )
        if volume["is_root"]:
            state = self.clc.records.state_of(volume["instance_id"], "terminated")
            if state != "stopped":
                raise CloudError(
                    "IncorrectState",
                    f"{volume_id} is the root volume of {volume['instance_id']}, which is {state}: stop it first",
                )
        if volume["attach_state"] != "detaching" or force:
            self._set(volume_id, expect=(volume["state"],), attach_state="detaching", force_detach=int(bool(force)))
        self.wake()
        row = self.get(volume_id)
        assert row is not None
        return row

    # -- ModifyVolumeAttribute / RunInstances' BlockDeviceMappings ----------------------------------------
    def set_auto_enable_io(self, user: User, volume_id: str, value: bool) -> None:
        self.one(user, volume_id)
        self._set(volume_id, auto_enable_io=int(value))

    def set_delete_on_termination(self, volume_id: str, value: bool) -> None:
        self._set(volume_id, delete_on_termination=int(value))

    def launch_plan(self, user: User, image: Any, mappings: list[dict[str, Any]]) -> list[LaunchVolume]:
        """The volumes each new instance gets (checked before RunInstances records anything): its root
        volume when the image has a disk, and one volume per ``Ebs`` block device mapping."""
        plans: list[LaunchVolume] = []
        root_size: int | None = None
        root_keep: bool | None = None
        for mapping in mappings:
            name = mapping.get("DeviceName")
            ebs = mapping.get("Ebs")
            if ebs is None or mapping.get("NoDevice") is not None:
                continue  # ephemeral (instance store) and suppressed devices: the scratch disk is vda
            if name in ROOT_DEVICES:
                if image.path is None and not self._has_root_snapshot(image.image_id):
                    raise CloudError("InvalidBlockDeviceMapping", f"image {image.image_id} has no root disk")
                root_size = ebs.get("VolumeSize")
                root_keep = ebs.get("DeleteOnTermination")
                continue
            if not isinstance(name, str) or not DEVICE_RE.match(name):
                raise CloudError("InvalidBlockDeviceMapping", f"{name} is not a valid EBS device name")
            snapshot_id = ebs.get("SnapshotId")
            size = ebs.get("VolumeSize")
            if snapshot_id is not None:
                snapshot = self.clc.snapshots.one(user, snapshot_id, usable=True)
                size = size if size is not None else snapshot["volume_size"]
            plans.append(
                (
                    name,
                    GUEST_DEVICES[len(plans)],
                    check_size(size if size is not None else DEFAULT_SIZE_GIB, ebs.get("VolumeType") or "standard"),
                    snapshot_id,
                    None,
                    ebs.get("DeleteOnTermination", True) is not False,
                    False,
                )
            )
        root_snapshot = self.clc.ebs_images.root_of(image.image_id)
        if root_snapshot is not None:  # an EBS-backed AMI: its root volume is made from its snapshot
            size = check_size(root_size if root_size is not None else root_snapshot["size_gib"], "gp2")
            if size < root_snapshot["size_gib"]:
                raise CloudError(
                    "InvalidBlockDeviceMapping",
                    f"the root volume must be at least {root_snapshot['size_gib']} GiB (the image's snapshot)",
                )
            snapshot_id = root_snapshot["snapshot_id"]
            plans.insert(0, (ROOT_DEVICE, "vda", size, snapshot_id, None, root_keep is not False, True))
        elif image.path is not None:
            disk_gib = max(1, -(-_virtual_size(image.path) // 1024**3))
            size = check_size(root_size if root_size is not None else disk_gib, "gp2")
            if size < disk_gib:
                raise CloudError(
                    "InvalidBlockDeviceMapping", f"the root volume must be at least {disk_gib} GiB (the image's disk)"
                )
            plans.insert(0, (ROOT_DEVICE, "vda", size, None, image.path, root_keep is not False, True))
        return plans

    def record_launch(
        self, db: sqlite3.Connection, user: User, instance: dict[str, Any], plans: list[LaunchVolume]
    ) -> None:
        """Record one new instance's volumes (inside RunInstances' transaction), all ``attaching``."""
        if not plans:
            return
        check_volume_quota(db, user.name, len(plans), sum(p[2] for p in plans))
        now = time.time()
        for device, guest, size, snapshot_id, backing, delete_on_termination, is_root in plans:
            db.execute(
                "INSERT INTO volumes (volume_id, owner, zone, cluster, size_gib, snapshot_id, backing, volume_type,"
                " state, created, updated, is_root, instance_id, device, guest_device, attach_state, attach_time,"
                " delete_on_termination) VALUES (?,?,?,?,?,?,?,?,'creating',?,?,?,?,?,?,'attaching',?,?)",
                (
                    new_id("vol"),
                    user.name,
                    instance["zone"],
                    instance["cluster"],
                    size,
                    snapshot_id,
                    backing,
                    "gp2" if is_root else "standard",
                    now,
                    now,
                    int(is_root),
                    instance["instance_id"],
                    device,
                    guest,
                    now,
                    int(delete_on_termination),
                ),
            )

    def _has_root_snapshot(self, image_id: str) -> bool:
        return self.clc.ebs_images.root_of(image_id) is not None

    # -- writes -----------------------------------------------------------------------------------------------
    def _set(
        self, volume_id: str, *, expect: tuple[str, ...] | None = None, ledger: bool | None = None, **fields: Any
    ) -> bool:
        """Change a volume's row; with ``ledger`` True (made) or False (deleted), its ledger event in the
        same transaction, appended only if the row did change."""
        fields["updated"] = time.time()
        sql = f"UPDATE volumes SET {', '.join(f'{k}=?' for k in fields)} WHERE volume_id=?"
        params: list[Any] = [*fields.values(), volume_id]
        if expect is not None:
            sql += f" AND state IN ({','.join('?' * len(expect))})"
            params.extend(expect)
        with self.store.transaction() as db:
            changed = db.execute(sql, params).rowcount > 0
            if changed and ledger is not None:
                row = db.execute("SELECT * FROM volumes WHERE volume_id=?", (volume_id,)).fetchone()
                ebs_usage.append(db, row["owner"], volume_id, "volume", ledger, row["size_gib"], row["cluster"])
            return changed


def check_capacity(link: Any, size_gib: int) -> None:
    """Refuse a volume the cluster's SC has no room for now (a cluster without an SC yet records it:
    the volume waits, and the SC makes the same check when it makes the file)."""
    try:
        report = link.channel.ask(c.DESCRIBE_STORAGE, c.Empty())
    except CloudError:
        return
    room = report.free_bytes - report.reserve_bytes
    if size_gib * 1024**3 > room:
        raise CloudError(
            "InsufficientVolumeCapacity",
            f"There is not enough capacity for a {size_gib} GiB volume in {link.zone}: its storage controller"
            f" has {max(room, 0) / 1024**3:.1f} GiB free for new volumes",
        )


def check_volume_quota(db: sqlite3.Connection, user: str, count: int, gib: int) -> None:
    """EC2's VolumeLimitExceeded when ``count`` more volumes of ``gib`` GiB in all exceed the user's quotas."""
    held, held_gib = db.execute(
        f"SELECT COUNT(*), COALESCE(SUM(size_gib), 0) FROM volumes WHERE owner=? AND {_SHOWN}", (user,)
    ).fetchone()
    for resource, have, asked in (("volumes", held, count), ("volume_gib", held_gib, gib)):
        quota = quotas.limit(db, user, resource)
        if quota is not None and have + asked > quota:
            raise quotas.refuse(resource, user, quota, int(have), asked)


def _virtual_size(path: str) -> int:
    from cloudlab.sc.files import image_info

    return int(image_info(path)["virtual-size"])
