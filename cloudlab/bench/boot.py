"""Boot time: RunInstances → running → boot marker through the cloud, against the same image
booted by hand with qemu-system-x86_64 (same accelerator, memory and kernel command line)."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cloudlab import phases
from cloudlab.bench.stats import summarise
from cloudlab.guest import DEFAULT_KERNEL_CMDLINE, has_booted
from cloudlab.images.cached import find_built_image

POLL_S = 0.05


def boot_by_hand(kernel: Path, ramdisk: Path, accel: str, memory_mb: int = 256, timeout_s: float = 60) -> float:
    """Seconds from starting QEMU to the boot marker on its serial console."""
    argv = [
        "qemu-system-x86_64",
        "-accel",
        accel,
        "-m",
        str(memory_mb),
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-nic",
        "none",
        "-kernel",
        str(kernel),
        "-initrd",
        str(ramdisk),
        "-append",
        f"{DEFAULT_KERNEL_CMDLINE} cloudlab.hostname=bench",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True
    )
    assert proc.stdout is not None
    seen = b""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while not has_booted(seen):
                remaining = timeout_s - (time.monotonic() - started)
                if remaining <= 0 or not selector.select(remaining):
                    raise TimeoutError("no boot marker from the hand-started QEMU")
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise RuntimeError("QEMU exited before the boot marker")
                seen = (seen + chunk)[-4096:]
        return time.monotonic() - started
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def boot_through_cloud(cloud: Any, count: int, timeout_s: float = 120) -> list[dict[str, float]]:
    """Per instance: seconds from the RunInstances call to ``running`` and to the boot marker."""
    started = time.monotonic()
    ids = [str(i) for i in cloud.run(count)]
    ran = time.monotonic() - started  # the phases are counted from the end of the call: add it back
    try:
        reached = phases.watch(cloud.ec2, ids, "booted", timeout_s, POLL_S)
    finally:
        cloud.ec2.terminate_instances(InstanceIds=ids)
        cloud.wait_state(ids, "terminated", timeout=60)
    return [
        {"instance": i, "running_s": ran + reached[i]["running"], "marker_s": ran + reached[i]["booted"]} for i in ids
    ]


def run_boot_benchmark(cloud: Any, accel: str, repeats: int = 5, progress: Any = None) -> dict[str, Any]:
    built = find_built_image()
    if built is None:
        raise RuntimeError("the default image is not built: run 'cloudlab image build'")
    result: dict[str, Any] = {"accelerator": accel, "repeats": repeats}
    rows: list[dict[str, Any]] = []
    for count in (1, 4):
        hand, cloud_marker, cloud_running, cloud_last = [], [], [], []
        for repeat in range(repeats):
            with ThreadPoolExecutor(max_workers=count) as pool:
                hand += list(pool.map(lambda _: boot_by_hand(built.kernel, built.ramdisk, accel), range(count)))
            measured = boot_through_cloud(cloud, count)
            cloud_marker += [m["marker_s"] for m in measured]
            cloud_running += [m["running_s"] for m in measured]
            cloud_last.append(max(m["marker_s"] for m in measured))
            for m in measured:
                rows.append({"concurrent": count, "repeat": repeat, **m})
            if progress:
                progress(f"boot x{count}: repeat {repeat + 1}/{repeats} done")
        entry = {
            "by_hand_marker_s": summarise(hand),
            "cloud_running_s": summarise(cloud_running),
            "cloud_marker_s": summarise(cloud_marker),
            "cloud_last_marker_s": summarise(cloud_last),
        }
        entry["ratio_cloud_to_hand_marker"] = round(
            entry["cloud_marker_s"]["median"] / entry["by_hand_marker_s"]["median"], 3
        )
        result[f"concurrent_{count}"] = entry
    result["rows"] = rows
    return result
