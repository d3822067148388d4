"""EC2 security groups: named sets of rules that instances belong to, each group in one VPC.

Every VPC has a group named ``default``, made with the VPC and never deletable by a user; its
ingress rule lets members of the group reach each other on every protocol, and every group starts
with EC2's one egress rule (everything may go out). Rules are normalised when stored (protocol
names ``tcp``/``udp``/``icmp``/``-1``, ports as integers, CIDRs in canonical form; see
:mod:`cloudlab.clc.group_rules`) and read back with :meth:`SecurityGroups.rules_for`, which is what
the cluster network turns into packet filters. ``IpPermissions`` follow EC2's semantics:

- ``IpProtocol``: ``tcp``, ``udp``, ``icmp`` or ``-1`` (all), or their numbers 6, 17 and 1;
- tcp/udp need ``FromPort`` <= ``ToPort``, both within 0-65535; -1 ignores ports; for icmp the
  "ports" are the ICMP type and code, -1 to 255, -1 meaning any (a type of -1 needs a code of -1);
- peers (sources of ingress, destinations of egress): ``IpRanges[].CidrIp`` (strict IPv4 CIDR: no
  host bits set) and ``UserIdGroupPairs`` naming a group by ``GroupId``, or by ``GroupName`` (in the
  namespace of the target group's owner, or of the user whose 12-digit ``UserId`` is given); a peer
  group must be in the same VPC as the target.

A group name names a group of the account's default VPC (as in EC2: groups of other VPCs are named
by id). A user sees and changes only their own groups (another user's group is
``InvalidGroup.NotFound``), an admin all of them. Group names are per owner and VPC.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cloudlab.clc import group_rules
from cloudlab.clc.group_rules import (
    DEFAULT_GROUP,
    PROTOCOLS,
    Group,
    Rule,
    insert_group,
    insert_rule,
    normalise_cidr,
    normalise_ports,
    row_to_rule,
)
from cloudlab.clc.tags import Tags
from cloudlab.clc.users import User
from cloudlab.clc.vpcs import SCHEMA as VPC_SCHEMA
from cloudlab.clc.vpcs import check_vpc_id, ensure_default_vpc, vpc_not_found
from cloudlab.errors import CloudError
from cloudlab.ids import is_valid_id

__all__ = ["DEFAULT_GROUP", "Group", "Rule", "SecurityGroups"]

MAX_TEXT = 255
#: EC2's default limits: inbound rules per group, and groups per instance (per network interface).
MAX_RULES_PER_GROUP = 60
MAX_GROUPS_PER_INSTANCE = 5


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


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


class SecurityGroups:
    """Security groups and their rules (one service per CLC: ``clc.service(SecurityGroups)``)."""

    def __init__(self, clc: Any) -> None:
        self._clc = clc
        self._store = clc.store
        self._users = clc.users
        self._store.ensure_schema(group_rules.SCHEMA)
        group_rules.migrate(self._store)
        self._store.ensure_schema(VPC_SCHEMA)

    # -- lookups ------------------------------------------------------------------------------------------
    def default_vpc(self, owner: str) -> str | None:
        """``owner``'s default VPC (made on first use; None once the account deleted it)."""
        row = self._store.one("SELECT vpc_id FROM default_vpcs WHERE owner=?", (owner,))
        if row is not None:
            return row["vpc_id"]
        with self._store.transaction() as db:
            return ensure_default_vpc(db, owner)

    def ensure_default(self, owner: str, vpc_id: str | None = None) -> str | None:
        """The id of the ``default`` group of ``vpc_id`` (else of ``owner``'s default VPC, None if it has none)."""
        vpc_id = vpc_id or self.default_vpc(owner)
        if vpc_id is None:
            return None
        row = self._store.one("SELECT group_id FROM security_groups WHERE vpc_id=? AND name=?", (vpc_id, DEFAULT_GROUP))
        return row["group_id"] if row is not None else None

    # Reads go through the store, also inside a transaction: it is the same connection (and lock), so
    # they see the transaction's own writes and nobody else's.
    def _get(self, user: User, ref: str) -> sqlite3.Row:
        """The group ``ref`` (an ``sg-`` id, else a name in the user's default VPC) that the user may see."""
        if ref.startswith("sg-"):
            row = self._store.one("SELECT * FROM security_groups WHERE group_id=?", (_check_id(ref),))
        else:
            row = self._by_name(user.name, ref)
        if row is None or (row["owner"] != user.name and not user.is_admin):
            raise _not_found(ref)
        return row

    def _by_name(self, owner: str, name: str) -> sqlite3.Row | None:
        vpc_id = self.default_vpc(owner)
        return self._store.one(
            "SELECT * FROM security_groups WHERE owner=? AND vpc_id IS ? AND name=?", (owner, vpc_id, name)
        )

    def _vpc_of_user(self, user: User, vpc_id: str | None) -> str:
        if vpc_id is None:
            found = self.default_vpc(user.name)
            if found is None:
                raise CloudError("VPCIdNotSpecified", "No default VPC for this user: name a VpcId")
            return found
        row = self._store.one("SELECT owner FROM vpcs WHERE vpc_id=?", (check_vpc_id(vpc_id),))
        if row is None or (row["owner"] != user.name and not user.is_admin):
            raise vpc_not_found(vpc_id)
        return vpc_id

    # -- create / delete ------------------------------------------------------------------------------------
    def create(
        self,
        user: User,
        name: str,
        description: str,
        tag_specifications: Sequence[Mapping[str, Any]] | None = None,
        vpc_id: str | None = None,
    ) -> str:
        """A new group of ``user`` in ``vpc_id`` (else the default VPC), tagged as asked; returns its id."""
        _check_text(name, "GroupName")
        _check_text(description, "GroupDescription")
        if name.lower().startswith("sg-"):
            raise _invalid(
                f"Value ({name[:80]}) for parameter GroupName is invalid: group names may not start with sg-"
            )
        vpc_id = self._vpc_of_user(user, vpc_id)
        owner = self._store.one("SELECT owner FROM vpcs WHERE vpc_id=?", (vpc_id,))
        owner_name = owner["owner"] if owner is not None else user.name
        tags = self._clc.service(Tags)  # (built outside the transaction: building creates its table)
        with self._store.transaction() as db:
            if db.execute(
                "SELECT 1 FROM security_groups WHERE owner=? AND vpc_id=? AND name=?", (owner_name, vpc_id, name)
            ).fetchone():
                raise CloudError(
                    "InvalidGroup.Duplicate", f"The security group '{name}' already exists for VPC '{vpc_id}'"
                )
            group_id = insert_group(db, owner_name, name, description, vpc_id)
            if tag_specifications:
                tags.apply_specifications(db, user, "security-group", [group_id], tag_specifications)
        return group_id

    def delete(self, user: User, group_id: str | None = None, name: str | None = None) -> str:
        """Delete a group that no live instance uses and no other group's rule names; returns its id."""
        if not group_id and not name:
            raise CloudError("MissingParameter", "The request must contain the parameter GroupName or GroupId")
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
        row = self._by_name(user.name, name)
        if row is None:
            raise _not_found(name)
        return row

    # -- rules ----------------------------------------------------------------------------------------------
    def _rules_from_permissions(
        self, user: User, target: sqlite3.Row, permissions: Sequence[Mapping[str, Any]], egress: bool = False
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
            low, high = normalise_ports(protocol, permission.get("FromPort"), permission.get("ToPort"))
            ranges = permission.get("IpRanges") or []
            pairs = permission.get("UserIdGroupPairs") or []
            if permission.get("Ipv6Ranges") or permission.get("PrefixListIds"):
                raise _invalid(
                    "cloudlab security groups take IPv4 ranges and groups as peers, not IPv6 or prefix lists"
                )
            if not ranges and not pairs:
                raise CloudError(
                    "MissingParameter", "Each IpPermission needs a peer: IpRanges (CidrIp) or UserIdGroupPairs"
                )
            for item in ranges:
                if not item.get("CidrIp"):
                    raise CloudError("MissingParameter", "The request must contain the parameter CidrIp")
                description = item.get("Description")
                if description is not None:
                    _check_text(description, "Description")
                cidr = normalise_cidr(item["CidrIp"])
                rules.append(Rule(target["group_id"], protocol, low, high, cidr, None, description, egress=egress))
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
                        egress=egress,
                    )
                )
        return rules

    def _source_group(
        self, user: User, target: sqlite3.Row, pair: Mapping[str, Any], owners_by_id: Mapping[str, str]
    ) -> sqlite3.Row:
        if pair.get("GroupId"):
            row = self._get(user, _check_id(str(pair["GroupId"])))
        else:
            name = pair.get("GroupName")
            if not name:
                raise CloudError("MissingParameter", "A UserIdGroupPair needs a GroupId or a GroupName")
            owner = target["owner"]
            if pair.get("UserId"):
                owner = owners_by_id.get(str(pair["UserId"]), "")
                if not owner:
                    raise _not_found(name)
            found = self._by_name(owner, name)
            if found is None or (found["owner"] != user.name and not user.is_admin):
                raise _not_found(name)
            row = found
        if row["vpc_id"] != target["vpc_id"]:
            raise CloudError(
                "InvalidGroup.NotFound",
                f"You have specified two resources that belong to different networks: {row['group_id']} is in"
                f" {row['vpc_id']}, {target['group_id']} in {target['vpc_id']}",
            )
        return row

    def _existing(self, group_id: str, egress: bool) -> dict[tuple[Any, ...], Rule]:
        return {rule.key: rule for rule in self.rules_for([group_id], egress=egress)}

    def authorize_ingress(self, user: User, group: str, ip_permissions: Sequence[Mapping[str, Any]]) -> list[Rule]:
        """Add the rules of ``ip_permissions`` to ``group`` (an ``sg-`` id or a name), all or none."""
        return self.authorize(user, group, ip_permissions, egress=False)

    def authorize(
        self, user: User, group: str, ip_permissions: Sequence[Mapping[str, Any]], *, egress: bool
    ) -> list[Rule]:
        """Add ingress (or ``egress``) rules to ``group``, all or none."""
        with self._store.transaction() as db:
            target = self._get(user, group)
            existing = self._existing(target["group_id"], egress)
            added: list[Rule] = []
            seen: set[tuple[Any, ...]] = set()
            for rule in self._rules_from_permissions(user, target, ip_permissions, egress):
                if rule.key in existing or rule.key in seen:
                    raise CloudError(
                        "InvalidPermission.Duplicate", f'the specified rule "{rule.describe()}" already exists'
                    )
                seen.add(rule.key)
                added.append(insert_rule(db, rule))
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
        return self.revoke(user, group, ip_permissions, rule_ids, egress=False)

    def revoke(
        self,
        user: User,
        group: str,
        ip_permissions: Sequence[Mapping[str, Any]] | None = None,
        rule_ids: Sequence[str] | None = None,
        *,
        egress: bool,
    ) -> list[Rule]:
        """Remove ingress (or ``egress``) rules of ``group``, all or none."""
        with self._store.transaction() as db:
            target = self._get(user, group)
            existing = self._existing(target["group_id"], egress)
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
                for rule in self._rules_from_permissions(user, target, ip_permissions or [], egress):
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

    def rules_for(self, group_ids: Iterable[str], *, egress: bool = False) -> list[Rule]:
        """Every ingress (or ``egress``) rule of ``group_ids``, normalised, in the order they were added."""
        ids = list(dict.fromkeys(group_ids))
        if not ids:
            return []
        rows = self._store.query(
            "SELECT r.*, s.owner AS source_owner FROM security_group_rules r"
            f" LEFT JOIN security_groups s ON s.group_id = r.source_group_id WHERE r.group_id IN ({_marks(ids)})"
            " AND r.egress=? ORDER BY r.rowid",
            (*ids, int(egress)),
        )
        return [row_to_rule(r) for r in rows]

    # -- reads --------------------------------------------------------------------------------------------------
    def describe(
        self, user: User, group_ids: Sequence[str] | None = None, names: Sequence[str] | None = None
    ) -> list[Group]:
        """The groups ``user`` may see (with their rules), narrowed to ``group_ids`` and ``names`` (each must exist)."""
        for group_id in group_ids or []:
            _check_id(group_id)
        default_vpc = self.default_vpc(user.name)
        if user.is_admin:
            rows = self._store.query("SELECT * FROM security_groups ORDER BY created, group_id")
        else:
            rows = self._store.query(
                "SELECT * FROM security_groups WHERE owner=? ORDER BY created, group_id", (user.name,)
            )
        if names:
            # Group names are per account and name the default VPC's groups (as in EC2): even an admin
            # names only their own groups.
            rows = [r for r in rows if r["owner"] == user.name and r["vpc_id"] == default_vpc]
        for wanted, column in ((group_ids, "group_id"), (names, "name")):
            if not wanted:
                continue
            have = {r[column] for r in rows}
            missing = [w for w in wanted if w not in have]
            if missing:
                raise _not_found(missing[0])
            rows = [r for r in rows if r[column] in set(wanted)]
        ids = [r["group_id"] for r in rows]
        rules: dict[str, list[Rule]] = {}
        for rule in self.rules_for(ids):
            rules.setdefault(rule.group_id, []).append(rule)
        egress: dict[str, list[Rule]] = {}
        for rule in self.rules_for(ids, egress=True):
            egress.setdefault(rule.group_id, []).append(rule)
        return [
            Group(
                r["group_id"],
                r["owner"],
                r["name"],
                r["description"],
                r["created"],
                tuple(rules.get(r["group_id"], ())),
                r["vpc_id"],
                tuple(egress.get(r["group_id"], ())),
            )
            for r in rows
        ]

    # -- instances (for RunInstances / DescribeInstances and the cluster network) --------------------------------
    def resolve_for_launch(
        self, user: User, names: Sequence[str] | None, ids: Sequence[str] | None, vpc_id: str | None = None
    ) -> list[str]:
        """The group ids an instance of ``user`` launches into: the named ones, else the VPC's ``default``.

        ``vpc_id`` is the VPC of the instance's subnet (the default VPC when None); every group must be in it.
        """
        if not names and not ids:
            default = self.ensure_default(user.name, vpc_id)
            if default is None:
                raise CloudError("VPCIdNotSpecified", "No default VPC for this user: name a SubnetId")
            return [default]
        found = [self._get(user, _check_id(group_id)) for group_id in ids or []]
        found += [self._get_by_name(user, name) for name in names or []]
        vpc_id = vpc_id or self.default_vpc(user.name)
        for row in found:
            if row["vpc_id"] != vpc_id:
                raise CloudError(
                    "InvalidParameter",
                    f"Security group {row['group_id']} and the instance's subnet belong to different networks"
                    f" ({row['vpc_id']} and {vpc_id})",
                )
        unique = list(dict.fromkeys(row["group_id"] for row in found))
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
