"""Decide whether this host's VMs run with KVM or with TCG -- by proof, not by the device file.

On some hosts /dev/kvm exists and opens, yet a KVM guest hangs forever (nested virtualisation
without the right CPU features, sandboxes that pass the device through but not its use). So the
probe boots the real default image under ``-accel kvm`` with a timeout and says "kvm" only if the
guest printed its boot marker on the serial console; anything else means "tcg".

A probe costs a boot (or the whole timeout when KVM hangs), so the answer is cached in a JSON file
keyed by what decides it: the image (kernel and ramdisk digests), the QEMU binary and the host
kernel. The next call with the same key returns at once without starting QEMU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import time
from pathlib import Path

from cloudlab.files import write_atomic
from cloudlab.guest import BOOT_MARKER, DEFAULT_KERNEL_CMDLINE
from cloudlab.images.build import default_cache_dir

log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
KVM_DEVICE = Path("/dev/kvm")
#: Name given to probe VMs (with the prober's pid), so they are recognisable in ``ps``.
PROBE_NAME_PREFIX = "cloudlab-accel-probe-"
_TIMED_OUT = "no boot marker before the timeout"


def probe_accelerator(
    kernel: Path,
    ramdisk: Path,
    cache_file: Path | None = None,
    timeout_s: float = 20.0,
) -> str:
    """Return ``"kvm"`` if a KVM guest demonstrably boots on this host, else ``"tcg"``.

    ``cache_file`` defaults to ``<cloudlab cache>/accel.json``. A missing or unopenable /dev/kvm
    (or a missing QEMU) answers "tcg" at once, without a probe and without caching (it is free to
    check again). A cached verdict is reused unless it was a timeout shorter than ``timeout_s``.
    The probe VM is always killed with its whole process group and reaped, whatever happens.
    """
    if not kvm_device_usable():
        return "tcg"
    qemu = shutil.which(QEMU_BINARY)
    if qemu is None:
        log.warning("%s not found; assuming tcg", QEMU_BINARY)
        return "tcg"

    cache_path = Path(cache_file) if cache_file is not None else default_cache_dir() / "accel.json"
    key = _probe_key(Path(kernel), Path(ramdisk), Path(qemu))
    entries = _read_cache(cache_path)
    if key in entries and _still_valid(entries[key], timeout_s):
        return entries[key]["accelerator"]

    booted, seconds, detail = _boot_with_kvm(qemu, Path(kernel), Path(ramdisk), timeout_s)
    accelerator = "kvm" if booted else "tcg"
    log.info("accelerator probe: %s (%s, %.1f s)", accelerator, detail, seconds)
    entries[key] = {
        "accelerator": accelerator,
        "detail": detail,
        "seconds": round(seconds, 2),
        "timeout_s": timeout_s,
        "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host_kernel": os.uname().release,
    }
    _write_cache(cache_path, entries)
    return accelerator


def _still_valid(entry: dict, timeout_s: float) -> bool:
    """A cached verdict answers this call unless it was a timeout shorter than the one asked for now
    (a probe cut short by an impatient caller must not condemn KVM for patient ones)."""
    if entry.get("accelerator") == "kvm":
        return True
    if entry.get("accelerator") != "tcg":
        return False
    timed_out = entry.get("detail") == _TIMED_OUT
    return not timed_out or float(entry.get("timeout_s", 0)) >= timeout_s


def kvm_device_usable() -> bool:
    """Whether /dev/kvm exists and this process may open it (necessary, not sufficient, for KVM)."""
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _probe_key(kernel: Path, ramdisk: Path, qemu: Path) -> str:
    """Everything a KVM verdict depends on: the image, the QEMU build and the host kernel."""
    st = qemu.stat()
    parts = [
        _sha256(kernel),
        _sha256(ramdisk),
        f"{qemu}:{st.st_size}:{st.st_mtime_ns}",
        os.uname().release,
        DEFAULT_KERNEL_CMDLINE,
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _boot_with_kvm(qemu: str, kernel: Path, ramdisk: Path, timeout_s: float) -> tuple[bool, float, str]:
    """Boot the image under KVM; return (marker seen, seconds spent, what happened)."""
    argv = [
        qemu,
        "-accel", "kvm",
        "-name", f"{PROBE_NAME_PREFIX}{os.getpid()}",
        "-m", "256",
        "-nodefaults", "-display", "none", "-serial", "stdio", "-monitor", "none",
        "-no-reboot", "-nic", "none",
        "-kernel", str(kernel),
        "-initrd", str(ramdisk),
        "-append", f"{DEFAULT_KERNEL_CMDLINE} cloudlab.hostname=accel-probe",
    ]  # fmt: skip
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so everything it spawned dies with it
        )
    except OSError as exc:
        return False, time.monotonic() - started, f"cannot start qemu: {exc}"
    try:
        seen, detail = _wait_for_marker(proc, started + timeout_s)
    finally:
        _kill_group(proc)
    return seen, time.monotonic() - started, detail


def _wait_for_marker(proc: subprocess.Popen[bytes], deadline: float) -> tuple[bool, str]:
    assert proc.stdout is not None
    marker = BOOT_MARKER.encode()
    output = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=left):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                last = output.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                return False, f"qemu exited before the boot marker: {last[0][:200]}"
            output = (output + chunk)[-65536:]
            if marker in output:
                return True, "boot marker seen"
    return False, _TIMED_OUT


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL QEMU's process group and reap it, so no VM or zombie outlives the probe."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        log.error("accelerator probe: qemu pid %d did not die after SIGKILL", proc.pid)
    if proc.stdout is not None:
        proc.stdout.close()


def _read_cache(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict[str, dict]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"entries": entries}, indent=2) + "\n")
    except OSError as exc:  # a cache that cannot be written only costs a probe next time
        log.warning("cannot write accelerator cache %s: %s", path, exc)


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
