"""Real instances: TCG (or probed KVM) guests booted through the embedded libvirt QEMU driver,
driven by unmodified boto3 through the EC2 endpoint."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from cloudlab import servicectl
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud, default_image, start_cloud, wait_states

pytestmark = pytest.mark.vm

BOOT_TIMEOUT_S = 120


def instances(ec2: Any, ids: list[str]) -> dict[str, Any]:
    return {i["InstanceId"]: i for r in ec2.describe_instances(InstanceIds=ids)["Reservations"] for i in r["Instances"]}


def wait_running(ec2: Any, ids: list[str]) -> None:
    def check() -> bool:
        found = instances(ec2, ids)
        dead = {
            i: v.get("StateReason") for i, v in found.items() if v["State"]["Name"] in ("terminated", "shutting-down")
        }
        assert not dead, f"instances ended before running: {dead}"
        return all(v["State"]["Name"] == "running" for v in found.values())

    wait_until(check, BOOT_TIMEOUT_S, what="running", interval_s=0.3)


def boot_markers(ec2: Any, instance_id: str) -> list[str]:
    output = ec2.get_console_output(InstanceId=instance_id).get("Output") or ""
    return [line for line in output.splitlines() if line.startswith("cloudlab-boot:")]


def test_two_instances_boot_list_and_terminate(vm_cloud: RunningCloud) -> None:
    ec2 = vm_cloud.ec2()
    ids = [
        i["InstanceId"]
        for i in ec2.run_instances(ImageId=default_image(ec2), MinCount=2, MaxCount=2, InstanceType="t2.micro")[
            "Instances"
        ]
    ]
    wait_running(ec2, ids)
    for instance_id in ids:
        markers = wait_until(
            lambda i=instance_id: boot_markers(ec2, i),
            BOOT_TIMEOUT_S,
            what=f"boot marker of {instance_id}",
            interval_s=0.3,
        )
        assert f"host={instance_id}" in markers[0] and "uptime=" in markers[0]
    qemu = servicectl.leftover_qemu(vm_cloud.layout)
    assert len(qemu) == 2, "each instance is one real QEMU process"
    for pid in qemu:  # in the node's own cgroup, as a QEMU started by hand would be (hypervisor.QEMU_CONF)
        groups = Path(f"/proc/{pid}/cgroup").read_text()
        assert "machine" not in groups and "libvirt" not in groups, groups
    listed = instances(ec2, ids)
    assert {i["Placement"]["HostId"] for i in listed.values()} == {"node-01"}
    ec2.terminate_instances(InstanceIds=ids)
    ec2.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    wait_until(lambda: not servicectl.leftover_qemu(vm_cloud.layout), 30, what="QEMU processes to exit", interval_s=0.3)


def test_reboot_boots_the_guest_again(vm_cloud: RunningCloud) -> None:
    ec2 = vm_cloud.ec2()
    [instance_id] = [
        i["InstanceId"] for i in ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1)["Instances"]
    ]
    try:
        wait_until(lambda: boot_markers(ec2, instance_id), BOOT_TIMEOUT_S, what="first boot", interval_s=0.3)
        ec2.reboot_instances(InstanceIds=[instance_id])
        wait_until(
            lambda: len(boot_markers(ec2, instance_id)) >= 2, BOOT_TIMEOUT_S, what="boot after reboot", interval_s=0.3
        )
        assert instances(ec2, [instance_id])[instance_id]["State"]["Name"] == "running"
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])


def test_vanished_vm_is_terminated_with_a_reason(vm_cloud: RunningCloud) -> None:
    ec2 = vm_cloud.ec2()
    before = set(servicectl.leftover_qemu(vm_cloud.layout))
    [instance_id] = [
        i["InstanceId"] for i in ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1)["Instances"]
    ]
    wait_running(ec2, [instance_id])
    [pid] = wait_until(
        lambda: list(set(servicectl.leftover_qemu(vm_cloud.layout)) - before),
        30,
        what="its QEMU process",
        interval_s=0.3,
    )
    os.kill(pid, signal.SIGKILL)  # the VM dies behind the cloud's back
    final = wait_states(ec2, [instance_id], "terminated", 60, interval_s=0.3)[instance_id]
    assert final["StateReason"]["Code"].startswith(("Client.InstanceInitiatedShutdown", "Server."))


def test_restart_after_kill_keeps_instances(cloud_factory: Any) -> None:
    """kill -9 of the whole service: the VM survives, `up` reconciles, nothing is lost, `down` cleans."""
    from tests.clouds import vm_requirements

    if reason := vm_requirements():
        pytest.skip(reason)
    cloud: RunningCloud = cloud_factory("restart")
    ec2 = cloud.ec2()
    [instance_id] = [
        i["InstanceId"] for i in ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1)["Instances"]
    ]
    wait_until(lambda: boot_markers(ec2, instance_id), BOOT_TIMEOUT_S, what="boot", interval_s=0.3)
    ledger_before = _ledger(cloud)
    pid = servicectl.service_pid(cloud.layout)
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: servicectl.service_pid(cloud.layout) is None, 10, what="service to die", interval_s=0.3)
    assert servicectl.leftover_qemu(cloud.layout), "the guest outlives its controllers"
    again = start_cloud(cloud.layout.root)
    ec2 = again.ec2()
    passes = again.status()["reconcile_passes"]
    wait_until(lambda: again.status()["reconcile_passes"] >= passes + 3, 30, what="three reconcile passes")
    inst = instances(ec2, [instance_id])[instance_id]
    assert inst["State"]["Name"] == "running"
    assert boot_markers(ec2, instance_id), "console output still served after the restart"
    assert _ledger(again)[: len(ledger_before)] == ledger_before
    servicectl.down(again.layout)
    assert not servicectl.leftover_qemu(again.layout)
    rows = _ledger(again)
    assert rows[-1][1:] == (instance_id, "terminated")


def _ledger(cloud: RunningCloud) -> list[tuple[int, str, str]]:
    import sqlite3

    db = sqlite3.connect(cloud.layout.database)
    try:
        return [tuple(r) for r in db.execute("SELECT seq, instance_id, event FROM ledger ORDER BY seq")]
    finally:
        db.close()
