"""The cluster controller (cloudlab.cc.cluster + registry) with real node controllers on test-driver hosts.

Wired as cloudlab/service.py wires them: one CA, signed messages both ways, each NC behind its own
Dispatcher, the CC holding a LocalChannel per node (and an HttpChannel for nodes that register over HTTP,
as cloudlab/nc/daemon.py does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlab import contract as c
from cloudlab.cc.cluster import ClusterController
from cloudlab.cc.registry import NodeRegistry
from cloudlab.errors import CloudError, ControllerUnavailable
from cloudlab.nc.hypervisor import test_driver_uri as private_host_uri
from cloudlab.nc.node import NodeController
from cloudlab.rpc import Dispatcher, HttpChannel, LocalChannel, serve_http
from cloudlab.security.ca import CertificateAuthority
from cloudlab.security.messages import MessageSigner, MessageVerifier, controller_keys
from cloudlab.waiting import wait_until


def iid(i: int) -> str:
    return f"i-{i:017x}"


def instance(i: int, vcpus: int = 1, memory_mb: int = 256) -> c.InstanceNeed:
    return c.InstanceNeed(iid(i), vcpus, memory_mb)


def start_body(i: int, vcpus: int = 1, memory_mb: int = 256) -> c.StartInstance:
    return c.StartInstance(
        instance_id=iid(i),
        vcpus=vcpus,
        memory_mb=memory_mb,
        kernel="/k",
        owner="alice",
        image_id="ami-0123456789abcdef0",
        instance_type="t2.micro",
    )


def schedule(cluster: Any, needs: list[c.InstanceNeed], min_count: int = 1) -> c.Placements:
    return cluster.cc.schedule(c.ScheduleRequest(instances=tuple(needs), min_count=min_count))


def report(vcpus: int = 1) -> c.ReportIfChanged:
    """A heartbeat answer as a fake node gives it: always the whole report."""
    whole = c.NodeReport("n", "test:///x", "test", "test", vcpus, vcpus, 1, 1, (), 0.0)
    return c.ReportIfChanged(f"digest-{vcpus}", whole)


class SwitchableChannel:
    """Wraps a channel; when ``broken`` every call fails as an unreachable controller would."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.peer = inner.peer
        self.broken = False

    def ask(self, action: c.Action[Any, Any], request: Any, timeout: float | None = None) -> Any:
        if self.broken:
            raise ControllerUnavailable(f"{self.peer} is unreachable: connection refused")
        return self.inner.ask(action, request, timeout)


class Cluster:
    """A CC and its NCs in one process."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        nodes: int = 2,
        vcpus: int = 4,
        memory_mb: int = 2048,
        policy: str = "GREEDY",
        heartbeat_s: float = 0.05,
        dead_after_s: float = 5.0,
    ) -> None:
        self.tmp_path = tmp_path
        self.ca = CertificateAuthority.load_or_create(tmp_path / "pki")
        self.cc_signer, self.cc_verifier = self.pair("cc-cluster1", "cc")
        self.cc = ClusterController(
            "cluster1",
            policy=policy,
            heartbeat_s=heartbeat_s,
            dead_after_s=dead_after_s,
            signer=self.cc_signer,
            verifier=self.cc_verifier,
        )
        self.cc_dispatcher = Dispatcher("cc-cluster1", self.cc_signer, self.cc_verifier)
        self.cc.register_routes(self.cc_dispatcher)
        self.nodes: dict[str, NodeController] = {}
        self.node_dispatchers: dict[str, Dispatcher] = {}
        self.channels: dict[str, SwitchableChannel] = {}
        self._servers: list[Any] = []
        for i in range(1, nodes + 1):
            self.add_local_node(f"node-{i:02d}", vcpus, memory_mb)

    def pair(self, name: str, role: str) -> tuple[MessageSigner, MessageVerifier]:
        return controller_keys(self.ca.identity(name, role), self.ca.ca_certificate)

    def make_node(self, name: str, vcpus: int, memory_mb: int) -> tuple[NodeController, Dispatcher]:
        node_dir = self.tmp_path / "nodes" / name
        node = NodeController(name, private_host_uri(node_dir, vcpus, memory_mb), node_dir, accel="test")
        dispatcher = Dispatcher(f"nc-{name}", *self.pair(name, "nc"))
        node.register_routes(dispatcher)
        self.nodes[name] = node
        self.node_dispatchers[name] = dispatcher
        return node, dispatcher

    def add_local_node(self, name: str, vcpus: int, memory_mb: int) -> None:
        _, dispatcher = self.make_node(name, vcpus, memory_mb)
        channel = SwitchableChannel(LocalChannel(name, "nc", self.cc_signer, self.cc_verifier, dispatcher))
        self.channels[name] = channel
        self.cc.add_node(name, channel)

    def serve(self, dispatcher: Dispatcher) -> str:
        server = serve_http(dispatcher)
        self._servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    def clc_channel(self, name: str = "clc", role: str = "clc") -> LocalChannel:
        return LocalChannel("cc-cluster1", "cc", *self.pair(name, role), self.cc_dispatcher)

    def free(self) -> dict[str, tuple[int, int]]:
        return {v.name: (v.vcpus_free, v.memory_mb_free) for v in self.cc.registry.views()}

    def reservations(self) -> dict[str, dict[str, tuple[int, int]]]:
        return {name: dict(self.cc.registry.entry(name).reservations) for name in self.cc.registry.names()}

    def close(self) -> None:
        self.cc.stop()
        for server in self._servers:
            threading.Thread(target=lambda s=server: (s.shutdown(), s.server_close()), daemon=True).start()
        for node in self.nodes.values():
            node.close()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**kwargs: Any) -> Cluster:
        cluster = Cluster(tmp_path / f"c{len(made)}", **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


# -- heartbeats -----------------------------------------------------------------------------------------------


def test_registration_polls_the_node_at_once(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=2, vcpus=4, memory_mb=2048)
    assert cluster.cc.registry.names() == ["node-01", "node-02"]
    assert cluster.free() == {"node-01": (4, 2048), "node-02": (4, 2048)}
    view = cluster.cc.registry.views()[0]
    assert (view.vcpus_total, view.memory_mb_total, view.instances) == (4, 2048, 0)


def test_heartbeats_follow_what_the_nodes_hold(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=2, vcpus=4, memory_mb=2048, heartbeat_s=0.05)
    cluster.cc.start()
    cluster.nodes["node-02"].run_instance(start_body(1, vcpus=3, memory_mb=1024))  # behind the CC's back
    wait_until(
        lambda: cluster.free()["node-02"] == (1, 1024),
        15.0,
        what="the heartbeat to report the instance",
        interval_s=0.02,
    )
    assert cluster.free()["node-01"] == (4, 2048)
    entry = cluster.cc.registry.entry("node-02")
    assert [i.instance_id for i in entry.report.instances] == [iid(1)]
    cluster.nodes["node-02"].terminate_instance(iid(1))
    wait_until(
        lambda: cluster.free()["node-02"] == (4, 2048),
        15.0,
        what="the heartbeat to report the termination",
        interval_s=0.02,
    )


# -- scheduling --------------------------------------------------------------------------------------------------


def test_greedy_schedule_packs(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=2, vcpus=4, policy="GREEDY")
    result = schedule(cluster, [instance(i) for i in range(5)])
    assert result.policy == "GREEDY"
    assert list(result.placements.values()) == ["node-01"] * 4 + ["node-02"]


def test_roundrobin_schedule_spreads(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=3, vcpus=4, policy="roundrobin")
    result = schedule(cluster, [instance(i) for i in range(4)])
    assert result.policy == "ROUNDROBIN"
    assert list(result.placements.values()) == ["node-01", "node-02", "node-03", "node-01"]
    # the cursor survives between requests
    assert list(schedule(cluster, [instance(9)]).placements.values()) == ["node-02"]


def test_back_to_back_schedules_never_overcommit(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=2, vcpus=4, memory_mb=2048)
    first = schedule(cluster, [instance(1, vcpus=3)]).placements
    second = schedule(cluster, [instance(2, vcpus=3)]).placements  # no heartbeat in between
    assert first == {iid(1): "node-01"}
    assert second == {iid(2): "node-02"}
    assert cluster.reservations() == {
        "node-01": {iid(1): (3, 256)},
        "node-02": {iid(2): (3, 256)},
    }
    assert cluster.free() == {"node-01": (1, 1792), "node-02": (1, 1792)}
    with pytest.raises(CloudError) as excinfo:
        schedule(cluster, [instance(3, vcpus=2)])
    assert excinfo.value.code == "InsufficientInstanceCapacity"


def test_concurrent_schedules_never_overcommit(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=2, vcpus=4)
    placed: list[str] = []
    refused: list[str] = []

    def ask(i: int) -> None:
        try:
            placed.extend(schedule(cluster, [instance(i, vcpus=1)]).placements.values())
        except CloudError as exc:
            refused.append(exc.code)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(placed) == ["node-01"] * 4 + ["node-02"] * 4
    assert refused == ["InsufficientInstanceCapacity"] * 4


def test_a_reservation_is_held_until_the_node_reports_the_instance(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=1, vcpus=4)
    first = iid(1)
    schedule(cluster, [instance(1, vcpus=2)])
    assert cluster.cc.run_instance("node-01", start_body(1, vcpus=2)).state == "running"
    assert cluster.reservations() == {"node-01": {first: (2, 256)}}  # the node has not been polled since
    assert cluster.free()["node-01"][0] == 2  # and it is not counted twice either
    cluster.cc.registry.poll_all()
    assert cluster.reservations() == {"node-01": {}}
    assert cluster.free()["node-01"][0] == 2


def test_a_failed_start_releases_its_reservation(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=1, vcpus=4)
    schedule(cluster, [instance(1, vcpus=3)])
    cluster.nodes["node-01"].run_instance(start_body(2, vcpus=2))  # taken behind the CC's back
    with pytest.raises(CloudError) as excinfo:
        cluster.cc.run_instance("node-01", start_body(1, vcpus=3))
    assert excinfo.value.code == "InsufficientInstanceCapacity"
    assert cluster.reservations() == {"node-01": {}}


def test_terminate_and_release_free_the_reservation(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=1, vcpus=4)
    schedule(cluster, [instance(1, vcpus=2), instance(2, vcpus=2)])
    cluster.cc.release("node-01", iid(1))
    cluster.cc.run_instance("node-01", start_body(2, vcpus=2))
    cluster.cc.terminate_instance("node-01", iid(2))
    assert cluster.reservations() == {"node-01": {}}
    cluster.cc.registry.poll_all()
    assert cluster.free() == {"node-01": (4, 2048)}
    cluster.cc.release("node-99", "i-00000000000000000")  # unknown node: nothing to do, no error


def test_a_request_that_does_not_fit_raises_and_reserves_nothing(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=2, vcpus=4, memory_mb=2048)
    before = cluster.free()
    with pytest.raises(CloudError) as excinfo:
        schedule(cluster, [instance(1, vcpus=5)])
    assert excinfo.value.code == "InsufficientInstanceCapacity"
    assert "node-01" in excinfo.value.message  # says what is free
    # three fit, four are needed: none is reserved
    with pytest.raises(CloudError) as excinfo:
        schedule(cluster, [instance(i, vcpus=2, memory_mb=1024) for i in range(5)], min_count=5)
    assert excinfo.value.code == "InsufficientInstanceCapacity"
    assert cluster.reservations() == {"node-01": {}, "node-02": {}}
    assert cluster.free() == before


def test_min_count_allows_a_partial_placement(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=2, vcpus=4)
    placements = schedule(cluster, [instance(i, vcpus=3) for i in range(4)], min_count=1).placements
    assert list(placements.values()) == ["node-01", "node-02"]
    assert sorted(placements) == [iid(0), iid(1)]


def test_a_buggy_policy_is_an_internal_error_and_reserves_nothing(make_cluster: Callable[..., Cluster]) -> None:
    class AlwaysFirst:
        name = "ALWAYSFIRST"

        def choose(self, request: Any, nodes: Any) -> str:
            return "node-01"

    cluster = make_cluster(nodes=2, vcpus=4)
    cluster.cc.policy = AlwaysFirst()
    with pytest.raises(CloudError) as excinfo:
        schedule(cluster, [instance(i, vcpus=2) for i in range(3)])
    assert excinfo.value.code == "InternalError"
    assert cluster.reservations() == {"node-01": {}, "node-02": {}}


# -- dead nodes ---------------------------------------------------------------------------------------------------


def test_a_silent_node_dies_and_is_not_offered(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=2, vcpus=4, heartbeat_s=0.05, dead_after_s=0.5)
    cluster.cc.start()
    cluster.channels["node-01"].broken = True
    registry = cluster.cc.registry
    wait_until(
        lambda: not registry.alive(registry.entry("node-01")),
        timeout_s=5,
        what="node-01 to be declared dead",
        interval_s=0.02,
    )
    assert registry.alive(registry.entry("node-02"))
    assert [v.name for v in registry.views()] == ["node-02"]
    placements = schedule(cluster, [instance(i) for i in range(2)]).placements
    assert set(placements.values()) == {"node-02"}  # GREEDY would have picked node-01
    described = {n.name: n for n in cluster.cc.describe_cluster().nodes}
    assert described["node-01"].alive is False
    assert described["node-01"].age_s >= 0.5  # at least the dead-after span since its last answer
    assert "unreachable" in described["node-01"].last_error
    assert described["node-02"].alive is True and described["node-02"].last_error is None
    # and it comes back when it answers again
    cluster.channels["node-01"].broken = False
    wait_until(
        lambda: registry.alive(registry.entry("node-01")), timeout_s=5, what="node-01 to come back", interval_s=0.02
    )
    assert registry.entry("node-01").last_error is None


def test_a_node_that_never_answered_is_not_alive() -> None:
    registry = NodeRegistry(interval_s=10, dead_after_s=5)
    channel = SwitchableChannel(type("Dummy", (), {"peer": "node-x"})())
    channel.broken = True
    registry.add("node-x", channel)
    entry = registry.entry("node-x")
    assert entry.last_seen is None and not registry.alive(entry)
    assert registry.views() == []
    registry.stop()


def test_stopping_during_a_heartbeat_round_ends_the_heartbeat_thread_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    """More nodes than heartbeat workers, each slow to answer: stop() arrives mid-round."""
    crashes: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(args.exc_value))
    asked = threading.Event()

    class Slow:
        delay = 0.0

        def __init__(self, name: str) -> None:
            self.peer = name

        def ask(self, action: Any, request: Any, timeout: float | None = None) -> Any:
            if Slow.delay:
                asked.set()
                time.sleep(Slow.delay)
            return report()

    registry = NodeRegistry(interval_s=0.01, dead_after_s=5)
    for i in range(12):
        registry.add(f"n{i:02d}", Slow(f"n{i:02d}"))
    Slow.delay = 0.2
    registry.start()
    assert asked.wait(5)
    registry.stop()
    heartbeat = [t for t in threading.enumerate() if t.name == "cc-heartbeat"]
    for t in heartbeat:
        t.join(3)
    assert crashes == []  # today: CancelledError (a queued poll was cancelled) or RuntimeError (pool shut down)


def test_an_unchanged_answer_keeps_the_report_and_keeps_the_node_alive() -> None:
    asked: list[str | None] = []

    class Quiet:
        peer = "n00"

        def ask(self, action: Any, request: Any, timeout: float | None = None) -> Any:
            asked.append(request.unchanged)
            return report() if request.unchanged is None else c.ReportIfChanged(request.unchanged, None)

    registry = NodeRegistry(interval_s=60, dead_after_s=0.5)
    registry.add("n00", Quiet())
    registry.poll_all()
    entry = registry.entry("n00")
    seen, version = entry.last_seen, registry.version
    time.sleep(0.01)
    registry.poll_all()
    # (adding a node polls it too) every heartbeat after the first names what the registry holds
    assert asked[0] is None and asked[1:] == ["digest-1"] * (len(asked) - 1) and len(asked) >= 2
    assert entry.report == report().report and entry.last_seen > seen and registry.alive(entry)
    assert registry.version == version  # nothing changed, so nothing waits for a change


def test_hanging_nodes_do_not_make_healthy_nodes_look_dead() -> None:
    """Eight nodes whose host hangs (an HTTP call that waits for its timeout) must not starve the
    heartbeats of the healthy ones: a healthy node answers every round, so it stays alive."""
    release = threading.Event()

    class Hanging:
        hang = False

        def __init__(self, name: str) -> None:
            self.peer = name

        def ask(self, action: Any, request: Any, timeout: float | None = None) -> Any:
            if Hanging.hang:
                release.wait(timeout)
                raise ControllerUnavailable(f"{self.peer}: timed out")
            return report()

    class Healthy(Hanging):
        answered = 0

        def ask(self, action: Any, request: Any, timeout: float | None = None) -> Any:
            Healthy.answered += 1
            return report(vcpus=4)

    registry = NodeRegistry(interval_s=0.05, dead_after_s=0.3)
    for i in range(8):
        registry.add(f"hung-{i}", Hanging(f"hung-{i}"))
    for name in ("ok-1", "ok-2"):
        registry.add(name, Healthy(name))
    Hanging.hang = True
    registry.start()
    try:
        dead_seen = set()

        def many_rounds_watched() -> bool:  # 24 heartbeat rounds each: four times the dead-after span
            for name in ("ok-1", "ok-2"):
                if not registry.alive(registry.entry(name)):
                    dead_seen.add(name)
            return Healthy.answered >= 2 * 24

        wait_until(many_rounds_watched, 10, what="24 heartbeat rounds of the healthy nodes", interval_s=0.02)
        assert dead_seen == set()
    finally:
        release.set()
        registry.stop()


# -- describe_cluster --------------------------------------------------------------------------------------------


def test_describe_cluster_reports_nodes_with_their_age(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=2, vcpus=4, memory_mb=2048, policy="ROUNDROBIN")
    cluster.nodes["node-01"].run_instance(start_body(1, vcpus=1, memory_mb=512))
    cluster.cc.registry.poll_all()
    described = cluster.cc.describe_cluster()
    assert described.cluster == "cluster1" and described.policy == "ROUNDROBIN"
    nodes = {n.name: n for n in described.nodes}
    assert sorted(nodes) == ["node-01", "node-02"]
    n1 = nodes["node-01"]
    assert n1.alive is True and n1.age_s is not None and n1.age_s >= 0
    assert (n1.vcpus_total, n1.vcpus_free, n1.memory_mb_total, n1.memory_mb_free) == (4, 3, 2048, 1536)
    assert n1.hypervisor == "test" and n1.url is None
    assert [i.instance_id for i in n1.instances] == [iid(1)]
    assert nodes["node-02"].instances == ()


def test_the_clc_commands_the_cc_through_signed_messages(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=2, vcpus=4)
    clc = cluster.clc_channel()
    placements = clc.ask(c.SCHEDULE, c.ScheduleRequest(instances=(instance(1, vcpus=2),))).placements
    node = placements[iid(1)]
    started = clc.ask(c.RUN_INSTANCE, c.RunOnNode(node=node, instance=start_body(1, vcpus=2)))
    assert started.state == "running" and started.node == node
    assert [d.name() for d in cluster.nodes[node].conn.listAllDomains()] == [iid(1)]
    assert clc.ask(c.DESCRIBE_CLUSTER, c.DescribeCluster()).cluster == "cluster1"
    removed = clc.ask(c.TERMINATE_INSTANCE, c.OnNode(node=node, instance_id=iid(1)))
    assert (removed.previous, removed.state) == ("running", "absent")
    assert cluster.nodes[node].conn.listAllDomains() == []
    with pytest.raises(CloudError) as excinfo:
        clc.ask(c.RUN_INSTANCE, c.RunOnNode(node="node-99", instance=start_body(2)))
    assert excinfo.value.code == "InternalError"


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("schedule", {"instances": [{"instance_id": 1, "vcpus": 1, "memory_mb": 1}]}, "$.instances[0].instance_id"),
        ("schedule", {"instances": [{"instance_id": "i-1", "vcpus": "2", "memory_mb": 1}]}, "$.instances[0].vcpus"),
        ("schedule", {}, "instances"),
        ("run_instance", {"node": "node-01"}, "instance"),
        ("terminate_instance", {"node": "node-01", "instance_id": None}, "$.instance_id"),
        ("describe_cluster", {"wait_s": "forever"}, "$.wait_s"),
    ],
)
def test_a_malformed_request_is_a_clear_error_and_changes_nothing(
    make_cluster: Callable[..., Cluster], action: str, body: dict[str, Any], field: str
) -> None:
    cluster = make_cluster(nodes=1, vcpus=4)
    with pytest.raises(CloudError) as excinfo:
        cluster.clc_channel().call(action, body)
    assert excinfo.value.code == "MalformedMessage"
    assert action in excinfo.value.message and field in excinfo.value.message
    assert cluster.reservations() == {"node-01": {}}
    assert cluster.nodes["node-01"].conn.listAllDomains() == []


@pytest.mark.parametrize(("name", "role"), [("node-01", "nc"), ("alice", "user"), ("cc-other", "cc")])
def test_only_the_clc_may_command_the_cc(make_cluster: Callable[..., Cluster], name: str, role: str) -> None:
    cluster = make_cluster(nodes=1, vcpus=4)
    channel = cluster.clc_channel(name, role)
    with pytest.raises(CloudError) as excinfo:
        channel.ask(c.SCHEDULE, c.ScheduleRequest(instances=(instance(1),)))
    assert excinfo.value.code == "MessageRejected"
    with pytest.raises(CloudError):
        channel.ask(c.RUN_INSTANCE, c.RunOnNode(node="node-01", instance=start_body(1)))
    assert cluster.reservations() == {"node-01": {}}
    assert cluster.nodes["node-01"].conn.listAllDomains() == []


# -- nodes that register over HTTP -------------------------------------------------------------------------------


def test_a_node_registers_over_http(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=0)
    cc_url = cluster.serve(cluster.cc_dispatcher)
    node, dispatcher = cluster.make_node("node-07", 4, 2048)
    node_url = cluster.serve(dispatcher)
    to_cc = HttpChannel(None, "cc", *cluster.pair("node-07", "nc"), cc_url, timeout=5)  # as nc/daemon.py does
    assert to_cc.ask(c.REGISTER_NODE, c.RegisterNode(url=node_url)) == c.Registered(cluster="cluster1", node="node-07")
    entry = cluster.cc.registry.entry("node-07")
    assert entry is not None and entry.url == node_url and isinstance(entry.channel, HttpChannel)
    assert cluster.free() == {"node-07": (4, 2048)}
    # re-registering (every 10 s) changes nothing
    to_cc.ask(c.REGISTER_NODE, c.RegisterNode(url=node_url))
    assert cluster.cc.registry.entry("node-07").channel is entry.channel
    # and the CC commands it over HTTP
    placements = schedule(cluster, [instance(1)]).placements
    assert placements == {iid(1): "node-07"}
    cluster.cc.run_instance("node-07", start_body(1))
    assert [d.name() for d in node.conn.listAllDomains()] == [iid(1)]
    assert {n.name: n.url for n in cluster.cc.describe_cluster().nodes} == {"node-07": node_url}


@pytest.mark.parametrize(("name", "role"), [("clc", "clc"), ("cc-other", "cc"), ("node-07", "user")])
def test_only_a_node_may_register(make_cluster: Callable[..., Cluster], name: str, role: str) -> None:
    cluster = make_cluster(nodes=0)
    cc_url = cluster.serve(cluster.cc_dispatcher)
    _, dispatcher = cluster.make_node("node-07", 4, 2048)
    node_url = cluster.serve(dispatcher)
    impostor = HttpChannel(None, "cc", *cluster.pair(name, role), cc_url, timeout=5)
    with pytest.raises(CloudError) as excinfo:
        impostor.ask(c.REGISTER_NODE, c.RegisterNode(url=node_url))
    assert excinfo.value.code == "MessageRejected"
    assert "role-not-allowed" in excinfo.value.message
    assert cluster.cc.registry.names() == []


def test_a_cc_without_keys_takes_no_remote_nodes() -> None:
    cc = ClusterController("solo")
    with pytest.raises(CloudError) as excinfo:
        cc.register_remote_node("node-01", "http://127.0.0.1:1")
    assert excinfo.value.code == "UnsupportedOperation"
    assert cc.registry.names() == []


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1:1", "InvalidParameterValue"),  # nothing answers there
        ("garbage", "InvalidParameterValue"),
        ("http://127.0.0.1:99999", "InvalidParameterValue"),
        ("file:///etc/passwd", "InvalidParameterValue"),
        (123, "MalformedMessage"),
        (None, "MalformedMessage"),
    ],
)
def test_a_bad_url_cannot_strand_a_registered_node(make_cluster: Callable[..., Cluster], url: Any, code: str) -> None:
    """Finding 10: ``register_node`` signed as the node with a URL where it does not answer left the node
    "NOT ANSWERING" for good; a URL of the wrong type was an InternalError with a traceback."""
    cluster = make_cluster(nodes=0)
    cc_url = cluster.serve(cluster.cc_dispatcher)
    _, dispatcher = cluster.make_node("node-07", 4, 2048)
    node_url = cluster.serve(dispatcher)
    as_node = HttpChannel(None, "cc", *cluster.pair("node-07", "nc"), cc_url, timeout=10)
    as_node.ask(c.REGISTER_NODE, c.RegisterNode(url=node_url))
    with pytest.raises(CloudError) as excinfo:
        as_node.call("register_node", {"url": url})
    assert excinfo.value.code == code
    entry = cluster.cc.registry.entry("node-07")
    assert entry.url == node_url
    cluster.cc.registry.poll_all()
    assert cluster.cc.registry.alive(cluster.cc.registry.entry("node-07"))


def test_a_node_cannot_register_in_another_nodes_name(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=0)
    cc_url = cluster.serve(cluster.cc_dispatcher)
    _, dispatcher = cluster.make_node("node-07", 4, 2048)
    node_url = cluster.serve(dispatcher)
    # node-08 points the CC at node-07's NC: it registers as node-08 (its certificate's name) and the CC
    # refuses, since the NC that answers there is node-07, not node-08
    as_other = HttpChannel(None, "cc", *cluster.pair("node-08", "nc"), cc_url, timeout=10)
    with pytest.raises(CloudError) as excinfo:
        as_other.ask(c.REGISTER_NODE, c.RegisterNode(url=node_url))
    assert excinfo.value.code == "InvalidParameterValue" and "node-08" in excinfo.value.message
    assert cluster.cc.registry.names() == []
