"""What users do to instances: run, terminate, stop, start, reboot, read the console.

Each operation checks what the user may do and what EC2 allows, changes the records (through
:class:`~cloudlab.clc.instances.InstanceRecords`, so every change has its ledger event), and leaves
the work on the nodes to :class:`~cloudlab.clc.dispatch.Dispatch`. EC2 answers with the instances as
they are at that moment (``pending``, ``shutting-down``, ``stopping``), whatever the nodes do next.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from cloudlab import contract as c
from cloudlab.clc import quotas
from cloudlab.clc.addresses import Addresses
from cloudlab.clc.clusters import Clusters
from cloudlab.clc.dispatch import Dispatch, quietly
from cloudlab.clc.groups import SecurityGroups
from cloudlab.clc.images import Images
from cloudlab.clc.instances import InstanceRecords
from cloudlab.clc.interfaces import NetworkInterfaces
from cloudlab.clc.keypairs import KeyPairs
from cloudlab.clc.network import InstanceNetworks
from cloudlab.clc.placement import ZonePlacement, ZoneRequest
from cloudlab.clc.states import REASON_USER_TERMINATED
from cloudlab.clc.store import Store, append_ledger
from cloudlab.clc.tags import Tags, validate_specifications
from cloudlab.clc.userdata import check_user_data
from cloudlab.clc.users import User
from cloudlab.clc.vmtypes import DEFAULT_TYPE, get_vm_type
from cloudlab.clc.volumes import Volumes
from cloudlab.clc.vpc_network import VpcNetworks
from cloudlab.errors import CloudError
from cloudlab.ids import is_valid_id, new_id

MAX_INSTANCES_PER_REQUEST = 1000
REASON_USER_STOPPED = "Client.UserInitiatedShutdown: User initiated shutdown"
Change = tuple[str, str, str]  # (instance, previous state, current state), as EC2's answers list them


class InstanceLifecycle:
    """RunInstances and the operations on instances that exist."""

    def __init__(
        self,
        store: Store,
        records: InstanceRecords,
        clusters: Clusters,
        images: Images,
        dispatch: Dispatch,
        services: Any,
        placement: ZonePlacement | None = None,
    ) -> None:
        self.store = store
        self.records = records
        self.clusters = clusters
        self.images = images
        self.dispatch = dispatch
        self._services = services  # (cls) -> the CLC's one instance of a domain service
        self.placement = placement  # the cloud-level policy: which zone a request that names none goes to
        self._token_lock = threading.Lock()
        self._token_locks: dict[tuple[str, str], threading.Lock] = {}

    # -- RunInstances -------------------------------------------------------------------------------------
    def run_instances(
        self,
        user: User,
        image_id: str,
        *,
        instance_type: str | None = None,
        min_count: int = 1,
        max_count: int = 1,
        zone: str | None = None,
        client_token: str | None = None,
        user_data: str | None = None,
        key_name: str | None = None,
        security_groups: list[str] | None = None,
        security_group_ids: list[str] | None = None,
        tag_specifications: list[dict[str, Any]] | None = None,
        subnet_id: str | None = None,
        private_ip: str | None = None,
        associate_public_ip: bool | None = None,
        block_device_mappings: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Validate, schedule, record (pending) and dispatch; returns the reservation."""
        if min_count < 1 or max_count < min_count:
            raise CloudError(
                "InvalidParameterValue", f"MinCount ({min_count}) must be at least 1 and at most MaxCount ({max_count})"
            )
        if max_count > MAX_INSTANCES_PER_REQUEST:
            raise CloudError(
                "InstanceLimitExceeded",
                f"at most {MAX_INSTANCES_PER_REQUEST} instances per request (asked for {max_count})",
            )
        # One request per (owner, token) at a time, so that concurrent retries make one reservation.
        lock: Any = contextlib.nullcontext()
        if client_token:
            with self._token_lock:
                lock = self._token_locks.setdefault((user.name, client_token), threading.Lock())
        with lock:
            if client_token:
                existing = self.records.reservation_for_token(user.name, client_token)
                if existing is not None:
                    return self.records.reservation(existing)
            return self._run_instances(
                user,
                image_id,
                instance_type=instance_type,
                min_count=min_count,
                max_count=max_count,
                zone=zone,
                client_token=client_token or None,
                user_data=user_data,
                key_name=key_name,
                security_groups=security_groups or [],
                security_group_ids=security_group_ids or [],
                tag_specifications=tag_specifications or [],
                subnet_id=subnet_id,
                private_ip=private_ip,
                associate_public_ip=associate_public_ip,
                block_device_mappings=block_device_mappings or [],
            )

    def _run_instances(
        self,
        user: User,
        image_id: str,
        *,
        instance_type: str | None,
        min_count: int,
        max_count: int,
        zone: str | None,
        client_token: str | None,
        user_data: str | None,
        key_name: str | None,
        security_groups: list[str],
        security_group_ids: list[str],
        tag_specifications: list[dict[str, Any]],
        block_device_mappings: list[dict[str, Any]],
        subnet_id: str | None = None,
        private_ip: str | None = None,
        associate_public_ip: bool | None = None,
    ) -> dict[str, Any]:
        # Services first: creating one runs its schema script, which must not happen inside a transaction.
        key_pairs, groups, tags = self._services(KeyPairs), self._services(SecurityGroups), self._services(Tags)
        networks, interfaces = self._services(InstanceNetworks), self._services(NetworkInterfaces)
        vpc_networks, addresses = self._services(VpcNetworks), self._services(Addresses)
        volumes = self._services(Volumes)
        if not is_valid_id(image_id, "ami"):
            raise CloudError("InvalidAMIID.Malformed", f'Invalid id: "{image_id}" (expecting "ami-...")')
        image = self.images.get(image_id)
        if (
            image is None
            or image.kind != "machine"
            or image.state == "deregistered"
            or (not image.is_public and image.owner != user.name and not user.is_admin)
        ):
            raise CloudError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
        if image.state != "available":
            raise CloudError("InvalidAMIID.Unavailable", f"image {image_id} is {image.state}")
        self.images.boot_files(image)  # its kernel and ramdisk are registered, or a clear error now
        vm_type = get_vm_type(self.store, instance_type or DEFAULT_TYPE)
        self.clusters.for_zone(zone)  # a zone that does not exist is refused first
        if not zone and not subnet_id and self.placement is not None and len(self.clusters) > 1:

            def eligible(name: str) -> bool:  # a zone this launch can go to (a direct VPC lives in one cluster)
                if networks.is_classic(self.clusters.for_zone(name).name):
                    return True
                try:
                    interfaces.vpcs.default_subnet(user.name, name)
                except CloudError:
                    return False
                return True

            zone = self.placement.choose(ZoneRequest(vm_type.vcpus, vm_type.memory_mb, min_count, max_count), eligible)
        launch = interfaces.for_launch(
            user,
            zone=zone,
            subnet_id=subnet_id,
            private_ip=private_ip,
            associate_public_ip=associate_public_ip,
            security_groups=security_groups,
            security_group_ids=security_group_ids,
            count=max_count,
            classic=lambda z: networks.is_classic(self.clusters.for_zone(z).name),
        )
        link = self.clusters.for_zone(launch.zone)  # the subnet's zone decides the cluster
        if self.placement is not None:
            self.placement.require_available(link.zone, link.name)  # a dead zone takes no launch
        if key_name:
            key_pairs.require(user, key_name)
        group_ids = list(launch.group_ids)
        validate_specifications("instance", tag_specifications)
        user_data = check_user_data(user_data)
        launch_volumes = volumes.launch_plan(user, image, block_device_mappings)
        # The quotas first, so a request far beyond them is refused without asking the cluster; they
        # are checked again, atomically, in the transaction that records the instances.
        with self.store.transaction() as db:
            max_count = quotas.instances_that_fit(db, user.name, vm_type.vcpus, min_count, max_count)
        ids = [new_id("i") for _ in range(max_count)]
        needs = tuple(c.InstanceNeed(i, vm_type.vcpus, vm_type.memory_mb) for i in ids)
        placements = link.channel.ask(c.SCHEDULE, c.ScheduleRequest(instances=needs, min_count=min_count)).placements
        reservation_id = new_id("r")
        now = time.time()
        inserted: list[dict[str, Any]] = []
        over_quota: list[str] = []
        self.dispatch.hold(list(placements))  # the reconciler must not start these before we do
        try:
            with self.store.transaction() as db:
                placed = [i for i in ids if i in placements]
                fit = quotas.instances_that_fit(db, user.name, vm_type.vcpus, min_count, len(placed))
                placed, over_quota = placed[:fit], placed[fit:]  # another request took the rest meanwhile
                db.execute(
                    "INSERT INTO reservations (reservation_id, owner, client_token, created) VALUES (?,?,?,?)",
                    (reservation_id, user.name, client_token, now),
                )
                for index, instance_id in enumerate(placed):
                    row = {
                        "instance_id": instance_id,
                        "reservation_id": reservation_id,
                        "owner": user.name,
                        "image_id": image.image_id,
                        "kernel_id": image.kernel_id,
                        "ramdisk_id": image.ramdisk_id,
                        "instance_type": vm_type.name,
                        "vcpus": vm_type.vcpus,
                        "memory_mb": vm_type.memory_mb,
                        "cluster": link.name,
                        "zone": link.zone,
                        "node": placements[instance_id],
                        "state": "pending",
                        "launch_index": index,
                        "key_name": key_name,
                        "user_data": user_data,
                        "launch_time": now,
                        "updated": now,
                    }
                    db.execute(
                        f"INSERT INTO instances ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()),
                    )
                    append_ledger(db, row, "pending", None, when=now)
                    volumes.record_launch(db, user, row, launch_volumes)
                    groups.attach(db, instance_id, group_ids)
                    interfaces.attach(db, instance_id, user.name, launch)
                    if launch.subnet is not None and networks.plumbs_vpcs(link.name):
                        vpc_networks.allocate(db, link.name, launch.subnet.vpc_id, launch.subnet.subnet_id)
                        if launch.public_ip:  # (a cluster without a network has no public side to map it to)
                            addresses.assign_public_ip(db, instance_id)
                    if networks.is_classic(link.name):
                        networks.allocate(db, link.name, instance_id, group_ids[0])
                    inserted.append(
                        row | {"dispatched_at": None, "running_at": None, "terminated_at": None, "state_reason": None}
                    )
                if tag_specifications:
                    tags.apply_specifications(
                        db, user, "instance", [r["instance_id"] for r in inserted], tag_specifications
                    )
        except BaseException:
            for instance_id, node in placements.items():
                quietly(link, c.RELEASE, c.OnNode(node=node, instance_id=instance_id))
            raise
        for instance_id in over_quota:
            quietly(link, c.RELEASE, c.OnNode(node=placements[instance_id], instance_id=instance_id))
        self.dispatch.start_many([row["instance_id"] for row in inserted])
        return {"reservation_id": reservation_id, "owner": user.name, "instances": inserted}

    # -- TerminateInstances -------------------------------------------------------------------------------
    def terminate_instances(self, user: User, instance_ids: list[str]) -> list[Change]:
        rows = {r["instance_id"]: r for r in self._visible(user, instance_ids)}
        changes = []
        for instance_id in instance_ids:
            previous = state = rows[instance_id]["state"]
            # (the reconciler may move a pending instance to running meanwhile: try again from where it is)
            for _ in range(4):
                if state not in ("pending", "running", "stopping", "stopped"):
                    break
                if self.records.transition(instance_id, "shutting-down", REASON_USER_TERMINATED, expect=(state,)):
                    self.dispatch.terminate(instance_id)
                    break
                state = self.records.state_of(instance_id, state)
            changes.append((instance_id, previous, self.records.state_of(instance_id, previous)))
        return changes

    # -- StopInstances / StartInstances -------------------------------------------------------------------
    def stop_instances(self, user: User, instance_ids: list[str]) -> list[Change]:
        """Power the VMs off and keep the instances (their room on the node is given back).

        A stopped instance keeps its identity, type, user data, groups, private and elastic addresses and
        volumes (its root volume with what was written to it, see clc/volumes.py), and boots again on start,
        possibly on another node; its scratch disk (an image without a disk) starts empty, as EC2's instance
        store. Its auto-assigned public address goes back to the pool; start gives it a fresh one, as on EC2
        (:meth:`cloudlab.clc.addresses.Addresses.assign_on_start`).
        """
        rows = {r["instance_id"]: r for r in self._visible(user, instance_ids)}
        for instance_id, row in rows.items():
            if row["state"] in ("terminated", "shutting-down"):
                raise CloudError(
                    "IncorrectInstanceState",
                    f"The instance '{instance_id}' is not in a state from which it can be stopped "
                    f"(it is {row['state']})",
                )
        changes = []
        for instance_id in instance_ids:
            previous = rows[instance_id]["state"]
            if previous in ("pending", "running"):
                self.records.transition(instance_id, "stopping", REASON_USER_STOPPED, expect=(previous,))
                self.dispatch.terminate(instance_id)
            changes.append((instance_id, previous, self.records.state_of(instance_id, previous)))
        return changes

    def start_instances(self, user: User, instance_ids: list[str]) -> list[Change]:
        """Schedule stopped instances again and boot them."""
        rows = {r["instance_id"]: r for r in self._visible(user, instance_ids)}
        for instance_id, row in rows.items():
            if row["state"] not in ("stopped", "pending", "running"):
                raise CloudError(
                    "IncorrectInstanceState",
                    f"The instance '{instance_id}' is not in a state from which it can be started "
                    f"(it is {row['state']})",
                )
        changes = []
        for instance_id in instance_ids:
            row = rows[instance_id]
            if row["state"] == "stopped":
                self._restart(row)
            changes.append((instance_id, row["state"], self.records.state_of(instance_id, row["state"])))
        return changes

    def _restart(self, row: Any) -> None:
        instance_id = row["instance_id"]
        link = self.clusters.get(row["cluster"])
        if link is None:
            raise CloudError("InsufficientInstanceCapacity", f"cluster {row['cluster']} is gone")
        image = self.images.get(row["image_id"])
        if image is None:
            raise CloudError("InvalidAMIID.Unavailable", f"the image of {instance_id} is gone")
        need = c.InstanceNeed(instance_id, row["vcpus"], row["memory_mb"])
        placed = link.channel.ask(c.SCHEDULE, c.ScheduleRequest(instances=(need,), min_count=1)).placements
        moved = self.records.transition(
            instance_id,
            "pending",
            None,
            expect=("stopped",),
            node=placed[instance_id],
            dispatched_at=None,
            running_at=None,
        )
        if moved:  # a fresh auto-assigned address before the guest boots and asks the metadata service for it
            self._services(Addresses).assign_on_start(instance_id)
        self.dispatch.start(instance_id)

    # -- RebootInstances / GetConsoleOutput ---------------------------------------------------------------
    def reboot_instances(self, user: User, instance_ids: list[str]) -> None:
        rows = self._visible(user, instance_ids)
        for row in rows:
            if row["state"] not in ("running", "pending"):
                raise CloudError(
                    "IncorrectInstanceState",
                    f"The instance '{row['instance_id']}' is not in a state from which it can be "
                    f"rebooted (it is {row['state']})",
                )
        for row in rows:
            link = self.clusters.get(row["cluster"])
            if row["state"] != "running" or link is None:
                continue
            link.channel.ask(c.REBOOT_INSTANCE, c.OnNode(node=row["node"], instance_id=row["instance_id"]))
            self.records.note_ledger(row, "rebooted", "user requested reboot")

    def console_output(self, user: User, instance_id: str) -> tuple[str, float]:
        row = self.records.visible(user, [instance_id])[0]
        link = self.clusters.get(row["cluster"])
        if link is None or not row["node"] or row["dispatched_at"] is None:
            return "", time.time()
        try:
            result = link.channel.ask(c.GET_CONSOLE_OUTPUT, c.OnNode(node=row["node"], instance_id=instance_id))
        except CloudError as exc:
            if exc.code in ("InvalidInstanceID.NotFound", "Unavailable"):
                return "", time.time()
            raise
        return result.output, result.time or time.time()

    # -- cloudlab down --------------------------------------------------------------------------------------
    def shutdown_all(self, reason: str) -> int:
        """Terminate every live instance (``cloudlab down``): their VMs go away with the cloud."""
        rows = self.records.live()
        for row in rows:
            if row["state"] != "shutting-down":
                self.records.transition(row["instance_id"], "shutting-down", reason, expect=(row["state"],))
        futures = [self.dispatch.terminate(row["instance_id"]) for row in rows]
        for future in futures:
            future.result(timeout=60)
        return len(rows)

    def _visible(self, user: User, instance_ids: list[str]) -> list[Any]:
        if not instance_ids:
            raise CloudError("MissingParameter", "The request must contain the parameter InstanceId")
        return self.records.visible(user, instance_ids)
