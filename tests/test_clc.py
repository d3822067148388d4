"""The cloud controller (cloudlab.clc.cloud) over a full in-process stack on libvirt's test driver.

CloudService builds CLC + CC + NCs exactly as ``cloudlab serve`` does (signed messages on every hop);
the test driver's domains do not execute, so instances become "running" at once and everything is fast.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlab import contract, waiting
from cloudlab.clc.states import STATE_CODES, TRANSITIONS, check_transition
from cloudlab.errors import CloudError, ControllerUnavailable
from cloudlab.nc.domain_xml import DomainSpec, build_domain_xml
from cloudlab.waiting import wait_until
from tests.clouds import NODE_VCPUS, LocalCloud

LEDGER_FIELDS = ("user", "instance_id", "instance_type", "vcpus", "memory_mb", "node", "cluster", "event", "detail")


@pytest.fixture
def make_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., LocalCloud]]:
    monkeypatch.setenv("CLOUDLAB_CACHE", str(tmp_path / "no-cache"))  # no built image: only ours
    clouds: list[LocalCloud] = []

    def make(root: Path | None = None, **kwargs: Any) -> LocalCloud:
        cloud = LocalCloud(root or tmp_path, **kwargs)
        clouds.append(cloud)
        return cloud

    yield make
    for cloud in clouds:
        cloud.stop()


@pytest.fixture
def cloud(make_cloud: Callable[..., LocalCloud]) -> LocalCloud:
    return make_cloud()


def error_code(excinfo: pytest.ExceptionInfo[CloudError]) -> str:
    return excinfo.value.code


# -- RunInstances ---------------------------------------------------------------------------------------------


def test_run_instances_records_pending_instances_that_become_running(cloud: LocalCloud) -> None:
    reservation = cloud.clc.run_instances(
        cloud.admin, cloud.image.image_id, min_count=2, max_count=2, instance_type="t2.small"
    )
    assert reservation["reservation_id"].startswith("r-") and reservation["owner"] == "admin"
    ids = [i["instance_id"] for i in reservation["instances"]]
    assert len(ids) == 2 and all(i.startswith("i-") and len(i) == 19 for i in ids)
    for index, inst in enumerate(reservation["instances"]):
        assert inst["launch_index"] == index
        assert (inst["instance_type"], inst["vcpus"], inst["memory_mb"]) == ("t2.small", 1, 512)
        assert inst["image_id"] == cloud.image.image_id and inst["kernel_id"] == cloud.image.kernel_id
        assert inst["node"] in cloud.service.local_nodes and inst["zone"] == "cloudlab-1a"
    cloud.wait_state(ids, "running")
    for instance_id in ids:
        assert cloud.events(instance_id) == ["pending", "running"]
        row = cloud.clc.instance(instance_id)
        assert row["dispatched_at"] is not None and row["running_at"] >= row["launch_time"]
        assert instance_id in cloud.domains()[row["node"]]


class SlowReservationReads:
    """The CLC's store, except that reading a reservation's instances from the calling thread waits (up
    to 1 s) until the dispatch threads have started them: the interleaving a busy host produces."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._caller = threading.current_thread()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def query(self, sql: str, params: Any = ()) -> Any:
        if "WHERE reservation_id=?" in sql and threading.current_thread() is self._caller:
            with contextlib.suppress(waiting.WaitTimeout):
                waiting.wait_until(
                    lambda: all(r["state"] != "pending" for r in self._store.query(sql, params)), 1.0, interval_s=0.01
                )
        return self._store.query(sql, params)


def test_run_instances_answers_with_the_instances_as_pending(cloud: LocalCloud) -> None:
    """EC2's RunInstances answers with every instance ``pending`` (code 0): the answer is the records
    as committed, whatever the dispatch threads did in the meantime."""
    cloud.clc.store = SlowReservationReads(cloud.clc.store)
    reservation = cloud.clc.run_instances(cloud.admin, cloud.image.image_id, min_count=3, max_count=3)
    assert [i["state"] for i in reservation["instances"]] == ["pending"] * 3


def test_the_ledger_records_every_state_change_with_usage_facts(cloud: LocalCloud) -> None:
    (instance_id,) = cloud.run(instance_type="c1.medium")
    cloud.wait_state([instance_id], "running")
    cloud.clc.terminate_instances(cloud.admin, [instance_id])
    cloud.wait_state([instance_id], "terminated")
    rows = cloud.ledger(instance_id)
    assert [r["event"] for r in rows] == ["pending", "running", "shutting-down", "terminated"]
    node = cloud.clc.instance(instance_id)["node"]
    for row in rows:
        assert (row["user"], row["instance_type"], row["vcpus"], row["memory_mb"], row["node"], row["cluster"]) == (
            "admin",
            "c1.medium",
            2,
            512,
            node,
            "cluster1",
        )
    times = [r["time"] for r in rows]
    assert times == sorted(times)
    assert rows[2]["detail"].startswith("Client.UserInitiatedShutdown")


def test_the_ledger_is_append_only(cloud: LocalCloud) -> None:
    (instance_id,) = cloud.run()
    cloud.wait_state([instance_id], "running")
    before = cloud.ledger()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), cloud.service.store.transaction() as db:
        db.execute("UPDATE ledger SET vcpus=0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"), cloud.service.store.transaction() as db:
        db.execute("DELETE FROM ledger WHERE instance_id=?", (instance_id,))
    # also for another connection to the same database file (another process)
    other = sqlite3.connect(cloud.layout.database)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            other.execute("UPDATE ledger SET user='mallory'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            other.execute("DELETE FROM ledger")
    finally:
        other.close()
    assert cloud.ledger() == before


@pytest.mark.parametrize(("current", "new"), [(c, n) for c in STATE_CODES for n in STATE_CODES])
def test_the_state_machine(current: str, new: str) -> None:
    allowed = {
        ("pending", "running"),
        ("pending", "shutting-down"),
        ("pending", "terminated"),
        ("running", "shutting-down"),
        ("running", "terminated"),
        ("running", "stopping"),
        ("shutting-down", "terminated"),
        ("stopping", "stopped"),
        ("stopping", "terminated"),
        ("stopped", "pending"),
        ("stopped", "shutting-down"),
        ("stopped", "terminated"),
    }
    assert {(c, n) for c, targets in TRANSITIONS.items() for n in targets} == allowed
    if (current, new) in allowed:
        check_transition("i-0123456789abcdef0", current, new)
    else:
        with pytest.raises(CloudError) as excinfo:
            check_transition("i-0123456789abcdef0", current, new)
        assert error_code(excinfo) == "IncorrectInstanceState"
        assert current in excinfo.value.message and new in excinfo.value.message


def test_terminate_returns_previous_and_current_state(cloud: LocalCloud) -> None:
    ids = cloud.run(count=2)
    cloud.wait_state(ids, "running")
    changes = cloud.clc.terminate_instances(cloud.admin, ids)
    assert [(i, p) for i, p, _ in changes] == [(ids[0], "running"), (ids[1], "running")]
    assert {c for _, _, c in changes} <= {"shutting-down", "terminated"}
    cloud.wait_state(ids, "terminated")
    assert all(i not in names for i in ids for names in cloud.domains().values())
    assert cloud.clc.terminate_instances(cloud.admin, ids) == [
        (ids[0], "terminated", "terminated"),
        (ids[1], "terminated", "terminated"),
    ]
    assert [e for i in ids for e in cloud.events(i)].count("terminated") == 2  # no second event
    with pytest.raises(CloudError) as excinfo:
        cloud.clc.terminate_instances(cloud.admin, [])
    assert error_code(excinfo) == "MissingParameter"


def test_reboot_needs_a_live_instance(cloud: LocalCloud) -> None:
    (instance_id,) = cloud.run()
    cloud.wait_state([instance_id], "running")
    cloud.clc.reboot_instances(cloud.admin, [instance_id])
    assert cloud.events(instance_id)[-1] == "rebooted"
    assert cloud.state(instance_id) == "running"
    cloud.clc.terminate_instances(cloud.admin, [instance_id])
    cloud.wait_state([instance_id], "terminated")
    with pytest.raises(CloudError) as excinfo:
        cloud.clc.reboot_instances(cloud.admin, [instance_id])
    assert error_code(excinfo) == "IncorrectInstanceState"


# -- who sees what -------------------------------------------------------------------------------------------


def test_users_see_only_their_own_instances_and_admins_see_all(cloud: LocalCloud) -> None:
    bob = cloud.clc.users.create("bob")
    carol = cloud.clc.users.create("carol")
    admins = cloud.run()
    bobs = cloud.run(bob, count=2)
    cloud.wait_state(admins + bobs, "running")
    assert sorted(i["instance_id"] for i in cloud.clc.describe_instances(bob)) == sorted(bobs)
    assert cloud.clc.describe_instances(carol) == []
    assert sorted(i["instance_id"] for i in cloud.clc.describe_instances(cloud.admin)) == sorted(admins + bobs)
    assert [i["owner"] for i in cloud.clc.describe_instances(cloud.admin, bobs)] == ["bob", "bob"]
    for call in (
        lambda: cloud.clc.describe_instances(bob, admins),
        lambda: cloud.clc.terminate_instances(bob, admins),
        lambda: cloud.clc.reboot_instances(bob, admins),
        lambda: cloud.clc.console_output(bob, admins[0]),
        lambda: cloud.clc.terminate_instances(carol, [bobs[0]]),
    ):
        with pytest.raises(CloudError) as excinfo:
            call()
        assert error_code(excinfo) == "InvalidInstanceID.NotFound"
    assert cloud.state(admins[0]) == "running" and cloud.state(bobs[0]) == "running"
    # the admin may terminate bob's instance
    cloud.clc.terminate_instances(cloud.admin, [bobs[0]])
    cloud.wait_state([bobs[0]], "terminated")
    assert cloud.ledger(bobs[0])[-1]["user"] == "bob"  # accounted to the owner, not to the admin


def test_the_owner_of_a_resource_is_the_clcs_to_say(cloud: LocalCloud) -> None:
    """What a DryRun asks the CLC: who owns an instance, an image, a group; a well-formed id naming nothing
    is EC2's NotFound; an id of no resource kind has no owner (and is no error)."""
    bob = cloud.clc.users.create("bob")
    [instance_id] = cloud.run(bob)
    assert cloud.clc.owner_of(instance_id) == "bob"
    assert cloud.clc.owner_of(cloud.image.image_id) == "admin"
    with pytest.raises(CloudError) as excinfo:
        cloud.clc.owner_of("i-0123456789abcdef0")
    assert error_code(excinfo) == "InvalidInstanceID.NotFound"
    with pytest.raises(CloudError) as excinfo:
        cloud.clc.owner_of("sg-0123456789abcdef0")
    assert error_code(excinfo) == "InvalidGroup.NotFound"
    assert cloud.clc.owner_of("fleet-0123456789abcdef0") is None
    assert cloud.clc.owner_of("not-an-id") is None


def test_malformed_instance_ids(cloud: LocalCloud) -> None:
    for bad in ("i-xyz", "bogus", "ami-0123456789abcdef0"):
        with pytest.raises(CloudError) as excinfo:
            cloud.clc.describe_instances(cloud.admin, [bad])
        assert error_code(excinfo) == "InvalidInstanceID.Malformed"


# -- ClientToken and counts -----------------------------------------------------------------------------------


def test_client_token_makes_run_instances_idempotent(cloud: LocalCloud) -> None:
    bob = cloud.clc.users.create("bob")
    first = cloud.clc.run_instances(cloud.admin, cloud.image.image_id, client_token="tok-1")
    again = cloud.clc.run_instances(cloud.admin, cloud.image.image_id, client_token="tok-1", max_count=3)
    assert again["reservation_id"] == first["reservation_id"]
    assert [i["instance_id"] for i in again["instances"]] == [i["instance_id"] for i in first["instances"]]
    assert len(cloud.clc.describe_instances(cloud.admin)) == 1
    # the token is the caller's: another user with the same token gets their own reservation
    bobs = cloud.clc.run_instances(bob, cloud.image.image_id, client_token="tok-1")
    assert bobs["reservation_id"] != first["reservation_id"] and bobs["owner"] == "bob"
    other = cloud.clc.run_instances(cloud.admin, cloud.image.image_id, client_token="tok-2")
    assert other["reservation_id"] != first["reservation_id"]
    assert len(cloud.clc.describe_instances(cloud.admin)) == 3


class GatedSchedule:
    """A CLC→CC channel that holds every ``schedule`` call until ``parties`` of them arrived (or 1 s passed):
    the interleaving of a client retrying a RunInstances whose first answer was slow."""

    def __init__(self, inner: Any, parties: int) -> None:
        self.inner = inner
        self.peer = inner.peer
        self.barrier = threading.Barrier(parties)

    def ask(self, action: contract.Action[Any, Any], request: Any, timeout: float | None = None) -> Any:
        if action is contract.SCHEDULE:
            with contextlib.suppress(threading.BrokenBarrierError):
                self.barrier.wait(timeout=1.0)
        return self.inner.ask(action, request, timeout)


def test_concurrent_requests_with_one_client_token_make_one_reservation(cloud: LocalCloud) -> None:
    link = cloud.clc.clusters.get("cluster1")
    link.channel = GatedSchedule(link.channel, 3)
    reservations: list[str] = []

    def launch() -> None:
        reservations.append(
            cloud.clc.run_instances(cloud.admin, cloud.image.image_id, client_token="retry-storm")["reservation_id"]
        )

    threads = [threading.Thread(target=launch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(reservations) == 3
    assert len(set(reservations)) == 1
    assert len(cloud.clc.describe_instances(cloud.admin)) == 1


@pytest.mark.parametrize(
    ("min_count", "max_count", "code"),
    [
        (0, 1, "InvalidParameterValue"),
        (-1, 1, "InvalidParameterValue"),
        (3, 2, "InvalidParameterValue"),
        (1, 1001, "InstanceLimitExceeded"),
    ],
)
def test_count_validation(cloud: LocalCloud, min_count: int, max_count: int, code: str) -> None:
    with pytest.raises(CloudError) as excinfo:
        cloud.clc.run_instances(cloud.admin, cloud.image.image_id, min_count=min_count, max_count=max_count)
    assert error_code(excinfo) == code
    assert cloud.clc.describe_instances(cloud.admin) == [] and cloud.ledger() == []


def test_more_than_the_capacity_is_refused_and_leaves_nothing(cloud: LocalCloud) -> None:
    capacity = 2 * NODE_VCPUS  # t2.micro: 1 vCPU, 256 MiB; two nodes of 4 vCPUs
    with pytest.raises(CloudError) as excinfo:
        cloud.run(count=capacity + 1)
    assert error_code(excinfo) == "InsufficientInstanceCapacity"
    assert cloud.clc.describe_instances(cloud.admin) == [] and cloud.ledger() == []
    assert cloud.service.store.query("SELECT * FROM reservations") == []
    ids = cloud.run(count=capacity)  # nothing was held back by the refused request
    cloud.wait_state(ids, "running")


def test_max_count_above_capacity_with_a_fitting_min_count_launches_what_fits(cloud: LocalCloud) -> None:
    ids = cloud.run(min_count=2, max_count=20)
    assert len(ids) == 2 * NODE_VCPUS
    cloud.wait_state(ids, "running")
    assert sorted(len(names) for names in cloud.domains().values()) == [NODE_VCPUS, NODE_VCPUS]
    with pytest.raises(CloudError) as excinfo:
        cloud.run()
    assert error_code(excinfo) == "InsufficientInstanceCapacity"
    cloud.clc.terminate_instances(cloud.admin, ids[:1])
    cloud.wait_state(ids[:1], "terminated")
    wait_until(lambda: _fits_one(cloud), 15.0, what="the freed room to be offered again", interval_s=0.02)


def _fits_one(cloud: LocalCloud) -> bool:
    try:
        cloud.run()
    except CloudError:
        return False
    return True


@pytest.mark.parametrize(
    ("image_id", "code"),
    [
        ("not-an-image", "InvalidAMIID.Malformed"),
        ("ami-xyz", "InvalidAMIID.Malformed"),
        ("", "InvalidAMIID.Malformed"),
        ("ami-0123456789abcdef0", "InvalidAMIID.NotFound"),
        ("ami-01234567", "InvalidAMIID.NotFound"),
    ],
)
def test_bad_image_ids(cloud: LocalCloud, image_id: str, code: str) -> None:
    with pytest.raises(CloudError) as excinfo:
        cloud.clc.run_instances(cloud.admin, image_id)
    assert error_code(excinfo) == code
    assert cloud.ledger() == []


def test_a_kernel_image_or_a_private_image_of_another_user_cannot_be_run(cloud: LocalCloud) -> None:
    bob = cloud.clc.users.create("bob")
    with pytest.raises(CloudError) as excinfo:
        cloud.clc.run_instances(cloud.admin, cloud.image.kernel_id)  # aki-...
    assert error_code(excinfo) == "InvalidAMIID.Malformed"
    private = cloud.clc.images.register("private", cloud.root / "vmlinuz", None, owner="admin", public=False)
    with pytest.raises(CloudError) as excinfo:
        cloud.clc.run_instances(bob, private.image_id)
    assert error_code(excinfo) == "InvalidAMIID.NotFound"
    reservation = cloud.clc.run_instances(cloud.admin, private.image_id)
    assert reservation["instances"][0]["ramdisk_id"] is None


def test_unknown_instance_type_and_zone(cloud: LocalCloud) -> None:
    with pytest.raises(CloudError) as excinfo:
        cloud.clc.run_instances(cloud.admin, cloud.image.image_id, instance_type="z9.enormous")
    assert error_code(excinfo) == "InvalidParameterValue"
    assert "t2.micro" in excinfo.value.message
    with pytest.raises(CloudError) as excinfo:
        cloud.clc.run_instances(cloud.admin, cloud.image.image_id, zone="mars-1a")
    assert error_code(excinfo) == "InvalidParameterValue"
    assert cloud.ledger() == []


# -- reconciliation ----------------------------------------------------------------------------------------------


def test_a_vm_that_vanished_is_terminated_with_a_reason(cloud: LocalCloud) -> None:
    ids = cloud.run(count=2)
    cloud.wait_state(ids, "running")
    dom = cloud.node_of(ids[0]).conn.lookupByName(ids[0])
    dom.destroy()
    dom.undefine()
    cloud.wait_state(ids[:1], "terminated")
    row = cloud.clc.instance(ids[0])
    assert "vanished" in row["state_reason"].lower() and row["node"] in row["state_reason"]
    assert cloud.events(ids[0]) == ["pending", "running", "terminated"]
    assert "vanished" in cloud.ledger(ids[0])[-1]["detail"].lower()
    cloud.passes()
    assert cloud.state(ids[1]) == "running"
    assert cloud.events(ids[0]).count("terminated") == 1


def test_an_unknown_vm_is_reported_and_left_alone(cloud: LocalCloud) -> None:
    node = cloud.service.local_nodes["node-01"]
    stranger = "i-0badc0ffee0000000"
    spec = DomainSpec(
        instance_id=stranger,
        vcpus=1,
        memory_mb=128,
        kernel=Path("/k"),
        ramdisk=None,
        console_log=cloud.root / "stranger.log",
        accel="test",
        metadata={"owner": "nobody", "vcpus": "1", "memory_mb": "128", "node": "node-01"},
    )
    node.conn.defineXML(build_domain_xml(spec)).create()
    found = wait_until(
        lambda: [v for v in cloud.clc.unknown_vms() if v["instance_id"] == stranger],
        15.0,
        what="the stranger to be reported",
        interval_s=0.02,
    )
    assert found[0]["node"] == "node-01" and found[0]["state"] == "running"
    cloud.passes()  # several reconcile rounds later it is still there, untouched and unrecorded
    assert node.conn.lookupByName(stranger).isActive()
    assert cloud.clc.instance(stranger) is None
    assert cloud.ledger() == []


def test_a_guest_that_shuts_itself_off_is_terminated(cloud: LocalCloud) -> None:
    (instance_id,) = cloud.run()
    cloud.wait_state([instance_id], "running")
    node = cloud.node_of(instance_id)
    node.conn.lookupByName(instance_id).destroy()  # powered off; still defined, reported "shutoff"
    cloud.wait_state([instance_id], "terminated")
    row = cloud.clc.instance(instance_id)
    assert row["state_reason"].startswith("Client.InstanceInitiatedShutdown")
    assert cloud.events(instance_id) == ["pending", "running", "shutting-down", "terminated"]
    assert cloud.ledger(instance_id)[2]["detail"].startswith("Client.InstanceInitiatedShutdown")
    wait_until(
        lambda: instance_id not in [d.name() for d in node.conn.listAllDomains()],
        15.0,
        what="the shut-off domain to be cleaned up",
        interval_s=0.02,
    )


def test_a_guest_shutting_itself_off_reaches_the_records_by_event_not_by_poll(
    make_cloud: Callable[..., LocalCloud], tmp_path: Path
) -> None:
    """The node's lifecycle event nudges its CC, whose report wakes the reconciler: with heartbeats and
    reconcile passes a minute apart, the guest's shutdown still reaches the records within seconds."""
    cloud = make_cloud(tmp_path / "slow", poll_s=60.0)
    (instance_id,) = cloud.run()
    cloud.wait_state([instance_id], "running")  # the start's own answer says so: no poll needed either
    cloud.node_of(instance_id).conn.lookupByName(instance_id).destroy()
    cloud.wait_state([instance_id], "terminated", timeout=20)  # far sooner than the next poll
    assert cloud.clc.instance(instance_id)["state_reason"].startswith("Client.InstanceInitiatedShutdown")


def test_the_vm_of_a_terminated_instance_that_reappears_is_removed(
    cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cloudlab.clc.dispatch.RETRY_AFTER_S", 0.1)
    (instance_id,) = cloud.run()
    cloud.wait_state([instance_id], "running")
    node = cloud.node_of(instance_id)
    cloud.clc.terminate_instances(cloud.admin, [instance_id])
    cloud.wait_state([instance_id], "terminated")
    # the node brings the old VM back (say, a node restored from a snapshot)
    node.run_instance(contract.StartInstance(instance_id=instance_id, vcpus=1, memory_mb=256, kernel="/k"))
    wait_until(
        lambda: instance_id not in [d.name() for d in node.conn.listAllDomains()],
        15.0,
        what="the leftover VM to be removed",
        interval_s=0.02,
    )
    assert cloud.state(instance_id) == "terminated"
    assert cloud.events(instance_id).count("terminated") == 1
    assert [v for v in cloud.clc.unknown_vms() if v["instance_id"] == instance_id] == []


def test_a_node_that_stops_answering_does_not_terminate_its_instances(cloud: LocalCloud) -> None:
    (instance_id,) = cloud.run()
    cloud.wait_state([instance_id], "running")
    name = cloud.clc.instance(instance_id)["node"]
    registry = cloud.service.cc.registry
    registry.dead_after_s = 0.3
    entry = registry.entry(name)
    entry.channel = FailingLink(entry.channel, {"describe_resource_if_changed"})
    wait_until(
        lambda: not registry.alive(registry.entry(name)), 15.0, what=f"{name} to be declared dead", interval_s=0.02
    )
    cloud.passes()  # several reconcile rounds without a report from that node
    assert cloud.state(instance_id) == "running"
    entry.channel = entry.channel.inner
    wait_until(lambda: registry.alive(registry.entry(name)), 15.0, what=f"{name} to come back", interval_s=0.02)
    cloud.passes()
    assert cloud.state(instance_id) == "running"
    assert cloud.events(instance_id) == ["pending", "running"]


class FailingLink:
    """A CLC→CC channel on which some actions fail as if the cluster controller were unreachable."""

    def __init__(self, inner: Any, failing: set[str]) -> None:
        self.inner = inner
        self.peer = inner.peer
        self.failing = failing

    def ask(self, action: contract.Action[Any, Any], request: Any, timeout: float | None = None) -> Any:
        if action.name in self.failing:
            raise ControllerUnavailable(f"{self.peer} is unreachable (test)")
        return self.inner.ask(action, request, timeout)


def test_a_restart_reconciles_records_without_losing_or_duplicating_ledger_events(
    make_cloud: Callable[..., LocalCloud], tmp_path: Path
) -> None:
    first = make_cloud(tmp_path)
    running = first.run(count=2)
    done = first.run()
    first.wait_state(running + done, "running")
    first.clc.terminate_instances(first.admin, done)
    first.wait_state(done, "terminated")
    # one start and one termination the CC never got (it became unreachable)
    link = first.clc.clusters.get("cluster1")
    link.channel = FailingLink(link.channel, {"run_instance", "run_instances", "terminate_instance"})
    (undispatched,) = first.run()
    first.clc.terminate_instances(first.admin, running[1:])
    first.passes()
    assert first.state(undispatched) == "pending" and first.clc.instance(undispatched)["dispatched_at"] is None
    assert first.state(running[1]) == "shutting-down"
    ledger_before = first.ledger()
    first.stop()  # the VMs of test-driver hosts live in memory: they are gone with their connections

    second = make_cloud(tmp_path)  # same state folder, same node files
    assert second.clc.users.get("admin") == first.admin
    assert second.clc.images.get(first.image.image_id) is not None and second.image.image_id == first.image.image_id
    # the VM of a running instance is gone: terminated, with the reason
    second.wait_state([running[0]], "terminated")
    assert "vanished" in second.clc.instance(running[0])["state_reason"].lower()
    # the unfinished termination is finished
    second.wait_state([running[1]], "terminated")
    assert second.clc.instance(running[1])["state_reason"].startswith("Client.UserInitiatedShutdown")
    # the start that never reached a node is sent again
    second.wait_state([undispatched], "running")
    assert undispatched in second.domains()[second.clc.instance(undispatched)["node"]]
    second.passes()  # let a few more reconcile rounds pass: nothing may be added twice
    ledger_after = second.ledger()
    assert ledger_after[: len(ledger_before)] == ledger_before  # nothing lost or rewritten
    added = [(r["instance_id"], r["event"]) for r in ledger_after[len(ledger_before) :]]
    assert sorted(added) == sorted([(running[0], "terminated"), (running[1], "terminated"), (undispatched, "running")])
    assert [r["seq"] for r in ledger_after] == sorted({r["seq"] for r in ledger_after})
    for row in ledger_after:
        assert all(row[f] is not None for f in LEDGER_FIELDS if f != "detail")
    assert second.state(done[0]) == "terminated" and second.events(done[0]) == first_events(ledger_before, done[0])


def first_events(rows: list[dict[str, Any]], instance_id: str) -> list[str]:
    return [r["event"] for r in rows if r["instance_id"] == instance_id]
