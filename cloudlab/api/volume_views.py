"""Volume and snapshot records → EC2 output shapes (the storage half of :mod:`cloudlab.api.views`)."""

from __future__ import annotations

from typing import Any

from cloudlab.api.views import _prune


def attachment(row: dict[str, Any]) -> dict[str, Any]:
    """A volume's attachment (VolumeAttachment): the device as the user named it."""
    return _prune(
        {
            "VolumeId": row["volume_id"],
            "InstanceId": row["instance_id"],
            "Device": row["device"],
            "State": row["attach_state"] or "detached",
            "AttachTime": row["attach_time"],
            "DeleteOnTermination": bool(row["delete_on_termination"]),
        }
    )


def volume(row: dict[str, Any], owner_id: str | None) -> dict[str, Any]:
    return _prune(
        {
            "VolumeId": row["volume_id"],
            "Size": row["size_gib"],
            "SnapshotId": row["snapshot_id"] or "",
            "AvailabilityZone": row["zone"],
            "State": row["state"],
            "CreateTime": row["created"],
            "Attachments": [attachment(row)] if row["instance_id"] else [],
            "VolumeType": row["volume_type"],
            "Encrypted": False,
            "MultiAttachEnabled": False,
            "OwnerId": owner_id,
        }
    )


def snapshot(row: dict[str, Any], owner_id: str | None) -> dict[str, Any]:
    return _prune(
        {
            "SnapshotId": row["snapshot_id"],
            "VolumeId": row["volume_id"],
            "State": row["state"],
            "StateMessage": row["error"],
            "StartTime": row["started"],
            "CompletionTime": row["completed"],
            "Progress": f"{row['progress']}%",
            "OwnerId": owner_id,
            "Description": row["description"] or "",
            "VolumeSize": row["volume_size"],
            "FullSnapshotSizeInBytes": row["size_bytes"],
            "Encrypted": False,
            "StorageTier": "standard",
        }
    )


def instance_block_devices(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An instance's BlockDeviceMappings as DescribeInstances shows them (root volume first)."""
    return [
        {
            "DeviceName": row["device"],
            "Ebs": _prune(
                {
                    "VolumeId": row["volume_id"],
                    "Status": row["attach_state"],
                    "AttachTime": row["attach_time"],
                    "DeleteOnTermination": bool(row["delete_on_termination"]),
                }
            ),
        }
        for row in rows
        if row["attach_state"] is not None
    ]
