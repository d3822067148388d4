"""EBS volumes and snapshots from a notebook: listings as DataFrames and small volume handles.

``cloud.volumes()`` and ``cloud.snapshots()`` are DescribeVolumes and DescribeSnapshots as tables;
``cloud.create_volume(size)`` returns a :class:`Volume`, a plain volume id (it prints, pickles and
goes into boto3 calls as one) with ``attach``, ``detach``, ``snapshot`` and ``wait``, each one EC2
call on the cloud's ordinary boto3 client, so what a notebook does is what ``aws ec2`` would do.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from cloudlab.waiting import wait_until

VOLUME_COLUMNS = ["volume_id", "name", "size_gib", "state", "zone", "instance_id", "device", "attachment", "snapshot"]
SNAPSHOT_COLUMNS = ["snapshot_id", "name", "volume_id", "size_gib", "state", "progress", "started", "description"]


def _name(item: dict[str, Any]) -> str | None:
    return next((t["Value"] for t in item.get("Tags") or [] if t["Key"] == "Name"), None)


def volumes_frame(ec2: Any) -> pd.DataFrame:
    """One row per volume the user sees: size, state, where it is attached (device as given)."""
    rows = []
    for page in ec2.get_paginator("describe_volumes").paginate():
        for v in page["Volumes"]:
            attached = (v.get("Attachments") or [{}])[0]
            rows.append(
                {
                    "volume_id": v["VolumeId"],
                    "name": _name(v),
                    "size_gib": v["Size"],
                    "state": v["State"],
                    "zone": v["AvailabilityZone"],
                    "instance_id": attached.get("InstanceId"),
                    "device": attached.get("Device"),
                    "attachment": attached.get("State"),
                    "snapshot": v.get("SnapshotId") or None,
                }
            )
    return pd.DataFrame(rows, columns=VOLUME_COLUMNS)


def snapshots_frame(ec2: Any) -> pd.DataFrame:
    """One row per snapshot the user owns: its volume, size, state and progress."""
    rows = []
    for page in ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"]):
        for s in page["Snapshots"]:
            rows.append(
                {
                    "snapshot_id": s["SnapshotId"],
                    "name": _name(s),
                    "volume_id": s["VolumeId"],
                    "size_gib": s["VolumeSize"],
                    "state": s["State"],
                    "progress": s.get("Progress"),
                    "started": s.get("StartTime"),
                    "description": s.get("Description"),
                }
            )
    return pd.DataFrame(rows, columns=SNAPSHOT_COLUMNS)


class Volume(str):
    """A volume id that can act on its volume (``vol.attach(instance)``, ``vol.snapshot()``)."""

    ec2: Any

    def __new__(cls, volume_id: str, ec2: Any) -> Volume:
        handle = super().__new__(cls, volume_id)
        handle.ec2 = ec2
        return handle

    def __reduce__(self) -> Any:  # pickles (and copies) as the plain id
        return (str, (str(self),))

    def describe(self) -> dict[str, Any]:
        return self.ec2.describe_volumes(VolumeIds=[str(self)])["Volumes"][0]

    @property
    def state(self) -> str:
        return self.describe()["State"]

    def wait(self, state: str = "available", timeout: float = 120.0) -> Volume:
        """Wait until the volume is ``state`` (``available``, ``in-use``) with no attachment in flight."""

        def settled() -> bool:
            found = self.describe()
            moving = any(a["State"] in ("attaching", "detaching") for a in found.get("Attachments") or [])
            return found["State"] == state and not moving

        wait_until(settled, timeout, what=f"{self} to be {state}", interval_s=0.3)
        return self

    def attach(self, instance_id: str, device: str = "/dev/sdf", wait: bool = True) -> Volume:
        """Attach to ``instance_id``; the guest sees it as the next free /dev/vdX (vdb first)."""
        self.ec2.attach_volume(VolumeId=str(self), InstanceId=str(instance_id), Device=device)
        return self.wait("in-use") if wait else self

    def detach(self, force: bool = False, wait: bool = True) -> Volume:
        self.ec2.detach_volume(VolumeId=str(self), Force=force)
        return self.wait("available") if wait else self

    def snapshot(self, description: str = "", wait: bool = True, timeout: float = 600.0) -> str:
        """A snapshot of the volume (crash-consistent while attached); its id, once completed."""
        snapshot_id = self.ec2.create_snapshot(VolumeId=str(self), Description=description)["SnapshotId"]
        if wait:
            wait_until(
                lambda: (
                    self.ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["State"]
                    in ("completed", "error")
                ),
                timeout,
                what=f"snapshot {snapshot_id}",
                interval_s=0.3,
            )
        return snapshot_id

    def delete(self) -> None:
        self.ec2.delete_volume(VolumeId=str(self))


def create_volume(ec2: Any, size_gib: int = 1, *, snapshot_id: str | None = None, name: str | None = None) -> Volume:
    """A new volume in the cloud's (first) zone, ready to attach."""
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    options: dict[str, Any] = {"AvailabilityZone": zone, "Size": size_gib}
    if snapshot_id:
        options["SnapshotId"] = snapshot_id
    if name:
        options["TagSpecifications"] = [{"ResourceType": "volume", "Tags": [{"Key": "Name", "Value": name}]}]
    made = ec2.create_volume(**options)
    return Volume(made["VolumeId"], ec2).wait("available")
