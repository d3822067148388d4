"""EC2 security groups: named sets of ingress rules that instances belong to.

Every user has a group named ``default``, made on first use and never deletable; its one rule lets
members of the group reach each other on every protocol (as EC2's default group does). Rules are
normalised when stored (protocol names ``tcp``/``udp``/``icmp``/``-1``, ports as integers, CIDRs in
canonical form) and read back with :meth:`SecurityGroups.rules_for`, which is what the cluster
network turns into packet filters. ``IpPermissions`` follow EC2's semantics:

- ``IpProtocol``: ``tcp``, ``udp``, ``icmp`` or ``-1`` (all), or their numbers 6, 17 and 1;
- tcp/udp need ``FromPort`` <= ``ToPort``, both within 0-65535; -1 ignores ports; for icmp the
  "ports" are the ICMP type and code, -1 to 255, -1 meaning any (a type of -1 needs a code of -1);
- sources: ``IpRanges[].CidrIp`` (strict IPv4 CIDR: no host bits set) and ``UserIdGroupPairs`` naming
  a group by ``GroupId``, or by ``GroupName`` (in the namespace of the target group's owner, or of
  the user whose 12-digit ``UserId`` is given).

A user sees and changes only their own groups (another user's group is ``InvalidGroup.NotFound``),
an admin all of them. Group names are per owner.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cloudlab.clc.tags import Tags
from cloudlab.clc.users import User
from cloudlab.errors import CloudError
from cloudlab.ids import is_valid_id, new_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS security_groups (
    group_id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, description TEXT NOT NULL,
    created REAL NOT NULL, UNIQUE (owner, name));
CREATE TABLE IF NOT EXISTS security_group_rules (
    rule_id TEXT PRIMARY KEY, group_id TEXT NOT NULL, protocol TEXT NOT NULL, from_port INTEGER, to_port INTEGER,
    cidr TEXT, source_group_id TEXT, description TEXT);
CREATE INDEX IF NOT EXISTS security_group_rules_by_group ON security_group_rules(group_id);
CREATE INDEX IF NOT EXISTS security_group_rules_by_source ON security_group_rules(source_group_id);
CREATE TABLE IF NOT EXISTS instance_groups (
    instance_id TEXT NOT NULL, group_id TEXT NOT NULL, PRIMARY KEY (instance_id, group_id));
CREATE INDEX IF NOT EXISTS instance_groups_by_group ON instance_groups(group_id);
"""

DEFAULT_GROUP = "default"
DEFAULT_DESCRIPTION = "default group"
MAX_TEXT = 255
#: EC2's default limits: inbound rules per group, and groups per instance (per network interface).
MAX_RULES_PER_GROUP = 60
MAX_GROUPS_PER_INSTANCE = 5
PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp", "icmp": "icmp", "1": "icmp", "-1": "-1", "all": "-1"}


@dataclass(frozen=True)
class Rule:
    """One normalised ingress rule: traffic of ``protocol`` on ``from_port``-``to_port`` (for icmp:
    type and code, -1 = any; None for protocol ``-1``) from ``cidr`` or from members of ``source_group_id``.
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

    @property
    def key(self) -> tuple[Any, ...]:
        """What makes two rules the same rule (descriptions do not)."""
        return (self.group_id, self.protocol, self.from_port, self.to_port, self.cidr, self.source_group_id)

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


def _invalid(message: str) -> CloudError:
    return CloudError("InvalidParameterValue", message)


def _not_found(ref: str) -> CloudError:
    return CloudError("InvalidGroup.NotFound", f"The security group '{ref}' does not exist")


def _check_id(group_id: str) -> str:
    if not is_valid_id(group_id, "sg"):
        raise CloudError("InvalidGroupId.Malformed", f'Invalid id: "{group_id[:80]}" (expecting "sg-...")')
    return group_id


def _check_text(value: str | None, what: str) -> str:
    if not value or len(value) > MAX_TEXT or not all(" " <= c <= "~" for c in value):
        raise _invalid(f"Value ({(value or '')[:80]}) for parameter {what} is invalid: 1-{MAX_TEXT} ASCII characters")
    return value


def _port(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value))
        except ValueError:
            raise _invalid(f"Invalid value '{value}' for {what}") from None
    return value


def _normalise_ports(protocol: str, from_port: Any, to_port: Any) -> tuple[int | None, int | None]:
    low, high = _port(from_port, "fromPort"), _port(to_port, "toPort")
    if protocol == "-1":
        return None, None
    if protocol == "icmp":
        low = -1 if low is None else low
        high = -1 if high is None else high
        for value, what in ((low, "ICMP type"), (high, "ICMP code")):
            if not -1 <= value <= 255:
                raise _invalid(f"Invalid value '{value}' for {what}: use -1 (any) to 255")
        if low == -1 and high != -1:
            raise _invalid("ICMP code must be -1 (any) when the ICMP type is -1 (any)")
        return low, high
    if low is None or high is None:
        raise _invalid(f"Invalid value 'null' for portRange: {protocol} rules need FromPort and ToPort")
    for value, what in ((low, "fromPort"), (high, "toPort")):
        if not 0 <= value <= 65535:
            raise _invalid(f"Invalid value '{value}' for {what}: {protocol} ports are 0 to 65535")
    if low > high:
        raise _invalid(f"Invalid port range {low}-{high}: FromPort must not be greater than ToPort")
    return low, high


def _normalise_cidr(text: Any) -> str:
    try:
        return str(ipaddress.IPv4Network(str(text), strict=True))
    except ValueError:
        raise _invalid(f"CIDR block {str(text)[:80]} is malformed (an IPv4 network like 10.0.0.0/16)") from None


def _row_to_rule(row: Mapping[str, Any]) -> Rule:
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
    )


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


class SecurityGroups:
    """Security groups and their rules (one service per CLC: ``clc.service(SecurityGroups)``)."""

    def __init__(self, clc: Any) -> None:
        self._clc = clc
        self._store = clc.store
        self._users = clc.users
        self._store.ensure_schema(SCHEMA)

    # -- lookups ------------------------------------------------------------------------------------------
    def ensure_default(self, owner: str) -> str:
        """The id of ``owner``'s ``default`` group, made (with its self-referencing rule) on first use."""
        row = self._store.one("SELECT group_id FROM security_groups WHERE owner=? AND name=?", (owner, DEFAULT_GROUP))
        if row is not None:
            return row["group_id"]
        with self._store.transaction() as db:
            row = db.execute(
                "SELECT group_id FROM security_groups WHERE owner=? AND name=?", (owner, DEFAULT_GROUP)
            ).fetchone()
            if row is not None:
                return row["group_id"]
            group_id = new_id("sg")
            db.execute(
                "INSERT INTO security_groups (group_id, owner, name, description, created) VALUES (?,?,?,?,?)",
                (group_id, owner, DEFAULT_GROUP, DEFAULT_DESCRIPTION, time.time()),
            )
            self._insert_rule(db, Rule(group_id, "-1", None, None, None, group_id))
        return group_id

    # Reads go through the store, also inside a transaction: it is the same connection (and lock), so
    # they see the transaction's own writes and nobody else's.
    def _get(self, user: User, ref: str) -> sqlite3.Row:
        """The group ``ref`` (an ``sg-`` id, else a name of the user's) that the user may see."""
        if ref.startswith("sg-"):
            row = self._store.one("SELECT * FROM security_groups WHERE group_id=?", (_check_id(ref),))
        else:
            row = self._store.one("SELECT * FROM security_groups WHERE owner=? AND name=?", (user.name, ref))
        if row is None or (row["owner"] != user.name and not user.is_admin):
            raise _not_found(ref)
        return row

    # -- create / delete ------------------------------------------------------------------------------------
    def create(
        self, user: User, name: str, description: str, tag_specifications: Sequence[Mapping[str, Any]] | None = None
    ) -> str:
        """A new, empty group of ``user``, tagged as ``tag_specifications`` ask; returns its id."""
        _check_text(name, "GroupName")
        _check_text(description, "GroupDescription")
        if name.lower().startswith("sg-"):
            raise _invalid(
                f"Value ({name[:80]}) for parameter GroupName is invalid: group names may not start with sg-"
            )
        self.ensure_default(user.name)
        tags = self._clc.service(Tags)  # (built outside the transaction: building creates its table)
        group_id = new_id("sg")
        with self._store.transaction() as db:
            if db.execute("SELECT 1 FROM security_groups WHERE owner=? AND name=?", (user.name, name)).fetchone():
                raise CloudError("InvalidGroup.Duplicate", f"The security group '{name}' already exists")
            db.execute(
                "INSERT INTO security_groups (group_id, owner, name, description, created) VALUES (?,?,?,?,?)",
                (group_id, user.name, name, description, time.time()),
            )
            if tag_specifications:
                tags.apply_specifications(db, user, "security-group", [group_id], tag_specifications)
        return group_id

    def delete(self, user: User, group_id: str | None = None, name: str | None = None) -> str:
        """Delete a group that no live instance uses and no other group's rule names; returns its id."""
        if not group_id and not name:
            raise CloudError("MissingParameter", "The request must contain the parameter GroupName or GroupId")
        if name == DEFAULT_GROUP and not group_id:
            self.ensure_default(user.name)
        with self._store.transaction() as db:
            row = self._get(user, _check_id(group_id)) if group_id else self._get_by_name(user, name or "")
            gid = row["group_id"]
            if row["name"] == DEFAULT_GROUP:
                raise CloudError(
                    "CannotDelete", f'the specified group: "{gid}" name: "{DEFAULT_GROUP}" cannot be deleted by a user'
                )
            in_use = db.execute(
                "SELECT ig.instance_id FROM instance_groups ig JOIN instances i ON i.instance_id = ig.instance_id"
                " WHERE ig.group_id=? AND i.state != 'terminated' ORDER BY ig.instance_id LIMIT 5",
                (gid,),
            ).fetchall()
            if in_use:
                raise CloudError(
                    "DependencyViolation",
                    f"resource {gid} has a dependent object: instance(s) "
                    + ", ".join(r["instance_id"] for r in in_use)
                    + " use it",
                )
            referrers = db.execute(
                "SELECT DISTINCT group_id FROM security_group_rules WHERE source_group_id=? AND group_id != ?"
                " ORDER BY group_id",
                (gid, gid),
            ).fetchall()
            if referrers:
                raise CloudError(
                    "DependencyViolation",
                    f"resource {gid} has a dependent object: rules of "
                    + ", ".join(r["group_id"] for r in referrers)
                    + " name it as a source",
                )
            db.execute("DELETE FROM security_group_rules WHERE group_id=?", (gid,))
            db.execute("DELETE FROM instance_groups WHERE group_id=?", (gid,))  # terminated instances only
            db.execute("DELETE FROM security_groups WHERE group_id=?", (gid,))
            Tags.remove_resource(db, gid)
        return gid

    def _get_by_name(self, user: User, name: str) -> sqlite3.Row:
        row = self._store.one("SELECT * FROM security_groups WHERE owner=? AND name=?", (user.name, name))
        if row is None:
            raise _not_found(name)
        return row

    # -- rules ----------------------------------------------------------------------------------------------
    def _rules_from_permissions(
        self, user: User, target: sqlite3.Row, permissions: Sequence[Mapping[str, Any]]
    ) -> list[Rule]:
        """Normalised rules for ``target`` from EC2 ``IpPermissions`` (validating every field)."""
        if not permissions:
            raise CloudError("MissingParameter", "The request must contain the parameter IpPermissions")
        owners_by_id = {u.user_id: u.name for u in self._users.list()}
        rules: list[Rule] = []
        for permission in permissions:
            raw = str(permission.get("IpProtocol") if permission.get("IpProtocol") is not None else "")
            protocol = PROTOCOLS.get(raw.lower())
            if protocol is None:
                raise _invalid(
                    f"Invalid value '{raw[:80]}' for IP protocol. Unknown protocol (use tcp, udp, icmp or -1)"
                )
            low, high = _normalise_ports(protocol, permission.get("FromPort"), permission.get("ToPort"))
            ranges = permission.get("IpRanges") or []
            pairs = permission.get("UserIdGroupPairs") or []
            if permission.get("Ipv6Ranges") or permission.get("PrefixListIds"):
                raise _invalid(
                    "cloudlab security groups take IPv4 ranges and groups as sources, not IPv6 or prefix lists"
                )
            if not ranges and not pairs:
                raise CloudError(
                    "MissingParameter", "Each IpPermission needs a source: IpRanges (CidrIp) or UserIdGroupPairs"
                )
            for item in ranges:
                if not item.get("CidrIp"):
                    raise CloudError("MissingParameter", "The request must contain the parameter CidrIp")
                description = item.get("Description")
                if description is not None:
                    _check_text(description, "Description")
                rules.append(
                    Rule(target["group_id"], protocol, low, high, _normalise_cidr(item["CidrIp"]), None, description)
                )
            for pair in pairs:
                source = self._source_group(user, target, pair, owners_by_id)
                description = pair.get("Description")
                if description is not None:
                    _check_text(description, "Description")
                rules.append(
                    Rule(
                        target["group_id"],
                        protocol,
                        low,
                        high,
                        None,
                        source["group_id"],
                        description,
                        source_owner=source["owner"],
                    )
                )
        return rules

    def _source_group(
        self, user: User, target: sqlite3.Row, pair: Mapping[str, Any], owners_by_id: Mapping[str, str]
    ) -> sqlite3.Row:
        if pair.get("GroupId"):
            return self._get(user, _check_id(str(pair["GroupId"])))
        name = pair.get("GroupName")
        if not name:
            raise CloudError("MissingParameter", "A UserIdGroupPair needs a GroupId or a GroupName")
        owner = target["owner"]
        if pair.get("UserId"):
            owner = owners_by_id.get(str(pair["UserId"]), "")
            if not owner:
                raise _not_found(name)
        row = self._store.one("SELECT * FROM security_groups WHERE owner=? AND name=?", (owner, name))
        if row is None or (row["owner"] != user.name and not user.is_admin):
            raise _not_found(name)
        return row

    @staticmethod
    def _insert_rule(db: Any, rule: Rule) -> Rule:
        rule_id = rule.rule_id or new_id("sgr")
        db.execute(
            "INSERT INTO security_group_rules"
            " (rule_id, group_id, protocol, from_port, to_port, cidr, source_group_id, description)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (
                rule_id,
                rule.group_id,
                rule.protocol,
                rule.from_port,
                rule.to_port,
                rule.cidr,
                rule.source_group_id,
                rule.description,
            ),
        )
        return replace(rule, rule_id=rule_id)

    def _existing(self, group_id: str) -> dict[tuple[Any, ...], Rule]:
        return {rule.key: rule for rule in self.rules_for([group_id])}

    def _resolve_target(self, user: User, group: str) -> None:
        if group == DEFAULT_GROUP:
            self.ensure_default(user.name)

    def authorize_ingress(self, user: User, group: str, ip_permissions: Sequence[Mapping[str, Any]]) -> list[Rule]:
        """Add the rules of ``ip_permissions`` to ``group`` (an ``sg-`` id or a name), all or none."""
        self._resolve_target(user, group)
        with self._store.transaction() as db:
            target = self._get(user, group)
            existing = self._existing(target["group_id"])
            added: list[Rule] = []
            seen: set[tuple[Any, ...]] = set()
            for rule in self._rules_from_permissions(user, target, ip_permissions):
                if rule.key in existing or rule.key in seen:
                    raise CloudError(
                        "InvalidPermission.Duplicate", f'the specified rule "{rule.describe()}" already exists'
                    )
                seen.add(rule.key)
                added.append(self._insert_rule(db, rule))
            if len(existing) + len(added) > MAX_RULES_PER_GROUP:
                raise CloudError(
                    "RulesPerSecurityGroupLimitExceeded",
                    f"The maximum number of rules per security group ({MAX_RULES_PER_GROUP}) has been reached",
                )
        return added

    def revoke_ingress(
        self,
        user: User,
        group: str,
        ip_permissions: Sequence[Mapping[str, Any]] | None = None,
        rule_ids: Sequence[str] | None = None,
    ) -> list[Rule]:
        """Remove rules given as ``ip_permissions`` (or by id); each must exist (``InvalidPermission.NotFound``)."""
        self._resolve_target(user, group)
        with self._store.transaction() as db:
            target = self._get(user, group)
            existing = self._existing(target["group_id"])
            doomed: list[Rule] = []
            if rule_ids:
                by_id = {r.rule_id: r for r in existing.values()}
                for rule_id in rule_ids:
                    if rule_id not in by_id:
                        raise CloudError(
                            "InvalidSecurityGroupRuleId.NotFound",
                            f"The security group rule ID '{rule_id}' does not exist",
                        )
                    doomed.append(by_id[rule_id])
            if ip_permissions or not rule_ids:
                for rule in self._rules_from_permissions(user, target, ip_permissions or []):
                    if rule.key not in existing:
                        raise CloudError(
                            "InvalidPermission.NotFound",
                            f'The specified rule does not exist in this security group: "{rule.describe()}"',
                        )
                    doomed.append(existing[rule.key])
            for rule in doomed:
                db.execute("DELETE FROM security_group_rules WHERE rule_id=?", (rule.rule_id,))
        return doomed

    def owner_of(self, group_id: str) -> str | None:
        """The name of the user who owns ``group_id`` (None if there is no such group)."""
        row = self._store.one("SELECT owner FROM security_groups WHERE group_id=?", (group_id,))
        return row["owner"] if row else None

    def rules_for(self, group_ids: Iterable[str]) -> list[Rule]:
        """Every ingress rule of ``group_ids``, normalised, in the order they were added."""
        ids = list(dict.fromkeys(group_ids))
        if not ids:
            return []
        rows = self._store.query(
            "SELECT r.*, s.owner AS source_owner FROM security_group_rules r"
            f" LEFT JOIN security_groups s ON s.group_id = r.source_group_id WHERE r.group_id IN ({_marks(ids)})"
            " ORDER BY r.rowid",
            ids,
        )
        return [_row_to_rule(r) for r in rows]

    # -- reads --------------------------------------------------------------------------------------------------
    def describe(
        self, user: User, group_ids: Sequence[str] | None = None, names: Sequence[str] | None = None
    ) -> list[Group]:
        """The groups ``user`` may see (with their rules), narrowed to ``group_ids`` and ``names`` (each must exist)."""
        for group_id in group_ids or []:
            _check_id(group_id)
        self.ensure_default(user.name)
        if user.is_admin:
            rows = self._store.query("SELECT * FROM security_groups ORDER BY created, group_id")
        else:
            rows = self._store.query(
                "SELECT * FROM security_groups WHERE owner=? ORDER BY created, group_id", (user.name,)
            )
        if names:
            # Group names are per account (as in EC2): even an admin names only their own groups.
            rows = [r for r in rows if r["owner"] == user.name]
        for wanted, column in ((group_ids, "group_id"), (names, "name")):
            if not wanted:
                continue
            have = {r[column] for r in rows}
            missing = [w for w in wanted if w not in have]
            if missing:
                raise _not_found(missing[0])
            rows = [r for r in rows if r[column] in set(wanted)]
        rules: dict[str, list[Rule]] = {}
        for rule in self.rules_for(r["group_id"] for r in rows):
            rules.setdefault(rule.group_id, []).append(rule)
        return [
            Group(
                r["group_id"],
                r["owner"],
                r["name"],
                r["description"],
                r["created"],
                tuple(rules.get(r["group_id"], ())),
            )
            for r in rows
        ]

    # -- instances (for RunInstances / DescribeInstances and the cluster network) --------------------------------
    def resolve_for_launch(self, user: User, names: Sequence[str] | None, ids: Sequence[str] | None) -> list[str]:
        """The group ids an instance of ``user`` launches into: the named ones, else the user's ``default``."""
        if not names and not ids:
            return [self.ensure_default(user.name)]
        if DEFAULT_GROUP in (names or []):
            self.ensure_default(user.name)
        found = [self._get(user, _check_id(group_id))["group_id"] for group_id in ids or []]
        found += [self._get_by_name(user, name)["group_id"] for name in names or []]
        unique = list(dict.fromkeys(found))
        if len(unique) > MAX_GROUPS_PER_INSTANCE:
            raise CloudError(
                "SecurityGroupsPerInstanceLimitExceeded",
                f"The maximum number of security groups per instance ({MAX_GROUPS_PER_INSTANCE}) has been reached",
            )
        return unique

    @staticmethod
    def attach(db: sqlite3.Connection, instance_id: str, group_ids: Iterable[str]) -> None:
        """Record an instance's groups, inside the caller's transaction (the CLC's instance insert)."""
        db.executemany(
            "INSERT OR IGNORE INTO instance_groups (instance_id, group_id) VALUES (?,?)",
            [(instance_id, group_id) for group_id in group_ids],
        )

    def groups_of(self, instance_ids: Iterable[str]) -> dict[str, list[dict[str, str]]]:
        """Each instance's groups as EC2 shows them (``[{"GroupId", "GroupName"}]``, in launch order)."""
        ids = list(dict.fromkeys(instance_ids))
        answer: dict[str, list[dict[str, str]]] = {i: [] for i in ids}
        if not ids:
            return answer
        rows = self._store.query(
            "SELECT ig.instance_id, g.group_id, g.name FROM instance_groups ig"
            " JOIN security_groups g ON g.group_id = ig.group_id"
            f" WHERE ig.instance_id IN ({_marks(ids)}) ORDER BY ig.rowid",
            ids,
        )
        for row in rows:
            answer[row["instance_id"]].append({"GroupId": row["group_id"], "GroupName": row["name"]})
        return answer

    def members(self, group_ids: Iterable[str]) -> dict[str, list[str]]:
        """The live (not terminated) instances in each group, for rules whose source is a group."""
        ids = list(dict.fromkeys(group_ids))
        answer: dict[str, list[str]] = {g: [] for g in ids}
        if not ids:
            return answer
        rows = self._store.query(
            "SELECT ig.group_id, ig.instance_id FROM instance_groups ig"
            " JOIN instances i ON i.instance_id = ig.instance_id"
            f" WHERE ig.group_id IN ({_marks(ids)}) AND i.state != 'terminated' ORDER BY ig.rowid",
            ids,
        )
        for row in rows:
            answer[row["group_id"]].append(row["instance_id"])
        return answer
