"""fio inside a guest: the storage benchmark's jobs, run over any ``Remote`` and read from fio's JSON.

Four jobs, as the issue names them: sequential read and write (1 MiB blocks) and 4 KiB random read
and write, each ``--direct=1`` with libaio at queue depth 16, time-based for ``runtime_s`` over the
first ``size_mib`` of the target. A target is a block device (a volume: ``/dev/vdb``) or a file on
the root file system (the instance's root disk, through ext4). :func:`prefill` writes the region
once first, so reads read data and not a sparse qcow2's holes.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from cloudlab.reach import Remote

#: job name -> (fio --rw, block size)
JOBS = {
    "seq_read": ("read", "1M"),
    "seq_write": ("write", "1M"),
    "rand_read_4k": ("randread", "4k"),
    "rand_write_4k": ("randwrite", "4k"),
}
IODEPTH = 16


class FioError(RuntimeError):
    """fio failed in the guest (the message has its stderr)."""


@dataclass(frozen=True)
class Target:
    """Where fio runs: ``path`` on ``remote`` (a device, or a file fio lays out on the root disk)."""

    name: str  # e.g. cloud:volume
    remote: Remote
    path: str


def fio_argv(job: str, path: str, size_mib: int, runtime_s: float) -> list[str]:
    rw, bs = JOBS[job]
    return ["fio", f"--name={job}", f"--filename={path}", f"--rw={rw}", f"--bs={bs}", f"--size={size_mib}M",
            f"--runtime={runtime_s:g}", "--time_based", "--direct=1", "--ioengine=libaio", f"--iodepth={IODEPTH}",
            "--numjobs=1", "--randrepeat=0", "--output-format=json"]  # fmt: skip


def parse(job: str, output: str) -> dict[str, float]:
    """MiB/s, IOPS and mean completion latency (ms) of one fio job, from its JSON output."""
    start = output.find("{")  # fio may print a note before the JSON
    data = json.loads(output[start:])
    side = data["jobs"][0]["read" if JOBS[job][0] in ("read", "randread") else "write"]
    clat = side.get("clat_ns") or side.get("lat_ns") or {}
    return {
        "mib_s": round(side["bw_bytes"] / 2**20, 3),
        "iops": round(side["iops"], 1),
        "lat_ms": round(clat.get("mean", 0.0) / 1e6, 3),
    }


def run_job(target: Target, job: str, size_mib: int, runtime_s: float) -> dict[str, float]:
    command = shlex.join(fio_argv(job, target.path, size_mib, runtime_s))
    done = target.remote.run(command, timeout=runtime_s + 180)
    if done.returncode != 0:
        raise FioError(f"fio {job} on {target.name} ({target.path}): {(done.stderr or done.stdout).strip()[-800:]}")
    return parse(job, done.stdout)


def prefill(target: Target, size_mib: int) -> None:
    """Write the region once (1 MiB sequential, not timed), then drop the guest's caches."""
    argv = ["fio", "--name=prefill", f"--filename={target.path}", "--rw=write", "--bs=1M", f"--size={size_mib}M",
            "--direct=1", "--ioengine=libaio", f"--iodepth={IODEPTH}", "--output-format=json"]  # fmt: skip
    done = target.remote.run(shlex.join(argv) + " >/dev/null && sync", timeout=600)
    if done.returncode != 0:
        raise FioError(f"prefill of {target.name}: {(done.stderr or done.stdout).strip()[-800:]}")


def find_disk(remote: Remote, serial: str, timeout_s: float = 120) -> str:
    """The guest's ``/dev/vdX`` whose virtio serial is ``serial`` (a volume id without its dash), waited for."""
    loops = int(timeout_s * 2)
    script = (f"for _ in $(seq {loops}); do for d in /sys/block/vd*; do "
              f'[ "$(cat $d/serial 2>/dev/null)" = {shlex.quote(serial)} ] && echo /dev/${{d##*/}} && exit 0; done; '
              "sleep 0.5; done; exit 1")  # fmt: skip
    done = remote.run(script, timeout=timeout_s + 30)
    if done.returncode != 0 or not done.stdout.strip():
        raise FioError(f"no disk with serial {serial} in {remote.name} after {timeout_s:g} s")
    return done.stdout.strip()
