"""The default image: built from Debian packages, cached, and really booting under QEMU/TCG.

The image is built into the shared cache (``$CLOUDLAB_CACHE`` or ``~/.cache/cloudlab``), so only
the first run on a machine pays for the download and build; later runs find it in milliseconds.
The ``vm`` tests boot it with qemu-system-x86_64 directly (no libvirt), watch the serial console
for init.sh's markers and check that every way of stopping the guest ends QEMU cleanly.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cloudlab.guest import BOOT_MARKER, DEFAULT_KERNEL_CMDLINE, SHUTDOWN_MARKER
from cloudlab.images import apt, build
from cloudlab.images.build import (
    BuiltImage,
    ImageBuildError,
    build_default_image,
)
from cloudlab.waiting import WaitTimeout, wait_until

pytestmark = pytest.mark.skipif(
    shutil.which("apt-cache") is None or shutil.which("dpkg-deb") is None,
    reason="the default image is built from Debian packages (needs apt and dpkg)",
)
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    started = time.monotonic()
    built = build_default_image(progress=lambda msg: print(f"[image] {msg}"))
    print(f"[image] ready after {time.monotonic() - started:.2f} s (rebuilt={built.rebuilt}) in {built.directory}")
    return built


# --------------------------------------------------------------------------------------------------
# building and caching


def test_second_call_is_cached(image: BuiltImage) -> None:
    before = image.ramdisk.stat().st_mtime_ns
    again = build_default_image()
    assert again.rebuilt is False
    assert again.ramdisk.stat().st_mtime_ns == before, "a cached image must not be written again"
    assert again.kernel == image.kernel and again.ramdisk == image.ramdisk
    assert again.manifest["inputs_hash"] == image.manifest["inputs_hash"]


def test_cached_call_runs_no_command(image: BuiltImage, monkeypatch: pytest.MonkeyPatch) -> None:
    """With apt's state unchanged, neither apt-cache nor anything else is run."""

    def forbidden(argv: list[str], **_kw: object) -> str:
        raise AssertionError(f"cached call ran {argv}")

    monkeypatch.setattr(apt, "run", forbidden)
    assert build_default_image().rebuilt is False


def test_manifest_describes_inputs_and_outputs(image: BuiltImage) -> None:
    manifest = image.manifest
    on_disk = json.loads((image.directory / "manifest.json").read_text())
    assert on_disk["inputs_hash"] == manifest["inputs_hash"]
    assert manifest["builder_version"] == build.BUILDER_VERSION
    assert manifest["kernel_cmdline"] == DEFAULT_KERNEL_CMDLINE
    packages = manifest["packages"]
    for name in ("busybox-static", "iperf3", "libiperf0", "dropbear-bin", "libc6"):
        assert packages.get(name), f"{name} missing from {sorted(packages)}"
    kernels = [p for p in packages if re.fullmatch(r"linux-image-.*-cloud-amd64", p)]
    assert kernels == [f"linux-image-{manifest['kernel_release']}"]
    for name, path in (("vmlinuz", image.kernel), ("initrd.img", image.ramdisk)):
        info = manifest["outputs"][name]
        assert path.stat().st_size == info["size"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"]
    assert {"virtio_net", "virtio_pci", "button", "evdev"} <= set(manifest["modules"])
    assert "libcrypto.so.3" in manifest["libraries"]  # iperf3's, found through libiperf0


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes, int, int]]:
    """path -> (mode, data, rdevmajor, rdevminor) of a newc archive."""
    entries = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad cpio magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmajor, rminor, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos : pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, body, rmajor, rminor)


def test_initramfs_contents(image: BuiltImage) -> None:
    import stat

    entries = _read_newc(gzip.decompress(image.ramdisk.read_bytes()))
    assert entries["init"][1] == build.INIT_SCRIPT.read_bytes()
    assert entries["init"][0] & 0o111
    mode, _, major, minor = entries["dev/console"]
    assert stat.S_ISCHR(mode) and (major, minor) == (5, 1)
    for program in build.GUEST_PROGRAMS:
        assert stat.S_ISREG(entries[program][0]), program
    assert entries["sbin/poweroff"][1] == b"/bin/busybox"
    assert stat.S_ISLNK(entries["lib64/ld-linux-x86-64.so.2"][0])
    assert "lib/x86_64-linux-gnu/libc.so.6" in entries
    # Every listed module is there, and each one's dependencies are loaded before it.
    order = entries["etc/cloudlab/modules"][1].decode().split()
    release = image.manifest["kernel_release"]
    deps = {}
    for line in entries[f"lib/modules/{release}/modules.dep"][1].decode().splitlines():
        module, _, needs = line.partition(":")
        deps[module] = needs.split()
    for i, module in enumerate(order):
        assert f"lib/modules/{release}/{module}" in entries
        assert set(deps[module]) <= set(order[:i]), f"{module} loads before its dependencies"
    size = image.ramdisk.stat().st_size
    assert size < 12 * 2**20, f"initrd.img grew to {size / 2**20:.1f} MiB; boot time follows its size"


def _seed_debs(cache: Path) -> None:
    """Let a test's private cache reuse the shared cache's downloads (hard links, no copies)."""
    shared = build.default_cache_dir() / "debs"
    (cache / "debs").mkdir(parents=True)
    for deb in shared.glob("*.deb"):
        try:
            os.link(deb, cache / "debs" / deb.name)
        except OSError:
            shutil.copy2(deb, cache / "debs" / deb.name)


def test_failed_build_leaves_no_half_image(image: BuiltImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _seed_debs(tmp_path)

    def broken(*_args: object, **_kw: object) -> list[str]:
        raise ImageBuildError("simulated failure halfway through")

    monkeypatch.setattr(build, "_add_modules", broken)
    with pytest.raises(ImageBuildError, match="simulated"):
        build_default_image(tmp_path)
    images = tmp_path / "images"
    assert not (images / "default").exists()
    assert not list(images.glob(".default.*.tmp")), "temporary build directory left behind"


def test_missing_tool_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(build.shutil, "which", lambda tool: None if tool == "dpkg-deb" else real_which(tool))
    with pytest.raises(ImageBuildError, match="apt-get install dpkg") as info:
        build_default_image(tmp_path)
    assert "\n" not in str(info.value)


def test_unknown_package_says_run_apt_get_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "USERLAND_PACKAGES", (*build.USERLAND_PACKAGES, "cloudlab-no-such-package"))
    with pytest.raises(ImageBuildError, match="apt-get update") as info:
        build_default_image(tmp_path)
    assert "cloudlab-no-such-package" in str(info.value)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# booting it for real (TCG)


class Guest:
    """One QEMU/TCG guest on the default image: serial console on a pipe, QMP on a unix socket."""

    def __init__(self, image: BuiltImage, workdir: Path, extra_cmdline: str = "", nic: bool = False) -> None:
        self.qmp_path = workdir / "qmp.sock"
        # A virtio NIC on QEMU's user-mode network with restrict=on: the guest reaches nothing.
        network = ["-nic", "none"]
        if nic:
            network = ["-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0"]
        argv = [
            "qemu-system-x86_64",
            "-accel", "tcg", "-m", "256",
            "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot", *network,
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-kernel", str(image.kernel), "-initrd", str(image.ramdisk),
            "-append", f"{DEFAULT_KERNEL_CMDLINE} {extra_cmdline}".strip(),
        ]  # fmt: skip
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._output = b""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(4096):
            with self._changed:
                self._output += chunk
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return self._output.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        regex = re.compile(pattern)

        def seen() -> re.Match[str] | None:
            if found := regex.search(self._output.decode(errors="replace")):
                return found
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"QEMU ended without {pattern!r}; console:\n{self._output[-3000:]!r}")
            return None

        with self._changed:  # woken by every console write, and at least twice a second
            try:
                return wait_until(seen, timeout, what=repr(pattern), interval_s=0.5, sleep=self._changed.wait)
            except WaitTimeout:
                raise AssertionError(f"no {pattern!r} within {timeout} s; console:\n{self._output[-3000:]!r}") from None

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def qmp(self, command: str, timeout: float = 10) -> dict:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.qmp_path))
            stream = sock.makefile("rw")
            json.loads(stream.readline())  # greeting
            for execute in ("qmp_capabilities", command):
                stream.write(json.dumps({"execute": execute}) + "\n")
                stream.flush()
                while "return" not in (reply := json.loads(stream.readline())) and "error" not in reply:
                    pass  # asynchronous events
            return reply

    def exited_within(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]


@pytest.fixture
def guest_factory(image: BuiltImage, tmp_path: Path):
    guests: list[Guest] = []

    def start(extra_cmdline: str = "", nic: bool = False) -> Guest:
        workdir = tmp_path / f"guest{len(guests)}"
        workdir.mkdir()
        guests.append(Guest(image, workdir, extra_cmdline, nic))
        return guests[-1]

    yield start
    for guest in guests:
        guest.close()


BOOT_LINE = re.escape(BOOT_MARKER) + r"ok host=(\S+) uptime=([\d.]+)"


@pytest.mark.vm
@needs_qemu
def test_tcg_boot_marker_then_acpi_power_button_powers_off(guest_factory) -> None:
    guest = guest_factory("cloudlab.hostname=i-0123abcd")
    boot = guest.wait_for(BOOT_LINE, timeout=60)
    wall = time.monotonic() - guest.started
    uptime = float(boot.group(2))
    print(f"[boot] marker after {wall:.2f} s wall, guest uptime {uptime:.2f} s")
    assert boot.group(1) == "i-0123abcd"
    assert uptime > 0  # the guest's own clock, parsed from its marker line
    assert guest.output.count(BOOT_MARKER) == 1

    time.sleep(0.3)  # let acpid open the input devices (it starts just before the marker)
    pressed = time.monotonic()
    assert "error" not in guest.qmp("system_powerdown")  # what virDomainShutdown sends: ACPI power button
    returncode = guest.exited_within(30)
    assert returncode == 0, f"QEMU did not power off by itself; console:\n{guest.output[-2000:]}"
    print(f"[boot] clean power-off {time.monotonic() - pressed:.2f} s after the power button")
    assert SHUTDOWN_MARKER + "poweroff host=i-0123abcd" in guest.output


@pytest.mark.vm
@needs_qemu
@pytest.mark.parametrize("command", ["poweroff", "reboot"])
def test_guest_side_poweroff_and_reboot_end_qemu(guest_factory, command: str) -> None:
    """``poweroff``/``reboot`` typed in the guest go through PID 1; with -no-reboot both end QEMU.

    On the way it checks the guest's userland: iperf3 and dropbear run (their libraries are
    there), the virtio NIC is up with its static address, and dropbear listens on port 22.
    """
    guest = guest_factory("cloudlab.shell=1 cloudlab.ip=10.0.2.15/24,10.0.2.2", nic=True)
    guest.wait_for(BOOT_LINE, timeout=60)
    guest.type("iperf3 --version; dropbear -V 2>&1 | head -1; ip -o addr show eth0; ip -o link show eth0")
    guest.type("sleep 1; netstat -tln; echo checked-$((6*7))")
    guest.wait_for(r"checked-42", timeout=30)
    assert re.search(r"iperf 3\.\d+", guest.output), "iperf3 does not run in the guest (libraries?)"
    assert "Dropbear" in guest.output
    assert "inet 10.0.2.15/24" in guest.output
    assert re.search(r"eth0: <[^>]*\bUP\b", guest.output)
    assert re.search(r":22\s", guest.output), "dropbear is not listening"
    guest.type(command)
    assert guest.exited_within(30) == 0, f"QEMU still running after {command}; console:\n{guest.output[-2000:]}"
    assert f"{SHUTDOWN_MARKER}{command} host=cloudlab" in guest.output
