"""Volume and snapshot GiB-hours from the ledger (``ebs_gb_hours``), and that the cloud appends them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlab.clc import ebs_usage
from cloudlab.clc.store import Store
from cloudlab.clc.usage import usage_report
from cloudlab.clc.users import Users
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud

T0 = 1_772_402_400.0  # 2026-03-01 22:00 UTC


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    found = Store(tmp_path / "clc.db")
    for name in ("alice", "bob"):
        Users(found, None).create(name)
    yield found
    found.close()


def at(store: Store, when: float, user: str, resource: str, kind: str, created: bool, gib: int) -> None:
    with store.transaction() as db:
        ebs_usage.append(db, user, resource, kind, created, gib, "cluster1", when=when)


def test_gib_hours_of_volumes_and_snapshots_by_user_day_and_type(store: Store) -> None:
    at(store, T0, "alice", "vol-00000001", "volume", True, 10)  # 10 GiB from 22:00 ...
    at(store, T0 + 4 * 3600, "alice", "vol-00000001", "volume", False, 10)  # ... to 02:00: 40 GiB-hours
    at(store, T0 + 3600, "bob", "snap-00000001", "snapshot", True, 2)  # 2 GiB from 23:00, still held
    now = T0 + 5 * 3600
    users = {r["key"]: r for r in usage_report(store, by="user", now=now)}
    assert users["alice"]["ebs_gb_hours"] == pytest.approx(40.0)
    assert users["bob"]["ebs_gb_hours"] == pytest.approx(8.0)
    days = {r["key"]: r["ebs_gb_hours"] for r in usage_report(store, by="day", now=now)}
    assert days == {"2026-03-01": pytest.approx(20.0 + 2.0), "2026-03-02": pytest.approx(20.0 + 6.0)}
    kinds = {r["key"]: r["ebs_gb_hours"] for r in usage_report(store, by="type", now=now)}
    assert kinds == {"ebs-volume": pytest.approx(40.0), "ebs-snapshot": pytest.approx(8.0)}
    window = usage_report(store, by="total", since=T0 + 3600, until=T0 + 2 * 3600, now=now)[0]
    assert window["ebs_gb_hours"] == pytest.approx(10.0 + 2.0)
    assert window["instances"] == 0 and window["instance_hours"] == 0  # volumes are not instances


def test_the_cloud_appends_volume_events(sim_cloud: RunningCloud) -> None:
    ec2 = sim_cloud.ec2()
    zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    volume_id = ec2.create_volume(Size=3, AvailabilityZone=zone)["VolumeId"]
    store = Store(sim_cloud.layout.database)
    try:

        def events() -> list[str]:
            rows = store.query("SELECT event FROM ledger WHERE instance_id=? ORDER BY seq", (volume_id,))
            return [r["event"] for r in rows]

        wait_until(lambda: events() == ["volume-created"], 30, what="the volume's ledger event")
        time.sleep(0.2)
        ec2.delete_volume(VolumeId=volume_id)
        wait_until(lambda: events() == ["volume-created", "volume-deleted"], 30, what="its deletion in the ledger")
        [row] = [r for r in usage_report(store, by="instance") if r["key"] == volume_id]
        assert row["instance_type"] == "ebs-volume" and row["user"] == "admin"
        assert 0 < row["ebs_gb_hours"] < 3 * 60 / 3600  # 3 GiB for well under a minute
    finally:
        store.close()
