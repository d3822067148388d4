"""POWERSAVE (Eucalyptus' power-saving scheduling policy) on libvirt's test driver: idle nodes are powered
down past the threshold and keep their registration, a launch that needs one wakes it (a signed wake, the
node's boot delay) and runs, and the node-hours in the ledger show the time the nodes spent off."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cloudlab import contract as c
from cloudlab.cc.scheduler import InstanceRequest, NodeView, PowerSave, place
from cloudlab.errors import CloudError
from cloudlab.listings import clusters_frame, nodes_frame
from cloudlab.nc.hypervisor import test_driver_uri as private_host_uri
from cloudlab.nc.node import NodeController
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud, cli, default_image, described, vm_requirements, wait_states


def node_states(cloud: RunningCloud) -> dict[str, str]:
    return {n["name"]: n["state"] for cluster in cloud.status()["clusters"] for n in cluster["nodes"]}


def wait_node_states(cloud: RunningCloud, expected: dict[str, str], what: str) -> None:
    wait_until(lambda: node_states(cloud) == expected, 30, what=what, interval_s=0.2)


def node_usage(cloud: RunningCloud) -> dict[str, dict[str, Any]]:
    """The client's node-hours frame (``Cloud.node_usage``), by node."""
    from cloudlab.client import connect

    frame = connect(str(cloud.layout.root)).node_usage()
    return {row["node"]: row for row in frame.to_dict("records")}


def test_powersave_chooses_nodes_that_are_on_and_wakes_one_only_when_none_fits() -> None:
    on = NodeView("node-02", 2, 1024, 1, 768, 1)
    off = NodeView("node-01", 2, 1024, 2, 1024, 0, powered_on=False)
    policy = PowerSave()
    # the node that is on, though a powered-down one comes first by name
    assert place(policy, [InstanceRequest("i-1", 1, 256)], [off, on]) == {"i-1": "node-02"}
    # two do not fit on it: the second wakes the powered-down node
    assert place(policy, [InstanceRequest("i-1", 1, 256), InstanceRequest("i-2", 1, 256)], [off, on]) == {
        "i-1": "node-02",
        "i-2": "node-01",
    }


def test_a_powered_off_node_answers_only_a_wake(tmp_path: Path) -> None:
    node_dir = tmp_path / "node"
    node = NodeController("node-01", private_host_uri(node_dir, 2, 1024), node_dir, accel="test", wake_s=0.2)
    try:
        start = c.StartInstance(
            instance_id="i-0123456789abcdef0", vcpus=1, memory_mb=256, kernel="/k", owner="alice",
            image_id="ami-0123456789abcdef0", instance_type="t2.micro",
        )  # fmt: skip
        node.run_instance(start)
        with pytest.raises(CloudError) as excinfo:  # it holds an instance: it stays on
            node.power_off()
        assert excinfo.value.code == "IncorrectState"
        node.terminate_instance(start.instance_id)
        assert node.power_off().power == "off"
        describe = node.powered(lambda r, m: node.describe_resource())
        with pytest.raises(CloudError) as excinfo:
            describe(c.Empty(), None)
        assert excinfo.value.code == "Unavailable" and "powered off" in excinfo.value.message
        assert node.wake().power == "waking"
        wait_until(lambda: node.power == "on", 10, what="the node to boot", interval_s=0.05)
        assert describe(c.Empty(), None).vcpus_free == 2
    finally:
        node.close()


@pytest.mark.slow
def test_idle_nodes_power_down_a_launch_wakes_one_and_node_hours_show_it(cloud_factory: Any) -> None:
    cloud = cloud_factory(
        hypervisor="test:///default",
        nodes=3,
        node_vcpus=2,
        node_memory_mb=1024,
        scheduler="POWERSAVE",
        powersave_idle_s=1.0,
        powersave_wake_s=1.0,
    )
    ec2 = cloud.ec2()
    image = default_image(ec2)
    nodes = ["node-01", "node-02", "node-03"]
    wait_node_states(cloud, dict.fromkeys(nodes, "powered-off"), "the idle nodes to power down")
    # powered down, still registered: the zone is available (a node can be woken), the CC lists them all
    [zone] = ec2.describe_availability_zones()["AvailabilityZones"]
    assert zone["State"] == "available"
    status = cloud.status()
    cluster = status["clusters"][0]
    assert cluster["scheduler"] == "POWERSAVE" and [n["name"] for n in cluster["nodes"]] == nodes
    # (the client's nodes() and clusters() are these frames of the status)
    assert nodes_frame(status)[["node", "state"]].values.tolist() == [[n, "powered-off"] for n in nodes]
    [row] = clusters_frame(status).to_dict("records")
    assert (row["state"], row["nodes_up"], row["nodes_powered_off"], row["nodes_dead"]) == ("available", 0, 3, 0)

    [first] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t2.micro")["Instances"]
    assert first["State"]["Name"] == "pending"  # answered at once; the start waits for the woken node
    wait_states(ec2, [first["InstanceId"]], "running", timeout=30)
    assert first["Placement"]["HostId"] == "node-01"
    states = node_states(cloud)
    assert states["node-01"] == "up" and states["node-02"] == states["node-03"] == "powered-off"
    # a second small one packs onto the node that is on; a larger one needs a wake
    [second] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t2.micro")["Instances"]
    [third] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t2.medium")["Instances"]
    running = wait_states(ec2, [second["InstanceId"], third["InstanceId"]], "running", timeout=30)
    assert running[second["InstanceId"]]["Placement"]["HostId"] == "node-01"
    assert running[third["InstanceId"]]["Placement"]["HostId"] == "node-02"
    assert node_states(cloud)["node-03"] == "powered-off"

    shown = described(ec2, [first["InstanceId"]])[first["InstanceId"]]
    assert shown["State"]["Name"] == "running"

    usage = node_usage(cloud)
    assert set(usage) == set(nodes)
    assert usage["node-03"]["power"] == "off" and usage["node-03"]["powered_off_hours"] > 0
    assert usage["node-01"]["power"] == "on" and usage["node-01"]["power_ons"] == 2  # registered, then woken
    assert usage["node-03"]["power_ons"] == 1
    assert usage["node-01"]["powered_on_hours"] > usage["node-03"]["powered_on_hours"]
    out = cli(cloud, "usage", "--by", "node")
    assert out.returncode == 0, out.stderr
    assert "powered off" in out.stdout and all(n in out.stdout for n in nodes)

    ids = [first["InstanceId"], second["InstanceId"], third["InstanceId"]]
    ec2.terminate_instances(InstanceIds=ids)
    wait_states(ec2, ids, "terminated", timeout=30)
    wait_node_states(cloud, dict.fromkeys(nodes, "powered-off"), "the nodes to power down again")
    status = cli(cloud, "status")
    assert status.stdout.count("powered-off") == 3, status.stdout


@pytest.mark.vm
@pytest.mark.slow
def test_a_qemu_node_process_powers_down_and_a_launch_wakes_it_and_boots(cloud_factory: Any) -> None:
    """The one real-VM check: the node controller is a process on the embedded QEMU driver, powered down
    and woken over signed HTTP; the woken node boots a real guest (cold boot: no template to build first)."""
    reason = vm_requirements()
    if reason:
        pytest.skip(reason)
    cloud = cloud_factory(scheduler="POWERSAVE", powersave_idle_s=2.0, powersave_wake_s=0.5, launch="boot")
    # (a node warming up, its QEMU and accelerator probes, is not idle: it powers down after them)
    wait_until(lambda: node_states(cloud) == {"node-01": "powered-off"}, 180, what="the node to power down",
               interval_s=0.5)  # fmt: skip
    ec2 = cloud.ec2()
    [instance] = ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1)["Instances"]
    instance_id = instance["InstanceId"]
    wait_states(ec2, [instance_id], "running", timeout=180)
    assert node_states(cloud) == {"node-01": "up"}

    def booted() -> bool:
        output = ec2.get_console_output(InstanceId=instance_id).get("Output") or ""
        return any(line.startswith("cloudlab-boot:") for line in output.splitlines())

    wait_until(booted, 180, what="the guest's boot marker", interval_s=0.5)
    assert node_usage(cloud)["node-01"]["power_ons"] == 2
    ec2.terminate_instances(InstanceIds=[instance_id])
    wait_states(ec2, [instance_id], "terminated", timeout=60)


def test_node_hours_are_the_powered_on_intervals_of_the_ledger(tmp_path: Path) -> None:
    from cloudlab.clc.node_hours import NodeHours, node_usage
    from cloudlab.clc.store import Store

    store = Store(tmp_path / "clc.db")
    try:
        hours = NodeHours(store)
        t0 = 1_700_000_000.0

        def seen(power: str, since: float, alive: bool = True) -> c.NodeSummary:
            return c.NodeSummary("node-01", None, alive, 0.0, None, power=power, power_since=since, registered=t0)

        hours.note("cluster1", seen("on", t0), answered=True)  # registered: on from t0
        hours.note("cluster1", seen("on", t0), answered=True)  # the same state again: nothing new
        hours.note("cluster1", seen("off", t0 + 3600), answered=False)  # powered down after an hour
        hours.note("cluster1", seen("waking", t0 + 5 * 3600), answered=False)  # woken 4 h later
        [row] = node_usage(store, until=t0 + 6 * 3600)
        assert (row["on_hours"], row["off_hours"], row["power_ons"], row["power"]) == (2.0, 4.0, 2, "on")
        [window] = node_usage(store, since=t0 + 2 * 3600, until=t0 + 6 * 3600)
        assert (window["on_hours"], window["off_hours"], window["power_ons"]) == (1.0, 3.0, 1)
        # a node first seen powered down (before the CLC looked) was on from its registration
        hours.note("cluster2", c.NodeSummary("node-02", None, False, None, None, power="off",
                                             power_since=t0 + 1800, registered=t0), answered=False)  # fmt: skip
        by_node = {r["node"]: r for r in node_usage(store, until=t0 + 3600)}
        assert (by_node["node-02"]["on_hours"], by_node["node-02"]["off_hours"]) == (0.5, 0.5)
        assert hours.all_off("the cloud stopped") == 1  # node-01 was on; node-02 is off already
        # a killed cloud left node-03 on: the next start closes its interval when it was last seen
        hours.note("cluster1", c.NodeSummary("node-03", None, True, 0.0, None, power_since=t0, registered=t0),
                   answered=True)  # fmt: skip
        with store.transaction() as db:
            db.execute("INSERT INTO nodes (name, cluster, first_seen, last_seen) VALUES ('node-03', 'c', ?, ?)",
                       (t0, t0 + 900))  # fmt: skip
        NodeHours(store)
        by_node = {r["node"]: r for r in node_usage(store, until=t0 + 3600)}
        assert (by_node["node-03"]["on_hours"], by_node["node-03"]["power"]) == (0.25, "off")
        with pytest.raises(Exception, match="append-only"), store.transaction() as db:
            db.execute("DELETE FROM node_power")
    finally:
        store.close()


def test_the_cluster_powers_an_idle_http_node_down_and_a_node_started_again_is_polled(tmp_path: Path) -> None:
    """Over signed HTTP, as a node on another host: the CC powers it down when idle; a node that was started
    again (its power button, not a wake) registers, and the CC takes it as on instead of leaving it off."""
    from cloudlab.cc.cluster import ClusterController
    from cloudlab.rpc import Dispatcher, serve_http
    from cloudlab.security.ca import CertificateAuthority
    from cloudlab.security.messages import controller_keys

    ca = CertificateAuthority.load_or_create(tmp_path / "pki")
    signer, verifier = controller_keys(ca.identity("cc-cluster1", "cc"), ca.ca_certificate)
    cc = ClusterController(
        "cluster1", policy="POWERSAVE", heartbeat_s=0.05, signer=signer, verifier=verifier, powersave_idle_s=0.3
    )
    node_dir = tmp_path / "node"
    node = NodeController("node-01", private_host_uri(node_dir, 2, 1024), node_dir, accel="test", wake_s=0.1)
    dispatcher = Dispatcher("nc-node-01", *controller_keys(ca.identity("node-01", "nc"), ca.ca_certificate))
    node.register_routes(dispatcher)
    server = serve_http(dispatcher)
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        cc.register_remote_node("node-01", url)
        cc.start()
        # (the CC marks the node off before it sends the signed power_off, so the node follows a moment later)
        wait_until(
            lambda: cc.registry.entry("node-01").power == "off" and node.power == "off", 10, what="power-off",
            interval_s=0.05,
        )  # fmt: skip
        assert re.search(r"node-01 powered down after \d+ s idle$", cc.power.history[-1])
        [summary] = cc.describe_cluster().nodes
        assert (summary.power, summary.alive) == ("off", False)
        cc.power.enabled = False  # (so that it stays on once it is on again)
        cc.power.stop()
        node.wake()  # started again by hand
        wait_until(lambda: node.power == "on", 10, what="the node to boot", interval_s=0.05)
        cc.register_remote_node("node-01", url)  # its registration loop announces it again
        wait_until(lambda: cc.registry.entry("node-01").power == "on", 10, what="the CC to poll it", interval_s=0.05)
        [summary] = cc.describe_cluster().nodes
        assert (summary.power, summary.alive) == ("on", True)
    finally:
        cc.stop()
        server.shutdown()
        server.server_close()
        node.close()
