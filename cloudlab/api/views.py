"""Domain records → EC2 output shapes (botocore member names), for the actions to return.

This is the only place that knows how a cloudlab record looks to an EC2 client. Members with no
value are left out rather than sent empty, as EC2 does.
"""

from __future__ import annotations

import base64
from typing import Any

from cloudlab.clc.states import STATE_CODES


def state(name: str) -> dict[str, Any]:
    return {"Code": STATE_CODES[name], "Name": name}


def _reason(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    code, _, message = text.partition(": ")
    return {"Code": code, "Message": message or code}


def _prune(value: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in value.items() if v is not None}


def instance(row: dict[str, Any], show_node: bool = True) -> dict[str, Any]:
    """One Instance. ``Placement.HostId`` names the node the instance runs on."""
    reason = row.get("state_reason")
    return _prune(
        {
            "InstanceId": row["instance_id"],
            "ImageId": row["image_id"],
            "State": state(row["state"]),
            "PrivateDnsName": "",
            "PublicDnsName": "",
            "StateTransitionReason": reason or "",
            "KeyName": row.get("key_name"),
            "AmiLaunchIndex": row.get("launch_index", 0),
            "InstanceType": row["instance_type"],
            "LaunchTime": row["launch_time"],
            "Placement": _prune(
                {
                    "AvailabilityZone": row["zone"],
                    "Tenancy": "default",
                    "HostId": row.get("node") if show_node else None,
                }
            ),
            "KernelId": row.get("kernel_id"),
            "RamdiskId": row.get("ramdisk_id"),
            "Monitoring": {"State": "disabled"},
            "Architecture": "x86_64",
            "RootDeviceType": "instance-store",
            "VirtualizationType": "hvm",
            "StateReason": _reason(reason) if row["state"] != "running" else None,
            "CpuOptions": {"CoreCount": row["vcpus"], "ThreadsPerCore": 1},
        }
    )


def reservation(
    reservation_id: str, owner_id: str, rows: list[dict[str, Any]], requester: str | None = None
) -> dict[str, Any]:
    return _prune(
        {
            "ReservationId": reservation_id,
            "OwnerId": owner_id,
            "RequesterId": requester,
            "Groups": [],
            "Instances": [instance(r) for r in rows],
        }
    )


def image(record: Any, owner_id: str) -> dict[str, Any]:
    from cloudlab.api.protocol import format_timestamp

    return _prune(
        {
            "ImageId": record.image_id,
            "ImageLocation": f"cloudlab/{record.name}",
            "State": record.state,
            "OwnerId": owner_id,
            "Public": bool(record.is_public),
            "Architecture": "x86_64",
            "ImageType": record.kind,
            "KernelId": record.kernel_id,
            "RamdiskId": record.ramdisk_id,
            "Name": record.name,
            "Description": record.description or None,
            # an image with a disk boots from a copy-on-write root volume of it (vda)
            "RootDeviceType": "ebs" if record.path else "instance-store",
            "RootDeviceName": "/dev/vda" if record.path else None,
            "VirtualizationType": "hvm",
            "CreationDate": format_timestamp(record.created),
        }
    )


def console_output(instance_id: str, text: str, when: float) -> dict[str, Any]:
    """EC2 returns console output base64-encoded (boto3 decodes it for the caller)."""
    return {
        "InstanceId": instance_id,
        "Output": base64.b64encode(text.encode("utf-8", "replace")).decode(),
        "Timestamp": when,
    }
