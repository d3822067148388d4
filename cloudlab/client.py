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

Benchmarks between instances are not here but in ``cloudlab.bench.pairs`` (the client imports no
benchmark code; the benchmarks use the client).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import boto3
import pandas as pd
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cloudlab import listings, phases, servicectl
from cloudlab.paths import StateLayout, find_state_dir
from cloudlab.reach import SshRemote, instance_remote


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
        return listings.tag(self.info, "Name")

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

    def remote(self, public: bool = False) -> SshRemote:
        """An SSH remote to the instance from the cluster's outside namespace (``cloudlab.reach``); raises
        ``cloudlab.reach.Unreachable`` (a RuntimeError) saying why when it cannot be reached."""
        return instance_remote(self.cloud, self.id, public=public)

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

    # -- listings (as DataFrames: cloudlab.listings) ------------------------------------------------------
    def instances(self, *, include_terminated: bool = True, name: str | None = None) -> pd.DataFrame:
        """Every visible instance, one row each (``name``: only those with that ``Name`` tag)."""
        return listings.instances_frame(self.ec2, include_terminated=include_terminated, name=name)

    def images(self) -> pd.DataFrame:
        return listings.images_frame(self.ec2)

    def instance_types(self) -> list[str]:
        """The instance types this cloud offers, smallest first."""
        types = self.ec2.describe_instance_types()["InstanceTypes"]
        types.sort(key=lambda t: (t["VCpuInfo"]["DefaultVCpus"], t["MemoryInfo"]["SizeInMiB"], t["InstanceType"]))
        return [t["InstanceType"] for t in types]

    def key_pairs(self) -> list[str]:
        return sorted(k["KeyName"] for k in self.ec2.describe_key_pairs()["KeyPairs"])

    def security_groups(self) -> pd.DataFrame:
        return listings.security_groups_frame(self.ec2)

    def status(self) -> dict[str, Any]:
        return servicectl.service_status(self.layout)  # signed with the admin's key: the status is the admin's

    def clusters(self) -> pd.DataFrame:
        """One row per cluster: name, zone and its state, scheduler, network flavour and health, NAT, nodes by state."""
        return listings.clusters_frame(self.status())

    def nodes(self) -> pd.DataFrame:
        """One row per node: its cluster and zone, its state (``up``, ``powered-off``, ``waking``, ``dead``),
        free and total vCPUs and memory, instances."""
        return listings.nodes_frame(self.status())

    def node_usage(self, *, since: Any = None, until: Any = None) -> pd.DataFrame:
        """Each node's powered-on and powered-off hours (``cloudlab.usage_frames.fetch_node_usage``)."""
        from cloudlab.usage_frames import fetch_node_usage

        return fetch_node_usage(self.boto3_kwargs(), since=since, until=until)

    def usage(self, *, user: str | None = None, since: Any = None, until: Any = None, by: str = "user") -> pd.DataFrame:
        """Instance-hours, vCPU-hours, GB-hours and network bytes (``cloudlab.usage_frames.fetch_usage``)."""
        try:
            from cloudlab.usage_frames import fetch_usage
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
            for r, inst in listings.described(self.ec2, [{"Name": "tag:Name", "Values": [name]}])
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
        return phases.console(self.ec2, instance_id)

    def ssh_command(self, instance_id: str) -> str:
        """The command line that opens an SSH session to ``instance_id`` (from the cluster's outside namespace)."""
        return f"cloudlab --state {self.layout.root} ssh {instance_id}"

    def states(self, instance_ids: Iterable[str]) -> dict[str, str]:
        """Instance id → its EC2 state name."""
        return phases.states(self.ec2, [str.__str__(i) for i in instance_ids])

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
        ``cloudlab.phases.PHASES`` (or ``"failed"``, when it ends before). Returns per instance the seconds
        from this call to each phase reached. Raises TimeoutError naming the laggards, RuntimeError if one ends.
        """
        if until not in ("running", "booted"):
            raise ValueError(f"until must be 'running' or 'booted', not {until!r}")
        return phases.watch(self.ec2, instance_ids, until, timeout, poll, on_change, stop)

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
        ids = [str.__str__(i) for i in instance_ids]
        if progress:
            reached = self.wait(ids, timeout=timeout, progress=True, until="booted")
        else:
            reached = phases.watch(self.ec2, ids, "booted", timeout, poll)
        return pd.DataFrame(
            [
                {
                    "instance_id": i,
                    "running_s": reached[i]["running"],
                    "boot_s": reached[i]["booted"],
                    "guest_uptime_s": phases.boot_uptime(self.console(i)),
                }
                for i in ids
            ]
        )

    def wait_state(self, instance_ids: Iterable[str], state: str, timeout: float = 60.0, poll: float = 0.2) -> None:
        """Wait until every instance is in EC2 state ``state`` (TimeoutError naming the laggards)."""
        phases.watch(self.ec2, instance_ids, state, timeout, poll)

    def terminate(self, instance_ids: Iterable[str]) -> None:
        self.ec2.terminate_instances(InstanceIds=list(instance_ids))

    # -- the network ------------------------------------------------------------------------------------
    def network_flavour(self) -> str:
        """The network flavour of the cloud's (first) cluster: none, vde or direct."""
        clusters = self.status()["clusters"]
        return clusters[0].get("network") or "none" if clusters else "none"

    def reboot(self, instance_ids: Iterable[str]) -> None:
        self.ec2.reboot_instances(InstanceIds=list(instance_ids))


def _start(layout: StateLayout, network: str | None, progress: bool) -> None:
    """``cloudlab up`` for ``layout`` (its saved configuration, ``network`` if given), with a spinner."""
    from cloudlab.config import CloudConfig

    config = CloudConfig.load(layout.config) if layout.config.exists() else CloudConfig()
    if network is not None:
        config.network = network
    outcome: dict[str, Any] = {}

    def start() -> None:
        try:
            outcome["info"] = servicectl.up(layout, config)
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
        if isinstance(error, servicectl.ControlError):
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
    if start and servicectl.endpoint(layout) is None:
        _start(layout, network, progress)
    try:
        info, creds = servicectl.connection(layout, user)
    except servicectl.ControlError as exc:
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
