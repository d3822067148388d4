"""The KVM probe: trusts a boot, not /dev/kvm; caches its verdict; never leaves QEMU behind."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cloudlab.images.build import ImageBuildError, build_default_image
from cloudlab.nc import accel
from cloudlab.nc.accel import PROBE_NAME_PREFIX, probe_accelerator


@pytest.fixture
def fake_image(tmp_path: Path) -> tuple[Path, Path]:
    kernel, ramdisk = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"not really a kernel")
    ramdisk.write_bytes(b"not really a ramdisk")
    return kernel, ramdisk


@pytest.fixture
def no_spawning(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **_kw: object) -> None:
        raise AssertionError(f"the probe started a process: {args}")

    monkeypatch.setattr(accel.subprocess, "Popen", forbidden)


def test_without_kvm_device_answers_tcg_at_once(
    fake_image: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_spawning: None
) -> None:
    monkeypatch.setattr(accel, "KVM_DEVICE", tmp_path / "no-such-kvm")
    cache = tmp_path / "accel.json"
    assert probe_accelerator(*fake_image, cache_file=cache) == "tcg"
    assert not cache.exists()  # nothing was probed, so nothing to remember


def test_unopenable_kvm_device_answers_tcg(
    fake_image: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_spawning: None
) -> None:
    not_a_device = tmp_path / "kvm"
    not_a_device.mkdir()  # exists, but opening it read-write fails
    monkeypatch.setattr(accel, "KVM_DEVICE", not_a_device)
    assert probe_accelerator(*fake_image, cache_file=tmp_path / "accel.json") == "tcg"


def test_verdict_is_cached_and_second_call_spawns_nothing(
    fake_image: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which(accel.QEMU_BINARY) is None:
        pytest.skip("the cache key includes the QEMU binary")
    calls: list[float] = []

    def fake_boot(_qemu: str, _kernel: Path, _ramdisk: Path, timeout_s: float) -> tuple[bool, float, str]:
        calls.append(timeout_s)
        return True, 0.4, "boot marker seen"

    monkeypatch.setattr(accel, "kvm_device_usable", lambda: True)
    monkeypatch.setattr(accel, "_boot_with_kvm", fake_boot)
    cache = tmp_path / "accel.json"
    assert probe_accelerator(*fake_image, cache_file=cache) == "kvm"
    assert len(calls) == 1
    entry = next(iter(json.loads(cache.read_text())["entries"].values()))
    assert entry["accelerator"] == "kvm"

    def forbidden(*args: object, **_kw: object) -> None:
        raise AssertionError("a cached verdict started QEMU")

    monkeypatch.setattr(accel, "_boot_with_kvm", forbidden)
    monkeypatch.setattr(accel.subprocess, "Popen", forbidden)
    assert probe_accelerator(*fake_image, cache_file=cache) == "kvm"  # (QEMU would have raised above)

    # A different kernel is a different question.
    fake_image[0].write_bytes(b"another kernel")
    monkeypatch.setattr(accel, "_boot_with_kvm", fake_boot)
    assert probe_accelerator(*fake_image, cache_file=cache) == "kvm"
    assert len(calls) == 2


def test_short_timeout_verdict_does_not_bind_a_longer_probe(
    fake_image: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which(accel.QEMU_BINARY) is None:
        pytest.skip("the cache key includes the QEMU binary")
    calls: list[float] = []

    def hanging_kvm(_qemu: str, _kernel: Path, _ramdisk: Path, timeout_s: float) -> tuple[bool, float, str]:
        calls.append(timeout_s)
        return False, timeout_s, accel._TIMED_OUT

    monkeypatch.setattr(accel, "kvm_device_usable", lambda: True)
    monkeypatch.setattr(accel, "_boot_with_kvm", hanging_kvm)
    cache = tmp_path / "accel.json"
    assert probe_accelerator(*fake_image, cache_file=cache, timeout_s=1) == "tcg"
    assert probe_accelerator(*fake_image, cache_file=cache, timeout_s=1) == "tcg"
    assert calls == [1]
    assert probe_accelerator(*fake_image, cache_file=cache, timeout_s=5) == "tcg"
    assert calls == [1, 5]
    assert probe_accelerator(*fake_image, cache_file=cache, timeout_s=2) == "tcg"
    assert calls == [1, 5]


@pytest.mark.skipif(shutil.which(accel.QEMU_BINARY) is None, reason="needs qemu-system-x86_64")
def test_qemu_that_exits_early_means_tcg(
    fake_image: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real QEMU given a bogus kernel exits at once: the probe says tcg and records why."""
    monkeypatch.setattr(accel, "kvm_device_usable", lambda: True)
    cache = tmp_path / "accel.json"
    assert probe_accelerator(*fake_image, cache_file=cache, timeout_s=20) == "tcg"
    entry = next(iter(json.loads(cache.read_text())["entries"].values()))
    assert entry["detail"].startswith("qemu exited before the boot marker")
    assert _leftovers(f"{PROBE_NAME_PREFIX}{os.getpid()}") == []


def _leftovers(name: str) -> list[str]:
    """Live processes whose command line names ``name``, and zombie children of this process."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat_fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if name in cmdline:
            found.append(f"{proc.name}: {cmdline[:120]}")
        elif stat_fields[0] == "Z" and int(stat_fields[1]) == os.getpid():
            found.append(f"{proc.name}: zombie child")
    return found


@pytest.mark.vm
@pytest.mark.skipif(shutil.which(accel.QEMU_BINARY) is None, reason="needs qemu-system-x86_64")
@pytest.mark.skipif(not accel.kvm_device_usable(), reason="needs an openable /dev/kvm to probe")
def test_real_probe_with_tiny_timeout_says_tcg_and_leaves_nothing(tmp_path: Path) -> None:
    """Even where KVM works, no guest prints its marker 0.3 s after QEMU starts; here KVM hangs."""
    try:
        image = build_default_image()
    except ImageBuildError as exc:
        pytest.skip(f"no default image: {exc}")
    cache = tmp_path / "accel.json"
    assert probe_accelerator(image.kernel, image.ramdisk, cache_file=cache, timeout_s=0.3) == "tcg"
    assert _leftovers(f"{PROBE_NAME_PREFIX}{os.getpid()}") == []
    entry = next(iter(json.loads(cache.read_text())["entries"].values()))
    assert entry["accelerator"] == "tcg" and entry["timeout_s"] == 0.3
    assert entry["detail"] == "no boot marker before the timeout"  # the probe's own timeout ended it
