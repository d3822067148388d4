"""VPC subnets as the cluster network plumbs them: a segment per subnet, a router per VPC, in each cluster.

In a cluster whose network plumbs VPCs (``network_model: vpc`` in ``cloud.json``), every subnet with
instances there gets a slot, and so a layer-2 segment (VLAN ``FIRST_SUBNET_VLAN + slot``: a bridge on
``direct``, a VLAN of the switches on ``vde``), and every VPC a router of its own (a namespace holding
its subnets' gateways, the network address + 1, and its metadata service). VPCs never share a router,
so their ranges may overlap and they cannot reach each other. This module decides and records, from
the database alone (so a restarted cloud rebuilds the same network); the cluster controller builds.

On ``vde`` with several clusters the clusters' networks are one fabric (:mod:`cloudlab.cc.fabric`): the
switches of every cluster are joined by cables to the first cluster's, so a VPC spans zones with one
router, on the first cluster (its *home*), and its subnets are VLANs carried over the cables. Slots
(and so VLAN numbers) are then the home's, one numbering for the whole fabric, and the other clusters'
plans carry the same routers with ``home`` set: they make the VLANs, not the routers. (One router per
VPC per cluster would need the clusters to agree on routes between their routers; one router is the
simplest design that is honest about where a VPC's traffic goes: through the cables, to the home.)

Security groups are per-instance filters (:mod:`cloudlab.clc.vpc_filters`). A router whose VPC has an internet
gateway attached carries ``internet`` and its instances' public addresses (an associated elastic address, else an
auto-assigned one): the cluster translates them 1:1 at the router's uplink to the cluster's public side, and only
those instances get out (:mod:`cloudlab.net.vpc_edge`); without a gateway nothing leaves the VPC.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import time
from typing import Any

from cloudlab.clc.addresses import Addresses
from cloudlab.clc.vpcs import Vpcs
from cloudlab.contract import FIRST_SUBNET_VLAN, ElasticNat, NicPlan, SubnetSegment, VpcRouter
from cloudlab.errors import CloudError

SCHEMA = """
CREATE TABLE IF NOT EXISTS vpc_routers (
    cluster TEXT NOT NULL, vpc_id TEXT NOT NULL, slot INTEGER NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (cluster, vpc_id), UNIQUE (cluster, slot));
CREATE TABLE IF NOT EXISTS subnet_segments (
    cluster TEXT NOT NULL, subnet_id TEXT NOT NULL, slot INTEGER NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (cluster, subnet_id), UNIQUE (cluster, slot));
"""

#: Segments per cluster: VLANs FIRST_SUBNET_VLAN .. +MAX_SEGMENTS-1 (and as many gateway ports on a VDE switch).
MAX_SEGMENTS = 64
MAX_ROUTERS = 1024
_LIVE = "('pending', 'running', 'stopping', 'stopped', 'shutting-down')"


def _slot(db: sqlite3.Connection, table: str, key: str, cluster: str, value: str, limit: int) -> int:
    row = db.execute(f"SELECT slot FROM {table} WHERE cluster=? AND {key}=?", (cluster, value)).fetchone()
    if row is not None:
        return int(row["slot"])
    used = {r["slot"] for r in db.execute(f"SELECT slot FROM {table} WHERE cluster=?", (cluster,))}
    slot = next((s for s in range(limit) if s not in used), None)
    if slot is None:
        raise CloudError(
            "InsufficientFreeAddressesInSubnet",
            f"cluster {cluster} has room for {limit} {'subnets' if key == 'subnet_id' else 'VPCs'} with instances,"
            " all in use",
        )
    db.execute(
        f"INSERT INTO {table} (cluster, {key}, slot, created) VALUES (?,?,?,?)", (cluster, value, slot, time.time())
    )
    return slot


class VpcNetworks:
    """Segments and routers of VPC subnets, per cluster (``clc.service(VpcNetworks)``)."""

    def __init__(self, clc: Any) -> None:
        self.clc = clc
        self.store = clc.store
        self.store.ensure_schema(SCHEMA)

    # -- the fabric ------------------------------------------------------------------------------------------
    def fabric(self) -> list[str]:
        """The clusters joined into one VDE fabric, home first (empty: every cluster plumbs its own)."""
        members = [
            link.name
            for link in self.clc.clusters.all()
            if link.vpc_network and link.subnet is not None and link.network == "vde"
        ]
        return members if len(members) > 1 else []

    def home(self, cluster: str) -> str:
        """The cluster whose network holds the routers of ``cluster``'s VPC subnets."""
        fabric = self.fabric()
        return fabric[0] if cluster in fabric else cluster

    def peers(self, cluster: str) -> list[str]:
        """The clusters whose instances ``cluster``'s routers serve (itself, or the whole fabric)."""
        fabric = self.fabric()
        return fabric if cluster in fabric else [cluster]

    # -- allocation and reads ----------------------------------------------------------------------------------
    def allocate(self, db: sqlite3.Connection, cluster: str, vpc_id: str, subnet_id: str) -> None:
        """Give the subnet its segment and its VPC its router, in ``cluster``'s home (inside RunInstances'
        transaction)."""
        home = self.home(cluster)
        _slot(db, "vpc_routers", "vpc_id", home, vpc_id, MAX_ROUTERS)
        _slot(db, "subnet_segments", "subnet_id", home, subnet_id, MAX_SEGMENTS)

    def nic(self, instance_id: str) -> NicPlan | None:
        """The NIC of a VPC instance whose cluster plumbs its subnet (None otherwise)."""
        found = self.store.one("SELECT cluster FROM instances WHERE instance_id=?", (instance_id,))
        if found is None:
            return None
        row = self.store.one(
            "SELECT n.*, s.cidr, g.slot FROM network_interfaces n JOIN subnets s ON s.subnet_id = n.subnet_id"
            " JOIN subnet_segments g ON g.subnet_id = n.subnet_id AND g.cluster = ? WHERE n.instance_id=?",
            (self.home(found["cluster"]), instance_id),
        )
        if row is None:
            return None
        net = ipaddress.IPv4Network(row["cidr"])
        return NicPlan(
            instance_id,
            row["subnet_id"],
            FIRST_SUBNET_VLAN + row["slot"],
            f"{row['private_ip']}/{net.prefixlen}",
            str(net.network_address + 1),
            row["mac"],
        )

    def routers(self, cluster: str) -> tuple[VpcRouter, ...]:
        """Every VPC router of ``cluster`` with its subnets' segments (for the network plan); in a fabric, the
        home's routers, with ``home`` naming it in the other clusters' plans."""
        home = self.home(cluster)
        routers = self.store.query("SELECT vpc_id, slot FROM vpc_routers WHERE cluster=? ORDER BY slot", (home,))
        segments = self.store.query(
            "SELECT g.subnet_id, g.slot, s.cidr, s.vpc_id FROM subnet_segments g JOIN subnets s"
            " ON s.subnet_id = g.subnet_id WHERE g.cluster=? ORDER BY g.slot",
            (home,),
        )
        by_vpc: dict[str, list[SubnetSegment]] = {}
        for seg in segments:
            net = ipaddress.IPv4Network(seg["cidr"])
            by_vpc.setdefault(seg["vpc_id"], []).append(
                SubnetSegment(
                    seg["subnet_id"], FIRST_SUBNET_VLAN + seg["slot"], seg["cidr"], str(net.network_address + 1)
                )
            )
        elsewhere = "" if home == cluster else home
        internet, nats = self._edges(cluster) if not elsewhere else (set(), {})
        return tuple(
            VpcRouter(
                r["vpc_id"],
                r["slot"],
                tuple(by_vpc.get(r["vpc_id"], ())),
                elsewhere,
                r["vpc_id"] in internet,
                tuple(nats.get(r["vpc_id"], ())),
            )
            for r in routers
        )

    def _edges(self, cluster: str) -> tuple[set[str], dict[str, list[ElasticNat]]]:
        """The VPCs of ``cluster``'s routers with an internet gateway, and their live instances' public addresses."""
        addresses = self.clc.service(Addresses)  # (its tables and the gateways', read here)
        self.clc.service(Vpcs)
        peers = self.peers(cluster)
        internet = {
            r["vpc_id"]
            for r in self.store.query(
                "SELECT g.vpc_id FROM internet_gateways g JOIN vpc_routers r ON r.vpc_id = g.vpc_id WHERE r.cluster=?",
                (self.home(cluster),),
            )
        }
        if not internet:
            return internet, {}
        rows = self.store.query(
            "SELECT n.instance_id, n.vpc_id, n.private_ip FROM network_interfaces n JOIN instances i"
            " ON i.instance_id = n.instance_id JOIN internet_gateways g ON g.vpc_id = n.vpc_id"
            f" WHERE i.cluster IN ({','.join('?' * len(peers))}) AND i.state IN {_LIVE}",
            peers,
        )
        public = addresses.public_ips_of([r["instance_id"] for r in rows])
        nats: dict[str, list[ElasticNat]] = {}
        for r in sorted(rows, key=lambda r: public.get(r["instance_id"], "")):
            if r["instance_id"] in public:
                nats.setdefault(r["vpc_id"], []).append(ElasticNat(public[r["instance_id"]], r["private_ip"]))
        return internet, nats

    def instance_at(self, cluster: str, vpc_id: str, private_ip: str) -> dict[str, Any] | None:
        """The live instance of ``vpc_id`` at ``private_ip`` that ``cluster``'s router of it serves (for its VPC's
        metadata service; in a fabric, the home's router serves the instances of every cluster)."""
        peers = self.peers(cluster)
        row = self.store.one(
            "SELECT i.* FROM network_interfaces n JOIN instances i ON i.instance_id = n.instance_id"
            f" WHERE n.vpc_id=? AND n.private_ip=? AND i.cluster IN ({','.join('?' * len(peers))})"
            f" AND i.state IN {_LIVE} ORDER BY i.launch_time DESC LIMIT 1",
            (vpc_id, private_ip, *peers),
        )
        return dict(row) if row is not None else None
