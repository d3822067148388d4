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
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

from cloudlab.clc.addresses import Addresses
from cloudlab.clc.groups import SecurityGroups
from cloudlab.clc.keypairs import KeyPairs
from cloudlab.errors import CloudError

SCHEMA = """
CREATE TABLE IF NOT EXISTS group_networks (
    cluster TEXT NOT NULL, group_id TEXT NOT NULL, slot INTEGER NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (cluster, group_id), UNIQUE (cluster, slot));
CREATE TABLE IF NOT EXISTS instance_ports (
    instance_id TEXT PRIMARY KEY, cluster TEXT NOT NULL, group_id TEXT NOT NULL, private_ip TEXT NOT NULL,
    mac TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instance_ports_by_ip ON instance_ports(cluster, private_ip);
"""

#: VLAN of slot 0; slot n is VLAN FIRST_VLAN + n (VLAN 1 is every bridge's default, so it is never used).
FIRST_VLAN = 100
#: Host part of the first instance address in a group's /24 (.1 is the gateway).
FIRST_HOST = 10
#: Instance states that hold their private address (a stopped instance keeps it, as in a VPC).
_HOLDING = ("pending", "running", "stopping", "stopped", "shutting-down")


@dataclass(frozen=True)
class GroupSegment:
    """One security group's VLAN and subnet in one cluster."""

    group_id: str
    vlan: int
    subnet: str
    gateway: str


@dataclass(frozen=True)
class Port:
    """An instance's NIC: what the node controller attaches and the guest configures."""

    instance_id: str
    group_id: str
    vlan: int
    address: str  # with prefix, e.g. 10.211.0.10/24
    gateway: str
    mac: str

    @property
    def private_ip(self) -> str:
        return self.address.split("/")[0]


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
    def subnet(self, cluster: str) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.clc.cluster_subnets[cluster])

    def has_network(self, cluster: str) -> bool:
        return cluster in getattr(self.clc, "cluster_subnets", {})

    def _segment(self, cluster: str, group_id: str, slot: int) -> GroupSegment:
        subnets = list(self.subnet(cluster).subnets(new_prefix=24))
        net = subnets[slot]
        return GroupSegment(group_id, FIRST_VLAN + slot, str(net), str(net.network_address + 1))

    # -- allocation (inside the RunInstances transaction) -------------------------------------------------
    def allocate(self, db: sqlite3.Connection, cluster: str, instance_id: str, group_id: str) -> Port:
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
        return Port(instance_id, group_id, segment.vlan, f"{address}/{net.prefixlen}", segment.gateway, mac)

    # -- reads --------------------------------------------------------------------------------------------
    def port(self, instance_id: str) -> Port | None:
        row = self.store.one(
            "SELECT p.*, g.slot FROM instance_ports p JOIN group_networks g"
            " ON g.cluster = p.cluster AND g.group_id = p.group_id WHERE p.instance_id=?",
            (instance_id,),
        )
        if row is None:
            return None
        segment = self._segment(row["cluster"], row["group_id"], row["slot"])
        prefix = ipaddress.IPv4Network(segment.subnet).prefixlen
        return Port(instance_id, row["group_id"], segment.vlan, f"{row['private_ip']}/{prefix}", segment.gateway,
                    row["mac"])

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
        instance_id = row["instance_id"]
        keys: list[tuple[str, str]] = []
        if row["key_name"]:
            # (a key pair deleted after launch: EC2 still serves it; cloudlab no longer can)
            with contextlib.suppress(CloudError):
                keys.append((row["key_name"], self.clc.service(KeyPairs).public_key(row["owner"], row["key_name"])))
        user_data = base64.b64decode(row["user_data"]) if row["user_data"] else None
        groups = self.clc.service(SecurityGroups).groups_of([instance_id]).get(instance_id, [])
        port = self.port(instance_id)
        return {
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

    def plan(self, cluster: str) -> dict[str, Any]:
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
        return {
            "cluster": cluster,
            "groups": [asdict(s) for s in segments],
            "rules": [
                {
                    "group_id": r.group_id,
                    "protocol": r.protocol,
                    "from_port": r.from_port,
                    "to_port": r.to_port,
                    "cidr": r.cidr,
                    "source_group_id": r.source_group_id,
                }
                for r in rules
            ],
            "nats": [{"public_ip": n["public_ip"], "private_ip": n["private_ip"]} for n in nats],
        }


def plan_digest(plan: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
