"""The exports reconciled with the records, and a full SC refusing CreateVolume, on the shared simulated cloud.

The storage controller and its ``qemu-nbd`` exports are real here (only the nodes' domains do not run):
an export that no instance needs (as a crash leaves one) is closed, an attached volume whose export
vanished is served again on its old port, and a volume larger than the SC's free space is refused at
once with EC2's ``InsufficientVolumeCapacity``, recording nothing. (With real guests writing through
the kills: ``test_volume_faults.py``.)
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudlab import processes
from cloudlab.sc.exports import Exports
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud, default_image, error_code

RECONCILE_S = 60.0  # far more than the volume worker's few seconds: a busy machine must not fail it


def zone_of(ec2: Any) -> str:
    return ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]


def sc_folder(cloud: RunningCloud) -> Path:
    return cloud.layout.root / "sc" / "cluster1"


def export_record(cloud: RunningCloud, volume_id: str) -> dict[str, Any] | None:
    try:
        return json.loads((sc_folder(cloud) / "exports" / f"{volume_id}.json").read_text())
    except (OSError, ValueError):
        return None


def served(cloud: RunningCloud, volume_id: str) -> list[int]:
    """The qemu-nbd processes of this cloud serving ``volume_id``."""
    mine = set(processes.of_state(cloud.layout, (b"qemu-nbd",)))
    return [pid for pid, args in processes.command_lines() if pid in mine and volume_id.encode() in b" ".join(args)]


def new_volume(ec2: Any) -> str:
    volume_id = ec2.create_volume(Size=1, AvailabilityZone=zone_of(ec2))["VolumeId"]
    wait_until(
        lambda: ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"] == "available",
        30,
        what="the volume to be available",
    )
    return volume_id


def test_an_export_no_instance_needs_is_closed(sim_cloud: RunningCloud, ec2: Any) -> None:
    volume_id = new_volume(ec2)
    # as a crash leaves one: the volume served although it is attached to nothing
    host = sim_cloud.status()["clusters"][0]["cc_url"].split("//", 1)[1].rsplit(":", 1)[0]
    stray = Exports(sc_folder(sim_cloud) / "exports", host).export(
        volume_id, sc_folder(sim_cloud) / "volumes" / f"{volume_id}.qcow2"
    )
    assert stray.name == volume_id and len(served(sim_cloud, volume_id)) == 1
    # the worker stops the server first and then removes its record (so a crash between leaves it findable)
    wait_until(
        lambda: served(sim_cloud, volume_id) == [] and export_record(sim_cloud, volume_id) is None,
        RECONCILE_S,
        what="the stray export closed and its record removed",
    )
    assert ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"] == "available"


def test_an_attached_volume_whose_export_vanished_is_served_again(sim_cloud: RunningCloud, ec2: Any) -> None:
    volume_id = new_volume(ec2)
    instance_id = ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    wait_until(
        lambda: (
            ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"]["Name"]
            == "running"
        ),
        30,
        what="the instance running",
    )
    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    wait_until(
        lambda: (
            [a["State"] for a in ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["Attachments"]]
            == ["attached"]
        ),
        30,
        what="the volume attached",
    )
    old = export_record(sim_cloud, volume_id)
    assert old is not None and served(sim_cloud, volume_id) == [old["pid"]]
    os.kill(old["pid"], signal.SIGKILL)

    def restored() -> dict[str, Any] | None:
        now = export_record(sim_cloud, volume_id)
        return now if now and now["pid"] != old["pid"] and served(sim_cloud, volume_id) == [now["pid"]] else None

    again = wait_until(restored, RECONCILE_S, what="the export served again")
    assert (again["host"], again["port"]) == (old["host"], old["port"])  # where the node's disk points
    ec2.terminate_instances(InstanceIds=[instance_id])
    wait_until(lambda: served(sim_cloud, volume_id) == [], RECONCILE_S, what="the export closed at termination")


def test_a_volume_larger_than_the_free_space_is_refused_and_nothing_recorded(sim_cloud: RunningCloud, ec2: Any) -> None:
    storage = sim_cloud.status()["clusters"][0]["storage"]
    too_large = storage["free_bytes"] // 1024**3 + 1  # a GiB more than the SC's disk has free
    volume_type = "standard" if too_large <= 1024 else "gp2"
    if too_large > 16384:
        pytest.skip(f"the SC's disk has more free space ({too_large} GiB) than an EBS volume may be large")
    before = {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]}
    with pytest.raises(ClientError) as refused:
        ec2.create_volume(Size=too_large, VolumeType=volume_type, AvailabilityZone=zone_of(ec2))
    assert error_code(refused) == "InsufficientVolumeCapacity"
    message = refused.value.response["Error"]["Message"]
    assert f"{too_large} GiB volume" in message and "GiB free" in message
    assert {v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]} == before  # nothing recorded
    assert new_volume(ec2) not in before  # one that fits is made as ever
