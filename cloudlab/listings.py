"""Listings as DataFrames: what EC2 describes and what the service's status reports, one row per thing.

The client's ``cloud.instances()``, ``images()``, ``security_groups()``, ``clusters()`` and ``nodes()``
are these functions on its boto3 client or status; they take plain boto3 clients and dicts, so a
notebook that holds only a boto3 client (or a test) can use them too.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

INSTANCE_COLUMNS = [
    "instance_id",
    "state",
    "type",
    "image",
    "node",
    "zone",
    "launched",
    "owner",
    "reason",
    "name",
    "private_ip",
    "public_ip",
    "key_name",
    "volumes",
]


def tag(item: dict[str, Any], key: str) -> str | None:
    """The value of tag ``key`` on a described resource (None when it has none)."""
    for found in item.get("Tags") or []:
        if found.get("Key") == key:
            return found.get("Value")
    return None


def described(ec2: Any, filters: list[dict[str, Any]] | None = None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(reservation, instance) for every instance DescribeInstances shows (all pages)."""
    found = []
    for page in ec2.get_paginator("describe_instances").paginate(**({"Filters": filters} if filters else {})):
        for reservation in page["Reservations"]:
            for inst in reservation["Instances"]:
                found.append((reservation, inst))
    return found


def attached_volumes(inst: dict[str, Any]) -> str:
    """The instance's EBS volumes as ``DEVICE=vol-id`` (root first, as DescribeInstances lists them), so a
    table row says what storage the instance holds; a volume still attaching or detaching says so."""
    shown = []
    for mapping in inst.get("BlockDeviceMappings") or []:
        ebs = mapping.get("Ebs") or {}
        if not ebs.get("VolumeId"):
            continue
        status = ebs.get("Status")
        suffix = f" ({status})" if status and status != "attached" else ""
        shown.append(f"{mapping.get('DeviceName')}={ebs['VolumeId']}{suffix}")
    return ", ".join(shown)


def instances_frame(ec2: Any, *, include_terminated: bool = True, name: str | None = None) -> pd.DataFrame:
    """Every visible instance, one row each (``name``: only those with that ``Name`` tag)."""
    rows = []
    filters = [{"Name": "tag:Name", "Values": [name]}] if name else None
    for reservation, inst in described(ec2, filters):
        if not include_terminated and inst["State"]["Name"] == "terminated":
            continue
        rows.append(
            {
                "instance_id": inst["InstanceId"],
                "state": inst["State"]["Name"],
                "type": inst["InstanceType"],
                "image": inst["ImageId"],
                "node": inst.get("Placement", {}).get("HostId"),
                "zone": inst.get("Placement", {}).get("AvailabilityZone"),
                "launched": inst.get("LaunchTime"),
                "owner": reservation.get("OwnerId"),
                "reason": (inst.get("StateReason") or {}).get("Message", ""),
                "name": tag(inst, "Name"),
                "private_ip": inst.get("PrivateIpAddress"),
                "public_ip": inst.get("PublicIpAddress"),
                "key_name": inst.get("KeyName"),
                "volumes": attached_volumes(inst),
            }
        )
    return pd.DataFrame(rows, columns=INSTANCE_COLUMNS)


def images_frame(ec2: Any) -> pd.DataFrame:
    """Every image the user sees: id, name, type (machine, kernel, ramdisk), state, kernel and ramdisk."""
    rows = [
        {
            "image_id": i["ImageId"],
            "name": i.get("Name"),
            "type": i.get("ImageType"),
            "state": i["State"],
            "kernel": i.get("KernelId"),
            "ramdisk": i.get("RamdiskId"),
        }
        for i in ec2.describe_images()["Images"]
    ]
    return pd.DataFrame(rows, columns=["image_id", "name", "type", "state", "kernel", "ramdisk"])


def security_groups_frame(ec2: Any) -> pd.DataFrame:
    rows = [
        {"group_id": g["GroupId"], "name": g["GroupName"], "description": g.get("Description")}
        for g in ec2.describe_security_groups()["SecurityGroups"]
    ]
    return pd.DataFrame(rows, columns=["group_id", "name", "description"])


def clusters_frame(status: dict[str, Any]) -> pd.DataFrame:
    """One row per cluster of the service's status: name, availability zone and its state (``available`` or
    ``unavailable``, as DescribeAvailabilityZones says), scheduler, network flavour and its health, NAT, nodes
    (and how many are up, powered off by POWERSAVE, or dead)."""
    columns = ["cluster", "zone", "state", "scheduler", "network", "network_healthy", "subnet", "nat", "nodes",
               "nodes_up", "nodes_powered_off", "nodes_dead"]  # fmt: skip
    rows = []
    for c in status["clusters"]:
        states = [n.get("state") or ("up" if n["alive"] else "dead") for n in c["nodes"]]
        network = c.get("network_detail") or {}
        rows.append(
            {
                "cluster": c["name"],
                "zone": c.get("zone"),
                "state": c.get("state", "available"),
                "scheduler": c.get("scheduler"),
                "network": c.get("network"),
                "network_healthy": network.get("healthy") if network else None,
                "subnet": network.get("subnet") if network else None,
                "nat": c.get("nat", False),
                "nodes": len(c["nodes"]),
                "nodes_up": states.count("up"),
                "nodes_powered_off": states.count("powered-off"),
                "nodes_dead": states.count("dead"),
            }
        )
    return pd.DataFrame(rows, columns=columns)


def nodes_frame(status: dict[str, Any]) -> pd.DataFrame:
    """One row per node of the service's status: its cluster and zone, its state (``up``, ``powered-off``,
    ``waking`` or ``dead``), liveness, free/total resources and instances."""
    rows = []
    for cluster in status["clusters"]:
        for node in cluster["nodes"]:
            rows.append(
                {
                    "node": node["name"],
                    "cluster": cluster["name"],
                    "zone": cluster.get("zone"),
                    "state": node.get("state") or ("up" if node["alive"] else "dead"),
                    "alive": node["alive"],
                    "vcpus_free": node["vcpus_free"],
                    "vcpus_total": node["vcpus_total"],
                    "memory_mb_free": node["memory_mb_free"],
                    "memory_mb_total": node["memory_mb_total"],
                    "instances": node["instances"],
                    "accel": node.get("accel"),
                }
            )
    return pd.DataFrame(rows)
