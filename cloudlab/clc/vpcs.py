"""EC2's networks: VPCs (a user's private address range) and their subnets (one zone each).

As in EC2, every account has a *default VPC*, 172.31.0.0/16, with a default /20 subnet per zone
(172.31.0.0/20 in the first, 172.31.16.0/20 in the second, ...), an internet gateway and a ``default``
security group, made the first time the account needs one; an account that deletes it has none
(CreateDefaultVpc makes it again). A VPC has a main route table (its id is recorded with the VPC; the
routes are derived: the VPC's range is local, and 0.0.0.0/0 goes to the internet gateway once one is
attached).

Rules, as EC2 states them:
- a VPC's range is a /16 to /28 (``InvalidVpc.Range`` otherwise), and here one of the private
  ranges of RFC 1918; ranges of different VPCs, even of one account, may overlap (each VPC is its
  own network);
- a subnet's range is a /16 to /28 inside its VPC's (``InvalidSubnet.Range``), overlapping no other
  subnet of the VPC (``InvalidSubnet.Conflict``); EC2 keeps the first four addresses and the last
  one of each subnet (network, router, DNS, future use, broadcast), so does cloudlab;
- a VPC with subnets, an attached gateway or security groups of its own, or a subnet with instances,
  cannot be deleted (``DependencyViolation``);
- the trade-off of the two network flavours: on ``vde`` (and on a cloud without a network) a VPC spans
  zones; on ``direct`` a VPC lives in one cluster, so a subnet in a second zone is refused, and the
  default VPC has a default subnet in the first zone only.

A user sees and changes only their own VPCs and subnets (an admin all), as for every resource.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cloudlab.clc import group_rules
from cloudlab.clc.tags import Tags
from cloudlab.clc.users import User
from cloudlab.errors import CloudError
from cloudlab.ids import is_valid_id, new_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS vpcs (
    vpc_id TEXT PRIMARY KEY, owner TEXT NOT NULL, cidr TEXT NOT NULL, is_default INTEGER NOT NULL DEFAULT 0,
    dns_support INTEGER NOT NULL DEFAULT 1, dns_hostnames INTEGER NOT NULL DEFAULT 0,
    route_table_id TEXT NOT NULL UNIQUE, main_association_id TEXT NOT NULL, cidr_association_id TEXT NOT NULL,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS vpcs_by_owner ON vpcs(owner);
CREATE TABLE IF NOT EXISTS subnets (
    subnet_id TEXT PRIMARY KEY, vpc_id TEXT NOT NULL, owner TEXT NOT NULL, cidr TEXT NOT NULL, zone TEXT NOT NULL,
    is_default INTEGER NOT NULL DEFAULT 0, map_public_ip INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS subnets_by_vpc ON subnets(vpc_id);
CREATE INDEX IF NOT EXISTS subnets_by_owner ON subnets(owner);
CREATE TABLE IF NOT EXISTS internet_gateways (
    gateway_id TEXT PRIMARY KEY, owner TEXT NOT NULL, vpc_id TEXT UNIQUE, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS default_vpcs (owner TEXT PRIMARY KEY, vpc_id TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS network_interfaces (
    interface_id TEXT PRIMARY KEY, instance_id TEXT, owner TEXT NOT NULL, subnet_id TEXT NOT NULL,
    vpc_id TEXT NOT NULL, private_ip TEXT NOT NULL, mac TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS network_interfaces_by_instance ON network_interfaces(instance_id);
CREATE INDEX IF NOT EXISTS network_interfaces_by_subnet ON network_interfaces(subnet_id, private_ip);
"""

DEFAULT_VPC_CIDR = "172.31.0.0/16"
DEFAULT_SUBNET_PREFIX = 20
PRIVATE_RANGES = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
MIN_PREFIX, MAX_PREFIX = 16, 28
#: Addresses EC2 keeps in every subnet: the first four (network, router, DNS, reserved) and the broadcast one.
RESERVED_LOW, RESERVED_HIGH = 4, 1


@dataclass(frozen=True)
class Vpc:
    vpc_id: str
    owner: str
    cidr: str
    is_default: bool
    dns_support: bool
    dns_hostnames: bool
    route_table_id: str
    main_association_id: str
    cidr_association_id: str
    created: float


@dataclass(frozen=True)
class Subnet:
    subnet_id: str
    vpc_id: str
    owner: str
    cidr: str
    zone: str
    is_default: bool
    map_public_ip: bool
    created: float

    @property
    def gateway(self) -> str:
        """The VPC router's address in this subnet (EC2: the network address + 1)."""
        return str(ipaddress.IPv4Network(self.cidr).network_address + 1)

    def iter_hosts(self) -> Iterator[str]:
        """The addresses instances may have, in order (the first four and the last are EC2's)."""
        net = ipaddress.IPv4Network(self.cidr)
        first, last = int(net.network_address) + RESERVED_LOW, int(net.broadcast_address) - RESERVED_HIGH
        # dotted quads by hand: a launch into a subnet of 10,000 instances skips the held ones first, and
        # IPv4Address's str costs ~8x this (it was a tenth of RunInstances' time at that size)
        return (f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}" for a in range(first, last + 1))

    def is_host(self, address: str) -> bool:
        net = ipaddress.IPv4Network(self.cidr)
        value = int(ipaddress.IPv4Address(address))
        return int(net.network_address) + RESERVED_LOW <= value <= int(net.broadcast_address) - RESERVED_HIGH

    @property
    def size(self) -> int:
        return ipaddress.IPv4Network(self.cidr).num_addresses - RESERVED_LOW - RESERVED_HIGH


def _vpc(row: Any) -> Vpc:
    return Vpc(
        row["vpc_id"],
        row["owner"],
        row["cidr"],
        bool(row["is_default"]),
        bool(row["dns_support"]),
        bool(row["dns_hostnames"]),
        row["route_table_id"],
        row["main_association_id"],
        row["cidr_association_id"],
        row["created"],
    )


def _subnet(row: Any) -> Subnet:
    return Subnet(
        row["subnet_id"],
        row["vpc_id"],
        row["owner"],
        row["cidr"],
        row["zone"],
        bool(row["is_default"]),
        bool(row["map_public_ip"]),
        row["created"],
    )


def check_vpc_id(vpc_id: str) -> str:
    if not isinstance(vpc_id, str) or not is_valid_id(vpc_id, "vpc"):
        raise CloudError("InvalidVpcID.Malformed", f'Invalid id: "{str(vpc_id)[:80]}" (expecting "vpc-...")')
    return vpc_id


def check_subnet_id(subnet_id: str) -> str:
    if not isinstance(subnet_id, str) or not is_valid_id(subnet_id, "subnet"):
        raise CloudError("InvalidSubnetID.Malformed", f'Invalid id: "{str(subnet_id)[:80]}" (expecting "subnet-...")')
    return subnet_id


def vpc_not_found(vpc_id: str) -> CloudError:
    return CloudError("InvalidVpcID.NotFound", f"The vpc ID '{vpc_id}' does not exist")


def subnet_not_found(subnet_id: str) -> CloudError:
    return CloudError("InvalidSubnetID.NotFound", f"The subnet ID '{subnet_id}' does not exist")


def parse_cidr(text: Any, parameter: str = "cidrBlock") -> ipaddress.IPv4Network:
    """An IPv4 network written as EC2 expects it (no host bits), or EC2's InvalidParameterValue."""
    if not isinstance(text, str) or not text:
        raise CloudError("MissingParameter", f"The request must contain the parameter {parameter}")
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError:
        try:
            wider = ipaddress.IPv4Network(text, strict=False)
        except ValueError:
            raise CloudError(
                "InvalidParameterValue",
                f"Value ({text[:80]}) for parameter {parameter} is invalid. This is not a valid CIDR block.",
            ) from None
        raise CloudError(
            "InvalidParameterValue",
            f"Value ({text[:80]}) for parameter {parameter} is invalid: it has host bits set (did you mean {wider}?)",
        ) from None


def check_vpc_cidr(text: Any) -> ipaddress.IPv4Network:
    net = parse_cidr(text)
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise CloudError(
            "InvalidVpc.Range",
            f"The CIDR '{net}' is invalid: a VPC's range is a /{MIN_PREFIX} to a /{MAX_PREFIX}",
        )
    if not any(net.subnet_of(p) for p in PRIVATE_RANGES):
        raise CloudError(
            "InvalidVpc.Range",
            f"The CIDR '{net}' is invalid: a VPC's range must be private (RFC 1918: "
            + ", ".join(str(p) for p in PRIVATE_RANGES)
            + ")",
        )
    return net


def ensure_default_vpc(db: sqlite3.Connection, owner: str) -> str | None:
    """The id of ``owner``'s default VPC, made (with its gateway and default group) the first time;
    None once the account deleted it. Call inside a write transaction.

    Groups an account made before groups belonged to VPCs join this VPC, and its old ``default``
    group becomes the VPC's.
    """
    row = db.execute("SELECT vpc_id FROM default_vpcs WHERE owner=?", (owner,)).fetchone()
    if row is not None:
        return row["vpc_id"]
    vpc_id = insert_vpc(db, owner, DEFAULT_VPC_CIDR, is_default=True)
    db.execute("INSERT INTO default_vpcs (owner, vpc_id, created) VALUES (?,?,?)", (owner, vpc_id, time.time()))
    db.execute(
        "INSERT INTO internet_gateways (gateway_id, owner, vpc_id, created) VALUES (?,?,?,?)",
        (new_id("igw"), owner, vpc_id, time.time()),
    )
    return vpc_id


def insert_vpc(db: sqlite3.Connection, owner: str, cidr: str, *, is_default: bool = False) -> str:
    """A VPC row, its main route table and its ``default`` group (adopting a legacy one for the default VPC)."""
    vpc_id = new_id("vpc")
    db.execute(
        "INSERT INTO vpcs (vpc_id, owner, cidr, is_default, dns_support, dns_hostnames, route_table_id,"
        " main_association_id, cidr_association_id, created) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            vpc_id,
            owner,
            cidr,
            int(is_default),
            1,
            int(is_default),
            new_id("rtb"),
            new_id("rtbassoc"),
            new_id("vpc-cidr-assoc"),
            time.time(),
        ),
    )
    legacy = None
    if is_default:
        db.execute("UPDATE security_groups SET vpc_id=? WHERE owner=? AND vpc_id IS NULL", (vpc_id, owner))
        legacy = db.execute(
            "SELECT group_id FROM security_groups WHERE owner=? AND vpc_id=? AND name=?",
            (owner, vpc_id, group_rules.DEFAULT_GROUP),
        ).fetchone()
    if legacy is None:
        group_rules.insert_default_group(db, owner, vpc_id)
    return vpc_id


class Vpcs:
    """VPCs and subnets (one service per CLC: ``clc.service(Vpcs)``)."""

    def __init__(self, clc: Any) -> None:
        self._clc = clc
        self.store = clc.store
        self.store.ensure_schema(group_rules.SCHEMA)
        group_rules.migrate(self.store)
        self.store.ensure_schema(SCHEMA)

    # -- zones and the network flavour ------------------------------------------------------------------------
    def zones(self) -> list[str]:
        return [z["zone"] for z in self._clc.clusters.zones()]

    def spans_zones(self) -> bool:
        """Whether a VPC may span zones: not on ``direct`` networking, which keeps a VPC in one cluster."""
        return not any(z["network"] == "direct" for z in self._clc.clusters.zones())

    def check_zone(self, zone: str) -> str:
        zones = self.zones()
        if zone not in zones:
            raise CloudError(
                "InvalidParameterValue",
                f"Value ({str(zone)[:80]}) for parameter availabilityZone is invalid. Subnets can currently only be"
                " created in the following availability zones: " + ", ".join(zones),
            )
        return zone

    # -- the default VPC ----------------------------------------------------------------------------------------
    def ensure_default(self, owner: str) -> str | None:
        """``owner``'s default VPC with a default subnet in each zone it spans (None: the account deleted it)."""
        zones = self.zones()
        if not self.spans_zones():
            zones = zones[:1]
        row = self.store.one("SELECT vpc_id FROM default_vpcs WHERE owner=?", (owner,))
        if row is not None and (row["vpc_id"] is None or self._has_default_subnets(row["vpc_id"], zones)):
            return row["vpc_id"]
        with self.store.transaction() as db:
            vpc_id = ensure_default_vpc(db, owner)
            if vpc_id is not None:
                self._default_subnets(db, owner, vpc_id, zones)
        return vpc_id

    def _has_default_subnets(self, vpc_id: str, zones: list[str]) -> bool:
        have = {
            r["zone"] for r in self.store.query("SELECT zone FROM subnets WHERE vpc_id=? AND is_default=1", (vpc_id,))
        }
        return set(zones) <= have

    def _default_subnets(self, db: sqlite3.Connection, owner: str, vpc_id: str, zones: list[str]) -> None:
        have = {r["zone"] for r in db.execute("SELECT zone FROM subnets WHERE vpc_id=? AND is_default=1", (vpc_id,))}
        taken = [
            ipaddress.IPv4Network(r["cidr"]) for r in db.execute("SELECT cidr FROM subnets WHERE vpc_id=?", (vpc_id,))
        ]
        blocks = list(ipaddress.IPv4Network(DEFAULT_VPC_CIDR).subnets(new_prefix=DEFAULT_SUBNET_PREFIX))
        all_zones = self.zones()
        for zone in zones:
            if zone in have:
                continue
            block = blocks[all_zones.index(zone) % len(blocks)]
            if any(block.overlaps(t) for t in taken):  # the user made a subnet there: take the next free block
                block = next((b for b in blocks if not any(b.overlaps(t) for t in taken)), None)
                if block is None:
                    continue
            self._insert_subnet(db, owner, vpc_id, str(block), zone, is_default=True)
            taken.append(block)

    def create_default_vpc(self, user: User) -> Vpc:
        row = self.store.one("SELECT vpc_id FROM default_vpcs WHERE owner=?", (user.name,))
        if row is not None and row["vpc_id"] is not None:
            raise CloudError(
                "DefaultVpcAlreadyExists",
                f"A Default VPC already exists for this account in this region ({row['vpc_id']})",
            )
        with self.store.transaction() as db:
            db.execute("DELETE FROM default_vpcs WHERE owner=?", (user.name,))
        vpc_id = self.ensure_default(user.name)
        assert vpc_id is not None
        return self.get_vpc(user, vpc_id)

    # -- VPCs -----------------------------------------------------------------------------------------------------
    def create_vpc(self, user: User, cidr: Any, tag_specifications: Sequence[Mapping[str, Any]] | None = None) -> Vpc:
        net = check_vpc_cidr(cidr)
        tags = self._clc.service(Tags)
        with self.store.transaction() as db:
            vpc_id = insert_vpc(db, user.name, str(net))
            if tag_specifications:
                tags.apply_specifications(db, user, "vpc", [vpc_id], tag_specifications)
        return self.get_vpc(user, vpc_id)

    def get_vpc(self, user: User, vpc_id: str) -> Vpc:
        row = self.store.one("SELECT * FROM vpcs WHERE vpc_id=?", (check_vpc_id(vpc_id),))
        if row is None or (row["owner"] != user.name and not user.is_admin):
            raise vpc_not_found(vpc_id)
        return _vpc(row)

    def describe_vpcs(self, user: User, vpc_ids: Sequence[str] | None = None) -> list[Vpc]:
        for vpc_id in vpc_ids or []:
            check_vpc_id(vpc_id)
        self.ensure_default(user.name)
        rows = self._visible("vpcs", user)
        found = [_vpc(r) for r in rows]
        if vpc_ids:
            have = {v.vpc_id for v in found}
            missing = [v for v in vpc_ids if v not in have]
            if missing:
                raise vpc_not_found(missing[0])
            found = [v for v in found if v.vpc_id in set(vpc_ids)]
        return found

    def _visible(self, table: str, user: User) -> list[Any]:
        if user.is_admin:
            return self.store.query(f"SELECT * FROM {table} ORDER BY created, rowid")
        return self.store.query(f"SELECT * FROM {table} WHERE owner=? ORDER BY created, rowid", (user.name,))

    def delete_vpc(self, user: User, vpc_id: str) -> None:
        vpc = self.get_vpc(user, vpc_id)
        with self.store.transaction() as db:
            why = []
            subnets = [
                r["subnet_id"]
                for r in db.execute("SELECT subnet_id FROM subnets WHERE vpc_id=? ORDER BY rowid", (vpc_id,))
            ]
            if subnets:
                why.append("subnet(s) " + ", ".join(subnets[:5]))
            gateway = db.execute("SELECT gateway_id FROM internet_gateways WHERE vpc_id=?", (vpc_id,)).fetchone()
            if gateway is not None:
                why.append(f"internet gateway {gateway['gateway_id']} (detach it first)")
            groups = [
                r["group_id"]
                for r in db.execute(
                    "SELECT group_id FROM security_groups WHERE vpc_id=? AND name != ? ORDER BY rowid",
                    (vpc_id, group_rules.DEFAULT_GROUP),
                )
            ]
            if groups:
                why.append("security group(s) " + ", ".join(groups[:5]))
            if why:
                raise CloudError(
                    "DependencyViolation",
                    f"The vpc '{vpc_id}' has dependencies and cannot be deleted: " + "; ".join(why),
                )
            default_groups = [
                r["group_id"] for r in db.execute("SELECT group_id FROM security_groups WHERE vpc_id=?", (vpc_id,))
            ]
            for group_id in default_groups:
                db.execute("DELETE FROM security_group_rules WHERE group_id=?", (group_id,))
                db.execute("DELETE FROM instance_groups WHERE group_id=?", (group_id,))  # terminated instances only
                db.execute("DELETE FROM security_groups WHERE group_id=?", (group_id,))
                Tags.remove_resource(db, group_id)
            db.execute("DELETE FROM vpcs WHERE vpc_id=?", (vpc_id,))
            db.execute("UPDATE default_vpcs SET vpc_id=NULL WHERE vpc_id=?", (vpc_id,))
            Tags.remove_resource(db, vpc_id)
            Tags.remove_resource(db, vpc.route_table_id)

    def set_attribute(self, user: User, vpc_id: str, attribute: str, value: bool) -> None:
        self.get_vpc(user, vpc_id)
        column = {"enableDnsSupport": "dns_support", "enableDnsHostnames": "dns_hostnames"}.get(attribute)
        if column is None:
            raise CloudError("InvalidParameterValue", f"Value ({attribute[:80]}) for parameter attribute is invalid")
        with self.store.transaction() as db:
            db.execute(f"UPDATE vpcs SET {column}=? WHERE vpc_id=?", (int(value), vpc_id))

    # -- subnets -------------------------------------------------------------------------------------------------
    def create_subnet(
        self,
        user: User,
        vpc_id: str,
        cidr: Any,
        zone: str | None = None,
        tag_specifications: Sequence[Mapping[str, Any]] | None = None,
    ) -> Subnet:
        vpc = self.get_vpc(user, vpc_id)
        net = parse_cidr(cidr)
        if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX or not net.subnet_of(ipaddress.IPv4Network(vpc.cidr)):
            raise CloudError(
                "InvalidSubnet.Range",
                f"The CIDR '{net}' is invalid: a subnet is a /{MIN_PREFIX} to a /{MAX_PREFIX} inside its VPC's"
                f" range {vpc.cidr}",
            )
        zone = self.check_zone(zone) if zone else self.zones()[0]
        tags = self._clc.service(Tags)
        with self.store.transaction() as db:
            rows = db.execute("SELECT subnet_id, cidr, zone FROM subnets WHERE vpc_id=?", (vpc_id,)).fetchall()
            for row in rows:
                if net.overlaps(ipaddress.IPv4Network(row["cidr"])):
                    raise CloudError(
                        "InvalidSubnet.Conflict",
                        f"The CIDR '{net}' conflicts with another subnet ({row['subnet_id']}, {row['cidr']})",
                    )
            elsewhere = sorted({r["zone"] for r in rows} - {zone})
            if elsewhere and not self.spans_zones():
                raise CloudError(
                    "InvalidParameterValue",
                    f"Value ({zone}) for parameter availabilityZone is invalid: {vpc_id} already lives in"
                    f" {elsewhere[0]}, and this cloud's direct networking keeps a VPC in one cluster (one zone);"
                    f" create the subnet in {elsewhere[0]}, or run the cloud with --network vde (VPCs span zones)",
                )
            subnet_id = self._insert_subnet(db, vpc.owner, vpc_id, str(net), zone)
            if tag_specifications:
                tags.apply_specifications(db, user, "subnet", [subnet_id], tag_specifications)
        return self.get_subnet(user, subnet_id)

    @staticmethod
    def _insert_subnet(
        db: sqlite3.Connection, owner: str, vpc_id: str, cidr: str, zone: str, *, is_default: bool = False
    ) -> str:
        subnet_id = new_id("subnet")
        db.execute(
            "INSERT INTO subnets (subnet_id, vpc_id, owner, cidr, zone, is_default, map_public_ip, created)"
            " VALUES (?,?,?,?,?,?,?,?)",
            # a default subnet maps public addresses on launch, as EC2's do; a user's subnet does not until told
            (subnet_id, vpc_id, owner, cidr, zone, int(is_default), int(is_default), time.time()),
        )
        return subnet_id

    def get_subnet(self, user: User, subnet_id: str) -> Subnet:
        row = self.store.one("SELECT * FROM subnets WHERE subnet_id=?", (check_subnet_id(subnet_id),))
        if row is None or (row["owner"] != user.name and not user.is_admin):
            raise subnet_not_found(subnet_id)
        return _subnet(row)

    def subnet(self, subnet_id: str) -> Subnet | None:
        """The subnet ``subnet_id`` whoever owns it (for the network plan), or None."""
        row = self.store.one("SELECT * FROM subnets WHERE subnet_id=?", (subnet_id,))
        return _subnet(row) if row is not None else None

    def describe_subnets(self, user: User, subnet_ids: Sequence[str] | None = None) -> list[Subnet]:
        for subnet_id in subnet_ids or []:
            check_subnet_id(subnet_id)
        self.ensure_default(user.name)
        found = [_subnet(r) for r in self._visible("subnets", user)]
        if subnet_ids:
            have = {s.subnet_id for s in found}
            missing = [s for s in subnet_ids if s not in have]
            if missing:
                raise subnet_not_found(missing[0])
            found = [s for s in found if s.subnet_id in set(subnet_ids)]
        return found

    def delete_subnet(self, user: User, subnet_id: str) -> None:
        self.get_subnet(user, subnet_id)
        with self.store.transaction() as db:
            users = self.live_instances_in(db, subnet_id)
            if users:
                raise CloudError(
                    "DependencyViolation",
                    f"The subnet '{subnet_id}' has dependencies and cannot be deleted: instance(s) "
                    + ", ".join(users[:5]),
                )
            db.execute("DELETE FROM subnets WHERE subnet_id=?", (subnet_id,))
            Tags.remove_resource(db, subnet_id)

    @staticmethod
    def live_instances_in(db: sqlite3.Connection, subnet_id: str) -> list[str]:
        """Instances not terminated whose interface is in ``subnet_id``."""
        rows = db.execute(
            "SELECT n.instance_id FROM network_interfaces n JOIN instances i ON i.instance_id = n.instance_id"
            " WHERE n.subnet_id=? AND i.state != 'terminated' ORDER BY n.rowid",
            (subnet_id,),
        ).fetchall()
        return [r["instance_id"] for r in rows]

    def set_map_public_ip(self, user: User, subnet_id: str, value: bool) -> None:
        self.get_subnet(user, subnet_id)
        with self.store.transaction() as db:
            db.execute("UPDATE subnets SET map_public_ip=? WHERE subnet_id=?", (int(value), subnet_id))

    def default_subnet(self, owner: str, zone: str | None) -> Subnet:
        """The subnet an instance launched without one goes to: its default VPC's, in ``zone`` (or the first)."""
        vpc_id = self.ensure_default(owner)
        if vpc_id is None:
            raise CloudError("VPCIdNotSpecified", "No default VPC for this user: name a SubnetId (or CreateDefaultVpc)")
        rows = [
            _subnet(r)
            for r in self.store.query("SELECT * FROM subnets WHERE vpc_id=? AND is_default=1 ORDER BY rowid", (vpc_id,))
        ]
        if zone:
            rows = [s for s in rows if s.zone == zone]
            if not rows:
                self.check_zone(zone)
                raise CloudError(
                    "InvalidParameterValue",
                    f"The default VPC has no subnet in {zone}: this cloud's direct networking keeps a VPC in one"
                    " cluster; launch into the first zone or name a SubnetId of a VPC that lives in this zone",
                )
        if not rows:
            raise CloudError("MissingInput", "No default subnet for this user: name a SubnetId")
        return rows[0]

    def used_addresses(self, subnet_ids: Sequence[str]) -> dict[str, int]:
        """How many addresses of each subnet live instances hold (for AvailableIpAddressCount)."""
        answer = dict.fromkeys(subnet_ids, 0)
        if not subnet_ids:
            return answer
        rows = self.store.query(
            "SELECT n.subnet_id, COUNT(*) AS n FROM network_interfaces n JOIN instances i"
            " ON i.instance_id = n.instance_id WHERE i.state != 'terminated'"
            f" AND n.subnet_id IN ({','.join('?' * len(subnet_ids))}) GROUP BY n.subnet_id",
            list(subnet_ids),
        )
        for row in rows:
            answer[row["subnet_id"]] = row["n"]
        return answer
