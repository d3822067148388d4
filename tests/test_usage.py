"""Accounting reports: computed from the ledger alone, balanced, and unchanged by a restart of the cloud."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest
from botocore.exceptions import ClientError

from cloudlab import cli, servicectl
from cloudlab.clc.store import Store, append_ledger
from cloudlab.clc.usage import METRICS, UsageError, parse_time, usage_report, usage_total
from cloudlab.client import connect
from cloudlab.usage_frames import fetch_usage
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud, default_image, error_code, wait_states

DAY0 = datetime(2026, 1, 10, tzinfo=UTC).timestamp()  # a midnight, UTC
H = 3600.0


# -- synthetic ledgers ------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "cloud.db")
    yield db
    db.close()


TYPES = {"m1.small": (1, 1024), "m1.large": (2, 4096)}


def event(store: Store, when: float, user: str, instance_id: str, kind: str, type_: str = "m1.small", **extra: Any):
    vcpus, memory_mb = TYPES[type_]
    row = {"owner": user, "instance_id": instance_id, "instance_type": type_, "vcpus": vcpus, "memory_mb": memory_mb,
           "node": "n1", "cluster": "c1"}  # fmt: skip
    detail = json.dumps(extra) if extra else None
    with store.transaction() as db:
        append_ledger(db, row, kind, detail, when=when)


def lifecycle(store: Store, user: str, instance_id: str, start: float, end: float | None, type_: str = "m1.small"):
    """pending → running at ``start`` → shutting-down/terminated at ``end`` (None: still running)."""
    event(store, start - 5, user, instance_id, "pending", type_)
    event(store, start, user, instance_id, "running", type_)
    if end is not None:
        event(store, end, user, instance_id, "shutting-down", type_)
        event(store, end + 3, user, instance_id, "terminated", type_)


def by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in rows}


def assert_balanced(store: Store, now: float, **window: Any) -> dict[str, Any]:
    total = usage_total(store, now=now, **window)
    for by in ("user", "type", "instance"):
        rows = usage_report(store, by=by, now=now, **window)
        assert sum(r["instances"] for r in rows) == total["instances"], by
        for metric in METRICS:
            assert sum(r[metric] for r in rows) == pytest.approx(total[metric], rel=1e-9, abs=1e-9), (by, metric)
    days = usage_report(store, by="day", now=now, **window)
    for metric in METRICS:
        assert sum(r[metric] for r in days) == pytest.approx(total[metric], rel=1e-9, abs=1e-9), ("day", metric)
    return total


def test_running_time_is_billed_and_pending_is_not(store: Store) -> None:
    lifecycle(store, "alice", "i-a1", DAY0 + 1 * H, DAY0 + 3 * H)  # 2 h
    lifecycle(store, "alice", "i-a2", DAY0 + 2 * H, DAY0 + 2.5 * H, "m1.large")  # 0.5 h
    lifecycle(store, "bob", "i-b1", DAY0 + 1 * H, DAY0 + 5 * H)  # 4 h
    now = DAY0 + 10 * H
    users = by_key(usage_report(store, by="user", now=now))
    assert users["alice"]["instance_hours"] == pytest.approx(2.5)
    assert users["alice"]["vcpu_hours"] == pytest.approx(2 * 1 + 0.5 * 2)
    assert users["alice"]["gb_hours"] == pytest.approx(2 * 1 + 0.5 * 4)
    assert users["alice"]["instances"] == 2
    assert users["bob"]["instance_hours"] == pytest.approx(4)
    types = by_key(usage_report(store, by="type", now=now))
    assert types["m1.large"]["instance_hours"] == pytest.approx(0.5)
    assert types["m1.small"]["instance_hours"] == pytest.approx(6)
    total = assert_balanced(store, now)
    assert total["instance_hours"] == pytest.approx(6.5)
    assert total["instances"] == 3


def test_a_running_instance_counts_up_to_now(store: Store) -> None:
    lifecycle(store, "alice", "i-a1", DAY0, None)
    assert usage_total(store, now=DAY0 + 2 * H)["instance_hours"] == pytest.approx(2)
    assert usage_total(store, now=DAY0 + 7 * H)["instance_hours"] == pytest.approx(7)
    assert_balanced(store, DAY0 + 7 * H)


def test_stop_and_start_bill_only_the_running_parts(store: Store) -> None:
    lifecycle(store, "alice", "i-a1", DAY0, None)
    event(store, DAY0 + 1 * H, "alice", "i-a1", "stopping")
    event(store, DAY0 + 1 * H + 10, "alice", "i-a1", "stopped")
    event(store, DAY0 + 4 * H, "alice", "i-a1", "pending")
    event(store, DAY0 + 4 * H + 30, "alice", "i-a1", "running")
    event(store, DAY0 + 5 * H, "alice", "i-a1", "rebooted")  # a reboot does not interrupt the interval
    event(store, DAY0 + 6 * H + 30, "alice", "i-a1", "shutting-down")
    assert usage_total(store, now=DAY0 + 9 * H)["instance_hours"] == pytest.approx(3)


def test_repeated_events_after_a_restart_are_not_double_counted(store: Store) -> None:
    lifecycle(store, "alice", "i-a1", DAY0, None)
    event(store, DAY0 + 1 * H, "alice", "i-a1", "running")  # e.g. a reconciler re-reporting after a restart
    event(store, DAY0 + 2 * H, "alice", "i-a1", "running")
    event(store, DAY0 + 3 * H, "alice", "i-a1", "shutting-down")
    event(store, DAY0 + 3 * H + 5, "alice", "i-a1", "terminated")
    event(store, DAY0 + 4 * H, "alice", "i-a1", "terminated")  # terminated twice: nothing more
    total = usage_total(store, now=DAY0 + 10 * H)
    assert total["instance_hours"] == pytest.approx(3)
    assert total["instances"] == 1


def test_reports_do_not_depend_on_when_they_are_computed_once_closed(store: Store) -> None:
    lifecycle(store, "alice", "i-a1", DAY0, DAY0 + 1 * H)
    first = usage_total(store, now=DAY0 + 2 * H)
    store.close()
    again = Store(store.path)  # a restarted cloud opens the same database
    try:
        assert usage_total(again, now=DAY0 + 50 * H) == first
    finally:
        again.close()


def test_day_split_at_utc_midnight(store: Store) -> None:
    lifecycle(store, "alice", "i-a1", DAY0 + 22 * H, DAY0 + 24 * H + 26 * H)  # 22:00 day 1 to 02:00 day 3
    days = by_key(usage_report(store, by="day", now=DAY0 + 80 * H))
    assert list(days) == ["2026-01-10", "2026-01-11", "2026-01-12"]
    assert days["2026-01-10"]["instance_hours"] == pytest.approx(2)
    assert days["2026-01-11"]["instance_hours"] == pytest.approx(24)
    assert days["2026-01-12"]["instance_hours"] == pytest.approx(2)
    assert all(d["instances"] == 1 for d in days.values())
    assert_balanced(store, DAY0 + 80 * H)


def test_since_and_until_clip_intervals(store: Store) -> None:
    lifecycle(store, "alice", "i-a1", DAY0 + 1 * H, DAY0 + 5 * H)
    lifecycle(store, "bob", "i-b1", DAY0 + 6 * H, None)
    now = DAY0 + 10 * H
    since, until = DAY0 + 2 * H, DAY0 + 7 * H
    total = assert_balanced(store, now, since=since, until=until)
    assert total["instance_hours"] == pytest.approx(3 + 1)
    iso = usage_total(store, now=now, since="2026-01-10T02:00:00Z", until="2026-01-10T07:00")
    assert iso["instance_hours"] == pytest.approx(4)
    relative = usage_total(store, now=now, since="3h")  # from 07:00: bob's 3 hours
    assert relative["instance_hours"] == pytest.approx(3)
    assert usage_total(store, now=now, since=DAY0 + 8 * H, until=DAY0 + 9 * H)["instances"] == 1
    assert usage_total(store, now=now, until=DAY0)["instances"] == 0
    assert usage_report(store, by="user", now=now, user="bob", since=since)[0]["instance_hours"] == pytest.approx(4)


def test_network_bytes_from_cumulative_counters(store: Store) -> None:
    lifecycle(store, "alice", "i-a1", DAY0, None)
    event(store, DAY0 + 1 * H, "alice", "i-a1", "network", rx=1000, tx=100)
    event(store, DAY0 + 2 * H, "alice", "i-a1", "network", rx=1500, tx=300)
    event(store, DAY0 + 3 * H, "alice", "i-a1", "network", rx=200, tx=50)  # counters reset (a new VM process)
    event(store, DAY0 + 4 * H, "alice", "i-a1", "stopping")
    event(store, DAY0 + 4 * H + 1, "alice", "i-a1", "stopped")
    event(store, DAY0 + 5 * H, "alice", "i-a1", "pending")
    event(store, DAY0 + 5 * H + 1, "alice", "i-a1", "running")
    event(store, DAY0 + 6 * H, "alice", "i-a1", "network", rx=1600, tx=10)  # a new session starts from zero
    lifecycle(store, "bob", "i-b1", DAY0, DAY0 + 2 * H)
    event(store, DAY0 + 2 * H, "bob", "i-b1", "network", rx=7, tx=9)
    now = DAY0 + 8 * H
    users = by_key(usage_report(store, by="user", now=now))
    assert users["alice"]["net_rx_bytes"] == 1500 + 200 + 1600
    assert users["alice"]["net_tx_bytes"] == 300 + 50 + 10
    assert users["bob"]["net_rx_bytes"] == 7
    assert_balanced(store, now)
    window = usage_total(store, now=now, since=DAY0 + 1.5 * H, until=DAY0 + 3.5 * H)
    assert window["net_rx_bytes"] == 500 + 7 + 200


def test_bad_input_is_refused(store: Store) -> None:
    lifecycle(store, "alice", "i-a1", DAY0, None)
    with pytest.raises(UsageError, match="group"):
        usage_report(store, by="colour")
    with pytest.raises(UsageError, match="not a time"):
        usage_report(store, since="yesterday-ish")
    with pytest.raises(UsageError, match="no user"):
        usage_report(store, user="mallory")
    with pytest.raises(UsageError, match="empty"):
        usage_report(store, since=DAY0 + 5 * H, until=DAY0 + 1 * H, now=DAY0 + 9 * H)


def test_parse_time_forms() -> None:
    now = DAY0 + 12 * H
    assert parse_time("2h", now) == now - 2 * H
    assert parse_time("7d", now) == now - 7 * 24 * H
    assert parse_time("30m", now) == now - 1800
    assert parse_time("2026-01-10", now) == DAY0
    assert parse_time("2026-01-10T01:00:00+01:00", now) == DAY0
    assert parse_time("now", now) == now
    assert parse_time(None, now) is None
    assert parse_time(str(DAY0), now) == DAY0
    assert parse_time(datetime(2026, 1, 10), now) == DAY0
    for bad in ("1e400", "NaN", "-1", "0001-01-01", "99999999999d"):
        with pytest.raises(UsageError):
            parse_time(bad, now)


# -- a cloud on libvirt's test driver -------------------------------------------------------------------------


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def kwargs_of(cloud: RunningCloud, user: str = "admin") -> dict[str, Any]:
    creds = cloud.credentials(user)
    return {"endpoint_url": cloud.url, "region_name": cloud.info["region"],
            "aws_access_key_id": creds["access_key"], "aws_secret_access_key": creds["secret_key"]}  # fmt: skip


def make_user(cloud: RunningCloud, prefix: str) -> tuple[str, dict[str, Any]]:
    """A fresh (non-admin) user of the running cloud: its name and its client keyword arguments."""
    user, key = cloud.add_user(prefix)
    kwargs = kwargs_of(cloud) | {"aws_access_key_id": key.access_key, "aws_secret_access_key": key.secret_key}
    return user.name, kwargs


def launch(kwargs: dict[str, Any], image: str, count: int) -> list[str]:
    ec2 = boto3.client("ec2", **kwargs)
    answer = ec2.run_instances(ImageId=image, MinCount=count, MaxCount=count, InstanceType="m1.small")
    return [i["InstanceId"] for i in answer["Instances"]]


def assert_frame_balanced(frame: pd.DataFrame) -> None:
    total = frame.attrs["total"]
    for metric in METRICS:
        assert frame[metric].sum() == pytest.approx(total[metric], rel=1e-9, abs=1e-9), metric


def test_usage_through_the_api_the_cli_and_a_restart(cloud_factory: Any) -> None:
    config = {"hypervisor": "test:///default", "nodes": 2, "node_vcpus": 8, "node_memory_mb": 4096}
    cloud = cloud_factory("state", **config)
    admin = cloud.ec2()
    image = default_image(admin)
    alice, alice_kwargs = make_user(cloud, "alice")
    bob, bob_kwargs = make_user(cloud, "bob")
    a = launch(alice_kwargs, image, 2)
    b = launch(bob_kwargs, image, 1)
    wait_states(admin, a + b, "running", 60)

    # the API, as DataFrames
    frame = fetch_usage(kwargs_of(cloud), by="user")
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns[:2]) == ["user", "instances"]
    rows = frame.set_index("user")
    assert rows.loc[alice, "instances"] == 2 and rows.loc[bob, "instances"] == 1
    assert frame.attrs["total"]["instances"] == 3
    assert_frame_balanced(frame)
    by_instance = fetch_usage(kwargs_of(cloud), by="instance", user=alice)
    assert sorted(by_instance["instance"]) == sorted(a)
    assert set(by_instance["user"]) == {alice}
    assert set(by_instance["instance_type"]) == {"m1.small"}
    assert_frame_balanced(fetch_usage(kwargs_of(cloud), by="type", since="1d"))
    assert_frame_balanced(fetch_usage(kwargs_of(cloud), by="day"))

    # running instances count up to now: a later report has more hours, never fewer
    first = frame.attrs["total"]["instance_hours"]
    assert first > 0
    wait_until(
        lambda: fetch_usage(kwargs_of(cloud)).attrs["total"]["instance_hours"] > first,
        30,
        what="more hours",
        interval_s=0.05,
    )

    # admins only; bad input is the client's mistake (4xx, no retries)
    with pytest.raises(ClientError) as excinfo:
        fetch_usage(alice_kwargs)
    assert error_code(excinfo) == "UnauthorizedOperation"
    for bad in ({"since": "last tuesday"}, {"by": "colour"}, {"user": "nobody-here"}):
        with pytest.raises(ClientError) as excinfo:
            fetch_usage(kwargs_of(cloud), **bad)
        assert error_code(excinfo) == "InvalidParameterValue", bad

    # the CLI
    state = str(cloud.layout.root)
    code, out, err = run_cli("usage", "--state", state)
    assert code == 0, err
    assert alice in out and bob in out and "TOTAL" in out
    code, out, err = run_cli("usage", "--state", state, "--by", "type", "--csv")
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out))
    assert list(table.columns) == ["type", "instances", "instance_hours", "vcpu_hours", "gb_hours",
                                   "net_rx_bytes", "net_tx_bytes", "storage_gb_hours", "s3_bytes_in",
                                   "s3_bytes_out", "ebs_gb_hours"]  # fmt: skip
    assert table.set_index("type").loc["m1.small", "instances"] == 3
    code, out, err = run_cli("usage", "--state", state, "--since", "yesterday-ish")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "InvalidParameterValue" in err

    # a restart of the same state folder neither loses nor double-counts a second
    before = fetch_usage(kwargs_of(cloud), by="instance").set_index("instance")
    servicectl.down(cloud.layout)  # terminates every instance: their intervals end
    db = Store(cloud.layout.database)
    try:
        after_down = {r["key"]: r for r in usage_report(db, by="instance")}
        total_down = usage_total(db)
    finally:
        db.close()
    for instance_id in a + b:
        assert after_down[instance_id]["instance_hours"] >= before.loc[instance_id, "instance_hours"]
    cloud = cloud_factory("state", **config)
    again = fetch_usage(kwargs_of(cloud), by="instance").set_index("instance")
    for instance_id in a + b:
        assert again.loc[instance_id, "instance_hours"] == pytest.approx(after_down[instance_id]["instance_hours"])
        assert again.loc[instance_id, "instances"] == 1
    assert_frame_balanced(fetch_usage(kwargs_of(cloud), by="instance"))
    total_up = fetch_usage(kwargs_of(cloud)).attrs["total"]
    for metric in METRICS:
        assert total_up[metric] == pytest.approx(total_down[metric]), metric


# -- network bytes --------------------------------------------------------------------------------------------

PORT_PRINT = """Port 0001 untagged_vlan=0000 ACTIVE - Unnamed Allocatable
 Current User: root Access Control: (User: NONE - Group: NONE)
 IN:  pkts         12          bytes                 1500
 OUT: pkts          3          bytes                  180
  -- endpoint ID 0003 module unix prog   : vdeplug: user=root pid=28725
Port 0005 untagged_vlan=0007 ACTIVE - Unnamed Allocatable
 Current User: root Access Control: (User: NONE - Group: NONE)
 IN:  pkts          0          bytes                    0
 OUT: pkts          1          bytes                   42
  -- endpoint ID 0007 module unix prog   : vdeplug: user=root pid=28727"""


def test_vde_port_counters_parse_port_print() -> None:
    from cloudlab.nc.node_nics import vde_port_counters

    assert vde_port_counters(PORT_PRINT) == {1: (1500, 180), 5: (0, 42)}
    assert vde_port_counters("") == {}


@pytest.mark.parametrize(
    ("network", "profile"),
    [("vde", "fast"), ("vde", "classic"), ("direct", "fast")],
    ids=["vde-fast", "vde-classic", "direct"],
)
def test_network_bytes_of_real_vms_reach_the_ledger(cloud_factory: Any, network: str, profile: str) -> None:
    """A booting guest talks (DHCP/ARP, the metadata service): its NIC's counters become ledger bytes (on vde's
    fast profile too, whose segment switches count nothing: the bytes are the instance's tap's)."""
    from tests.clouds import network_requirements

    reason = network_requirements()
    if reason:
        pytest.skip(reason)
    cloud = cloud_factory(
        f"{network}-{profile}", network=network, vde_profile=profile, node_vcpus=2, node_memory_mb=512
    )
    admin = cloud.ec2()
    [instance_id] = launch(kwargs_of(cloud), default_image(admin), 1)
    wait_states(admin, [instance_id], "running", 120)

    def counted() -> pd.Series:
        frame = fetch_usage(kwargs_of(cloud), by="instance").set_index("instance")
        return (
            frame.loc[instance_id] if instance_id in frame.index else pd.Series({"net_rx_bytes": 0, "net_tx_bytes": 0})
        )

    # By the boot marker the guest has fetched its metadata: bytes went both ways. Terminating it
    # appends the node's final counters, whatever the rate limit on the running readings.
    connect(str(cloud.layout.root)).wait_booted([instance_id], timeout=180)
    admin.terminate_instances(InstanceIds=[instance_id])
    wait_states(admin, [instance_id], "terminated", 60, interval_s=0.5)
    after = counted()
    assert after["net_rx_bytes"] > 0 and after["net_tx_bytes"] > 0, after
    assert_frame_balanced(fetch_usage(kwargs_of(cloud), by="instance"))
    events = usage_events(cloud, instance_id)
    assert "network" in events and events.index("network") > events.index("running")
    assert counted().equals(after), "a terminated instance's bytes do not change any more"


def usage_events(cloud: RunningCloud, instance_id: str) -> list[str]:
    db = Store(cloud.layout.database)
    try:
        return [
            r["event"] for r in db.query("SELECT event FROM ledger WHERE instance_id=? ORDER BY seq", (instance_id,))
        ]
    finally:
        db.close()


def test_a_killed_cloud_bills_until_the_restarted_one_notices_and_never_twice(cloud_factory: Any) -> None:
    """Without ``cloudlab down`` the records still say running: the restarted cloud finds the VM gone and
    appends ``terminated`` then; the instance is billed once, up to that moment, and no further."""
    config = {"hypervisor": "test:///default", "nodes": 1, "node_vcpus": 4, "node_memory_mb": 2048}
    cloud = cloud_factory("crash", **config)
    [instance_id] = launch(kwargs_of(cloud), default_image(cloud.ec2()), 1)
    wait_states(cloud.ec2(), [instance_id], "running", 60)
    before = fetch_usage(kwargs_of(cloud), by="instance").set_index("instance").loc[instance_id, "instance_hours"]
    pid = servicectl.service_pid(cloud.layout)
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: servicectl.service_pid(cloud.layout) is None, 30, what="the service to die")

    cloud = cloud_factory("crash", **config)
    admin = cloud.ec2()
    wait_states(admin, [instance_id], "terminated", 60)
    first = fetch_usage(kwargs_of(cloud), by="instance")
    assert first.attrs["total"]["instances"] == 1
    hours = first.set_index("instance").loc[instance_id, "instance_hours"]
    assert hours >= before
    db = Store(cloud.layout.database)
    try:  # closed: the same hours in a report taken an hour from now
        later = {r["key"]: r for r in usage_report(db, by="instance", now=time.time() + 3600)}
    finally:
        db.close()
    assert later[instance_id]["instance_hours"] == pytest.approx(hours)
    events = usage_events(cloud, instance_id)
    assert events.count("running") == 1 and events.count("terminated") == 1
