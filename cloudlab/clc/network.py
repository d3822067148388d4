"""Instance networking as the cloud controller sees it: VLANs, subnets, private addresses, the network plan.

Eucalyptus' MANAGED mode is the model: every security group in use gets its own VLAN and its own
subnet (a /24 out of the cluster's private range), and every instance an address in the subnet of
its first group. Traffic inside one group stays on its VLAN; traffic between groups and from
outside crosses the cluster's router, where the groups' ingress rules are enforced. This module
only decides and records; the cluster controller builds (``cloudlab.cc.network``).

The *plan* is everything the router needs, derived from the database alone (groups in use with
their VLAN and subnet, ingress rules, elastic-address NAT), so a restarted cloud rebuilds exactly
the same network, and applying it twice changes nothing.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import sqlite3
import threading
import time
from typing import Any

from cloudlab.clc.addresses import Addresses
from cloudlab.clc.clusters import Clusters
from cloudlab.clc.groups import SecurityGroups
from cloudlab.clc.keypairs import KeyPairs
from cloudlab.clc.vpc_filters import instance_filters
from cloudlab.clc.vpc_network import VpcNetworks
from cloudlab.contract import (
    FIRST_VLAN,
    NETWORK_SYNC,
    ElasticNat,
    GroupSegment,
    IngressRule,
    NetworkPlan,
    NicPlan,
    encode,
)
from cloudlab.errors import CloudError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS group_networks (
    cluster TEXT NOT NULL, group_id TEXT NOT NULL, slot INTEGER NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (cluster, group_id), UNIQUE (cluster, slot));
CREATE TABLE IF NOT EXISTS instance_ports (
    instance_id TEXT PRIMARY KEY, cluster TEXT NOT NULL, group_id TEXT NOT NULL, private_ip TEXT NOT NULL,
    mac TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instance_ports_by_ip ON instance_ports(cluster, private_ip);
"""

NETWORK_SYNC_S = 0.5  # how soon a changed rule or association reaches the router
NETWORK_RESYNC_S = 30.0  # the whole plan is sent again this often even when unchanged
#: Host part of the first instance address in a group's /24 (.1 is the gateway).
FIRST_HOST = 10
#: Instance states that hold their private address (a stopped instance keeps it, as in a VPC).
_HOLDING = ("pending", "running", "stopping", "stopped", "shutting-down")


def mac_for(instance_id: str) -> str:
    """A stable, locally administered MAC for an instance (Eucalyptus used the d0:0d prefix too)."""
    digest = hashlib.sha256(instance_id.encode()).digest()
    return "d0:0d:" + ":".join(f"{b:02x}" for b in digest[:4])


class InstanceNetworks:
    """Group segments, instance ports and the router plan of every cluster with a network."""

    def __init__(self, clc: Any) -> None:
        self.clc = clc
        self.store = clc.store
        self.store.ensure_schema(SCHEMA)

    # -- configuration ----------------------------------------------------------------------------------------
    @property
    def clusters(self) -> Clusters:
        return self.clc.clusters

    def subnet(self, cluster: str) -> ipaddress.IPv4Network:
        subnet = self.clusters.subnet_of(cluster)
        if subnet is None:
            raise CloudError("InvalidParameterValue", f"cluster {cluster} has no network")
        return ipaddress.IPv4Network(subnet)

    def has_network(self, cluster: str) -> bool:
        return self.clusters.subnet_of(cluster) is not None

    def plumbs_vpcs(self, cluster: str) -> bool:
        """Whether ``cluster``'s network plumbs VPC subnets (else: managed mode, or no network)."""
        link = self.clusters.get(cluster)
        return link is not None and link.subnet is not None and link.vpc_network

    def is_classic(self, cluster: str) -> bool:
        """Whether ``cluster`` runs Eucalyptus' managed mode (a VLAN per security group, EC2-Classic)."""
        return self.has_network(cluster) and not self.plumbs_vpcs(cluster)

    def _segment(self, cluster: str, group_id: str, slot: int) -> GroupSegment:
        subnets = list(self.subnet(cluster).subnets(new_prefix=24))
        net = subnets[slot]
        return GroupSegment(group_id, FIRST_VLAN + slot, str(net), str(net.network_address + 1))

    # -- allocation (inside the RunInstances transaction) -------------------------------------------------
    def allocate(self, db: sqlite3.Connection, cluster: str, instance_id: str, group_id: str) -> NicPlan:
        """Give ``instance_id`` a port in ``group_id``'s segment, creating the segment on first use."""
        row = db.execute(
            "SELECT slot FROM group_networks WHERE cluster=? AND group_id=?", (cluster, group_id)
        ).fetchone()
        capacity = len(list(self.subnet(cluster).subnets(new_prefix=24)))
        if row is None:
            used = {r["slot"] for r in db.execute("SELECT slot FROM group_networks WHERE cluster=?", (cluster,))}
            slot = next((s for s in range(capacity) if s not in used), None)
            if slot is None:
                raise CloudError(
                    "InsufficientFreeAddressesInSubnet",
                    f"cluster {cluster}'s subnet {self.subnet(cluster)} has room for {capacity} security groups,"
                    " all in use: delete unused groups or start the cloud with a larger --subnet",
                )
            db.execute(
                "INSERT INTO group_networks (cluster, group_id, slot, created) VALUES (?,?,?,?)",
                (cluster, group_id, slot, time.time()),
            )
        else:
            slot = row["slot"]
        segment = self._segment(cluster, group_id, slot)
        net = ipaddress.IPv4Network(segment.subnet)
        held = {
            r["private_ip"]
            for r in db.execute(
                "SELECT p.private_ip FROM instance_ports p JOIN instances i ON i.instance_id = p.instance_id"
                f" WHERE p.cluster=? AND p.group_id=? AND i.state IN ({','.join('?' * len(_HOLDING))})",
                (cluster, group_id, *_HOLDING),
            )
        }
        address = next(
            (str(a) for a in list(net.hosts())[FIRST_HOST - 1 :] if str(a) not in held),
            None,
        )
        if address is None:
            raise CloudError(
                "InsufficientFreeAddressesInSubnet",
                f"security group {group_id}'s subnet {segment.subnet} is full:"
                " terminate instances or use another group",
            )
        mac = mac_for(instance_id)
        db.execute(
            "INSERT OR REPLACE INTO instance_ports (instance_id, cluster, group_id, private_ip, mac, created)"
            " VALUES (?,?,?,?,?,?)",
            (instance_id, cluster, group_id, address, mac, time.time()),
        )
        return NicPlan(instance_id, group_id, segment.vlan, f"{address}/{net.prefixlen}", segment.gateway, mac)

    # -- reads --------------------------------------------------------------------------------------------
    def port(self, instance_id: str) -> NicPlan | None:
        row = self.store.one(
            "SELECT p.*, g.slot FROM instance_ports p JOIN group_networks g"
            " ON g.cluster = p.cluster AND g.group_id = p.group_id WHERE p.instance_id=?",
            (instance_id,),
        )
        if row is None:
            return None
        segment = self._segment(row["cluster"], row["group_id"], row["slot"])
        prefix = ipaddress.IPv4Network(segment.subnet).prefixlen
        return NicPlan(
            instance_id, row["group_id"], segment.vlan, f"{row['private_ip']}/{prefix}", segment.gateway, row["mac"]
        )

    def private_ips_of(self, instance_ids: list[str]) -> dict[str, str]:
        if not instance_ids:
            return {}
        marks = ",".join("?" * len(instance_ids))
        rows = self.store.query(
            f"SELECT instance_id, private_ip FROM instance_ports WHERE instance_id IN ({marks})", instance_ids
        )
        return {r["instance_id"]: r["private_ip"] for r in rows}

    def instance_at(self, cluster: str, private_ip: str) -> dict[str, Any] | None:
        """The live instance holding ``private_ip`` in ``cluster`` (for the metadata service)."""
        row = self.store.one(
            "SELECT i.* FROM instance_ports p JOIN instances i ON i.instance_id = p.instance_id"
            f" WHERE p.cluster=? AND p.private_ip=? AND i.state IN ({','.join('?' * len(_HOLDING))})"
            " ORDER BY i.launch_time DESC LIMIT 1",
            (cluster, private_ip, *_HOLDING),
        )
        return dict(row) if row is not None else None

    def metadata(self, cluster: str, private_ip: str) -> dict[str, Any] | None:
        """What the metadata service tells the instance at ``private_ip`` about itself."""
        row = self.instance_at(cluster, private_ip)
        if row is None:
            return None
        return self._metadata(row, self.port(row["instance_id"]), private_ip)

    def vpc_metadata(self, cluster: str, vpc_id: str, private_ip: str) -> dict[str, Any] | None:
        """What ``vpc_id``'s metadata service tells its instance at ``private_ip`` (VPCs' ranges may overlap)."""
        vpcs = self.clc.service(VpcNetworks)
        row = vpcs.instance_at(cluster, vpc_id, private_ip)
        if row is None:
            return None
        return self._metadata(row, vpcs.nic(row["instance_id"]), private_ip)

    def _metadata(self, row: dict[str, Any], port: NicPlan | None, private_ip: str) -> dict[str, Any]:
        instance_id = row["instance_id"]
        keys: list[tuple[str, str]] = []
        if row["key_name"]:
            # (a key pair deleted after launch: EC2 still serves it; cloudlab no longer can)
            with contextlib.suppress(CloudError):
                keys.append((row["key_name"], self.clc.service(KeyPairs).public_key(row["owner"], row["key_name"])))
        user_data = base64.b64decode(row["user_data"]) if row["user_data"] else None
        groups = self.clc.service(SecurityGroups).groups_of([instance_id]).get(instance_id, [])
        owner = self.clc.users.get(row["owner"])
        image = self.clc.images.get(row["image_id"])
        root_disk = image is not None and bool(image.path)  # a disk image boots from vda; an initramfs has none
        return {
            "reservation_id": row["reservation_id"],
            "ami_launch_index": row["launch_index"],
            "kernel_id": row["kernel_id"],
            "ramdisk_id": row["ramdisk_id"],
            "launch_time": row["launch_time"],
            "account_id": owner.user_id if owner else None,
            "security_group_ids": tuple(g.get("GroupId", "") for g in groups),
            "subnet_cidr": str(ipaddress.IPv4Interface(port.address).network) if port else None,
            "block_devices": (("ami", "/dev/vda"), ("root", "/dev/vda")) if root_disk else (),
            "instance_id": instance_id,
            "local_ipv4": private_ip,
            "public_ipv4": self.clc.service(Addresses).public_ips_of([instance_id]).get(instance_id),
            "instance_type": row["instance_type"],
            "ami_id": row["image_id"],
            "availability_zone": row["zone"],
            "hostname": instance_id,
            "security_groups": tuple(g.get("GroupName") or g.get("group_name") or "" for g in groups),
            "public_keys": tuple(keys),
            "user_data": user_data,
            "mac": port.mac if port else None,
        }

    def plan(self, cluster: str) -> NetworkPlan:
        """The router's whole configuration for ``cluster`` as plain data (sent to the CC, hashed to skip no-ops)."""
        held = ",".join("?" * len(_HOLDING))
        rows = self.store.query(
            "SELECT g.group_id, g.slot FROM group_networks g WHERE g.cluster=? ORDER BY g.slot", (cluster,)
        )
        segments = [self._segment(cluster, r["group_id"], r["slot"]) for r in rows]
        rules = self.clc.service(SecurityGroups).rules_for([s.group_id for s in segments])
        nats = self.store.query(
            "SELECT a.public_ip, p.private_ip FROM addresses a JOIN instances i ON i.instance_id = a.instance_id"
            f" JOIN instance_ports p ON p.instance_id = a.instance_id WHERE p.cluster=? AND i.state IN ({held})"
            " ORDER BY a.public_ip",
            (cluster, *_HOLDING),
        )
        return NetworkPlan(
            cluster=cluster,
            groups=tuple(segments),
            rules=tuple(
                IngressRule(r.group_id, r.protocol, r.from_port, r.to_port, r.cidr, r.source_group_id) for r in rules
            ),
            nats=tuple(ElasticNat(n["public_ip"], n["private_ip"]) for n in nats),
            vpcs=self.clc.service(VpcNetworks).routers(cluster) if self.plumbs_vpcs(cluster) else (),
            filters=instance_filters(self.clc, cluster) if self.plumbs_vpcs(cluster) else (),
        )


def plan_digest(plan: NetworkPlan) -> str:
    return hashlib.sha256(json.dumps(encode(plan), sort_keys=True).encode()).hexdigest()


class NetworkSync:
    """Keeps every cluster's router in step with the records.

    A rule authorised or revoked, or an address associated, takes effect within
    :data:`NETWORK_SYNC_S`; the whole plan is sent again every :data:`NETWORK_RESYNC_S`, so a
    restarted CC gets it back.
    """

    def __init__(self, networks: InstanceNetworks) -> None:
        self.networks = networks
        self._lock = threading.Lock()
        self._sent: dict[str, tuple[str | None, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Send every cluster its plan once, then keep them in step in the background.

        The first round is synchronous: the service writes its endpoint (and ``cloudlab up`` returns)
        after this, so the VPC routers and gateways of a restarted cloud's running instances exist by
        then and ``cloudlab ssh`` right after ``up`` finds them."""
        for link in self.networks.clusters.with_network():
            try:
                self.sync(link.name, force=True)
            except Exception as exc:  # a CC that does not answer yet gets it from the loop
                log.warning("network of cluster %s not synchronised at start: %s", link.name, exc)
        if self.networks.clusters.with_network():
            self._thread = threading.Thread(target=self._loop, name="clc-network", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(NETWORK_SYNC_S):
            for link in self.networks.clusters.with_network():
                try:
                    self.sync(link.name)
                except Exception as exc:
                    log.warning("network of cluster %s not synchronised: %s", link.name, exc)

    def sync(self, cluster: str, force: bool = False) -> bool:
        """Send ``cluster``'s network plan to its CC if it changed (or ``force``); True if sent.

        In a VDE fabric a cluster's VPC routers live on its home cluster, which is synchronised first (an
        instance's gateway and metadata service must exist before its init asks for them)."""
        home = self.networks.clc.service(VpcNetworks).home(cluster)
        if home != cluster:
            self._sync_one(home, force)
        return self._sync_one(cluster, force)

    def _sync_one(self, cluster: str, force: bool) -> bool:
        link = self.networks.clusters.get(cluster)
        if link is None or link.subnet is None:
            return False
        with self._lock:
            plan = self.networks.plan(cluster)
            digest = plan_digest(plan)
            sent, when = self._sent.get(cluster, (None, 0.0))
            if not force and digest == sent and time.monotonic() - when < NETWORK_RESYNC_S:
                return False
            link.channel.ask(NETWORK_SYNC, plan)
            self._sent[cluster] = (digest, time.monotonic())
            return True
