"""Security groups' tables and rules at the level of rows: what a rule is, how it is normalised and stored.

Split from :mod:`cloudlab.clc.groups` so that :mod:`cloudlab.clc.vpcs` can create a VPC's default group
in the same transaction as the VPC without importing the group service (which itself needs the VPCs).

A group belongs to a VPC (``vpc_id``); group names are unique per owner and VPC, as in EC2. A rule is
ingress or egress (``egress``); every new group gets EC2's one egress rule (everything to 0.0.0.0/0),
which can be revoked like any other. A VPC's ``default`` group also lets its members reach each other.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import time
from dataclasses import dataclass, field, replace
from typing import Any

from cloudlab.errors import CloudError
from cloudlab.ids import new_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS security_groups (
    group_id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
    created REAL NOT NULL, vpc_id TEXT, UNIQUE (owner, vpc_id, name));
CREATE TABLE IF NOT EXISTS security_group_rules (
    rule_id TEXT PRIMARY KEY, group_id TEXT NOT NULL, protocol TEXT NOT NULL, from_port INTEGER, to_port INTEGER,
    cidr TEXT, source_group_id TEXT, description TEXT, egress INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS security_group_rules_by_group ON security_group_rules(group_id);
CREATE INDEX IF NOT EXISTS security_group_rules_by_source ON security_group_rules(source_group_id);
CREATE TABLE IF NOT EXISTS instance_groups (
    instance_id TEXT NOT NULL, group_id TEXT NOT NULL, PRIMARY KEY (instance_id, group_id));
CREATE INDEX IF NOT EXISTS instance_groups_by_group ON instance_groups(group_id);
"""

#: A database made before groups belonged to VPCs: the groups table is rebuilt with ``vpc_id`` (and the
#: name unique per VPC), rules get ``egress``. The account's groups join its default VPC when it is made.
_MIGRATE_GROUPS = """
CREATE TABLE security_groups_vpc (
    group_id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
    created REAL NOT NULL, vpc_id TEXT, UNIQUE (owner, vpc_id, name));
INSERT INTO security_groups_vpc (group_id, owner, name, description, created)
    SELECT group_id, owner, name, description, created FROM security_groups;
DROP TABLE security_groups;
ALTER TABLE security_groups_vpc RENAME TO security_groups;
"""

DEFAULT_GROUP = "default"
DEFAULT_DESCRIPTION = "default VPC security group"
PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp", "-1": "-1", "all": "-1"}


@dataclass(frozen=True)
class Rule:
    """One normalised rule: traffic of ``protocol`` on ``from_port``-``to_port`` (for icmp: type and code,
    -1 = any; None for protocol ``-1``) from (ingress) or to (egress) ``cidr`` or the members of
    ``source_group_id``.
    """

    group_id: str
    protocol: str  # tcp, udp, icmp or -1 (everything)
    from_port: int | None
    to_port: int | None
    cidr: str | None
    source_group_id: str | None
    description: str | None = field(default=None, compare=False)
    rule_id: str | None = field(default=None, compare=False)
    source_owner: str | None = field(default=None, compare=False)
    egress: bool = False

    @property
    def key(self) -> tuple[Any, ...]:
        """What makes two rules the same rule (descriptions do not)."""
        return (
            self.group_id,
            self.egress,
            self.protocol,
            self.from_port,
            self.to_port,
            self.cidr,
            self.source_group_id,
        )

    def describe(self) -> str:
        peer = self.cidr or self.source_group_id
        return f"peer: {peer}, {self.protocol.upper()}, from port: {self.from_port}, to port: {self.to_port}, ALLOW"


@dataclass(frozen=True)
class Group:
    group_id: str
    owner: str
    name: str
    description: str
    created: float
    rules: tuple[Rule, ...] = ()
    vpc_id: str | None = None
    egress: tuple[Rule, ...] = ()


def invalid(message: str) -> CloudError:
    return CloudError("InvalidParameterValue", message)


def _port(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise invalid(f"Invalid value '{value}' for {what}") from None
    return value


def normalise_ports(protocol: str, from_port: Any, to_port: Any) -> tuple[int | None, int | None]:
    low, high = _port(from_port, "fromPort"), _port(to_port, "toPort")
    if protocol == "-1":
        return None, None
    if protocol == "icmp":
        low = -1 if low is None else low
        high = -1 if high is None else high
        for value, what in ((low, "ICMP type"), (high, "ICMP code")):
            if not -1 <= value <= 255:
                raise invalid(f"Invalid value '{value}' for {what}: use -1 (any) to 255")
        if low == -1 and high != -1:
            raise invalid("ICMP code must be -1 (any) when the ICMP type is -1 (any)")
        return low, high
    if low is None or high is None:
        raise invalid(f"Invalid value 'null' for portRange: {protocol} rules need FromPort and ToPort")
    for value, what in ((low, "fromPort"), (high, "toPort")):
        if not 0 <= value <= 65535:
            raise invalid(f"Invalid value '{value}' for {what}: {protocol} ports are 0 to 65535")
    if low > high:
        raise invalid(f"Invalid port range {low}-{high}: FromPort must not be greater than ToPort")
    return low, high


def normalise_cidr(text: Any) -> str:
    try:
        return str(ipaddress.IPv4Network(str(text), strict=True))
    except ValueError:
        raise invalid(f"CIDR block {str(text)[:80]} is malformed (an IPv4 network like 10.0.0.0/16)") from None


def row_to_rule(row: Any) -> Rule:
    return Rule(
        group_id=row["group_id"],
        protocol=row["protocol"],
        from_port=row["from_port"],
        to_port=row["to_port"],
        cidr=row["cidr"],
        source_group_id=row["source_group_id"],
        description=row["description"],
        rule_id=row["rule_id"],
        source_owner=row["source_owner"],
        egress=bool(row["egress"]),
    )


def insert_rule(db: sqlite3.Connection, rule: Rule) -> Rule:
    rule_id = rule.rule_id or new_id("sgr")
    db.execute(
        "INSERT INTO security_group_rules"
        " (rule_id, group_id, protocol, from_port, to_port, cidr, source_group_id, description, egress)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        (
            rule_id,
            rule.group_id,
            rule.protocol,
            rule.from_port,
            rule.to_port,
            rule.cidr,
            rule.source_group_id,
            rule.description,
            int(rule.egress),
        ),
    )
    return replace(rule, rule_id=rule_id)


def insert_group(
    db: sqlite3.Connection, owner: str, name: str, description: str, vpc_id: str | None, group_id: str | None = None
) -> str:
    """A new group row with EC2's default egress rule (everything may go out); returns its id."""
    group_id = group_id or new_id("sg")
    db.execute(
        "INSERT INTO security_groups (group_id, owner, name, description, created, vpc_id) VALUES (?,?,?,?,?,?)",
        (group_id, owner, name, description, time.time(), vpc_id),
    )
    insert_rule(db, Rule(group_id, "-1", None, None, "0.0.0.0/0", None, egress=True))
    return group_id


def insert_default_group(db: sqlite3.Connection, owner: str, vpc_id: str) -> str:
    """``vpc_id``'s ``default`` group: members reach each other, everything may go out."""
    group_id = insert_group(db, owner, DEFAULT_GROUP, DEFAULT_DESCRIPTION, vpc_id)
    insert_rule(db, Rule(group_id, "-1", None, None, None, group_id))
    return group_id


def migrate(store: Any) -> None:
    """Bring a groups table from before VPCs to today's schema (outside any transaction; idempotent)."""
    columns = {r["name"] for r in store.query("PRAGMA table_info(security_groups)")}
    if columns and "vpc_id" not in columns:
        store.ensure_schema(_MIGRATE_GROUPS)
    rule_columns = {r["name"] for r in store.query("PRAGMA table_info(security_group_rules)")}
    if rule_columns and "egress" not in rule_columns:
        store.ensure_schema("ALTER TABLE security_group_rules ADD COLUMN egress INTEGER NOT NULL DEFAULT 0;")
        # Groups from before kept EC2's allow-all egress implicitly: it becomes a real rule now.
        with store.transaction() as db:
            for row in db.execute("SELECT group_id FROM security_groups").fetchall():
                insert_rule(db, Rule(row["group_id"], "-1", None, None, "0.0.0.0/0", None, egress=True))
