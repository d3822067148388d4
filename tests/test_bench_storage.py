"""The storage benchmark (``cloudlab bench storage``): its quickest form against a real cloud and real guests.

The run starts its own cloud (direct network), boots ``cloudlab-debian`` there and by hand (a volume
served by ``qemu-nbd`` and attached to a hand-started QEMU), runs every fio job once on each target,
snapshots and restores a 1 GiB volume, and stops everything. Only the report's structure and that
every figure is a positive, finite number are checked: speed is for people to read, never asserted.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloudlab.bench import lab
from cloudlab.bench.storage import PAIRS, TARGETS, Options, fio_ratios, parser, report_lines, run_storage_benchmark
from cloudlab.bench.storage_fio import JOBS, fio_argv, parse
from tests.clouds import vm_requirements


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def fio_output(read_bw: int, write_bw: int) -> str:
    """fio's JSON shape (fio 3.33, as Debian 12 has it), with a note before it as fio sometimes prints."""
    side = {"bw_bytes": 0, "iops": 0.0, "clat_ns": {"mean": 0.0}}
    job = {"jobname": "x", "read": dict(side), "write": dict(side)}
    job["read"] = {"bw_bytes": read_bw, "iops": read_bw / 4096, "clat_ns": {"mean": 250000.0}}
    job["write"] = {"bw_bytes": write_bw, "iops": write_bw / 4096, "clat_ns": {"mean": 500000.0}}
    return "note: both iodepth >= 1 and synchronous I/O engine are selected\n" + json.dumps({"jobs": [job]})


def test_fio_jobs_and_parsing() -> None:
    argv = fio_argv("rand_read_4k", "/dev/vdb", 64, 2.5)
    assert argv[0] == "fio" and "--rw=randread" in argv and "--bs=4k" in argv and "--direct=1" in argv
    assert "--size=64M" in argv and "--runtime=2.5" in argv and "--output-format=json" in argv
    read = parse("seq_read", fio_output(100 * 2**20, 7))
    assert read == {"mib_s": 100.0, "iops": 25600.0, "lat_ms": 0.25}
    write = parse("rand_write_4k", fio_output(7, 8 * 2**20))
    assert write == {"mib_s": 8.0, "iops": 2048.0, "lat_ms": 0.5}


def test_ratios_are_cloud_over_hand_with_the_range_of_the_repeats() -> None:
    rows = [
        {"target": t, "job": "seq_read", "repeat": r, "mib_s": v, "iops": v, "lat_ms": 1.0, "error": None}
        for t, r, v in [
            ("cloud:volume", 0, 90.0),
            ("cloud:volume", 1, 110.0),
            ("hand:volume", 0, 100.0),
            ("hand:volume", 1, 100.0),
        ]  # fmt: skip
    ]
    rows.append({"target": "hand:volume", "job": "seq_read", "repeat": 2, "mib_s": math.nan, "iops": math.nan,
                 "lat_ms": math.nan, "error": "fio failed"})  # fmt: skip
    ratios = fio_ratios(rows)
    assert ratios["volume:seq_read"] == {"ratio": 1.0, "low": 0.9, "high": 1.1}
    assert ratios["volume:seq_write"] is None and ratios["root:seq_read"] is None


def test_help_and_quick_options() -> None:
    text = parser().format_help()
    for option in ("--quick", "--repeats", "--fio-runtime", "--boot-repeats", "--snapshot-sizes"):
        assert option in text
    quick = Options.quick()
    assert quick.repeats == 1 and quick.boot_repeats == 1 and quick.snapshot_sizes_gib == (1,)
    done = subprocess.run([sys.executable, "-m", "cloudlab", "bench", "storage", "--help"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and "--fio-runtime" in done.stdout


@pytest.mark.vm
@pytest.mark.slow
def test_quick_run_against_a_real_cloud(tmp_path: Path) -> None:
    reason = vm_requirements()
    if reason is None and shutil.which("qemu-nbd") is None:
        reason = "qemu-nbd is not installed (qemu-utils)"
    if reason is None:
        from cloudlab.images.cached import find_built_image

        if find_built_image(name="debian") is None:
            reason = "cloudlab-debian is not built (make setup builds it)"
    if reason:
        pytest.skip(reason)
    before = set(lab.leftover_namespaces())
    result = run_storage_benchmark(Options.quick(), workdir=tmp_path, progress=print)

    rows = result["fio_rows"]
    assert {(r["target"], r["job"]) for r in rows} == {(t, j) for t in TARGETS for j in JOBS}
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows if r["error"]]
    for row in rows:
        assert positive(row["mib_s"]) and positive(row["iops"]) and positive(row["lat_ms"]), row
    assert result["devices"]["cloud:volume"].startswith("/dev/vd") and result["devices"]["cloud:volume"] != "/dev/vda"
    assert result["devices"]["hand:volume"] == "/dev/vdb"
    assert result["devices"]["hand:volume-linked"] == "/dev/vdc"  # served from across a veth (the SC's hop)
    for pair in PAIRS:
        for job in JOBS:
            ratio = result["ratios"][f"{pair}:{job}"]
            assert positive(ratio["ratio"]) and ratio["low"] <= ratio["ratio"] <= ratio["high"]
    boot = result["boot"]
    assert isinstance(boot["failures"], list)  # a failed boot (TCG on a loaded host) is reported, not counted
    for side in ("cloud", "hand"):
        ssh, cloud_init = boot[f"{side}_ssh_s"], boot[f"{side}_cloud_init_s"]
        assert ssh["n"] == cloud_init["n"] == 1 and positive(ssh["median"]) and positive(cloud_init["median"])
    assert positive(boot["ratio_cloud_to_hand_ssh_s"]) and positive(boot["ratio_cloud_to_hand_cloud_init_s"])
    [snapshot] = result["snapshots"]
    assert snapshot["size_gib"] == 1 and snapshot["written_mib"] >= 1
    for key in ("create_snapshot_s", "create_volume_from_snapshot_s", "hand_snapshot_s", "hand_restore_s"):
        assert positive(snapshot[key]), (key, snapshot)
    text = "\n".join(report_lines(result))
    assert "cloud:volume" in text and "hand:volume" in text and "CreateSnapshot" in text
    # the cloud is down and the hand-built guest's namespace, QEMU and qemu-nbd are gone
    assert set(lab.leftover_namespaces()) <= before
    assert not list(tmp_path.iterdir())
    assert not [c for c in command_lines() if str(tmp_path).encode() in c]


def command_lines() -> list[bytes]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes())
            except OSError:
                continue
    return found
