"""The cloud controller (CLC): the source of truth for instances, and the accounting ledger.

Rules that keep records and VMs in step, whatever crashes:
- an instance row (``pending``, with its node) is committed before any node is asked to start it;
- ``dispatched_at`` is set only after the node confirmed the start, so the reconciler treats the
  absence of a VM as "vanished" only for instances a node once held, and only in a node report
  taken after that confirmation;
- starting and terminating are idempotent on the node, so after a restart the CLC simply re-sends
  what was pending (undispatched starts, unfinished terminations);
- every state change appends a ledger event in the same transaction.
A VM on a node that the CLC has no record of is reported (``unknown_vms``), never adopted or killed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from cloudlab.clc.addresses import Addresses
from cloudlab.clc.groups import SecurityGroups
from cloudlab.clc.images import Images
from cloudlab.clc.keypairs import KeyPairs
from cloudlab.clc.network import InstanceNetworks, plan_digest
from cloudlab.clc.states import (
    LIVE_STATES,
    REASON_GUEST_SHUTDOWN,
    REASON_USER_TERMINATED,
    check_transition,
)
from cloudlab.clc.store import Store, append_ledger
from cloudlab.clc.tags import Tags, validate_specifications
from cloudlab.clc.usage import NETWORK_EVENT
from cloudlab.clc.users import User, Users
from cloudlab.clc.vmtypes import DEFAULT_TYPE, get_vm_type, seed_vm_types
from cloudlab.errors import CloudError
from cloudlab.ids import is_valid_id, new_id
from cloudlab.rpc import Channel
from cloudlab.security.ca import CertificateAuthority

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_INSTANCES_PER_REQUEST = 1000
RETRY_AFTER_S = 5.0
NETWORK_SYNC_S = 0.5  # how soon a changed rule or association reaches the router
NETWORK_RESYNC_S = 30.0  # the whole plan is sent again this often even when unchanged
REASON_VANISHED = "Server.InstanceVanished: the VM was no longer on node {node} when the cloud checked"
REASON_START_FAILED = "Server.InternalError: {message}"
NETWORK_LEDGER_S = 60.0  # a running instance's changed byte counters reach the ledger at most this often


@dataclass
class ClusterLink:
    name: str
    zone: str
    network: str
    channel: Channel


class CloudController:
    """Users, images and instances, with a reconciler that follows what the nodes report."""

    def __init__(
        self,
        store: Store,
        images: Images,
        ca: CertificateAuthority | None,
        region: str = "cloudlab-1",
        reconcile_s: float = 1.0,
        public_pool: str = "198.51.100.0/24",
    ) -> None:
        self.store = store
        self.region = region
        self.public_pool = public_pool
        self.users = Users(store, ca)
        self.images = images
        self.clusters: dict[str, ClusterLink] = {}
        self.reconcile_s = reconcile_s
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="clc-dispatch")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_attempt: dict[str, float] = {}
        self._inflight: set[str] = set()
        self._attempt_lock = threading.Lock()
        self._token_lock = threading.Lock()
        self._token_locks: dict[tuple[str, str], threading.Lock] = {}
        self._services: dict[type, Any] = {}
        self._node_alive: dict[str, bool] = {}
        self._services_lock = threading.Lock()
        seed_vm_types(store)
        # The resource services create their tables now, never inside a later transaction.
        self.cluster_subnets: dict[str, str] = {}
        self._network_lock = threading.Lock()
        self._network_sent: dict[str, tuple[str | None, float]] = {}
        # byte counters of running instances: last seen in a node report, last written to the ledger
        self._bytes_lock = threading.Lock()
        self._bytes_seen: dict[str, tuple[int, int]] = {}
        self._bytes_logged: dict[str, tuple[int, int, float]] = {}
        for service in (Tags, KeyPairs, SecurityGroups, Addresses, InstanceNetworks):
            self.service(service)

    def service(self, cls: type[T]) -> T:
        """The CLC's one instance of a domain service (key pairs, groups, tags, ...), built on first use.

        A service class takes the cloud controller as its only argument and creates its tables with
        ``clc.store.ensure_schema``; this keeps each resource type in a module of its own.
        """
        with self._services_lock:
            found = self._services.get(cls)
            if found is None:
                found = self._services[cls] = cls(self)
            return found

    # -- clusters ------------------------------------------------------------------------------------
    def add_cluster(
        self,
        name: str,
        zone: str,
        channel: Channel,
        *,
        network: str = "none",
        policy: str = "GREEDY",
        subnet: str | None = None,
    ) -> None:
        """Add (or re-add, after a restart) a cluster; one with a network gives its instances ports in ``subnet``."""
        if network != "none":
            if subnet is None:
                raise ValueError(f"cluster {name} has network {network} but no subnet")
            self.cluster_subnets[name] = subnet
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO clusters (name, zone, network, policy, created) VALUES (?,?,?,?,?)"
                " ON CONFLICT(name) DO UPDATE SET zone=excluded.zone, network=excluded.network,"
                " policy=excluded.policy",
                (name, zone, network, policy, time.time()),
            )
        self.clusters[name] = ClusterLink(name, zone, network, channel)

    def zones(self) -> list[dict[str, Any]]:
        return [
            {"zone": link.zone, "cluster": link.name, "network": link.network, "region": self.region}
            for link in self.clusters.values()
        ]

    def _cluster_for_zone(self, zone: str | None) -> ClusterLink:
        if not self.clusters:
            raise CloudError("InsufficientInstanceCapacity", "the cloud has no cluster yet")
        if not zone:
            return next(iter(self.clusters.values()))
        for link in self.clusters.values():
            if link.zone == zone:
                return link
        raise CloudError(
            "InvalidParameterValue",
            f"Invalid availability zone: [{zone}]; zones: " + ", ".join(link.zone for link in self.clusters.values()),
        )

    # -- visibility -----------------------------------------------------------------------------------
    def _visible(self, user: User, instance_ids: list[str] | None) -> list[Any]:
        for instance_id in instance_ids or []:
            if not is_valid_id(instance_id, "i"):
                raise CloudError("InvalidInstanceID.Malformed", f'Invalid id: "{instance_id}"')
        sql, params = "SELECT * FROM instances", []
        where = []
        if not user.is_admin:
            where.append("owner=?")
            params.append(user.name)
        if instance_ids:
            where.append(f"instance_id IN ({','.join('?' * len(instance_ids))})")
            params.extend(instance_ids)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.store.query(sql + " ORDER BY launch_time, launch_index", params)
        if instance_ids:
            missing = sorted(set(instance_ids) - {r["instance_id"] for r in rows})
            if missing:
                quoted = ", ".join(f"'{m}'" for m in missing)
                raise CloudError(
                    "InvalidInstanceID.NotFound",
                    f"The instance IDs {quoted} do not exist"
                    if len(missing) > 1
                    else f"The instance ID {quoted} does not exist",
                )
        return rows

    def describe_instances(self, user: User, instance_ids: list[str] | None = None) -> list[dict[str, Any]]:
        return [dict(row) for row in self._visible(user, instance_ids)]

    def instance(self, instance_id: str) -> dict[str, Any] | None:
        row = self.store.one("SELECT * FROM instances WHERE instance_id=?", (instance_id,))
        return dict(row) if row else None

    # -- state changes ------------------------------------------------------------------------------------
    def _transition(
        self,
        instance_id: str,
        new: str,
        reason: str | None = None,
        *,
        expect: tuple[str, ...] | None = None,
        **fields: Any,
    ) -> bool:
        """Move one instance to ``new`` and append a ledger event; False if it was not in ``expect``."""
        with self.store.transaction() as db:
            row = db.execute("SELECT * FROM instances WHERE instance_id=?", (instance_id,)).fetchone()
            if row is None or (expect is not None and row["state"] not in expect) or row["state"] == new:
                return False
            check_transition(instance_id, row["state"], new)
            now = time.time()
            sets = {"state": new, "updated": now, **fields}
            if reason is not None:
                sets["state_reason"] = reason
            if new == "terminated":
                sets["terminated_at"] = now
            if new == "running" and "running_at" not in fields:
                sets["running_at"] = now
            if row["state"] == "running":
                self._flush_bytes(db, dict(row), now)  # the interval ends: its last counters first
            db.execute(
                f"UPDATE instances SET {', '.join(f'{k}=?' for k in sets)} WHERE instance_id=?",
                (*sets.values(), instance_id),
            )
            append_ledger(db, dict(row) | sets, new, reason, when=now)
            if new in ("shutting-down", "terminated"):
                Addresses.on_instance_terminated(db, instance_id)  # EC2 disassociates elastic addresses
        return True

    # -- network byte counters for the ledger ------------------------------------------------------------
    def _note_bytes(self, row: Any, rx: int, tx: int) -> None:
        """A node reported ``row``'s cumulative NIC counters: append them to the ledger when they changed,
        at most every NETWORK_LEDGER_S per instance (the end of its running interval appends the rest)."""
        instance_id = row["instance_id"]
        with self._bytes_lock:
            self._bytes_seen[instance_id] = (rx, tx)
            logged = self._bytes_logged.get(instance_id)
        if logged is None:  # first sight in this process: what the ledger holds for this VM session
            last = self.store.one(
                "SELECT detail FROM ledger WHERE instance_id=? AND event=? AND seq > COALESCE("
                "(SELECT MAX(seq) FROM ledger WHERE instance_id=? AND event='running'), 0) ORDER BY seq DESC LIMIT 1",
                (instance_id, NETWORK_EVENT, instance_id),
            )
            counts = json.loads(last["detail"]) if last is not None else {"rx": 0, "tx": 0}
            logged = (int(counts["rx"]), int(counts["tx"]), float("-inf"))
            with self._bytes_lock:
                self._bytes_logged.setdefault(instance_id, logged)
        if (rx, tx) == logged[:2] or time.monotonic() - logged[2] < NETWORK_LEDGER_S:
            return
        with self.store.transaction() as db:
            current = db.execute("SELECT * FROM instances WHERE instance_id=?", (instance_id,)).fetchone()
            if current is None or current["state"] != "running":
                return
            append_ledger(db, dict(current), NETWORK_EVENT, json.dumps({"rx": rx, "tx": tx}))
            with self._bytes_lock:
                self._bytes_logged[instance_id] = (rx, tx, time.monotonic())

    def _flush_bytes(self, db: Any, row: dict[str, Any], now: float) -> None:
        """Append the last counters seen for ``row`` if the ledger does not have them (inside a transaction)."""
        with self._bytes_lock:
            seen = self._bytes_seen.pop(row["instance_id"], None)
            logged = self._bytes_logged.pop(row["instance_id"], None)
        if seen is not None and (logged is None or seen != logged[:2]):
            append_ledger(db, row, NETWORK_EVENT, json.dumps({"rx": seen[0], "tx": seen[1]}), when=now)

    def _final_bytes(self, instance_id: str, result: Any) -> None:
        """The counters a node read just before it destroyed the VM, into the ledger."""
        if not isinstance(result, dict) or "net_rx_bytes" not in result:
            return
        counts = {"rx": int(result["net_rx_bytes"]), "tx": int(result["net_tx_bytes"])}
        with self.store.transaction() as db:
            row = db.execute("SELECT * FROM instances WHERE instance_id=?", (instance_id,)).fetchone()
            if row is not None:
                append_ledger(db, dict(row), NETWORK_EVENT, json.dumps(counts))

    # -- RunInstances ----------------------------------------------------------------------------------
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
                row = self.store.one(
                    "SELECT reservation_id FROM reservations WHERE owner=? AND client_token=?",
                    (user.name, client_token),
                )
                if row is not None:
                    return self.reservation(row["reservation_id"])
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
    ) -> dict[str, Any]:
        # Services first: creating one runs its schema script, which must not happen inside a transaction.
        key_pairs, groups, tags = self.service(KeyPairs), self.service(SecurityGroups), self.service(Tags)
        networks = self.service(InstanceNetworks)
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
        kernel, ramdisk = self.images.files(image)
        vm_type = get_vm_type(self.store, instance_type or DEFAULT_TYPE)
        link = self._cluster_for_zone(zone)
        if key_name:
            key_pairs.require(user, key_name)
        group_ids = groups.resolve_for_launch(user, security_groups, security_group_ids)
        validate_specifications("instance", tag_specifications)
        ids = [new_id("i") for _ in range(max_count)]
        placement = link.channel.call(
            "schedule",
            {
                "instances": [{"instance_id": i, "vcpus": vm_type.vcpus, "memory_mb": vm_type.memory_mb} for i in ids],
                "min_count": min_count,
            },
        )
        placements: dict[str, str] = placement["placements"]
        reservation_id = new_id("r")
        now = time.time()
        inserted: list[dict[str, Any]] = []
        with self._attempt_lock:  # the reconciler must not start these before we do
            for instance_id in placements:
                self._last_attempt[instance_id] = time.monotonic()
        try:
            with self.store.transaction() as db:
                db.execute(
                    "INSERT INTO reservations (reservation_id, owner, client_token, created) VALUES (?,?,?,?)",
                    (reservation_id, user.name, client_token, now),
                )
                for index, instance_id in enumerate(i for i in ids if i in placements):
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
                    groups.attach(db, instance_id, group_ids)
                    if networks.has_network(link.name):
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
                self._quietly(link, "release", {"node": node, "instance_id": instance_id})
            raise
        # EC2 answers with the instances as created (``pending``), whatever the dispatch does next.
        answer = {"reservation_id": reservation_id, "owner": user.name, "instances": inserted}
        for instance_id in ids:
            if instance_id in placements:
                self._submit(self._dispatch_run, instance_id, str(kernel), str(ramdisk) if ramdisk else None)
        return answer

    def reservation(self, reservation_id: str) -> dict[str, Any]:
        row = self.store.one("SELECT * FROM reservations WHERE reservation_id=?", (reservation_id,))
        if row is None:
            raise CloudError("InvalidReservationID.NotFound", f"no reservation {reservation_id}")
        instances = self.store.query(
            "SELECT * FROM instances WHERE reservation_id=? ORDER BY launch_index", (reservation_id,)
        )
        return {"reservation_id": reservation_id, "owner": row["owner"], "instances": [dict(i) for i in instances]}

    def _quietly(self, link: ClusterLink, action: str, body: dict[str, Any]) -> Any:
        try:
            return link.channel.call(action, body)
        except Exception as exc:
            log.warning("cluster %s: %s %s failed: %s", link.name, action, body, exc)
            return None

    def _start_body(self, row: dict[str, Any], kernel: str, ramdisk: str | None) -> dict[str, Any]:
        image = self.images.get(row["image_id"])
        return {
            "instance_id": row["instance_id"],
            "vcpus": row["vcpus"],
            "memory_mb": row["memory_mb"],
            "kernel": kernel,
            "ramdisk": ramdisk,
            "disk": image.path if image is not None and image.kind == "machine" else None,
            "owner": row["owner"],
            "image_id": row["image_id"],
            "instance_type": row["instance_type"],
            "nic": self._nic(row),
        }

    def _nic(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The instance's port, if its cluster has a network (the CC adds where on the node to attach it)."""
        port = self.service(InstanceNetworks).port(row["instance_id"])
        return None if port is None else asdict(port)

    def _dispatch_run(self, instance_id: str, kernel: str, ramdisk: str | None) -> None:
        row = self.instance(instance_id)
        if row is None or row["state"] != "pending":
            return
        link = self.clusters.get(row["cluster"])
        if link is None:
            return
        try:
            self.sync_network(link.name)  # the instance's gateway must exist before its init asks for metadata
            result = link.channel.call(
                "run_instance", {"node": row["node"], "instance": self._start_body(row, kernel, ramdisk)}
            )
        except CloudError as exc:
            if exc.code == "Unavailable":
                log.warning("start of %s deferred: %s", instance_id, exc.message)
                return  # retried by the reconciler
            log.warning("start of %s failed: %s", instance_id, exc)
            self._transition(
                instance_id, "terminated", REASON_START_FAILED.format(message=exc.message), expect=("pending",)
            )
            return
        except Exception:
            log.exception("start of %s failed unexpectedly; will retry", instance_id)
            return
        with self.store.transaction() as db:
            db.execute(
                "UPDATE instances SET dispatched_at=? WHERE instance_id=? AND dispatched_at IS NULL",
                (time.time(), instance_id),
            )
        if result.get("state") == "running":
            self._transition(instance_id, "running", None, expect=("pending",))
        after = self.instance(instance_id)
        if after is not None and after["state"] in ("shutting-down", "terminated"):
            # Terminated while the node was starting it: make sure no VM outlives its record.
            self._dispatch_terminate(instance_id)

    # -- TerminateInstances / RebootInstances ------------------------------------------------------------
    def terminate_instances(self, user: User, instance_ids: list[str]) -> list[tuple[str, str, str]]:
        """(instance, previous state, current state) for each, as TerminateInstances answers."""
        if not instance_ids:
            raise CloudError("MissingParameter", "The request must contain the parameter InstanceId")
        rows = {r["instance_id"]: r for r in self._visible(user, instance_ids)}
        changes = []
        for instance_id in instance_ids:
            previous = rows[instance_id]["state"]
            if previous in ("pending", "running", "stopping", "stopped"):
                self._transition(instance_id, "shutting-down", REASON_USER_TERMINATED, expect=(previous,))
                self._submit(self._dispatch_terminate, instance_id)
            current = (self.instance(instance_id) or {}).get("state", previous)
            changes.append((instance_id, previous, current))
        return changes

    def _dispatch_terminate(self, instance_id: str) -> None:
        """Remove the VM of a ``shutting-down`` (→ terminated) or ``stopping`` (→ stopped) instance."""
        row = self.instance(instance_id)
        if row is None or row["state"] not in ("shutting-down", "stopping"):
            return
        final = "terminated" if row["state"] == "shutting-down" else "stopped"
        link = self.clusters.get(row["cluster"])
        if link is not None and row["node"]:
            try:
                result = link.channel.call("terminate_instance", {"node": row["node"], "instance_id": instance_id})
            except Exception as exc:
                log.warning("%s of %s on %s not done yet: %s", final, instance_id, row["node"], exc)
                return  # the reconciler retries
            self._final_bytes(instance_id, result)
        self._transition(instance_id, final, expect=(row["state"],))

    # -- StopInstances / StartInstances ----------------------------------------------------------------
    def stop_instances(self, user: User, instance_ids: list[str]) -> list[tuple[str, str, str]]:
        """Power the VMs off and keep the instances (their room on the node is given back).

        cloudlab's images boot from a kernel and ramdisk, so a stopped instance keeps its identity,
        type, user data, groups and addresses, and boots afresh on start, possibly on another node.
        """
        if not instance_ids:
            raise CloudError("MissingParameter", "The request must contain the parameter InstanceId")
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
                self._transition(
                    instance_id, "stopping", "Client.UserInitiatedShutdown: User initiated shutdown", expect=(previous,)
                )
                self._submit(self._dispatch_terminate, instance_id)
            current = (self.instance(instance_id) or {}).get("state", previous)
            changes.append((instance_id, previous, current))
        return changes

    def start_instances(self, user: User, instance_ids: list[str]) -> list[tuple[str, str, str]]:
        """Schedule stopped instances again and boot them."""
        if not instance_ids:
            raise CloudError("MissingParameter", "The request must contain the parameter InstanceId")
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
                link = self.clusters.get(row["cluster"])
                if link is None:
                    raise CloudError("InsufficientInstanceCapacity", f"cluster {row['cluster']} is gone")
                placed = link.channel.call(
                    "schedule",
                    {
                        "instances": [
                            {"instance_id": instance_id, "vcpus": row["vcpus"], "memory_mb": row["memory_mb"]}
                        ],
                        "min_count": 1,
                    },
                )["placements"]
                self._transition(
                    instance_id,
                    "pending",
                    None,
                    expect=("stopped",),
                    node=placed[instance_id],
                    dispatched_at=None,
                    running_at=None,
                )
                image = self.images.get(row["image_id"])
                if image is None:
                    raise CloudError("InvalidAMIID.Unavailable", f"the image of {instance_id} is gone")
                kernel, ramdisk = self.images.files(image)
                self._submit(self._dispatch_run, instance_id, str(kernel), str(ramdisk) if ramdisk else None)
            current = (self.instance(instance_id) or {}).get("state", row["state"])
            changes.append((instance_id, row["state"], current))
        return changes

    def reboot_instances(self, user: User, instance_ids: list[str]) -> None:
        if not instance_ids:
            raise CloudError("MissingParameter", "The request must contain the parameter InstanceId")
        rows = self._visible(user, instance_ids)
        for row in rows:
            if row["state"] not in ("running", "pending"):
                raise CloudError(
                    "IncorrectInstanceState",
                    f"The instance '{row['instance_id']}' is not in a state from which it can be "
                    f"rebooted (it is {row['state']})",
                )
        for row in rows:
            if row["state"] != "running":
                continue
            link = self.clusters[row["cluster"]]
            link.channel.call("reboot_instance", {"node": row["node"], "instance_id": row["instance_id"]})
            with self.store.transaction() as db:
                append_ledger(db, dict(row), "rebooted", "user requested reboot")

    def console_output(self, user: User, instance_id: str) -> tuple[str, float]:
        row = self._visible(user, [instance_id])[0]
        link = self.clusters.get(row["cluster"])
        if link is None or not row["node"] or row["dispatched_at"] is None:
            return "", time.time()
        try:
            result = link.channel.call("get_console_output", {"node": row["node"], "instance_id": instance_id})
        except CloudError as exc:
            if exc.code in ("InvalidInstanceID.NotFound", "Unavailable"):
                return "", time.time()
            raise
        return result.get("output", ""), float(result.get("time") or time.time())

    # -- reconciliation ----------------------------------------------------------------------------------
    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.reconcile_s):
                try:
                    self.reconcile_once()
                except Exception:
                    log.exception("reconcile pass failed")

        self._thread = threading.Thread(target=loop, name="clc-reconcile", daemon=True)
        self._thread.start()
        if self.cluster_subnets:
            self._network_thread = threading.Thread(target=self._network_loop, name="clc-network", daemon=True)
            self._network_thread.start()

    # -- cluster networks -----------------------------------------------------------------------------------
    def _network_loop(self) -> None:
        """Keep every cluster's router in step with the records: a rule authorised, revoked or an address
        associated takes effect within one period, and a restarted CC gets the whole plan again."""
        while not self._stop.wait(NETWORK_SYNC_S):
            for name in list(self.cluster_subnets):
                try:
                    self.sync_network(name)
                except Exception as exc:
                    log.warning("network of cluster %s not synchronised: %s", name, exc)

    def sync_network(self, cluster: str, force: bool = False) -> bool:
        """Send ``cluster``'s network plan to its CC if it changed (or ``force``); True if sent."""
        link = self.clusters.get(cluster)
        if link is None or cluster not in self.cluster_subnets:
            return False
        with self._network_lock:
            plan = self.service(InstanceNetworks).plan(cluster)
            digest = plan_digest(plan)
            sent, when = self._network_sent.get(cluster, (None, 0.0))
            if not force and digest == sent and time.monotonic() - when < NETWORK_RESYNC_S:
                return False
            link.channel.call("network_sync", {"plan": plan})
            self._network_sent[cluster] = (digest, time.monotonic())
            return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=False)

    def _due(self, instance_id: str) -> bool:
        with self._attempt_lock:
            if instance_id in self._inflight:
                return False
            last = self._last_attempt.get(instance_id)
        return last is None or time.monotonic() - last > RETRY_AFTER_S

    def _submit(self, fn: Any, instance_id: str, *args: Any) -> Any:
        """Queue one dispatch for ``instance_id``; the reconciler will not queue another while it is in flight."""
        with self._attempt_lock:
            self._inflight.add(instance_id)
            self._last_attempt[instance_id] = time.monotonic()

        def run() -> None:
            try:
                fn(instance_id, *args)
            finally:
                with self._attempt_lock:
                    self._inflight.discard(instance_id)
                    self._last_attempt[instance_id] = time.monotonic()

        return self._pool.submit(run)

    def reconcile_once(self) -> None:
        """Apply what the nodes report to the records (see the module docstring for the rules)."""
        for link in list(self.clusters.values()):
            try:
                cluster = link.channel.call("describe_cluster", {})
            except Exception as exc:
                log.warning("cluster %s does not answer: %s", link.name, exc)
                continue
            now = time.time()
            for node in cluster["nodes"]:
                self._node_alive[node["name"]] = bool(node["alive"])
                self._note_node(link.name, node, now)
                if not node["alive"] or node["age_s"] is None:
                    continue
                self._reconcile_node(link, node, now - float(node["age_s"]) - 0.05)
        self._retry_unfinished()

    def _note_node(self, cluster: str, node: dict[str, Any], now: float) -> None:
        row = self.store.one("SELECT last_seen, accel FROM nodes WHERE name=?", (node["name"],))
        if row is not None and now - row["last_seen"] < 30 and row["accel"] == node.get("accel"):
            return
        if not node["alive"] and row is not None:
            return
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO nodes (name, cluster, hypervisor, accel, vcpus_total, memory_mb_total, first_seen,"
                " last_seen) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET cluster=excluded.cluster,"
                " hypervisor=excluded.hypervisor, accel=excluded.accel, vcpus_total=excluded.vcpus_total,"
                " memory_mb_total=excluded.memory_mb_total, last_seen=excluded.last_seen",
                (
                    node["name"],
                    cluster,
                    node.get("hypervisor"),
                    node.get("accel"),
                    node.get("vcpus_total"),
                    node.get("memory_mb_total"),
                    now,
                    now,
                ),
            )

    def _reconcile_node(self, link: ClusterLink, node: dict[str, Any], report_time: float) -> None:
        name = node["name"]
        reported = {i["instance_id"]: i["state"] for i in node["instances"]}
        records = {
            r["instance_id"]: r
            for r in self.store.query(
                f"SELECT * FROM instances WHERE node=? AND state IN ({','.join('?' * len(LIVE_STATES))})",
                (name, *LIVE_STATES),
            )
        }
        for item in node["instances"]:
            row = records.get(item["instance_id"])
            if (
                "net_rx_bytes" in item
                and row is not None
                and row["state"] == "running"
                and row["running_at"] is not None
                and row["running_at"] < report_time  # counters of this VM, not of one before a stop/start
            ):
                self._note_bytes(row, int(item["net_rx_bytes"]), int(item["net_tx_bytes"]))
        for instance_id, row in records.items():
            seen = reported.get(instance_id)
            state = row["state"]
            if seen == "running" and state == "pending" and row["dispatched_at"] is not None:
                self._transition(instance_id, "running", None, expect=("pending",))
            elif (
                seen == "shutoff"
                and state in ("pending", "running")
                and row["dispatched_at"] is not None
                and row["dispatched_at"] < report_time
            ):
                # (a domain that is defined but not yet started also shows as shut off, hence the check
                # that the node had confirmed the start before this report was asked for)
                log.info("%s shut itself off on %s", instance_id, name)
                if self._transition(instance_id, "shutting-down", REASON_GUEST_SHUTDOWN, expect=(state,)):
                    self._submit(self._dispatch_terminate, instance_id)
            elif (
                seen is None
                and state in ("pending", "running")
                and row["dispatched_at"] is not None
                and row["dispatched_at"] < report_time
            ):
                log.warning("%s vanished from node %s", instance_id, name)
                self._transition(instance_id, "terminated", REASON_VANISHED.format(node=name), expect=(state,))
            elif seen is None and state in ("shutting-down", "stopping") and row["updated"] < report_time:
                self._transition(instance_id, "terminated" if state == "shutting-down" else "stopped", expect=(state,))
        strangers = [i for i in reported if i not in records]
        for instance_id in strangers:
            row = self.instance(instance_id)
            if row is not None and row["state"] in ("terminated", "stopped"):
                if self._due(instance_id):
                    self._submit(self._dispatch_terminate_leftover, instance_id, link, name)
            elif row is None:
                self._note_unknown(name, instance_id, reported[instance_id])

    def _dispatch_terminate_leftover(self, instance_id: str, link: ClusterLink, node: str) -> None:
        log.info("cleaning up the VM of terminated instance %s on %s", instance_id, node)
        self._quietly(link, "terminate_instance", {"node": node, "instance_id": instance_id})

    def _note_unknown(self, node: str, instance_id: str, state: str) -> None:
        now = time.time()
        with self.store.transaction() as db:
            existing = db.execute(
                "SELECT 1 FROM unknown_vms WHERE node=? AND instance_id=?", (node, instance_id)
            ).fetchone()
            db.execute(
                "INSERT INTO unknown_vms (node, instance_id, state, first_seen, last_seen) VALUES (?,?,?,?,?)"
                " ON CONFLICT(node, instance_id) DO UPDATE SET state=excluded.state, last_seen=excluded.last_seen",
                (node, instance_id, state, now, now),
            )
        if existing is None:
            log.warning("node %s runs %s, which the cloud has no record of: reported, left alone", node, instance_id)

    def node_health(self) -> dict[str, bool]:
        """Whether each node answered its cluster controller at the last reconcile pass."""
        return dict(self._node_alive)

    def unknown_vms(self) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self.store.query(
                "SELECT * FROM unknown_vms WHERE last_seen > ? ORDER BY node", (time.time() - 60,)
            )
        ]

    def _retry_unfinished(self) -> None:
        for row in self.store.query(
            "SELECT * FROM instances WHERE (state='pending' AND dispatched_at IS NULL)"
            " OR state IN ('shutting-down', 'stopping')"
        ):
            instance_id = row["instance_id"]
            if not self._due(instance_id):
                continue
            if row["state"] in ("shutting-down", "stopping"):
                self._submit(self._dispatch_terminate, instance_id)
                continue
            image = self.images.get(row["image_id"])
            if image is None:
                self._transition(
                    instance_id, "terminated", REASON_START_FAILED.format(message="image is gone"), expect=("pending",)
                )
                continue
            kernel, ramdisk = self.images.files(image)
            self._submit(self._dispatch_run, instance_id, str(kernel), str(ramdisk) if ramdisk else None)

    def shutdown_all(self, reason: str) -> int:
        """Terminate every live instance (``cloudlab down``): their VMs go away with the cloud."""
        rows = self.store.query(
            f"SELECT * FROM instances WHERE state IN ({','.join('?' * len(LIVE_STATES))})", LIVE_STATES
        )
        for row in rows:
            if row["state"] != "shutting-down":
                self._transition(row["instance_id"], "shutting-down", reason, expect=(row["state"],))
        futures = [self._submit(self._dispatch_terminate, row["instance_id"]) for row in rows]
        for future in futures:
            future.result(timeout=60)
        return len(rows)
