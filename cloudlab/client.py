"""The Python client for notebooks and scripts: plain boto3 underneath, DataFrames on top.

``cloud = cloudlab.client.connect()`` finds the running cloud through its state folder (so a
restarted kernel reconnects to the same cloud), and ``cloud.ec2`` is an unmodified boto3 EC2
client pointed at it. The helpers here only wrap what any boto3 user would write.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import boto3
import pandas as pd
from botocore.config import Config

from cloudlab import control
from cloudlab.paths import StateLayout, find_state_dir

BOOT_MARKER = "cloudlab-boot:"


class CloudNotRunning(RuntimeError):
    """No cloud answers in the state folder (the message says how to start one)."""


def _boot_uptime(console: str) -> float | None:
    for line in console.splitlines():
        if line.startswith(BOOT_MARKER):
            for word in line.split():
                if word.startswith("uptime="):
                    try:
                        return float(word.split("=", 1)[1])
                    except ValueError:
                        return None
    return None


@dataclass
class Cloud:
    """A connection to a running cloud."""

    layout: StateLayout
    endpoint_url: str
    region: str
    user: str
    ec2: Any
    access_key: str = ""
    secret_key: str = ""

    def boto3_kwargs(self) -> dict[str, str]:
        """What ``boto3.client("ec2", **kwargs)`` needs to talk to this cloud."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        }

    # -- listings ---------------------------------------------------------------------------------------
    def instances(self, *, include_terminated: bool = True) -> pd.DataFrame:
        """Every visible instance, one row each."""
        rows = []
        paginator = self.ec2.get_paginator("describe_instances")
        for page in paginator.paginate():
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
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
                        }
                    )
        columns = ["instance_id", "state", "type", "image", "node", "zone", "launched", "owner", "reason"]
        return pd.DataFrame(rows, columns=columns)

    def images(self) -> pd.DataFrame:
        rows = [
            {
                "image_id": i["ImageId"],
                "name": i.get("Name"),
                "type": i.get("ImageType"),
                "state": i["State"],
                "kernel": i.get("KernelId"),
                "ramdisk": i.get("RamdiskId"),
            }
            for i in self.ec2.describe_images()["Images"]
        ]
        return pd.DataFrame(rows, columns=["image_id", "name", "type", "state", "kernel", "ramdisk"])

    def status(self) -> dict[str, Any]:
        return control.get_json(self.endpoint_url.rstrip("/") + "/_cloudlab/status")

    def nodes(self) -> pd.DataFrame:
        rows = []
        for cluster in self.status()["clusters"]:
            for node in cluster["nodes"]:
                rows.append(
                    {
                        "node": node["name"],
                        "cluster": cluster["name"],
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

    # -- actions ----------------------------------------------------------------------------------------
    def default_image(self) -> str:
        images = self.ec2.describe_images(Filters=[{"Name": "name", "Values": ["cloudlab-default"]}])["Images"]
        if not images:
            raise RuntimeError("the cloud has no default image: run 'cloudlab image build'")
        return images[0]["ImageId"]

    def run(
        self, count: int = 1, *, image_id: str | None = None, instance_type: str = "t2.micro", **kwargs: Any
    ) -> list[str]:
        """Start ``count`` instances; returns their ids."""
        reservation = self.ec2.run_instances(
            ImageId=image_id or self.default_image(),
            MinCount=count,
            MaxCount=count,
            InstanceType=instance_type,
            **kwargs,
        )
        return [i["InstanceId"] for i in reservation["Instances"]]

    def console(self, instance_id: str) -> str:
        return self.ec2.get_console_output(InstanceId=instance_id).get("Output") or ""

    def states(self, instance_ids: Iterable[str]) -> dict[str, str]:
        ids = list(instance_ids)
        found = self.ec2.describe_instances(InstanceIds=ids)
        return {i["InstanceId"]: i["State"]["Name"] for r in found["Reservations"] for i in r["Instances"]}

    def wait_booted(
        self, instance_ids: Iterable[str], timeout: float = 120.0, poll: float = 0.2, progress: bool = False
    ) -> pd.DataFrame:
        """Wait until each instance is running and its console shows the boot marker.

        Returns one row per instance with the seconds from this call to ``running`` and to the
        marker, and the guest's own uptime at the marker. Raises TimeoutError naming the laggards.
        """
        ids = list(instance_ids)
        started = time.monotonic()
        running: dict[str, float] = {}
        booted: dict[str, tuple[float, float | None]] = {}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ids), desc="booting", unit="instance")
        while len(booted) < len(ids):
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise TimeoutError(f"not booted within {timeout:.0f} s: {sorted(set(ids) - set(booted))}")
            states = self.states([i for i in ids if i not in running]) if len(running) < len(ids) else {}
            for instance_id, state in states.items():
                if state == "running":
                    running.setdefault(instance_id, elapsed)
                elif state in ("terminated", "shutting-down"):
                    raise RuntimeError(f"{instance_id} is {state} before it booted")
            for instance_id in [i for i in running if i not in booted]:
                console = self.console(instance_id)
                if BOOT_MARKER in console:
                    booted[instance_id] = (time.monotonic() - started, _boot_uptime(console))
                    if bar is not None:
                        bar.update(1)
            time.sleep(poll)
        if bar is not None:
            bar.close()
        return pd.DataFrame(
            [
                {
                    "instance_id": i,
                    "running_s": round(running[i], 2),
                    "boot_s": round(booted[i][0], 2),
                    "guest_uptime_s": booted[i][1],
                }
                for i in ids
            ]
        )

    def wait_state(self, instance_ids: Iterable[str], state: str, timeout: float = 60.0, poll: float = 0.2) -> None:
        ids = list(instance_ids)
        deadline = time.monotonic() + timeout
        while True:
            states = self.states(ids)
            if all(s == state for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"not {state} within {timeout:.0f} s: {states}")
            time.sleep(poll)

    def terminate(self, instance_ids: Iterable[str]) -> None:
        self.ec2.terminate_instances(InstanceIds=list(instance_ids))


def connect(state: str | None = None, user: str = "admin") -> Cloud:
    """Connect to the running cloud of ``state`` (default: ``$CLOUDLAB_STATE`` or the nearest ``.cloudlab``)."""
    layout = StateLayout(find_state_dir(state))
    try:
        info, creds = control.connection(layout, user)
    except control.ControlError as exc:
        raise CloudNotRunning(str(exc)) from None
    client = boto3.client(
        "ec2",
        endpoint_url=info["url"],
        region_name=info["region"],
        aws_access_key_id=creds["access_key"],
        aws_secret_access_key=creds["secret_key"],
        config=Config(retries={"max_attempts": 2, "mode": "standard"}),
    )
    return Cloud(layout, info["url"], info["region"], user, client, creds["access_key"], creds["secret_key"])
