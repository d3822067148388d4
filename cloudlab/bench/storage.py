"""The storage benchmark (issue 11, ``cloudlab bench storage``): cloudlab's volumes against the same built by hand.

One run, side by side, with fio inside ``cloudlab-debian`` guests (:mod:`cloudlab.bench.storage_fio`):

* **cloud:volume** -- an EBS volume of a cloud started for the run (``--network direct``), exported
  by its storage controller with ``qemu-nbd`` and hot-plugged by the node through libvirt;
* **cloud:root** -- a file on the same instance's root disk (its root volume, through ext4);
* **hand:volume** -- a volume made with the same tools by hand (``qemu-img create -f qcow2``, served
  by ``qemu-nbd`` with the SC's flags, attached to a QEMU started by hand, ``cache=none``), in the
  hand-booted guest of :mod:`cloudlab.bench.handboot`;
* **hand:volume-linked** -- the same again, but served from a namespace of its own across a veth and the
  guest's bridge (:func:`cloudlab.bench.handboot.export_across_a_link`), the hop a cloud volume takes from
  its node to the SC over the underlay: cloud ÷ this is cloudlab's own overhead, cloud ÷ hand:volume that
  plus the network's (a hand export in the guest's namespace goes over loopback);
* **hand:root** -- a file on that guest's root disk: a qcow2 overlay of the image served by ``qemu-nbd``
  as the SC serves the cloud's root volume (every hand boot here has its root over NBD, like for like).

Every target is measured ``repeats`` times per job, the targets' order rotating each repeat so a busy
host slows all alike; the ratios are cloud ÷ hand of the medians, with the range the repeats allow.
Boots of ``cloudlab-debian`` to SSH-ready and to cloud-init done: the two fio guests' boots are the
first sample, then cloud and hand boots alternate up to ``boot_repeats``. CreateSnapshot and
CreateVolume-from-snapshot are timed per size (after the guest has written ``fill`` of the volume),
beside ``qemu-img convert`` of the same files by hand, which is what the SC runs. Nothing asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cloudlab import servicectl
from cloudlab.bench.handboot import HandBoot, debian_by_hand, debian_image
from cloudlab.bench.lab import BuildError
from cloudlab.bench.stats import summarise
from cloudlab.bench.storage_fio import JOBS, FioError, Target, find_disk, prefill, run_job
from cloudlab.config import CloudConfig
from cloudlab.guest import CLOUD_INIT_DONE_MARKER, DEBIAN_IMAGE_NAME
from cloudlab.paths import StateLayout
from cloudlab.reach import SshRemote, Unreachable, instance_remote
from cloudlab.waiting import WaitTimeout, wait_until

KEY_NAME = "bench-storage"
ROOT_FILE = "/var/tmp/fio-root.dat"
TARGETS = ("cloud:volume", "hand:volume", "hand:volume-linked", "cloud:root", "hand:root")
PAIRS = {
    "volume": ("cloud:volume", "hand:volume"),
    "volume-linked": ("cloud:volume", "hand:volume-linked"),
    "root": ("cloud:root", "hand:root"),
}
MIB = 2**20


@dataclass
class Options:
    """What one run measures; :meth:`quick` is the smallest run that still has every figure."""

    repeats: int = 3
    fio_runtime_s: float = 10.0
    fio_size_mib: int = 256
    volume_gib: int = 1
    boot_repeats: int = 5
    snapshot_sizes_gib: tuple[int, ...] = (1, 8)
    fill: float = 0.25  # of each snapshot volume, written by the guest before the snapshot
    memory_mb: int = 512
    instance_type: str = "t2.small"  # 1 vCPU, 512 MiB: the hand-booted guest's size
    boot_timeout_s: float = 600.0
    boot_attempts: int = 2  # a guest that fails to boot (a TCG soft lockup on a loaded host) is tried again

    @classmethod
    def quick(cls) -> Options:
        return cls(repeats=1, fio_runtime_s=2, fio_size_mib=32, boot_repeats=1, snapshot_sizes_gib=(1,), fill=0.02)


def say_nothing(message: str) -> None:
    del message


class BootFailed(RuntimeError):
    """A cloud guest did not reach SSH and cloud-init in time (the message ends with its console)."""


# -- the cloud's side ---------------------------------------------------------------------------------------------
def start_cloud(root: Path, memory_mb: int) -> tuple[Any, str]:
    """A cloud of its own for the run (one node, a direct network, instances booted, not restored), with a
    key pair and a group that lets SSH in: the client and the group's id."""
    from cloudlab.client import connect

    layout = StateLayout(root / "state")
    config = CloudConfig(api_port=0, network="direct", launch="boot", node_vcpus=4, node_memory_mb=4 * memory_mb + 512)
    servicectl.up(layout, config, timeout_s=180)
    cloud = connect(str(layout.root))
    cloud.ec2.create_key_pair(KeyName=KEY_NAME, KeyType="ed25519")
    group = cloud.ec2.create_security_group(GroupName=KEY_NAME, Description="ssh for the storage benchmark")
    cloud.ec2.authorize_security_group_ingress(
        GroupId=group["GroupId"], IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
    )
    return cloud, group["GroupId"]


def debian_image_id(cloud: Any) -> str:
    found = cloud.ec2.describe_images(Filters=[{"Name": "name", "Values": [DEBIAN_IMAGE_NAME]}])["Images"]
    if not found:
        raise RuntimeError(f"the cloud has no {DEBIAN_IMAGE_NAME}: run 'cloudlab image build debian' first")
    return found[0]["ImageId"]


def cloud_boot(cloud: Any, image_id: str, group: str, options: Options) -> tuple[str, SshRemote, dict[str, float]]:
    """One cloudlab-debian instance: seconds from RunInstances to SSH answering and to cloud-init's final
    line on the console (watched in two threads, so neither delays the other)."""
    ec2 = cloud.ec2
    started = time.monotonic()
    reply = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, InstanceType=options.instance_type,
                              KeyName=KEY_NAME, SecurityGroupIds=[group])  # fmt: skip
    instance_id = reply["Instances"][0]["InstanceId"]
    times: dict[str, float] = {}
    timeout = options.boot_timeout_s
    try:
        remote: SshRemote = wait_until(lambda: instance_remote(cloud, instance_id), timeout,
                                       what=f"{instance_id} running", ignore=(Unreachable,))  # fmt: skip

        def ssh_ready() -> None:
            wait_until(lambda: remote.run("true", timeout=15).returncode == 0, timeout, what="SSH", interval_s=0.5)
            times["ssh_s"] = round(time.monotonic() - started, 2)

        prober = threading.Thread(target=ssh_ready, name="ssh-probe", daemon=True)
        prober.start()

        def cloud_init_done() -> bool:
            text = ec2.get_console_output(InstanceId=instance_id).get("Output") or ""
            return CLOUD_INIT_DONE_MARKER in text

        wait_until(cloud_init_done, timeout, what=f"cloud-init on {instance_id}", interval_s=0.25)
        times["cloud_init_s"] = round(time.monotonic() - started, 2)
        prober.join(timeout=max(1.0, timeout - (time.monotonic() - started)))
        if "ssh_s" not in times:
            raise WaitTimeout(f"SSH to {instance_id} within {timeout:g} s")
    except WaitTimeout as exc:
        text = ec2.get_console_output(InstanceId=instance_id).get("Output") or ""
        terminate(cloud, instance_id)
        raise BootFailed(f"{instance_id}: {exc}; console:\n{text[-1500:]}") from None
    except BaseException:
        terminate(cloud, instance_id)
        raise
    return instance_id, remote, times


def cloud_guest(
    cloud: Any, image_id: str, group: str, options: Options, failures: list[dict[str, str]]
) -> tuple[str, SshRemote, dict[str, float]]:
    """:func:`cloud_boot`, tried ``boot_attempts`` times; each failure is kept for the report."""
    for attempt in range(options.boot_attempts):
        try:
            return cloud_boot(cloud, image_id, group, options)
        except BootFailed as exc:
            failures.append({"side": "cloud", "error": str(exc)[-800:]})
            if attempt + 1 == options.boot_attempts:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def hand_guest(
    image: Any,
    options: Options,
    failures: list[dict[str, str]],
    nbd_volumes: tuple[Path, ...] = (),
    linked_volumes: tuple[Path, ...] = (),
) -> Iterator[HandBoot]:
    """:func:`cloudlab.bench.handboot.debian_by_hand`, tried ``boot_attempts`` times like a cloud guest."""
    for attempt in range(options.boot_attempts):
        with contextlib.ExitStack() as stack:
            try:
                hand = stack.enter_context(
                    debian_by_hand(
                        image,
                        memory_mb=options.memory_mb,
                        nbd_volumes=nbd_volumes,
                        linked_volumes=linked_volumes,
                        timeout_s=options.boot_timeout_s,
                        root_over_nbd=True,
                    )
                )
            except BuildError as exc:
                failures.append({"side": "hand", "error": str(exc)[-800:]})
                if attempt + 1 == options.boot_attempts:
                    raise
                continue
            yield hand
            return


def terminate(cloud: Any, instance_id: str) -> None:
    cloud.ec2.terminate_instances(InstanceIds=[instance_id])
    with contextlib.suppress(WaitTimeout):
        cloud.wait_state([instance_id], "terminated", timeout=120)


def sc_volume_file(cloud: Any, volume_id: str) -> Path | None:
    """The SC's file of ``volume_id`` (``<state>/sc/<cluster>/volumes``), for the by-hand copies."""
    found = list((cloud.layout.root / "sc").glob(f"*/volumes/{volume_id}.qcow2"))
    return found[0] if found else None


def sc_snapshot_file(cloud: Any, snapshot_id: str) -> Path | None:
    found = list((cloud.layout.root / "sc").glob(f"*/snapshots/{snapshot_id}.qcow2"))
    return found[0] if found else None


# -- the measurements ---------------------------------------------------------------------------------------------
def measure_fio(targets: list[Target], options: Options, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """``repeats`` rounds of every job on every target, the targets' order rotating each round."""
    rows = []
    for repeat in range(options.repeats):
        shift = repeat % len(targets)
        order = targets[shift:] + targets[:shift]
        for job in JOBS:
            for target in order:
                row: dict[str, Any] = {"target": target.name, "job": job, "repeat": repeat}
                try:
                    row |= run_job(target, job, options.fio_size_mib, options.fio_runtime_s)
                    row["error"] = None
                except FioError as exc:
                    row |= {"mib_s": math.nan, "iops": math.nan, "lat_ms": math.nan, "error": str(exc)}
                progress(f"fio {job} on {target.name} #{repeat + 1}: {row.get('mib_s')} MiB/s {row.get('iops')} IOPS")
                rows.append(row)
    return rows


def fio_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """target -> job -> MiB/s, IOPS and latency summaries (median and spread over the repeats)."""
    out: dict[str, Any] = {}
    for target in TARGETS:
        for job in JOBS:
            mine = [r for r in rows if r["target"] == target and r["job"] == job and r["error"] is None]
            out.setdefault(target, {})[job] = {
                key: summarise([r[key] for r in mine]) for key in ("mib_s", "iops", "lat_ms")
            }
    return out


def fio_ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """cloud ÷ hand of the median MiB/s per job (IOPS gives the same ratio at a fixed block size), with the
    lowest and highest ratio the repeats allow (slowest cloud ÷ fastest hand, and the other way)."""
    ratios: dict[str, Any] = {}
    for pair, (cloud_name, hand_name) in PAIRS.items():
        for job in JOBS:
            cloud_v = [r["mib_s"] for r in rows if r["target"] == cloud_name and r["job"] == job and r["error"] is None]
            hand_v = [r["mib_s"] for r in rows if r["target"] == hand_name and r["job"] == job and r["error"] is None]
            if not cloud_v or not hand_v or min(hand_v) <= 0:
                ratios[f"{pair}:{job}"] = None
                continue
            ratios[f"{pair}:{job}"] = {
                "ratio": round(summarise(cloud_v)["median"] / summarise(hand_v)["median"], 3),
                "low": round(min(cloud_v) / max(hand_v), 3),
                "high": round(max(cloud_v) / min(hand_v), 3),
            }
    return ratios


def hand_convert(source: Path, destination: Path, force_share: bool) -> float:
    """``qemu-img convert -O qcow2`` by hand, then an fsync of the copy (what the SC runs for a snapshot and a
    restore: it makes every file durable before it answers): seconds."""
    argv = ["qemu-img", "convert", *(["-U"] if force_share else []), "-O", "qcow2", str(source), str(destination)]
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, timeout=1800)
    descriptor = os.open(destination, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return round(time.monotonic() - started, 3)


def measure_snapshots(
    cloud: Any, instance_id: str, remote: SshRemote, options: Options, scratch: Path, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Per size: a volume attached to the instance, ``fill`` of it written by the guest, then CreateSnapshot
    (until completed) and CreateVolume from it (until available), and the same copies by hand."""
    rows = []
    for index, size in enumerate(options.snapshot_sizes_gib):
        vol = cloud.create_volume(size, name=f"bench-snapshot-{size}g")
        snapshot_id = restored = None
        try:
            vol.attach(instance_id, f"/dev/sd{chr(ord('g') + index)}")
            device = find_disk(remote, vol.replace("-", "")[:20])
            fill_mib = max(1, int(size * 1024 * options.fill))
            prefill(Target(f"snapshot-{size}g", remote, device), fill_mib)
            started = time.monotonic()
            snapshot_id = vol.snapshot(f"storage benchmark, {size} GiB", timeout=1800)
            snapshot_s = round(time.monotonic() - started, 3)
            started = time.monotonic()
            restored = cloud.create_volume(size, snapshot_id=snapshot_id)
            restore_s = round(time.monotonic() - started, 3)
            row: dict[str, Any] = {"size_gib": size, "written_mib": fill_mib, "create_snapshot_s": snapshot_s,
                                   "create_volume_from_snapshot_s": restore_s}  # fmt: skip
            volume_file, snapshot_file = sc_volume_file(cloud, vol), sc_snapshot_file(cloud, snapshot_id)
            if volume_file and snapshot_file:
                copy = scratch / "hand-copy.qcow2"
                row["hand_snapshot_s"] = hand_convert(volume_file, copy, force_share=True)  # the export holds it
                copy.unlink()
                row["hand_restore_s"] = hand_convert(snapshot_file, copy, force_share=False)
                copy.unlink()
                row["snapshot_ratio_to_hand"] = round(snapshot_s / max(row["hand_snapshot_s"], 1e-3), 3)
                row["restore_ratio_to_hand"] = round(restore_s / max(row["hand_restore_s"], 1e-3), 3)
            progress(f"snapshot {size} GiB ({fill_mib} MiB written): {snapshot_s} s, restore {restore_s} s")
            rows.append(row)
        finally:
            with contextlib.suppress(Exception):
                vol.detach()
            for handle in (vol, restored):
                if handle is not None:
                    with contextlib.suppress(Exception):
                        handle.delete()
            if snapshot_id:
                with contextlib.suppress(Exception):
                    cloud.ec2.delete_snapshot(SnapshotId=snapshot_id)
    return rows


def boot_summary(cloud_runs: list[dict[str, float]], hand_runs: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"cloud_runs": cloud_runs, "hand_runs": hand_runs}
    for milestone in ("ssh_s", "cloud_init_s"):
        cloud_s = summarise([r[milestone] for r in cloud_runs if milestone in r])
        hand_s = summarise([r[milestone] for r in hand_runs if milestone in r])
        out[f"cloud_{milestone}"], out[f"hand_{milestone}"] = cloud_s, hand_s
        if cloud_s.get("n") and hand_s.get("n") and hand_s["median"] > 0:
            out[f"ratio_cloud_to_hand_{milestone}"] = round(cloud_s["median"] / hand_s["median"], 3)
    return out


# -- one run ------------------------------------------------------------------------------------------------------
def run_storage_benchmark(
    options: Options | None = None, workdir: Path | None = None, progress: Callable[[str], None] = say_nothing
) -> dict[str, Any]:
    """The whole benchmark (cloud started and stopped here); the report as a dict (see :func:`report_lines`)."""
    options = options or Options()
    image = debian_image()
    with tempfile.TemporaryDirectory(prefix="cloudlab-bench-storage-", dir=workdir) as tmp:
        scratch = Path(tmp)
        progress("starting a cloud (direct network, one node)")
        cloud, group = start_cloud(scratch, options.memory_mb)
        try:
            image_id = debian_image_id(cloud)
            cloud_boots: list[dict[str, float]] = []
            hand_boots: list[dict[str, float]] = []
            failures: list[dict[str, str]] = []
            progress("booting cloudlab-debian in the cloud")
            instance_id, remote, times = cloud_guest(cloud, image_id, group, options, failures)
            cloud_boots.append(times)
            progress(f"cloud boot 1: {times}")
            try:
                vol = cloud.create_volume(options.volume_gib, name="bench-fio")
                vol.attach(instance_id, "/dev/sdf")
                hand_file = scratch / "vol-0000000000hand01.qcow2"  # a volume's name, so its serial looks alike
                linked_file = scratch / "vol-0000000000hand02.qcow2"
                for made in (hand_file, linked_file):
                    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(made), f"{options.volume_gib}G"],
                                   check=True, timeout=60)  # fmt: skip
                progress("booting cloudlab-debian by hand, with the hand-made volumes on qemu-nbd")
                with hand_guest(image, options, failures, (hand_file,), (linked_file,)) as hand:
                    hand_boots.append({k: hand.times[k] for k in ("ssh_s", "cloud_init_s") if k in hand.times})
                    progress(f"hand boot 1: {hand_boots[-1]}")
                    targets = [
                        Target("cloud:volume", remote, find_disk(remote, vol.replace("-", "")[:20])),
                        Target("hand:volume", hand.ssh, find_disk(hand.ssh, hand_file.stem.replace("-", "")[:20])),
                        Target(
                            "hand:volume-linked", hand.ssh, find_disk(hand.ssh, linked_file.stem.replace("-", "")[:20])
                        ),
                        Target("cloud:root", remote, ROOT_FILE),
                        Target("hand:root", hand.ssh, ROOT_FILE),
                    ]
                    for target in targets:
                        progress(f"prefilling {options.fio_size_mib} MiB of {target.name} ({target.path})")
                        prefill(target, options.fio_size_mib)
                    rows = measure_fio(targets, options, progress)
                    devices = {t.name: t.path for t in targets}
                snapshots = measure_snapshots(cloud, instance_id, remote, options, scratch, progress)
                with contextlib.suppress(Exception):
                    vol.detach()
                    vol.delete()
            finally:
                terminate(cloud, instance_id)
            for n in range(1, options.boot_repeats):  # the fio guests' boots were the first sample
                progress(f"boot {n + 1}/{options.boot_repeats}: cloud, then by hand")
                try:
                    booted, _, times = cloud_boot(cloud, image_id, group, options)
                    cloud_boots.append(times)
                    progress(f"cloud boot {n + 1}: {times}")
                    terminate(cloud, booted)
                except BootFailed as exc:  # counted as a failure, not as a time
                    failures.append({"side": "cloud", "error": str(exc)[-800:]})
                try:
                    with debian_by_hand(
                        image, memory_mb=options.memory_mb, timeout_s=options.boot_timeout_s, root_over_nbd=True
                    ) as hand:
                        hand_boots.append({k: hand.times[k] for k in ("ssh_s", "cloud_init_s") if k in hand.times})
                        progress(f"hand boot {n + 1}: {hand_boots[-1]}")
                except BuildError as exc:
                    failures.append({"side": "hand", "error": str(exc)[-800:]})
        finally:
            servicectl.down(cloud.layout)
    return {
        "options": asdict(options),
        "devices": devices,
        "fio_rows": rows,
        "fio": fio_summary(rows),
        "ratios": fio_ratios(rows),
        "boot": boot_summary(cloud_boots, hand_boots) | {"failures": failures},
        "snapshots": snapshots,
        "target_ratio": 0.9,
    }


def report_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"{'fio job':<15}{'target':<20}{'MiB/s (median)':>16}{'IOPS':>10}{'spread MiB/s':>22}"]
    for job in JOBS:
        for target in TARGETS:
            figures = result["fio"][target][job]
            m, i = figures["mib_s"], figures["iops"]
            if not m.get("n"):
                lines.append(f"{job:<15}{target:<20}{'failed':>16}")
                continue
            lines.append(f"{job:<15}{target:<20}{m['median']:>16.1f}{i['median']:>10.0f}"
                         f"{m['min']:>11.1f} – {m['max']:<8.1f}")  # fmt: skip
    lines.append("cloud ÷ hand (median MiB/s; range over repeats); target ≥ 0.9 for volume-linked")
    lines.append("  (volume-linked: the hand export across a veth, as the SC's; volume: in the guest's namespace)")
    for name, ratio in result["ratios"].items():
        text = "n/a" if ratio is None else f"{ratio['ratio']:.3f}  ({ratio['low']:.3f} – {ratio['high']:.3f})"
        lines.append(f"  {name:<28}{text}")
    boot = result["boot"]
    for milestone in ("ssh_s", "cloud_init_s"):
        c, h = boot[f"cloud_{milestone}"], boot[f"hand_{milestone}"]
        if c.get("n") and h.get("n"):
            ratio = boot.get(f"ratio_cloud_to_hand_{milestone}")
            lines.append(f"boot to {milestone[:-2]:<11} cloud {c['median']:7.1f} s (n={c['n']})  by hand "
                         f"{h['median']:7.1f} s (n={h['n']})  x{ratio}")  # fmt: skip
    if boot.get("failures"):
        sides = [f["side"] for f in boot["failures"]]
        counts = f"cloud {sides.count('cloud')}, hand {sides.count('hand')}"
        lines.append(f"boots that failed and were not counted: {counts}")
    for row in result["snapshots"]:
        lines.append(f"{row['size_gib']} GiB ({row['written_mib']} MiB written): CreateSnapshot "
                     f"{row['create_snapshot_s']:.2f} s (by hand {row.get('hand_snapshot_s', 'n/a')} s), "
                     f"CreateVolume from it {row['create_volume_from_snapshot_s']:.2f} s "
                     f"(by hand {row.get('hand_restore_s', 'n/a')} s)")  # fmt: skip
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloudlab bench storage", description=__doc__.splitlines()[0])
    defaults = Options()
    p.add_argument("--output", default="results", help="folder for the JSON and CSV (default results/)")
    p.add_argument("--repeats", type=int, default=defaults.repeats, help="fio rounds per target (default 3)")
    p.add_argument("--fio-runtime", type=float, default=defaults.fio_runtime_s, help="seconds per fio job (default 10)")
    p.add_argument("--fio-size", type=int, default=defaults.fio_size_mib, help="MiB fio works over (default 256)")
    p.add_argument("--boot-repeats", type=int, default=defaults.boot_repeats, help="boots per side (default 5)")
    p.add_argument("--snapshot-sizes", default="1,8", help="GiB of the snapshotted volumes (default 1,8)")
    p.add_argument("--fill", type=float, default=defaults.fill, help="share of each written before the snapshot")
    p.add_argument("--quick", action="store_true", help="one short round of everything (1 boot, 2 s jobs, 1 GiB)")
    return p


def options_from(args: argparse.Namespace) -> Options:
    if args.quick:
        return Options.quick()
    sizes = tuple(int(s) for s in args.snapshot_sizes.split(",") if s.strip())
    return Options(repeats=args.repeats, fio_runtime_s=args.fio_runtime, fio_size_mib=args.fio_size,
                   boot_repeats=args.boot_repeats, snapshot_sizes_gib=sizes, fill=args.fill)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for tool in ("qemu-nbd", "qemu-img", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed (apt-get install qemu-utils qemu-system-x86)", file=sys.stderr)
            return 1
    result = run_storage_benchmark(options_from(args), progress=lambda m: print(f"[storage] {m}", file=sys.stderr))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    import pandas as pd

    pd.DataFrame(result["fio_rows"]).to_csv(out / f"bench-storage-{stamp}.csv", index=False)
    path = out / f"bench-storage-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("\n".join(report_lines(result)))
    print(f"\nresults written to {path}")
    return 0 if all(r["error"] is None for r in result["fio_rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
