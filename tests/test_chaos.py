"""Chaos (issue 10, finding 5): kill -9 one part after another under concurrent clients, then check that
the cloud serves again within a bounded time and that nothing was lost or counted twice.

Clients launch, describe and terminate real TCG instances all along (bounded in count and time). In
turn we kill -9 the service (and start it again, as a user would with ``cloudlab up``), a node
controller (its supervisor restarts it), a QEMU (its instance ends as vanished), a VDE switch and a VDE
cable (the cloud runs on two hosts joined by a cable, the second behind a NAT). After each fault:
- the API answers again, every node is alive again and the network is healthy again, within ``RECOVERY_S``;
- two witness instances (one per host), launched before the first fault, are the same guests after the last
  one, and answer on their private addresses from the router after each (the service's kill rebuilt the
  network around them);
- every instance RunInstances returned is described, in a state EC2 has;
- the ledger holds, for every instance, a path through EC2's state machine: each change once, in order;
- usage equals a recount from the ledger (billed seconds are the seconds spent ``running``);
- after ``down``, no process of the cloud is left.
The recovery times are printed (``-s``) and written to ``test-artifacts/chaos.json``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from cloudlab import processes, servicectl
from cloudlab.clc.states import STATE_CODES, TRANSITIONS
from cloudlab.clc.store import Store
from cloudlab.clc.usage import usage_report
from cloudlab.net import links
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud, default_image, vm_requirements

pytestmark = [pytest.mark.vm, pytest.mark.slow]
RECOVERY_S = 90.0
CLIENTS = 2
MAX_ALIVE_PER_CLIENT = 2
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


class Clients:
    """Threads that run, describe and terminate instances until stopped, noting every instance id returned."""

    def __init__(self, cloud: RunningCloud) -> None:
        self.cloud = cloud
        self.launched: set[str] = set()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(CLIENTS)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _work(self, index: int) -> None:
        mine: list[str] = []
        while not self._stop.is_set():
            try:
                info = servicectl.endpoint(self.cloud.layout)  # a restarted service may listen elsewhere
                if info is None:
                    raise OSError("the cloud is not running")
                ec2 = RunningCloud(self.cloud.layout, info).ec2()
                image = default_image(ec2)
                if len(mine) < MAX_ALIVE_PER_CLIENT:
                    (instance,) = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"]
                    mine.append(instance["InstanceId"])
                    with self._lock:
                        self.launched.add(instance["InstanceId"])
                ec2.describe_instances()
                if len(mine) >= MAX_ALIVE_PER_CLIENT:
                    ec2.terminate_instances(InstanceIds=[mine.pop(0)])
            except (ClientError, OSError, KeyError, IndexError, ValueError) as exc:
                # the cloud is down for a moment: that is the experiment, not a failure
                with self._lock:
                    self.errors.append(type(exc).__name__)
            except Exception as exc:  # botocore's connection errors
                with self._lock:
                    self.errors.append(type(exc).__name__)
            self._stop.wait(1.0)


def serving(cloud: RunningCloud) -> bool:
    try:
        info = servicectl.endpoint(cloud.layout)
        if info is None:
            return False
        RunningCloud(cloud.layout, info).ec2().describe_instances()
        return True
    except Exception:
        return False


def nodes_alive(cloud: RunningCloud, count: int) -> bool:
    try:
        info = servicectl.endpoint(cloud.layout)
        status = RunningCloud(cloud.layout, info).status() if info else None
    except Exception:
        return False
    return status is not None and sum(n["alive"] for c in status["clusters"] for n in c["nodes"]) == count


def up_again(cloud: RunningCloud) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cloudlab.cli", "--state", str(cloud.layout.root), "up"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def kill_service(cloud: RunningCloud) -> None:
    os.kill(servicectl.service_pid(cloud.layout), signal.SIGKILL)
    wait_until(lambda: servicectl.service_pid(cloud.layout) is None, 10, what="the service to die")
    up_again(cloud)


def kill_node_controller(cloud: RunningCloud) -> None:
    pids = processes.node_controllers(cloud.layout)
    assert pids
    killed = max(pids)
    os.kill(killed, signal.SIGKILL)
    # recovered when its supervisor has started a new one (the node looks alive meanwhile: its last
    # report is younger than the dead-after span)
    wait_until(
        lambda: killed not in (now := processes.node_controllers(cloud.layout)) and len(now) == len(pids),
        RECOVERY_S,
        what="the node controller to be restarted",
    )


def kill_qemu(cloud: RunningCloud) -> None:
    witnesses = set(witness_pids(cloud).values())
    pids = wait_until(
        lambda: [p for p in servicectl.leftover_qemu(cloud.layout) if p not in witnesses], 120, what="a QEMU to kill"
    )
    os.kill(pids[0], signal.SIGKILL)


def network_detail(cloud: RunningCloud) -> dict | None:
    try:
        info = servicectl.endpoint(cloud.layout)
        status = RunningCloud(cloud.layout, info).status() if info else None
    except Exception:
        return None
    return status["clusters"][0].get("network_detail") if status else None


def network_process(cloud: RunningCloud, role: str) -> int:
    """The pid of ``role`` (classic VDE profile), or of that role of the first segment (fast: ``segment switch
    node-02 vlan V``; of a segment's cable, the end node-02 dialled)."""
    detail = wait_until(lambda: network_detail(cloud), 30, what="the network's status")
    return next(
        p["pid"]
        for p in detail["processes"]
        if p["role"] == role or (p["role"].startswith(f"segment {role} vlan ") and p["kind"] != "tcp-listener")
    )


def kill_switch(cloud: RunningCloud) -> None:
    os.kill(network_process(cloud, "switch node-02"), signal.SIGKILL)


def kill_cable(cloud: RunningCloud) -> None:
    os.kill(network_process(cloud, "cable node-02"), signal.SIGKILL)


def network_healthy(cloud: RunningCloud) -> bool:
    detail = network_detail(cloud)
    return bool(detail and detail["healthy"])


WITNESSES: list[str] = []  # instances launched before the first fault, one per host, never terminated


def witness_pids(cloud: RunningCloud) -> dict[str, int]:
    """The witnesses' QEMUs (the QEMU fault never picks them)."""
    found = {}
    for pid in servicectl.leftover_qemu(cloud.layout):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        for instance_id in WITNESSES:
            if instance_id.encode() in cmdline:
                found[instance_id] = pid
    return found


def pings(cloud: RunningCloud, address: str) -> bool:
    """Whether ``address`` answers from the cluster's public side, the outside namespace (bounded: 2 echo
    requests, 1 s each)."""
    return links.ping(cloud.layout.outside_namespace, address, count=2, timeout=1.0) > 0


FAULTS: list[tuple[str, Callable[[RunningCloud], None]]] = [
    ("service", kill_service),
    ("node controller", kill_node_controller),
    ("qemu", kill_qemu),
    ("switch", kill_switch),
    ("cable", kill_cable),
]


def ledger_paths(database: Path) -> dict[str, list[str]]:
    db = sqlite3.connect(database)
    try:
        rows = db.execute("SELECT instance_id, event FROM ledger ORDER BY seq").fetchall()
    finally:
        db.close()
    paths: dict[str, list[str]] = {}
    for instance_id, event in rows:
        if event in STATE_CODES:
            paths.setdefault(instance_id, []).append(event)
    return paths


def check_ledger(paths: dict[str, list[str]]) -> None:
    for instance_id, path in paths.items():
        assert path[0] == "pending", (instance_id, path)
        for before, after in zip(path, path[1:], strict=False):
            assert after in TRANSITIONS[before], f"{instance_id}: {before} -> {after} in {path}"
        assert path.count("terminated") <= 1, (instance_id, path)


def recount_running_seconds(database: Path, now: float) -> float:
    """Seconds spent ``running`` by every instance, straight from the ledger's state events."""
    db = sqlite3.connect(database)
    try:
        rows = db.execute("SELECT instance_id, event, time FROM ledger ORDER BY seq").fetchall()
    finally:
        db.close()
    total, since = 0.0, {}
    for instance_id, event, when in rows:
        if event not in STATE_CODES:
            continue
        if event == "running":
            since.setdefault(instance_id, when)
        elif instance_id in since:
            total += when - since.pop(instance_id)
    return total + sum(now - started for started in since.values())


def test_the_cloud_recovers_from_each_kill_and_loses_nothing(cloud_factory: Callable[..., RunningCloud]) -> None:
    if reason := vm_requirements():
        pytest.skip(reason)
    cloud = cloud_factory("chaos", nodes=2, network="vde", nat_nodes=["node-02"], scheduler="ROUNDROBIN")
    ec2 = cloud.ec2()
    group = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpProtocol="icmp", FromPort=-1, ToPort=-1, CidrIp="0.0.0.0/0")
    witnesses = ec2.run_instances(ImageId=default_image(ec2), MinCount=2, MaxCount=2)["Instances"]
    WITNESSES[:] = [w["InstanceId"] for w in witnesses]
    # the default subnet's public addresses, translated at the default VPC's router: reached from the public
    # side through the router, its uplink and the NAT, which every fault must leave working (or rebuild)
    addresses = [w["PublicIpAddress"] for w in witnesses]

    def witnesses_answer() -> bool:
        return all(pings(cloud, address) for address in addresses)

    wait_until(witnesses_answer, 180, what="the witnesses to answer")
    witness_qemus = witness_pids(cloud)
    assert set(witness_qemus) == set(WITNESSES)
    clients = Clients(cloud)
    clients.start()
    recovery: dict[str, dict[str, float]] = {}
    try:
        wait_until(lambda: len(clients.launched) >= CLIENTS, 120, what="the clients to launch")
        for name, fault in FAULTS:
            started = time.monotonic()
            fault(cloud)
            wait_until(lambda: serving(cloud), RECOVERY_S, what=f"the API to answer after the {name} kill")
            answering = time.monotonic() - started
            wait_until(lambda: nodes_alive(cloud, 2), RECOVERY_S, what=f"every node alive after the {name} kill")
            nodes_s = time.monotonic() - started
            wait_until(lambda: network_healthy(cloud), RECOVERY_S, what=f"a healthy network after the {name} kill")
            wait_until(witnesses_answer, RECOVERY_S, what=f"the witnesses to answer after the {name} kill")
            recovery[name] = {
                "api_s": round(answering, 2),
                "nodes_s": round(nodes_s, 2),
                "network_s": round(time.monotonic() - started, 2),
            }
            launched = len(clients.launched)  # the clients carry on with the recovered cloud
            wait_until(lambda n=launched: len(clients.launched) > n, RECOVERY_S, what=f"a launch after the {name} kill")
    finally:
        clients.stop()
    cloud = RunningCloud(cloud.layout, servicectl.endpoint(cloud.layout))
    ec2 = cloud.ec2()
    described = {i["InstanceId"]: i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert clients.launched <= set(described), clients.launched - set(described)
    assert {described[w]["State"]["Name"] for w in WITNESSES} == {"running"}
    assert witness_pids(cloud) == witness_qemus  # the very same guests, through every fault
    assert {i["State"]["Name"] for i in described.values()} <= set(STATE_CODES)
    paths = ledger_paths(cloud.layout.database)
    assert clients.launched <= set(paths)
    check_ledger(paths)
    now = time.time()
    store = Store(cloud.layout.database)
    try:
        billed_h = usage_report(store, by="total", now=now)[0]["instance_hours"]
    finally:
        store.close()
    assert billed_h * 3600 == pytest.approx(recount_running_seconds(cloud.layout.database, now), abs=1.0)
    servicectl.down(cloud.layout)
    assert not servicectl.leftover_qemu(cloud.layout)
    assert not processes.node_controllers(cloud.layout)
    assert not processes.of_state(cloud.layout, (b"python", b"vde_switch", b"vde_plug"))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "chaos.json").write_text(json.dumps({"recovery": recovery, "client_errors": len(clients.errors)}))
    print(f"chaos recovery times: {json.dumps(recovery)}; client errors while down: {len(clients.errors)}")
