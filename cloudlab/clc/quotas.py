"""Per-user quotas: how much of the cloud one user may hold at once.

A private cloud on one machine is filled by one careless ``MaxCount=1000``; EC2 guards against the
same with per-account limits and answers with its own codes, which clients already understand:

==============  =========================================  ==========================  =========
resource        what counts                                refused with                default
==============  =========================================  ==========================  =========
``instances``   instances pending, running, stopping or    ``InstanceLimitExceeded``   20
                stopped (shutting-down and terminated
                ones no longer count)
``vcpus``       the vCPUs of those instances               ``VcpuLimitExceeded``       32
``addresses``   elastic addresses allocated                ``AddressLimitExceeded``    5
``volumes``     volumes not deleted (root volumes too)     ``VolumeLimitExceeded``     20
``volume_gib``  the GiB of those volumes                   ``VolumeLimitExceeded``     200
``snapshots``   snapshots not deleted                      ``SnapshotLimitExceeded``   50
==============  =========================================  ==========================  =========

Stopped instances count, unlike EC2's vCPU limit (which counts running ones): here a stopped
instance keeps its identity and may be started at any time, and counting it makes StartInstances
unable to exceed a quota. The administrator's own default is "no limit" (the operator's tools and
benchmarks launch thousands); an explicit quota for the admin applies like anyone's.

A quota is checked inside the write transaction that creates what it counts (the store has one
serialised writer), so two concurrent requests can never together exceed it. A new kind of
resource (volumes, say) is a new row in :data:`RESOURCES` and a count, nothing else.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from cloudlab.clc.store import Store
from cloudlab.errors import CloudError

SCHEMA = """
CREATE TABLE IF NOT EXISTS quotas (
    user_name TEXT NOT NULL, resource TEXT NOT NULL, quota INTEGER NOT NULL CHECK (quota >= 0),
    PRIMARY KEY (user_name, resource));
"""

#: Instance states that hold a place in the instance and vCPU quotas.
COUNTED_STATES = ("pending", "running", "stopping", "stopped")


@dataclass(frozen=True)
class Resource:
    name: str
    default: int
    error_code: str
    noun: str


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("instances", 20, "InstanceLimitExceeded", "instances"),
        Resource("vcpus", 32, "VcpuLimitExceeded", "vCPUs"),
        Resource("addresses", 5, "AddressLimitExceeded", "elastic addresses"),
        Resource("volumes", 20, "VolumeLimitExceeded", "volumes"),
        Resource("volume_gib", 200, "VolumeLimitExceeded", "GiB of volumes"),
        Resource("snapshots", 50, "SnapshotLimitExceeded", "snapshots"),
    )
}
ADMIN = "admin"
_COUNTED = ",".join(f"'{s}'" for s in COUNTED_STATES)


def ensure_schema(store: Store) -> None:
    store.ensure_schema(SCHEMA)


def _resource(name: str) -> Resource:
    found = RESOURCES.get(name)
    if found is None:
        raise CloudError("InvalidParameterValue", f"no quota called {name!r} (quotas: {', '.join(RESOURCES)})")
    return found


def limit(db: sqlite3.Connection, user: str, resource: str) -> int | None:
    """``user``'s quota for ``resource`` (None: no limit), read through ``db`` (the caller's transaction)."""
    row = db.execute("SELECT quota FROM quotas WHERE user_name=? AND resource=?", (user, resource)).fetchone()
    if row is not None:
        return int(row[0])
    return None if user == ADMIN else _resource(resource).default


def instance_usage(db: sqlite3.Connection, user: str) -> tuple[int, int]:
    """(instances, vCPUs) that ``user`` holds now, as the quotas count them."""
    count, vcpus = db.execute(
        f"SELECT COUNT(*), COALESCE(SUM(vcpus), 0) FROM instances WHERE owner=? AND state IN ({_COUNTED})", (user,)
    ).fetchone()
    return int(count), int(vcpus)


def refuse(resource: str, user: str, quota: int, held: int, asked: int) -> CloudError:
    kind = _resource(resource)
    return CloudError(
        kind.error_code,
        f"You have requested more {kind.noun} ({held + asked}) than your current quota of {quota} allows "
        f"(user {user} holds {held}); ask the cloud's administrator to raise it (cloudlab user quota)",
    )


def instances_that_fit(db: sqlite3.Connection, user: str, vcpus_each: int, min_count: int, max_count: int) -> int:
    """How many of ``max_count`` new instances of ``vcpus_each`` vCPUs ``user``'s quotas allow; EC2's
    error if fewer than ``min_count`` do. Call inside the transaction that inserts them."""
    held, held_vcpus = instance_usage(db, user)
    fit = max_count
    instance_quota = limit(db, user, "instances")
    if instance_quota is not None:
        if held + min_count > instance_quota:
            raise refuse("instances", user, instance_quota, held, min_count)
        fit = min(fit, instance_quota - held)
    vcpu_quota = limit(db, user, "vcpus")
    if vcpu_quota is not None and vcpus_each > 0:
        if held_vcpus + min_count * vcpus_each > vcpu_quota:
            raise refuse("vcpus", user, vcpu_quota, held_vcpus, min_count * vcpus_each)
        fit = min(fit, (vcpu_quota - held_vcpus) // vcpus_each)
    return fit


class Quotas:
    """Reading and setting quotas (the ``cloudlab user quota`` and ``user list`` commands)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        ensure_schema(store)

    def set(self, user: str, values: Mapping[str, int | None]) -> dict[str, int | None]:
        """Set ``user``'s quotas (None: back to the default); returns all of them afterwards."""
        for resource, value in values.items():
            _resource(resource)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise CloudError("InvalidParameterValue", f"a quota is a whole number of 0 or more, not {value!r}")
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM users WHERE name=?", (user,)).fetchone() is None:
                raise CloudError("InvalidParameterValue", f"no user {user!r}")
            for resource, value in values.items():
                if value is None:
                    db.execute("DELETE FROM quotas WHERE user_name=? AND resource=?", (user, resource))
                else:
                    db.execute(
                        "INSERT INTO quotas (user_name, resource, quota) VALUES (?,?,?)"
                        " ON CONFLICT(user_name, resource) DO UPDATE SET quota=excluded.quota",
                        (user, resource, value),
                    )
        return self.of(user)

    def of(self, user: str) -> dict[str, int | None]:
        """Every quota of ``user`` (None: no limit)."""
        with self.store.transaction() as db:
            return {name: limit(db, user, name) for name in RESOURCES}

    def usage(self, user: str) -> dict[str, int]:
        """What ``user`` holds now, by quota."""
        with self.store.transaction() as db:
            count, vcpus = instance_usage(db, user)
            try:
                (addresses,) = db.execute("SELECT COUNT(*) FROM addresses WHERE owner=?", (user,)).fetchone()
            except sqlite3.OperationalError:  # no address was ever allocated in this cloud
                addresses = 0
            volumes, volume_gib = _held(
                db, "SELECT COUNT(*), SUM(size_gib) FROM volumes WHERE owner=? AND state != 'deleted'", user
            )
            snapshots, _ = _held(db, "SELECT COUNT(*), 0 FROM snapshots WHERE owner=? AND state != 'deleted'", user)
        return {
            "instances": count,
            "vcpus": vcpus,
            "addresses": int(addresses),
            "volumes": volumes,
            "volume_gib": volume_gib,
            "snapshots": snapshots,
        }


def _held(db: sqlite3.Connection, sql: str, user: str) -> tuple[int, int]:
    try:
        first, second = db.execute(sql, (user,)).fetchone()
    except sqlite3.OperationalError:  # that kind of resource was never made in this cloud
        return 0, 0
    return int(first or 0), int(second or 0)


def quota_columns(
    usage: Mapping[str, int], limits: Mapping[str, int | None], *, as_text: bool = True
) -> dict[str, object]:
    """What a user holds against each quota: ``"3/20"`` (``"3/-"`` without a limit) for a table, or
    ``{"used": 3, "quota": 20}`` for JSON."""
    if as_text:
        return {r: f"{usage.get(r, 0)}/{'-' if limits.get(r) is None else limits[r]}" for r in RESOURCES}
    return {r: {"used": usage.get(r, 0), "quota": limits.get(r)} for r in RESOURCES}
