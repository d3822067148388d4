"""The Python client for notebooks and scripts: plain boto3 underneath, DataFrames and handles on top.

``cloud = cloudlab.connect()`` finds the running cloud through its state folder (so a restarted
kernel reconnects to the same cloud; ``start=True`` starts one first), and ``cloud.ec2`` is an
unmodified boto3 EC2 client pointed at it. The helpers here only wrap what any boto3 user would write:

- listings as DataFrames: ``instances()``, ``images()``, ``nodes()``, ``usage()``;
- ``run(...)`` returns :class:`Instance` handles (strings equal to the instance ids, so they go
  wherever ids go) with ``wait()``, ``console()``, ``ssh(cmd)``, ``reboot()``, ``terminate()``;
- ``instance(name_or_id)`` and ``get_or_run(name, ...)`` find instances by their ``Name`` tag, so a
  notebook that runs again after a kernel restart picks up its instances instead of launching more;
- waits have timeouts and progress bars (tqdm.auto), and errors say what to do in one line.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pandas as pd
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cloudlab import control
from cloudlab.guest import BOOT_MARKER
from cloudlab.paths import StateLayout, find_state_dir

#: How an instance's launch progresses, as the launcher's progress bars count it.
PHASES = ("pending", "running", "booted")


class CloudNotRunning(RuntimeError):
    """No cloud answers in the state folder (the message says how to start one)."""


class InstanceNotFound(LookupError):
    """No (non-terminated) instance has that id or ``Name`` tag."""

    def __str__(self) -> str:  # LookupError quotes its argument like a KeyError would not; keep it plain
        return str(self.args[0]) if self.args else ""


def error_message(exc: BaseException) -> str:
    """One line for a person: the EC2 error code and message, or what to do when the cloud is unreachable."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "") or "request"
        return f"{operation} refused: {error.get('Code', '?')}: {error.get('Message', '')}".strip()
    if isinstance(exc, BotoCoreError):
        return f"cannot reach the cloud ({exc}); is it running? start it with: cloudlab up"
    if isinstance(exc, (ConnectionError, OSError)) and not isinstance(exc, FileNotFoundError):
        return f"cannot reach the cloud ({exc}); is it running? start it with: cloudlab up"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (CloudNotRunning, InstanceNotFound, ValueError, TimeoutError, RuntimeError)):
        return text
    return f"{type(exc).__name__}: {text}"


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


def _tag(item: dict[str, Any], key: str) -> str | None:
    for tag in item.get("Tags") or []:
        if tag.get("Key") == key:
            return tag.get("Value")
    return None


class Instance(str):
    """A handle on one instance. It *is* its id (a ``str``), so it goes wherever an id goes.

    The attributes (``name``, ``state``, ``private_ip``, ``public_ip``, ``node``, ...) are as of the
    last :meth:`refresh` (done on creation and by every wait).
    """

    cloud: Cloud
    info: dict[str, Any]

    def __new__(cls, instance_id: str, cloud: Cloud, info: dict[str, Any] | None = None) -> Instance:
        self = super().__new__(cls, instance_id)
        self.cloud = cloud
        self.info = info or {}
        self._ssh_ready = False
        return self

    # -- what it is -------------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return str.__str__(self)

    @property
    def name(self) -> str | None:
        return _tag(self.info, "Name")

    @property
    def state(self) -> str | None:
        return (self.info.get("State") or {}).get("Name")

    @property
    def private_ip(self) -> str | None:
        return self.info.get("PrivateIpAddress")

    @property
    def public_ip(self) -> str | None:
        return self.info.get("PublicIpAddress")

    @property
    def node(self) -> str | None:
        return (self.info.get("Placement") or {}).get("HostId")

    @property
    def instance_type(self) -> str | None:
        return self.info.get("InstanceType")

    @property
    def key_name(self) -> str | None:
        return self.info.get("KeyName")

    def __repr__(self) -> str:
        parts = [repr(self.id)]
        if self.name:
            parts.append(f"name={self.name!r}")
        if self.state:
            parts.append(f"state={self.state!r}")
        if self.private_ip:
            parts.append(f"private_ip={self.private_ip!r}")
        return f"Instance({', '.join(parts)})"

    def __reduce__(self) -> Any:  # pickles (and copies) as the plain id
        return (str, (self.id,))

    # -- actions ----------------------------------------------------------------------------------------
    def refresh(self) -> Instance:
        """Describe the instance again; returns itself."""
        found = self.cloud.ec2.describe_instances(InstanceIds=[self.id])["Reservations"]
        if not found or not found[0]["Instances"]:
            raise InstanceNotFound(f"no instance {self.id}")
        self.info = found[0]["Instances"][0] | {"OwnerId": found[0].get("OwnerId")}
        return self

    def wait(self, timeout: float = 180.0, progress: bool = True, until: str = "booted") -> Instance:
        """Wait until the instance is ``running`` (``until="running"``) or its console shows the boot
        marker (the default); raises TimeoutError, or RuntimeError if it ends before."""
        self.cloud.wait([self], timeout=timeout, progress=progress, until=until)
        return self.refresh()

    def console(self) -> str:
        return self.cloud.console(self.id)

    def remote(self, public: bool = False) -> Any:
        """A ``cloudlab.bench.remote.SshRemote`` to the instance from the cluster's outside namespace."""
        from cloudlab.bench.workloads import WorkloadError, instance_remote

        try:
            return instance_remote(self.cloud, self.id, public=public)
        except WorkloadError as exc:
            raise RuntimeError(str(exc)) from None

    def ssh(self, command: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on the instance over SSH (as ``cloudlab ssh ID -- command`` would), waiting up to
        ``timeout`` for SSH to answer the first time. ``check=True`` raises on a non-zero exit."""
        remote = self.remote()
        if not self._ssh_ready:
            remote.wait_ready(timeout=timeout)
            self._ssh_ready = True
        done = remote.run(command, timeout=timeout)
        if check and done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
        return done

    def ssh_command(self) -> str:
        """The shell command that opens an interactive SSH session to the instance."""
        return self.cloud.ssh_command(self.id)

    def terminate(self, wait: bool = False, timeout: float = 60.0) -> Instance:
        self.cloud.terminate([self.id])
        if wait:
            self.cloud.wait_state([self.id], "terminated", timeout=timeout)
        return self.refresh()

    def reboot(self) -> Instance:
        self.cloud.reboot([self.id])
        self._ssh_ready = False
        return self.refresh()


@dataclass
class Cloud:
    """A connection to a running cloud."""

    layout: StateLayout
    endpoint_url: str
    region: str
    user: str
    ec2: Any = field(repr=False)
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)  # never shown: a notebook's output is often shared

    def boto3_kwargs(self) -> dict[str, str]:
        """What ``boto3.client("ec2", **kwargs)`` needs to talk to this cloud."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        }

    # -- Walrus (S3): see cloudlab.buckets -------------------------------------------------------------
    @property
    def s3(self) -> Any:
        """A boto3 S3 client for this cloud's object store, as this user (same keys as ``ec2``)."""
        from cloudlab.buckets import s3_client

        return s3_client(self)

    def buckets(self) -> pd.DataFrame:
        """The buckets this user sees (all of them for the admin)."""
        from cloudlab.buckets import buckets_frame

        return buckets_frame(self.s3)

    def objects(self, bucket: str, prefix: str = "") -> pd.DataFrame:
        """The objects of ``bucket`` under ``prefix``: key, size, modified, etag."""
        from cloudlab.buckets import objects_frame

        return objects_frame(self.s3, bucket, prefix)

    # -- EBS volumes and snapshots: see cloudlab.storage ---------------------------------------------------
    def volumes(self) -> pd.DataFrame:
        from cloudlab.storage import volumes_frame

        return volumes_frame(self.ec2)

    def snapshots(self) -> pd.DataFrame:
        from cloudlab.storage import snapshots_frame

        return snapshots_frame(self.ec2)

    def create_volume(self, size_gib: int = 1, **options: Any) -> Any:
        """A new volume (a :class:`cloudlab.storage.Volume` handle), available once this returns."""
        from cloudlab.storage import create_volume

        return create_volume(self.ec2, size_gib, **options)

    # -- listings ---------------------------------------------------------------------------------------
    def _described(self, filters: list[dict[str, Any]] | None = None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        found = []
        paginator = self.ec2.get_paginator("describe_instances")
        for page in paginator.paginate(**({"Filters": filters} if filters else {})):
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    found.append((reservation, inst))
        return found

    def instances(self, *, include_terminated: bool = True, name: str | None = None) -> pd.DataFrame:
        """Every visible instance, one row each (``name``: only those with that ``Name`` tag)."""
        rows = []
        filters = [{"Name": "tag:Name", "Values": [name]}] if name else None
        for reservation, inst in self._described(filters):
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
                    "name": _tag(inst, "Name"),
                    "private_ip": inst.get("PrivateIpAddress"),
                    "public_ip": inst.get("PublicIpAddress"),
                    "key_name": inst.get("KeyName"),
                }
            )
        columns = [
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
        ]
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

    def instance_types(self) -> list[str]:
        """The instance types this cloud offers, smallest first."""
        types = self.ec2.describe_instance_types()["InstanceTypes"]
        types.sort(key=lambda t: (t["VCpuInfo"]["DefaultVCpus"], t["MemoryInfo"]["SizeInMiB"], t["InstanceType"]))
        return [t["InstanceType"] for t in types]

    def key_pairs(self) -> list[str]:
        return sorted(k["KeyName"] for k in self.ec2.describe_key_pairs()["KeyPairs"])

    def security_groups(self) -> pd.DataFrame:
        rows = [
            {"group_id": g["GroupId"], "name": g["GroupName"], "description": g.get("Description")}
            for g in self.ec2.describe_security_groups()["SecurityGroups"]
        ]
        return pd.DataFrame(rows, columns=["group_id", "name", "description"])

    def status(self) -> dict[str, Any]:
        return control.service_status(self.layout)  # signed with the admin's key: the status is the admin's

    def clusters(self) -> pd.DataFrame:
        """One row per cluster: its name, availability zone and network flavour (none, vde, direct)."""
        rows = [
            {"cluster": c["name"], "zone": c.get("zone"), "network": c.get("network"), "nodes": len(c["nodes"])}
            for c in self.status()["clusters"]
        ]
        return pd.DataFrame(rows, columns=["cluster", "zone", "network", "nodes"])

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

    def usage(self, *, user: str | None = None, since: Any = None, until: Any = None, by: str = "user") -> pd.DataFrame:
        """Instance-hours, vCPU-hours, GB-hours and network bytes (``cloudlab.usage.fetch_usage``)."""
        try:
            from cloudlab.usage import fetch_usage
        except ImportError as exc:
            raise RuntimeError(f"usage accounting is not available in this cloudlab ({exc})") from None
        return fetch_usage(self.boto3_kwargs(), user=user, since=since, until=until, by=by)

    # -- handles ----------------------------------------------------------------------------------------
    def handles(self, instance_ids: Iterable[str]) -> list[Instance]:
        """Handles for ``instance_ids``, described in one call (in the order given)."""
        ids = [str.__str__(i) if isinstance(i, Instance) else i for i in instance_ids]
        if not ids:
            return []
        found = self.ec2.describe_instances(InstanceIds=ids)["Reservations"]
        info = {i["InstanceId"]: i | {"OwnerId": r.get("OwnerId")} for r in found for i in r["Instances"]}
        return [Instance(i, self, info.get(i)) for i in ids]

    def find(self, name: str, include_terminated: bool = False) -> list[Instance]:
        """Instances whose ``Name`` tag is ``name`` (not terminated or shutting down, unless asked), oldest first."""
        found = [
            (inst.get("LaunchTime"), Instance(inst["InstanceId"], self, inst | {"OwnerId": r.get("OwnerId")}))
            for r, inst in self._described([{"Name": "tag:Name", "Values": [name]}])
            if include_terminated or inst["State"]["Name"] not in ("terminated", "shutting-down")
        ]
        found.sort(key=lambda pair: (str(pair[0]), pair[1].id))
        return [handle for _, handle in found]

    def instance(self, name_or_id: str) -> Instance:
        """The instance with this id, or the one live instance with this ``Name`` tag."""
        if name_or_id.startswith("i-"):
            try:
                return self.handles([name_or_id])[0].refresh()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if "NotFound" not in code and "Malformed" not in code:
                    raise
        matches = self.find(name_or_id)
        if not matches:
            raise InstanceNotFound(f"no live instance has id or Name {name_or_id!r} (cloud.instances() lists them)")
        if len(matches) > 1:
            raise InstanceNotFound(
                f"{len(matches)} live instances are called {name_or_id!r} ({', '.join(matches)}): use cloud.find(name)"
            )
        return matches[0]

    # -- actions ----------------------------------------------------------------------------------------
    def default_image(self) -> str:
        images = self.ec2.describe_images(Filters=[{"Name": "name", "Values": ["cloudlab-default"]}])["Images"]
        if not images:
            raise RuntimeError("the cloud has no default image: run 'cloudlab image build'")
        return images[0]["ImageId"]

    def run(
        self,
        count: int = 1,
        name: str | None = None,
        *,
        image_id: str | None = None,
        instance_type: str = "t2.micro",
        key_name: str | None = None,
        security_groups: Iterable[str] | str | None = None,
        user_data: str | None = None,
        zone: str | None = None,
        wait: bool | str = False,
        timeout: float = 180.0,
        progress: bool = True,
        **kwargs: Any,
    ) -> list[Instance]:
        """Start ``count`` instances (tagged ``Name=name`` if given); returns their handles.

        ``security_groups`` are names or ``sg-`` ids; ``wait=True`` (or ``"booted"``) waits for the boot
        marker, ``wait="running"`` for the running state. Other keywords go to boto3's ``run_instances``.
        """
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a whole number of at least 1, not {count!r}")
        request: dict[str, Any] = {
            "ImageId": image_id or self.default_image(),
            "MinCount": count,
            "MaxCount": count,
            "InstanceType": instance_type,
        }
        if key_name:
            request["KeyName"] = key_name
        if security_groups:
            groups = [security_groups] if isinstance(security_groups, str) else list(security_groups)
            ids = [g for g in groups if g.startswith("sg-")]
            names = [g for g in groups if not g.startswith("sg-")]
            if ids:
                request["SecurityGroupIds"] = ids
            if names:
                request["SecurityGroups"] = names
        if user_data is not None:
            request["UserData"] = user_data
        if zone:
            request["Placement"] = {"AvailabilityZone": zone}
        if name:
            request["TagSpecifications"] = [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}]
        request.update(kwargs)
        reservation = self.ec2.run_instances(**request)
        owner = reservation.get("OwnerId")
        handles = [Instance(i["InstanceId"], self, i | {"OwnerId": owner}) for i in reservation["Instances"]]
        if wait:
            self.wait(handles, timeout=timeout, progress=progress, until="running" if wait == "running" else "booted")
            for handle in handles:
                handle.refresh()
        return handles

    def get_or_run(self, name: str, count: int = 1, **run_kwargs: Any) -> list[Instance]:
        """The live instances called ``name``, launching as many more as make ``count`` (a notebook run
        again after a kernel restart finds its instances instead of starting new ones)."""
        wait = run_kwargs.pop("wait", False)
        timeout = run_kwargs.get("timeout", 180.0)
        progress = run_kwargs.get("progress", True)
        have = self.find(name)
        if len(have) < count:
            have += self.run(count - len(have), name, **run_kwargs)
        if wait:
            self.wait(have, timeout=timeout, progress=progress, until="running" if wait == "running" else "booted")
            for handle in have:
                handle.refresh()
        return have

    def console(self, instance_id: str) -> str:
        return self.ec2.get_console_output(InstanceId=instance_id).get("Output") or ""

    def ssh_command(self, instance_id: str) -> str:
        """The command line that opens an SSH session to ``instance_id`` (from the cluster's outside namespace)."""
        return f"cloudlab --state {self.layout.root} ssh {instance_id}"

    def states(self, instance_ids: Iterable[str]) -> dict[str, str]:
        ids = list(instance_ids)
        found = self.ec2.describe_instances(InstanceIds=ids)
        return {i["InstanceId"]: i["State"]["Name"] for r in found["Reservations"] for i in r["Instances"]}

    def watch(
        self,
        instance_ids: Iterable[str],
        until: str = "booted",
        timeout: float = 180.0,
        poll: float = 0.5,
        on_change: Callable[[str, str, float], None] | None = None,
        stop: threading.Event | None = None,
    ) -> dict[str, dict[str, float]]:
        """Follow instances until each is ``running`` or ``booted`` (console shows the boot marker).

        ``on_change(instance_id, phase, seconds)`` is called as each one reaches a phase of
        :data:`PHASES` (or ``"failed"``, when it ends before). Returns per instance the seconds from this
        call to each phase reached. Raises TimeoutError naming the laggards, RuntimeError if one ends.
        """
        if until not in ("running", "booted"):
            raise ValueError(f"until must be 'running' or 'booted', not {until!r}")
        ids = [str.__str__(i) for i in instance_ids]
        started = time.monotonic()
        reached: dict[str, dict[str, float]] = {i: {} for i in ids}

        def note(instance_id: str, phase: str) -> None:
            if phase not in reached[instance_id]:
                seconds = round(time.monotonic() - started, 2)
                reached[instance_id][phase] = seconds
                if on_change is not None:
                    on_change(instance_id, phase, seconds)

        def done(instance_id: str) -> bool:
            return until in reached[instance_id]

        while not all(done(i) for i in ids):
            if stop is not None and stop.is_set():
                break
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"not {until} within {timeout:.0f} s: {sorted(i for i in ids if not done(i))}")
            waiting = [i for i in ids if "running" not in reached[i]]
            for instance_id, state in (self.states(waiting) if waiting else {}).items():
                if state == "pending":
                    note(instance_id, "pending")
                elif state == "running":
                    note(instance_id, "pending")
                    note(instance_id, "running")
                elif state in ("terminated", "shutting-down", "stopped", "stopping"):
                    note(instance_id, "failed")
                    raise RuntimeError(f"{instance_id} is {state} before it was {until}")
            if until == "booted":
                for instance_id in [i for i in ids if "running" in reached[i] and not done(i)]:
                    if BOOT_MARKER in self.console(instance_id):
                        note(instance_id, "booted")
            if not all(done(i) for i in ids):
                time.sleep(poll)
        return reached

    def wait(
        self, instance_ids: Iterable[str], timeout: float = 180.0, progress: bool = True, until: str = "booted"
    ) -> dict[str, dict[str, float]]:
        """:meth:`watch` with a tqdm progress bar counting the instances that reached ``until``."""
        ids = list(instance_ids)
        from tqdm.auto import tqdm

        with tqdm(total=len(ids), desc=f"waiting for {until}", unit="instance", disable=not progress) as bar:

            def tick(instance_id: str, phase: str, seconds: float) -> None:
                if phase == until:
                    bar.update(1)
                    bar.set_postfix_str(f"{instance_id} {phase} after {seconds:.1f} s")

            return self.watch(ids, until=until, timeout=timeout, on_change=tick)

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

    # -- benchmarks ------------------------------------------------------------------------------------
    def network_flavour(self) -> str:
        """The network flavour of the cloud's (first) cluster: none, vde or direct."""
        clusters = self.status()["clusters"]
        return clusters[0].get("network") or "none" if clusters else "none"

    def benchmark(
        self,
        server: str,
        client: str,
        *,
        duration_s: float = 3,
        streams: int = 1,
        repeats: int = 3,
        ping_count: int = 5,
        progress: bool = True,
        on_run: Callable[[int, int, dict[str, Any]], None] | None = None,
    ) -> pd.DataFrame:
        """iperf3 throughput and ping RTT from ``client`` to ``server`` (two running instances of this
        cloud, reached over SSH), ``repeats`` times: one row per run, the columns of
        ``cloudlab.bench.network.run_paths`` (so ``summarise``, ``ratios`` and the charts apply).

        ``on_run(done, total, row)`` is called after every run. Needs a cloud with ``--network vde|direct``.
        """
        from cloudlab.bench.cloudpaths import KIND_OF_FLAVOUR
        from cloudlab.bench.handmade import PathUnderTest

        _check_benchmark(duration_s, streams, repeats)
        if str(server) == str(client):
            raise ValueError("pick two different instances (server and client are the same)")
        flavour = self.network_flavour()
        if flavour == "none":
            raise RuntimeError(
                "this cloud has no network (--network none): restart it with cloudlab up --network direct"
            )
        handles = self.handles([server, client])
        remotes = [h.remote() for h in handles]
        for remote in remotes:
            remote.wait_ready(60)
        path = PathUnderTest(
            kind=KIND_OF_FLAVOUR.get(flavour, f"vm-{flavour}"),
            label=f"cloudlab --network {flavour}: {handles[1]} -> {handles[0]}",
            built_by="cloudlab",
            server=remotes[0],
            client=remotes[1],
            server_address=remotes[0].address,
            extra={"instances": [handles[0].id, handles[1].id]},
        )
        return measure_paths(
            [lambda: contextlib.nullcontext(path)], repeats, duration_s, streams, ping_count, progress, on_run
        )

    def reboot(self, instance_ids: Iterable[str]) -> None:
        self.ec2.reboot_instances(InstanceIds=list(instance_ids))


def _check_benchmark(duration_s: float, streams: int, repeats: int) -> None:
    if not duration_s or duration_s <= 0:
        raise ValueError(f"duration must be positive, not {duration_s!r}")
    if not isinstance(streams, int) or streams < 1:
        raise ValueError(f"streams must be at least 1, not {streams!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats!r}")


def measure_paths(
    sources: list[Callable[[], Any]],
    repeats: int,
    duration_s: float,
    streams: int,
    ping_count: int = 5,
    progress: bool = True,
    on_run: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Like ``cloudlab.bench.network.run_paths`` (same rows, a path that fails gives a row with ``error``),
    calling ``on_run(done, total, row)`` after each run so that a widget can show progress."""
    from tqdm.auto import tqdm

    from cloudlab.bench import network

    total = len(sources) * repeats
    rows: list[dict[str, Any]] = []
    with tqdm(total=total, desc="network paths", unit="run", disable=not progress) as bar:
        done_runs = 0

        def record(row: dict[str, Any], count: int = 1) -> None:
            nonlocal done_runs
            rows.append(row)
            done_runs += count
            bar.update(count)
            if on_run is not None:
                on_run(min(done_runs, total), total, row)

        for index, source in enumerate(sources):
            started = time.monotonic()
            done = 0
            try:
                with source() as path:
                    build_s = round(time.monotonic() - started, 2)
                    for repeat in range(repeats):
                        record(network._measure(path, repeat, duration_s, streams, ping_count, build_s))
                        done += 1
            except Exception as exc:  # noqa: BLE001 - recorded in the results, not lost
                name = getattr(source, "flavour", None) or str(index)
                record(
                    {"path": f"?:{name}", "label": name, "repeat": done, "error": error_message(exc)[:2000]},
                    repeats - done,
                )
    df = pd.DataFrame(rows, columns=network.COLUMNS)
    df.attrs.update(repeats=repeats, duration_s=duration_s, streams=streams)
    return df


def benchmark_fresh_pairs(
    flavours: Iterable[str] = ("direct", "vde"),
    *,
    duration_s: float = 3,
    streams: int = 1,
    repeats: int = 3,
    ping_count: int = 5,
    progress: bool = True,
    on_run: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """For each flavour, a fresh short-lived cloud with two instances (``cloudlab.bench.cloudpaths.cloud_vms``),
    measured like :meth:`Cloud.benchmark`; the clouds are stopped afterwards."""
    from cloudlab.bench.cloudpaths import KIND_OF_FLAVOUR, cloud_vms

    _check_benchmark(duration_s, streams, repeats)
    flavours = list(flavours)
    if not flavours:
        raise ValueError("pick at least one network flavour (direct, vde)")
    unknown = [f for f in flavours if f not in KIND_OF_FLAVOUR]
    if unknown:
        raise ValueError(f"unknown network flavour(s) {unknown}: choose from {sorted(KIND_OF_FLAVOUR)}")
    sources = []
    for flavour in flavours:
        source = functools.partial(cloud_vms, flavour)
        source.flavour = flavour  # type: ignore[attr-defined]
        sources.append(source)
    return measure_paths(sources, repeats, duration_s, streams, ping_count, progress, on_run)


def _start(layout: StateLayout, network: str | None, progress: bool) -> None:
    """``cloudlab up`` for ``layout`` (its saved configuration, ``network`` if given), with a spinner."""
    from cloudlab.config import CloudConfig

    config = CloudConfig.load(layout.config) if layout.config.exists() else CloudConfig()
    if network is not None:
        config.network = network
    outcome: dict[str, Any] = {}

    def start() -> None:
        try:
            outcome["info"] = control.up(layout, config)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=start, name="cloudlab-up", daemon=True)
    from tqdm.auto import tqdm

    with tqdm(
        total=None,
        desc=f"starting cloudlab (network {config.network})",
        bar_format="{desc}: {elapsed}",
        disable=not progress,
    ) as bar:
        worker.start()
        while worker.is_alive():
            worker.join(0.25)
            bar.update(0)
            bar.refresh()
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, control.ControlError):
            raise CloudNotRunning(f"could not start the cloud: {error}") from None
        raise error


def connect(
    state: str | None = None,
    user: str = "admin",
    start: bool = False,
    network: str | None = None,
    progress: bool = True,
) -> Cloud:
    """Connect to the running cloud of ``state`` (default: ``$CLOUDLAB_STATE`` or the nearest ``.cloudlab``).

    ``start=True`` starts it first if it is not running (``network``: none, vde or direct; default:
    what it ran with last time), with a progress spinner.
    """
    layout = StateLayout(find_state_dir(state))
    if start and control.endpoint(layout) is None:
        _start(layout, network, progress)
    try:
        info, creds = control.connection(layout, user)
    except control.ControlError as exc:
        message = str(exc)
        if "not running" in message:
            message += "; or from Python: cloudlab.connect(start=True)"
        raise CloudNotRunning(message) from None
    client = boto3.client(
        "ec2",
        endpoint_url=info["url"],
        region_name=info["region"],
        aws_access_key_id=creds["access_key"],
        aws_secret_access_key=creds["secret_key"],
        config=Config(retries={"max_attempts": 2, "mode": "standard"}),
    )
    return Cloud(layout, info["url"], info["region"], user, client, creds["access_key"], creds["secret_key"])
