"""Internet gateways and the VPCs' main route tables.

An internet gateway is what gives a VPC's instances public (elastic) addresses: it is attached to at
most one VPC, a VPC has at most one, and an attached gateway cannot be deleted (EC2's rules and
codes). The default VPC comes with one attached.

Route tables are not separate records here: each VPC has exactly one, its main table, whose routes
follow from the VPC: its own range is ``local``, and 0.0.0.0/0 goes to the internet gateway while one
is attached. (EC2 lets a user add that route by hand; cloudlab adds it with the attachment, which is
what users of a private cloud want from a gateway. CreateRoute and custom tables are not modelled.)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cloudlab.clc.addresses import HOLDING_STATES, Addresses
from cloudlab.clc.tags import Tags
from cloudlab.clc.users import User
from cloudlab.clc.vpcs import Vpc, Vpcs
from cloudlab.errors import CloudError
from cloudlab.ids import is_valid_id, new_id

_LIVE = ",".join(f"'{s}'" for s in HOLDING_STATES)


@dataclass(frozen=True)
class InternetGateway:
    gateway_id: str
    owner: str
    vpc_id: str | None


@dataclass(frozen=True)
class RouteTable:
    route_table_id: str
    vpc: Vpc
    gateway_id: str | None  # the internet gateway 0.0.0.0/0 goes to, if any


def _check_gateway_id(gateway_id: str) -> str:
    if not isinstance(gateway_id, str) or not is_valid_id(gateway_id, "igw"):
        raise CloudError(
            "InvalidInternetGatewayId.Malformed", f'Invalid id: "{str(gateway_id)[:80]}" (expecting "igw-...")'
        )
    return gateway_id


def _not_found(gateway_id: str) -> CloudError:
    return CloudError("InvalidInternetGatewayID.NotFound", f"The internetGateway ID '{gateway_id}' does not exist")


class Gateways:
    """Internet gateways and route tables (``clc.service(Gateways)``)."""

    def __init__(self, clc: Any) -> None:
        self._clc = clc
        self.store = clc.store

    @property
    def vpcs(self) -> Vpcs:
        """(Looked up when used: a service is built under the CLC's services lock. Its schema holds the gateways'.)"""
        return self._clc.service(Vpcs)

    def _get(self, user: User, gateway_id: str) -> InternetGateway:
        row = self.store.one("SELECT * FROM internet_gateways WHERE gateway_id=?", (_check_gateway_id(gateway_id),))
        if row is None or (row["owner"] != user.name and not user.is_admin):
            raise _not_found(gateway_id)
        return InternetGateway(row["gateway_id"], row["owner"], row["vpc_id"])

    def create(self, user: User, tag_specifications: Sequence[Mapping[str, Any]] | None = None) -> InternetGateway:
        tags = self._clc.service(Tags)
        gateway_id = new_id("igw")
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO internet_gateways (gateway_id, owner, vpc_id, created) VALUES (?,?,NULL,?)",
                (gateway_id, user.name, time.time()),
            )
            if tag_specifications:
                tags.apply_specifications(db, user, "internet-gateway", [gateway_id], tag_specifications)
        return InternetGateway(gateway_id, user.name, None)

    def describe(self, user: User, gateway_ids: Sequence[str] | None = None) -> list[InternetGateway]:
        for gateway_id in gateway_ids or []:
            _check_gateway_id(gateway_id)
        self.vpcs.ensure_default(user.name)
        if user.is_admin:
            rows = self.store.query("SELECT * FROM internet_gateways ORDER BY created, rowid")
        else:
            rows = self.store.query(
                "SELECT * FROM internet_gateways WHERE owner=? ORDER BY created, rowid", (user.name,)
            )
        found = [InternetGateway(r["gateway_id"], r["owner"], r["vpc_id"]) for r in rows]
        if gateway_ids:
            have = {g.gateway_id for g in found}
            missing = [g for g in gateway_ids if g not in have]
            if missing:
                raise _not_found(missing[0])
            found = [g for g in found if g.gateway_id in set(gateway_ids)]
        return found

    def attach(self, user: User, gateway_id: str, vpc_id: str) -> None:
        gateway = self._get(user, gateway_id)
        vpc = self.vpcs.get_vpc(user, vpc_id)
        with self.store.transaction() as db:
            if gateway.vpc_id is not None:
                raise CloudError(
                    "Resource.AlreadyAssociated",
                    f"resource {gateway_id} is already attached to network {gateway.vpc_id}",
                )
            other = db.execute("SELECT gateway_id FROM internet_gateways WHERE vpc_id=?", (vpc.vpc_id,)).fetchone()
            if other is not None:
                raise CloudError(
                    "Resource.AlreadyAssociated",
                    f"resource {vpc.vpc_id} is already attached to network gateway {other['gateway_id']}",
                )
            db.execute("UPDATE internet_gateways SET vpc_id=? WHERE gateway_id=?", (vpc.vpc_id, gateway_id))

    def detach(self, user: User, gateway_id: str, vpc_id: str) -> None:
        gateway = self._get(user, gateway_id)
        self.vpcs.get_vpc(user, vpc_id)
        self._clc.service(Addresses)  # (its tables, read below)
        if gateway.vpc_id != vpc_id:
            raise CloudError("Gateway.NotAttached", f"resource {gateway_id} is not attached to network {vpc_id}")
        with self.store.transaction() as db:
            # elastic addresses associated in the VPC, and auto-assigned ones of its live instances (EC2 counts both)
            public = db.execute(
                "SELECT a.public_ip FROM addresses a JOIN network_interfaces n ON n.instance_id = a.instance_id"
                " WHERE n.vpc_id=? UNION ALL SELECT p.public_ip FROM public_ips p JOIN network_interfaces n"
                " ON n.instance_id = p.instance_id JOIN instances i ON i.instance_id = p.instance_id"
                f" WHERE n.vpc_id=? AND i.state IN ({_LIVE}) LIMIT 1",
                (vpc_id, vpc_id),
            ).fetchone()
            if public is not None:
                raise CloudError(
                    "DependencyViolation",
                    f"Network {vpc_id} has some mapped public address(es) ({public['public_ip']}):"
                    " disassociate them before detaching the gateway",
                )
            db.execute("UPDATE internet_gateways SET vpc_id=NULL WHERE gateway_id=?", (gateway_id,))

    def delete(self, user: User, gateway_id: str) -> None:
        gateway = self._get(user, gateway_id)
        if gateway.vpc_id is not None:
            raise CloudError(
                "DependencyViolation",
                f"The internetGateway '{gateway_id}' has dependencies and cannot be deleted: it is attached to"
                f" {gateway.vpc_id}",
            )
        with self.store.transaction() as db:
            db.execute("DELETE FROM internet_gateways WHERE gateway_id=?", (gateway_id,))
            Tags.remove_resource(db, gateway_id)

    def gateway_of(self, vpc_id: str) -> str | None:
        row = self.store.one("SELECT gateway_id FROM internet_gateways WHERE vpc_id=?", (vpc_id,))
        return row["gateway_id"] if row is not None else None

    # -- route tables --------------------------------------------------------------------------------------------
    def route_tables(self, user: User, route_table_ids: Sequence[str] | None = None) -> list[RouteTable]:
        for route_table_id in route_table_ids or []:
            if not is_valid_id(route_table_id, "rtb"):
                raise CloudError("InvalidRouteTableId.Malformed", f'Invalid id: "{route_table_id[:80]}"')
        tables = [RouteTable(v.route_table_id, v, self.gateway_of(v.vpc_id)) for v in self.vpcs.describe_vpcs(user)]
        if route_table_ids:
            have = {t.route_table_id for t in tables}
            missing = [t for t in route_table_ids if t not in have]
            if missing:
                raise CloudError("InvalidRouteTableID.NotFound", f"The routeTable ID '{missing[0]}' does not exist")
            tables = [t for t in tables if t.route_table_id in set(route_table_ids)]
        return tables
