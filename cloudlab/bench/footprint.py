"""Resident memory of an idle cloud: the service process and every controller process it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def controller_memory(service_pid: int) -> dict[str, Any]:
    """RSS per controller process (QEMU guests excluded: they are the instances, not the cloud)."""
    processes = {}
    todo = [service_pid]
    while todo:
        pid = todo.pop()
        try:
            comm = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "qemu-system" in comm:
                continue
            processes[pid] = {"rss_mb": round(_rss_kib(pid) / 1024, 1), "command": comm[:120]}
            todo += _children(pid)
        except OSError:
            continue
    return {"processes": processes, "total_rss_mb": round(sum(p["rss_mb"] for p in processes.values()), 1)}
