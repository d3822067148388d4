"""Faults with a volume attached and being written (issue 11, item 7), with real VMs.

One cloud on a direct network, booted once for the module, and two ``cloudlab-default`` guests:

* ``writer`` has a volume as ``/dev/vdb`` and writes numbered records to it, one per sector, each
  with ``dd conv=fsync``, and prints ``fault-test: fsynced N`` on its console only once record N is
  fsynced; the script is bounded (a fixed count and a deadline by the guest's clock);
* ``bystander`` has another volume attached and does nothing with it: it is killed while the service
  is down, so its export is one whose instance is gone when the cloud comes back.

Then, in turn: kill -9 of the storage controller, of the volume's NBD server (the export vanishes),
of the node controller, and of the service (brought back with ``cloudlab up``, as a user would).
After each the volume is still listed in-use and attached, the snapshot taken before the kills is
still listed, and the guest's records go on (the same guest: no write failed). Last, a snapshot of
the volume holds every record the guest reported fsynced, read on the SC's side with qemu-img; and
after a power cut (the guest's QEMU and the volume's NBD server killed at once, nothing flushed
after) so does the volume itself, detached from the instance that is gone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlab import processes, servicectl
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud, console, default_image, start_cloud, state_of, vm_requirements

pytestmark = [pytest.mark.vm, pytest.mark.slow]

RECORDS = 5000  # at most this many records (and at most 40 min by the guest's clock)
PROGRESS = 3  # records the guest must fsync after a kill to count as writing again
RECOVERY_S = 240.0

WRITER = r"""#!/bin/sh
for _ in $(seq 3000); do [ -b /dev/vdb ] && break; sleep 0.2; done
[ -b /dev/vdb ] || { echo "fault-test: no vdb" >/dev/console; exit 1; }
i=1
end=$(( $(date +%s) + 2400 ))
while [ $i -le @RECORDS@ ] && [ $(date +%s) -lt $end ]; do
    if printf 'REC%06d@TOKEN@' $i | dd of=/dev/vdb bs=512 seek=$i conv=notrunc,fsync 2>/dev/null; then
        echo "fault-test: fsynced $i" >/dev/console
        i=$((i + 1))
    else
        echo "fault-test: write $i failed" >/dev/console
    fi
    sleep 0.3
done
echo "fault-test: finished at $i" >/dev/console
"""


def record(index: int, token: str) -> str:
    return f"REC{index:06d}{token}"


def fsynced(ec2: Any, instance_id: str) -> int:
    """The last record the guest reported fsynced (0 before the first)."""
    found = [int(n) for n in re.findall(r"fault-test: fsynced (\d+)", console(ec2, instance_id))]
    return max(found, default=0)


def writes_again(cloud: RunningCloud, instance_id: str, after: int, what: str) -> int:
    """Wait until the guest fsynced PROGRESS records past ``after``; no write of it failed meanwhile."""
    ec2 = cloud.ec2()

    def progressed() -> int | None:
        try:
            now = fsynced(ec2, instance_id)
        except Exception:  # the API or the node may still be coming back
            return None
        return now if now >= after + PROGRESS else None

    reached = wait_until(progressed, RECOVERY_S, what=f"the guest to write again after {what}", interval_s=1.0)
    text = console(ec2, instance_id)
    assert not re.search(r"fault-test: write \d+ failed", text), text[-2000:]
    return reached


def volume(ec2: Any, volume_id: str) -> dict[str, Any]:
    return ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]


def attached_to(ec2: Any, volume_id: str, instance_id: str) -> bool:
    found = volume(ec2, volume_id)
    return found["State"] == "in-use" and [(a["InstanceId"], a["State"]) for a in found["Attachments"]] == [
        (instance_id, "attached")
    ]


def snapshot_state(ec2: Any, snapshot_id: str) -> str:
    return ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["State"]


def export_record(cloud: RunningCloud, volume_id: str) -> dict[str, Any] | None:
    path = cloud.layout.root / "sc" / "cluster1" / "exports" / f"{volume_id}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def nbd_servers(cloud: RunningCloud, volume_id: str) -> list[int]:
    """The qemu-nbd processes serving ``volume_id`` (their command line names its file)."""
    mine = set(processes.of_state(cloud.layout, (b"qemu-nbd",)))
    return [pid for pid, args in processes.command_lines() if pid in mine and volume_id.encode() in b" ".join(args)]


def guest_qemu(cloud: RunningCloud, instance_id: str) -> int:
    mine = set(servicectl.leftover_qemu(cloud.layout))
    [pid] = [p for p, args in processes.command_lines() if p in mine and instance_id.encode() in b" ".join(args)]
    return pid


def checked(cloud: RunningCloud, guests: dict[str, Any]) -> None:
    """What every kill must leave: the volume in-use and attached, the first snapshot listed."""
    ec2 = cloud.ec2()
    wait_until(lambda: attached_to(ec2, guests["volume"], guests["writer"]), 60, what="the volume attached")
    assert state_of(ec2, guests["writer"]) == "running"
    assert snapshot_state(ec2, guests["snapshot"]) == "completed"


def up_again(cloud: RunningCloud) -> RunningCloud:
    up = subprocess.run(
        [sys.executable, "-m", "cloudlab.cli", "--state", str(cloud.layout.root), "up"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert up.returncode == 0 and "cloud up" in up.stdout, up.stdout + up.stderr
    return RunningCloud(cloud.layout, servicectl.endpoint(cloud.layout))


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCloud]:
    reason = vm_requirements() or (None if shutil.which("qemu-nbd") else "qemu-nbd is not installed (qemu-utils)")
    if reason:
        pytest.skip(reason)
    running = start_cloud(
        tmp_path_factory.mktemp("faults") / "state", network="direct", node_vcpus=4, node_memory_mb=1024
    )
    yield running
    servicectl.down(running.layout)  # (by its state folder: the service may have been started again)
    assert processes.of_state(running.layout, (b"qemu-nbd",)) == []
    assert processes.storage_controllers(running.layout) == []


@pytest.fixture(scope="module")
def guests(cloud: RunningCloud) -> dict[str, Any]:
    """Both guests running, each with its volume attached; the writer writing; a snapshot taken."""
    ec2 = cloud.ec2()
    token = secrets.token_hex(6)
    image = default_image(ec2)
    script = WRITER.replace("@RECORDS@", str(RECORDS)).replace("@TOKEN@", token)
    writer = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, UserData=script)["Instances"][0]
    bystander = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]
    zone = writer["Placement"]["AvailabilityZone"]
    volumes = [ec2.create_volume(Size=1, AvailabilityZone=zone)["VolumeId"] for _ in range(2)]
    for instance in (writer, bystander):
        wait_until(lambda i=instance["InstanceId"]: state_of(ec2, i) == "running", 180, what="the guests running")
    for volume_id in volumes:
        wait_until(lambda v=volume_id: volume(ec2, v)["State"] == "available", 90, what=f"{volume_id} available")
    for volume_id, instance in zip(volumes, (writer, bystander), strict=True):
        ec2.attach_volume(VolumeId=volume_id, InstanceId=instance["InstanceId"], Device="/dev/sdf")
        wait_until(lambda v=volume_id, i=instance["InstanceId"]: attached_to(ec2, v, i), 90, what="attached")
    found = {
        "writer": writer["InstanceId"],
        "bystander": bystander["InstanceId"],
        "volume": volumes[0],
        "other": volumes[1],
        "token": token,
    }
    first = writes_again(cloud, found["writer"], 0, "the attach")
    found["snapshot"] = ec2.create_snapshot(VolumeId=volumes[0])["SnapshotId"]
    found["snapshot_covers"] = first  # every record up to here was fsynced before the snapshot was asked for
    wait_until(lambda: snapshot_state(ec2, found["snapshot"]) == "completed", 180, what="the first snapshot")
    return found


def test_kill_9_of_the_storage_controller(cloud: RunningCloud, guests: dict[str, Any]) -> None:
    ec2 = cloud.ec2()
    servers = nbd_servers(cloud, guests["volume"])
    assert len(servers) == 1
    before = fsynced(ec2, guests["writer"])
    [sc] = processes.storage_controllers(cloud.layout)
    url = cloud.status()["clusters"][0]["storage"]["url"]
    # a snapshot asked for just before: whether the kill finds it waiting, copying or done, it completes
    pending = ec2.create_snapshot(VolumeId=guests["volume"])["SnapshotId"]
    os.kill(sc, signal.SIGKILL)

    def back() -> bool:
        storage = cloud.status()["clusters"][0]["storage"]
        return storage["url"] != url and storage["process"]["running"] and "volumes" in storage

    wait_until(back, RECOVERY_S, what="the storage controller restarted and registered", interval_s=0.5)
    assert processes.storage_controllers(cloud.layout) not in ([], [sc])
    writes_again(cloud, guests["writer"], before, "the SC's kill")
    checked(cloud, guests)
    assert nbd_servers(cloud, guests["volume"]) == servers  # the export outlived its SC: never cut
    wait_until(lambda: snapshot_state(ec2, pending) == "completed", RECOVERY_S, what="the snapshot of the kill")
    guests["snapshots"] = {guests["snapshot"]: guests["snapshot_covers"], pending: before}


def test_an_export_that_vanished_is_restored_and_the_guest_goes_on(cloud: RunningCloud, guests: dict[str, Any]) -> None:
    ec2 = cloud.ec2()
    old = export_record(cloud, guests["volume"])
    assert old is not None
    before = fsynced(ec2, guests["writer"])
    os.kill(int(old["pid"]), signal.SIGKILL)  # as if the SC's host had lost it

    def restored() -> dict[str, Any] | None:
        now = export_record(cloud, guests["volume"])
        servers = nbd_servers(cloud, guests["volume"])
        return now if now and now["pid"] != old["pid"] and servers == [now["pid"]] else None

    again = wait_until(restored, RECOVERY_S, what="the export restored", interval_s=0.5)
    assert again["port"] == old["port"]  # where the guest's QEMU reconnects
    writes_again(cloud, guests["writer"], before, "the export's loss")  # and no write failed
    checked(cloud, guests)


def test_kill_9_of_the_node_controller(cloud: RunningCloud, guests: dict[str, Any]) -> None:
    ec2 = cloud.ec2()
    qemu = guest_qemu(cloud, guests["writer"])
    before = fsynced(ec2, guests["writer"])
    [nc] = processes.node_controllers(cloud.layout)
    os.kill(nc, signal.SIGKILL)
    wait_until(
        lambda: (
            processes.node_controllers(cloud.layout) not in ([], [nc])
            and all(n["alive"] for n in cloud.status()["clusters"][0]["nodes"])
        ),
        RECOVERY_S,
        what="the node controller restarted",
        interval_s=0.5,
    )
    writes_again(cloud, guests["writer"], before, "the node controller's kill")
    checked(cloud, guests)
    assert guest_qemu(cloud, guests["writer"]) == qemu  # the very same guest


def test_kill_9_of_the_service_and_an_instance_gone_meanwhile(cloud: RunningCloud, guests: dict[str, Any]) -> None:
    ec2 = cloud.ec2()
    before = fsynced(ec2, guests["writer"])
    assert len(nbd_servers(cloud, guests["other"])) == 1
    os.kill(servicectl.service_pid(cloud.layout), signal.SIGKILL)
    wait_until(lambda: servicectl.service_pid(cloud.layout) is None, 10, what="the service to die")
    os.kill(guest_qemu(cloud, guests["bystander"]), signal.SIGKILL)  # its instance goes while the cloud is down
    again = up_again(cloud)
    ec2 = again.ec2()
    writes_again(again, guests["writer"], before, "the service's kill")
    checked(again, guests)
    wait_until(lambda: state_of(ec2, guests["bystander"]) == "terminated", RECOVERY_S, what="the bystander gone")
    wait_until(
        lambda: (v := volume(ec2, guests["other"]))["State"] == "available" and not v["Attachments"],
        RECOVERY_S,
        what="the bystander's volume detached",
    )
    wait_until(lambda: nbd_servers(again, guests["other"]) == [], 60, what="its export closed")
    assert len(nbd_servers(again, guests["volume"])) == 1


def test_every_fsynced_record_is_on_the_volume(cloud: RunningCloud, guests: dict[str, Any]) -> None:
    again = RunningCloud(cloud.layout, servicectl.endpoint(cloud.layout))
    ec2 = again.ec2()
    last = fsynced(ec2, guests["writer"])
    assert last > guests["snapshot_covers"] + 4 * PROGRESS  # it wrote on through every kill
    snapshot_id = ec2.create_snapshot(VolumeId=guests["volume"])["SnapshotId"]
    wait_until(lambda: snapshot_state(ec2, snapshot_id) == "completed", 180, what="the last snapshot")
    folder = cloud.layout.root / "sc" / "cluster1" / "snapshots"
    token = guests["token"]
    for snapshot, covers in {snapshot_id: last, **guests["snapshots"]}.items():
        sectors = read_sectors(folder / f"{snapshot}.qcow2", covers + 1)
        missing = [i for i in range(1, covers + 1) if not sectors[i].startswith(record(i, token).encode())]
        assert missing == [], f"{snapshot}: records {missing[:10]} of 1-{covers} are not on the volume"
    check = subprocess.run(["qemu-img", "check", "-U", str(folder / f"{snapshot_id}.qcow2")], capture_output=True)
    assert check.returncode == 0, check.stdout


def read_sectors(path: Path, count: int) -> list[bytes]:
    """The first ``count`` 512-byte sectors of a qcow2 image's guest data, read with qemu-img on the SC's side."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "head.raw"
        subprocess.run(
            ["qemu-img", "dd", "-U", "-f", "qcow2", "-O", "raw", "bs=512", f"count={count}", f"if={path}", f"of={out}"],
            check=True,
            capture_output=True,
        )
        data = out.read_bytes()
    return [data[i * 512 : (i + 1) * 512] for i in range(count)]


def test_a_power_cut_keeps_every_fsynced_record(cloud: RunningCloud, guests: dict[str, Any]) -> None:
    again = RunningCloud(cloud.layout, servicectl.endpoint(cloud.layout))
    ec2 = again.ec2()
    last = fsynced(ec2, guests["writer"])  # each of these was fsynced before this moment
    [server] = nbd_servers(again, guests["volume"])
    os.kill(guest_qemu(again, guests["writer"]), signal.SIGKILL)
    os.kill(server, signal.SIGKILL)
    wait_until(lambda: state_of(ec2, guests["writer"]) == "terminated", RECOVERY_S, what="the writer gone")
    wait_until(
        lambda: (v := volume(ec2, guests["volume"]))["State"] == "available" and not v["Attachments"],
        RECOVERY_S,
        what="the volume detached from the instance that is gone",
    )
    wait_until(lambda: nbd_servers(again, guests["volume"]) == [], 60, what="no export of it left")
    path = cloud.layout.root / "sc" / "cluster1" / "volumes" / f"{guests['volume']}.qcow2"
    check = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
    assert check.returncode in (0, 3), check.stdout + check.stderr  # 3: leaked clusters only, no corruption
    sectors = read_sectors(path, last + 1)
    token = guests["token"]
    missing = [i for i in range(1, last + 1) if not sectors[i].startswith(record(i, token).encode())]
    assert missing == [], f"records {missing[:10]} of 1-{last} were fsynced but are not on the volume"
