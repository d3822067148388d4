"""Elastic (public) addresses: a user allocates one from the cloud's public pool, associates it with one of
their instances, and keeps it across instances until they release it.

The pool is the cloud's ``public_pool`` (a CIDR; its network and broadcast addresses are never
handed out) and addresses are given lowest first. A user holds at most their ``addresses`` quota
of them (:mod:`cloudlab.clc.quotas`; EC2's default is 5), checked in the allocating transaction.
A user sees and touches only their own addresses and can associate them only with their own
instances; an admin sees and touches all.

An association ends when its instance is terminated (as in EC2). The cloud controller may say so
at once (:meth:`Addresses.on_instance_terminated`, in the transaction that ends the instance);
whether or not it does, every read treats an association with an instance that is shutting down,
terminated or gone as absent, and every write clears such associations first.

In a VPC (EC2's rules): an address is associated with an instance, or with its network interface
(``NetworkInterfaceId``), only while the instance's VPC has an internet gateway attached
(``Gateway.NotAttached`` otherwise). An instance launched into a subnet that maps public addresses on
launch (the default subnets; ``MapPublicIpOnLaunch``, or ``AssociatePublicIpAddress`` in RunInstances'
``NetworkInterfaces``) gets an *auto-assigned* public address from the same pool: not an allocation of
anybody's, held while the instance runs and shown in its place while an elastic address is associated
with it (EC2 gives it a new one after; here it is the same one). As on EC2, a stopped instance gives its
auto-assigned address back to the pool and StartInstances gives it a fresh one (the lowest free, so perhaps
another); an elastic address stays associated across a stop and start. Whether an instance gets one on start is
recorded at launch (``public_ip_wanted``), so an instance launched while the pool was exhausted gets one on its
next start if the pool has room then.

This module only keeps the records: the NAT that makes an address reach its instance belongs to
the cluster network (managed mode: :mod:`cloudlab.clc.network`; VPCs: :mod:`cloudlab.clc.vpc_network`).
"""

from __future__ import annotations

import ipaddress
import logging
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cloudlab.clc import quotas
from cloudlab.clc.tags import Tags
from cloudlab.clc.vpcs import Vpcs
from cloudlab.errors import CloudError
from cloudlab.ids import is_valid_id, new_id

log = logging.getLogger(__name__)

DOMAINS = ("vpc", "standard")
#: Instance states an address can be associated in (EC2 also allows stopped instances in a VPC).
ASSOCIABLE_STATES = ("pending", "running")
#: Instance states in which an existing association stands.
HOLDING_STATES = ("pending", "running", "stopping", "stopped")
_CHUNK = 500

SCHEMA = """
CREATE TABLE IF NOT EXISTS addresses (
    allocation_id TEXT PRIMARY KEY, public_ip TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,
    domain TEXT NOT NULL DEFAULT 'vpc', instance_id TEXT, association_id TEXT UNIQUE, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS addresses_by_owner ON addresses(owner);
CREATE INDEX IF NOT EXISTS addresses_by_instance ON addresses(instance_id);
CREATE TABLE IF NOT EXISTS public_ips (
    instance_id TEXT PRIMARY KEY, public_ip TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS public_ip_wanted (instance_id TEXT PRIMARY KEY);
"""

_HOLDING = ",".join(f"'{s}'" for s in HOLDING_STATES)
#: Addresses with their live association only (an association with an ended instance reads as none).
_SELECT = f"""
SELECT a.allocation_id, a.public_ip, a.owner, a.domain, a.created,
    CASE WHEN i.state IN ({_HOLDING}) THEN a.instance_id END AS instance_id,
    CASE WHEN i.state IN ({_HOLDING}) THEN a.association_id END AS association_id
FROM addresses a LEFT JOIN instances i ON i.instance_id = a.instance_id
"""
_SWEEP = f"""
UPDATE addresses SET instance_id=NULL, association_id=NULL
WHERE instance_id IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM instances i WHERE i.instance_id = addresses.instance_id AND i.state IN ({_HOLDING}))
"""
_SWEEP_AUTO = f"""
DELETE FROM public_ips WHERE NOT EXISTS (
    SELECT 1 FROM instances i WHERE i.instance_id = public_ips.instance_id AND i.state IN ({_HOLDING}))
"""
#: Every address of the pool in use: allocated, or auto-assigned to a live instance.
_USED = f"""
SELECT public_ip FROM addresses UNION SELECT p.public_ip FROM public_ips p
JOIN instances i ON i.instance_id = p.instance_id WHERE i.state IN ({_HOLDING})
"""


def _ip_key(row: Mapping[str, Any]) -> int:
    return int(ipaddress.ip_address(row["public_ip"]))


def _check_allocation_id(allocation_id: str) -> None:
    if not is_valid_id(allocation_id, "eipalloc"):
        raise CloudError(
            "InvalidAllocationID.Malformed", f'Invalid id: "{allocation_id[:80]}" (expecting "eipalloc-...")'
        )


def _one_of(public_ip: str | None, other: str | None, other_name: str) -> None:
    if not public_ip and not other:
        raise CloudError("MissingParameter", f"The request must contain the parameter PublicIp or {other_name}")
    if public_ip and other:
        raise CloudError("InvalidParameterCombination", f"Specify either PublicIp or {other_name}, not both")


class Addresses:
    """The cloud's elastic addresses and their associations with instances."""

    def __init__(self, clc: Any) -> None:
        self.clc = clc
        self.store = clc.store
        self.store.ensure_schema(SCHEMA)
        quotas.ensure_schema(self.store)

    @property
    def tags(self) -> Tags:
        # (looked up on use, never while a transaction is open: building a service creates its tables)
        return self.clc.service(Tags)

    def pool(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.clc.public_pool, strict=False)

    # -- lookups -------------------------------------------------------------------------------------------
    @staticmethod
    def _find(
        db: sqlite3.Connection, user: Any, public_ip: str | None = None, allocation_id: str | None = None
    ) -> sqlite3.Row:
        """One address ``user`` may touch, by allocation id or public address; EC2's NotFound otherwise."""
        if allocation_id:
            _check_allocation_id(allocation_id)
            row = db.execute("SELECT * FROM addresses WHERE allocation_id=?", (allocation_id,)).fetchone()
            if row is None or (not user.is_admin and row["owner"] != user.name):
                raise CloudError("InvalidAllocationID.NotFound", f"The allocation ID '{allocation_id}' does not exist")
            return row
        row = db.execute("SELECT * FROM addresses WHERE public_ip=?", (public_ip,)).fetchone()
        if row is None or (not user.is_admin and row["owner"] != user.name):
            raise CloudError("InvalidAddress.NotFound", f"Address '{public_ip}' not found.")
        return row

    @staticmethod
    def _sweep(db: sqlite3.Connection) -> None:
        """Clear associations whose instance is shutting down, terminated or gone."""
        db.execute(_SWEEP)

    # -- AllocateAddress / ReleaseAddress --------------------------------------------------------------------
    def allocate(
        self,
        user: Any,
        domain: str | None = "vpc",
        *,
        address: str | None = None,
        tag_specifications: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Give ``user`` the lowest free address of the pool (or ``address``, if it is free)."""
        domain = domain or "vpc"
        if domain not in DOMAINS:
            raise CloudError("InvalidParameterValue", f"Invalid value '{domain}' for domain (vpc or standard)")
        tags = self.tags
        network = self.pool()
        wanted_ip = None
        if address:
            try:
                wanted_ip = ipaddress.ip_address(address)
            except ValueError:
                raise CloudError("InvalidParameterValue", f"Invalid value '{address}' for Address") from None
            if wanted_ip not in network or wanted_ip in (network.network_address, network.broadcast_address):
                raise CloudError("InvalidParameterValue", f"Address {address} is not in the public pool {network}")
        allocation_id = new_id("eipalloc")
        with self.store.transaction() as db:
            (held,) = db.execute("SELECT COUNT(*) FROM addresses WHERE owner=?", (user.name,)).fetchone()
            quota = quotas.limit(db, user.name, "addresses")
            if quota is not None and held >= quota:
                raise quotas.refuse("addresses", user.name, quota, held, 1)
            used = {r["public_ip"] for r in db.execute(_USED)}
            if wanted_ip is not None:
                if str(wanted_ip) in used:
                    raise CloudError("InvalidIPAddress.InUse", f"Address {wanted_ip} is in use")
                public_ip = str(wanted_ip)
            else:
                free = next((ip for ip in map(str, network.hosts()) if ip not in used), None)
                if free is None:
                    raise CloudError("AddressLimitExceeded", f"The public address pool {network} is exhausted")
                public_ip = free
            now = time.time()
            db.execute(
                "INSERT INTO addresses (allocation_id, public_ip, owner, domain, created) VALUES (?,?,?,?,?)",
                (allocation_id, public_ip, user.name, domain, now),
            )
            tags.apply_specifications(db, user, "elastic-ip", [allocation_id], tag_specifications)
        return {
            "allocation_id": allocation_id,
            "public_ip": public_ip,
            "owner": user.name,
            "domain": domain,
            "instance_id": None,
            "association_id": None,
            "created": now,
        }

    def release(self, user: Any, public_ip: str | None = None, allocation_id: str | None = None) -> None:
        """Give an address back to the pool; it must not be associated."""
        _one_of(public_ip, allocation_id, "AllocationId")
        tags = self.tags
        with self.store.transaction() as db:
            self._sweep(db)
            row = self._find(db, user, public_ip, allocation_id)
            if row["instance_id"]:
                raise CloudError(
                    "InvalidIPAddress.InUse",
                    f"Address {row['public_ip']} is associated with {row['instance_id']}; disassociate it first",
                )
            db.execute("DELETE FROM addresses WHERE allocation_id=?", (row["allocation_id"],))
            tags.remove_resource(db, row["allocation_id"])

    # -- AssociateAddress / DisassociateAddress --------------------------------------------------------------
    def associate(
        self,
        user: Any,
        instance_id: str | None,
        public_ip: str | None = None,
        allocation_id: str | None = None,
        allow_reassociation: bool = False,
        interface_id: str | None = None,
    ) -> str:
        """Point an address at one of ``user``'s instances (or at the instance of its network interface
        ``interface_id``); returns the association id.

        An address already associated with another instance moves only with ``allow_reassociation``;
        an instance that already has an address gets the new one instead (the old one is disassociated).
        An instance in a VPC without an internet gateway takes none (EC2's ``Gateway.NotAttached``).
        """
        if instance_id and interface_id:
            raise CloudError("InvalidParameterCombination", "Specify either InstanceId or NetworkInterfaceId, not both")
        if not instance_id and not interface_id:
            raise CloudError("MissingParameter", "The request must contain the parameter InstanceId")
        if instance_id and not is_valid_id(instance_id, "i"):
            raise CloudError("InvalidInstanceID.Malformed", f'Invalid id: "{instance_id}"')
        if interface_id and not is_valid_id(interface_id, "eni"):
            raise CloudError("InvalidNetworkInterfaceId.Malformed", f'Invalid id: "{interface_id[:80]}"')
        _one_of(public_ip, allocation_id, "AllocationId")
        self.clc.service(Vpcs)  # (its tables: the interfaces and gateways read below)
        with self.store.transaction() as db:
            self._sweep(db)
            address = self._find(db, user, public_ip, allocation_id)
            nic = db.execute(
                "SELECT n.instance_id, n.owner, n.vpc_id, g.gateway_id FROM network_interfaces n"
                " LEFT JOIN internet_gateways g ON g.vpc_id = n.vpc_id WHERE "
                + ("n.interface_id=?" if interface_id else "n.instance_id=?"),
                (interface_id or instance_id,),
            ).fetchone()
            if interface_id:
                if nic is None or nic["instance_id"] is None or (not user.is_admin and nic["owner"] != user.name):
                    raise CloudError(
                        "InvalidNetworkInterfaceID.NotFound", f"The networkInterface ID '{interface_id}' does not exist"
                    )
                instance_id = nic["instance_id"]
            instance = db.execute("SELECT owner, state FROM instances WHERE instance_id=?", (instance_id,)).fetchone()
            if instance is None or (not user.is_admin and instance["owner"] != user.name):
                if interface_id:
                    raise CloudError(
                        "InvalidNetworkInterfaceID.NotFound", f"The networkInterface ID '{interface_id}' does not exist"
                    )
                raise CloudError("InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist")
            if nic is not None and nic["gateway_id"] is None:
                raise CloudError(
                    "Gateway.NotAttached", f"Network {nic['vpc_id']} is not attached to any internet gateway"
                )
            if instance["state"] not in ASSOCIABLE_STATES:
                raise CloudError(
                    "IncorrectInstanceState",
                    f"The instance '{instance_id}' is not in a valid state for this operation ({instance['state']})",
                )
            if address["instance_id"] == instance_id:
                return address["association_id"]
            if address["instance_id"] and not allow_reassociation:
                raise CloudError(
                    "Resource.AlreadyAssociated",
                    f"Address {address['public_ip']} is already associated with {address['instance_id']}",
                )
            association_id = new_id("eipassoc")
            db.execute("UPDATE addresses SET instance_id=NULL, association_id=NULL WHERE instance_id=?", (instance_id,))
            db.execute(
                "UPDATE addresses SET instance_id=?, association_id=? WHERE allocation_id=?",
                (instance_id, association_id, address["allocation_id"]),
            )
        return association_id

    def disassociate(self, user: Any, association_id: str | None = None, public_ip: str | None = None) -> None:
        """End an association, named by its id or by the public address (a no-op if that has none)."""
        _one_of(public_ip, association_id, "AssociationId")
        with self.store.transaction() as db:
            self._sweep(db)
            if association_id:
                row = db.execute("SELECT * FROM addresses WHERE association_id=?", (association_id,)).fetchone()
                if row is None or (not user.is_admin and row["owner"] != user.name):
                    raise CloudError(
                        "InvalidAssociationID.NotFound", f"The association ID '{association_id}' does not exist"
                    )
            else:
                row = self._find(db, user, public_ip=public_ip)
            db.execute(
                "UPDATE addresses SET instance_id=NULL, association_id=NULL WHERE allocation_id=?",
                (row["allocation_id"],),
            )

    # -- DescribeAddresses and the views of other services ---------------------------------------------------
    def describe(
        self, user: Any, public_ips: Sequence[str] | None = None, allocation_ids: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """``user``'s addresses (an admin's: all), lowest first, each with its ``tags``; filters are the
        API layer's job. Naming an address the user does not hold is EC2's NotFound."""
        sql, params = _SELECT, []
        if not user.is_admin:
            sql, params = sql + " WHERE a.owner=?", [user.name]
        rows = sorted((dict(r) for r in self.store.query(sql, params)), key=_ip_key)
        if public_ips:
            held = {r["public_ip"] for r in rows}
            missing = [ip for ip in public_ips if ip not in held]
            if missing:
                raise CloudError("InvalidAddress.NotFound", f"Address '{missing[0]}' not found.")
            rows = [r for r in rows if r["public_ip"] in public_ips]
        if allocation_ids:
            for allocation_id in allocation_ids:
                _check_allocation_id(allocation_id)
            held = {r["allocation_id"] for r in rows}
            missing = [a for a in allocation_ids if a not in held]
            if missing:
                raise CloudError("InvalidAllocationID.NotFound", f"The allocation ID '{missing[0]}' does not exist")
            rows = [r for r in rows if r["allocation_id"] in allocation_ids]
        tags = self.tags.for_resources(r["allocation_id"] for r in rows)
        for row in rows:
            row["tags"] = tags.get(row["allocation_id"], [])
        return rows

    def public_ips_of(self, instance_ids: Iterable[str]) -> dict[str, str]:
        """``{instance_id: public_ip}`` for those of the instances that have a public address: a (live)
        association, else an auto-assigned one."""
        ids = list(dict.fromkeys(instance_ids))
        found = self._auto_ips_of(ids)
        found.update(self._elastic_ips_of(ids))
        return found

    def _auto_ips_of(self, ids: list[str]) -> dict[str, str]:
        return self._ips_of(ids, "public_ips")

    def _elastic_ips_of(self, ids: list[str]) -> dict[str, str]:
        return self._ips_of(ids, "addresses")

    def _ips_of(self, ids: list[str], table: str) -> dict[str, str]:
        """``{instance_id: public_ip}`` of ``table``'s rows for the live ones of ``ids``."""
        live = (
            f"SELECT t.instance_id, t.public_ip FROM {table} t JOIN instances i ON i.instance_id = t.instance_id"
            f" WHERE i.state IN ({_HOLDING})"
        )
        if len(ids) > _CHUNK:  # a large describe: read them all and keep the ones asked
            wanted = set(ids)
            return {r["instance_id"]: r["public_ip"] for r in self.store.query(live) if r["instance_id"] in wanted}
        found: dict[str, str] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            rows = self.store.query(f"{live} AND t.instance_id IN ({','.join('?' * len(chunk))})", chunk)
            found.update({r["instance_id"]: r["public_ip"] for r in rows})
        return found

    # -- auto-assigned public addresses (MapPublicIpOnLaunch) -----------------------------------------------
    def assign_public_ip(self, db: sqlite3.Connection, instance_id: str) -> str | None:
        """Give a launching instance the lowest free address of the pool (inside RunInstances' transaction).

        An exhausted pool launches the instance without one (logged), rather than refusing it: EC2's pool is
        as good as endless, a private cloud's is a /24, and a user who asked for nothing in particular (a
        default subnet) should not see a launch fail for an address they may never use."""
        db.execute("INSERT OR IGNORE INTO public_ip_wanted (instance_id) VALUES (?)", (instance_id,))
        db.execute(_SWEEP_AUTO)
        used = {r["public_ip"] for r in db.execute(_USED)}
        network = self.pool()
        free = next((ip for ip in map(str, network.hosts()) if ip not in used), None)
        if free is None:
            log.warning("%s: no auto-assigned public address, the public pool %s is exhausted", instance_id, network)
            return None
        db.execute(
            "INSERT OR REPLACE INTO public_ips (instance_id, public_ip, created) VALUES (?,?,?)",
            (instance_id, free, time.time()),
        )
        return free

    def assign_on_start(self, instance_id: str) -> str | None:
        """A fresh auto-assigned address for an instance that StartInstances has just moved to ``pending``, if it
        was launched with one (EC2 gives a started instance a new public address; it gave its old one up when it
        stopped). An elastic address associated with it still takes its place."""
        with self.store.transaction() as db:
            wanted = db.execute(
                "SELECT 1 FROM public_ip_wanted w JOIN instances i ON i.instance_id = w.instance_id"
                " WHERE w.instance_id=? AND i.state IN ('pending', 'running')",
                (instance_id,),
            ).fetchone()
            held = db.execute("SELECT 1 FROM public_ips WHERE instance_id=?", (instance_id,)).fetchone()
            if wanted is None or held is not None:
                return None
            return self.assign_public_ip(db, instance_id)

    @staticmethod
    def on_instance_stopped(db: sqlite3.Connection, instance_id: str) -> None:
        """Give the instance's auto-assigned address back to the pool (call in the transaction that moves it to
        stopping or stopped); its elastic address stays associated, as on EC2. The wish for one on start is kept
        (recorded here too for instances launched before it was recorded at launch)."""
        try:
            db.execute(
                "INSERT OR IGNORE INTO public_ip_wanted (instance_id) SELECT instance_id FROM public_ips"
                " WHERE instance_id=?",
                (instance_id,),
            )
            db.execute("DELETE FROM public_ips WHERE instance_id=?", (instance_id,))
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise

    @staticmethod
    def on_instance_terminated(db: sqlite3.Connection, instance_id: str) -> None:
        """Disassociate the instance's address (call in the transaction that moves it to shutting-down or
        terminated). Harmless when the cloud has no addresses table yet."""
        try:
            db.execute("UPDATE addresses SET instance_id=NULL, association_id=NULL WHERE instance_id=?", (instance_id,))
            db.execute("DELETE FROM public_ips WHERE instance_id=?", (instance_id,))
            db.execute("DELETE FROM public_ip_wanted WHERE instance_id=?", (instance_id,))
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
