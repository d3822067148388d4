"""The environment a result was measured in, recorded beside every figure."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Any


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    return out.splitlines()[0].strip() if out else "unknown"


def describe_environment(accel: str | None = None) -> dict[str, Any]:
    import libvirt

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host_kernel": platform.release(),
        "cpus": os.cpu_count(),
        "memory_mb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
        "python": platform.python_version(),
        "libvirt": ".".join(str(libvirt.getVersion() // 10**i % 1000) for i in (6, 3, 0)),
        "qemu": _version(["qemu-system-x86_64", "--version"]),
        "accelerator": accel,
        "load_avg": os.getloadavg(),
    }
