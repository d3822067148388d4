"""cloudlab-debian as built: cached, made of unmodified Debian packages, configured as the guest files say.

The image is built into the shared cache (``$CLOUDLAB_CACHE`` or ``~/.cache/cloudlab``) once per
machine (a few minutes: mmdebstrap installs ~235 packages); later runs find it in milliseconds.
Its disk is read without booting or mounting it: ``qemu-img`` turns the qcow2 into a raw file and
``debugfs`` reads files out of the ext4 inside. Booting it is ``test_debian_boot.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from cloudlab.images import apt, debian
from cloudlab.images.cached import BuiltImage, default_cache_dir, find_built_image
from cloudlab.images.debian import GUEST_DIR, ImageBuildError, build_debian_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in ("mmdebstrap", "mke2fs", "qemu-img", "debugfs", "apt-get")),
        reason="the Debian image is built with mmdebstrap, mke2fs and qemu-img (apt-get install mmdebstrap)",
    ),
]


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    started = time.monotonic()
    built = build_debian_image(progress=lambda msg: print(f"[debian] {msg}"))
    print(f"[debian] ready after {time.monotonic() - started:.1f} s (rebuilt={built.rebuilt}) in {built.directory}")
    return built


@pytest.fixture(scope="module")
def root_fs(image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's ext4 as a raw file (sparse), for debugfs."""
    assert image.disk is not None
    raw = tmp_path_factory.mktemp("debian-disk") / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image.disk), str(raw)], check=True)
    return raw


def debugfs(fs: Path, request: str) -> str:
    done = subprocess.run(["debugfs", "-R", request, str(fs)], capture_output=True, text=True, check=True)
    return done.stdout


def read_file(fs: Path, path: str) -> bytes:
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(fs)], capture_output=True, check=True)
    return done.stdout


def qemu_img_info(path: Path) -> dict:
    done = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def exists(fs: Path, path: str) -> bool:
    return "Inode:" in debugfs(fs, f"stat {path}")


# --------------------------------------------------------------------------------------------------
# building and caching


def test_second_call_is_cached_and_runs_no_command(image: BuiltImage, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(argv: list[str], **_kw: object) -> str:
        raise AssertionError(f"cached call ran {argv}")

    monkeypatch.setattr(apt, "run", forbidden)
    assert image.disk is not None
    before = image.disk.stat().st_mtime_ns
    again = build_debian_image()
    assert again.rebuilt is False and again.disk == image.disk
    assert again.disk.stat().st_mtime_ns == before, "a cached image must not be written again"
    assert again.manifest["inputs_hash"] == image.manifest["inputs_hash"]
    assert find_built_image(name="debian") == again


def test_cli_finds_the_built_image(image: BuiltImage) -> None:
    """``cloudlab image build debian`` with the image current: one line naming its three files."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "cloudlab.cli", "image", "build", "debian"], capture_output=True, text=True, timeout=120
    )
    print(f"[debian] cached 'cloudlab image build debian' took {time.monotonic() - started:.2f} s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cloudlab-debian up to date: {image.kernel} + {image.ramdisk} + {image.disk}"


def test_inputs_hash_follows_the_guest_files(
    image: BuiltImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packages = [apt.Package(n, v, "amd64", "") for n, v in image.manifest["packages"].items()]
    reference = debian._inputs_hash(packages)
    copy = tmp_path / "debian-guest"
    shutil.copytree(GUEST_DIR, copy, symlinks=True)
    monkeypatch.setattr(debian, "GUEST_DIR", copy)
    assert debian._inputs_hash(packages) == reference, "an identical copy must hash the same"
    config = copy / "rootfs/etc/cloud/cloud.cfg.d/90_cloudlab.cfg"
    config.write_text(config.read_text() + "\n# changed\n")
    assert debian._inputs_hash(packages) != reference
    assert debian._inputs_hash(packages[1:]) != debian._inputs_hash(packages), "package versions are inputs"


def test_manifest_describes_inputs_and_outputs(image: BuiltImage) -> None:
    manifest = image.manifest
    assert json.loads((image.directory / "manifest.json").read_text()) == manifest
    assert manifest["image_name"] == "cloudlab-debian"
    for name in debian.PACKAGES:
        assert name in manifest["packages"], name
    assert "initramfs-tools" not in manifest["packages"]
    assert manifest["kernel_release"].endswith("-cloud-amd64")
    assert f"linux-image-{manifest['kernel_release']}" in manifest["packages"]
    assert "root=/dev/vda" in manifest["kernel_cmdline"] and manifest["kernel_cmdline"] == image.kernel_cmdline
    assert manifest["root_device"] == "/dev/vda"
    for name, info in manifest["outputs"].items():
        path = image.directory / name
        assert path.stat().st_size == info["size"], name
        with path.open("rb") as handle:
            assert hashlib.file_digest(handle, "sha256").hexdigest() == info["sha256"], name


def test_disk_is_a_qcow2_that_an_overlay_can_back(image: BuiltImage, tmp_path: Path) -> None:
    assert image.disk is not None and image.disk.name == "disk.qcow2"
    info = qemu_img_info(image.disk)
    assert info["format"] == "qcow2" and info["virtual-size"] == debian.DISK_SIZE_MB * 2**20
    overlay = tmp_path / "root.qcow2"
    create = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk), "-F", "qcow2", str(overlay), "8G"]
    subprocess.run(create, check=True)
    info = qemu_img_info(overlay)
    assert info["backing-filename"] == str(image.disk) and info["virtual-size"] == 8 * 2**30
    assert overlay.stat().st_size < 2**20, "an overlay starts empty: the image is shared, never copied"


def test_initrd_is_tiny_initramfs_with_the_virtio_drivers(image: BuiltImage) -> None:
    data = gzip.decompress(image.ramdisk.read_bytes())
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True).stdout.decode()
    names = set(listing.split())
    assert {"init", "virtio_pci.ko", "virtio_blk.ko", "virtio_net.ko", "virtio_console.ko"} <= names
    assert image.ramdisk.stat().st_size < 2**20, "the initrd grew past 1 MiB: is initramfs-tools back?"


# --------------------------------------------------------------------------------------------------
# what is inside the disk


def test_guest_configuration_is_in_the_disk(image: BuiltImage, root_fs: Path) -> None:
    for path in (GUEST_DIR / "rootfs").rglob("*"):
        if path.is_file():
            inside = "/" + path.relative_to(GUEST_DIR / "rootfs").as_posix()
            assert read_file(root_fs, inside) == path.read_bytes(), inside
    wants = debugfs(root_fs, "ls -l /etc/systemd/system/sysinit.target.wants")
    assert "cloudlab-identity.service" in wants
    wants = debugfs(root_fs, "ls -l /etc/systemd/system/multi-user.target.wants")
    assert "cloudlab-boot-marker.service" in wants and "systemd-networkd.service" in wants
    assert "apt-daily.timer" not in debugfs(root_fs, "ls -l /etc/systemd/system/timers.target.wants")


def test_no_per_instance_secret_ships_in_the_image(root_fs: Path) -> None:
    assert "ssh_host_" not in debugfs(root_fs, "ls -l /etc/ssh")
    assert read_file(root_fs, "/etc/machine-id") == b""
    assert "random-seed" not in debugfs(root_fs, "ls -l /var/lib/systemd")
    assert read_file(root_fs, "/etc/hostname") == b"localhost\n"
    assert b"nameserver" not in read_file(root_fs, "/etc/resolv.conf"), "the build host's resolver leaked in"
    assert "cloud" not in debugfs(root_fs, "ls -l /var/lib"), "cloud-init must not have run in the image"


def test_cloud_init_is_debians_own_unmodified(image: BuiltImage, root_fs: Path) -> None:
    """Every file of the cloud-init package in the disk equals the one in Debian's .deb."""
    version = image.manifest["packages"]["cloud-init"]
    deb = default_cache_dir() / "debs" / apt.Package("cloud-init", version, "all", "").deb_name
    assert deb.is_file(), f"{deb} is not in the cache"
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    compared = 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            path = member.name.removeprefix(".")
            if not member.isfile() or path.startswith(("/usr/share/doc", "/usr/share/man")):
                continue
            expected = tar.extractfile(member).read()  # type: ignore[union-attr]
            assert read_file(root_fs, path) == expected, path
            compared += 1
    assert compared > 100


def test_documentation_is_left_out_but_copyright_kept(root_fs: Path) -> None:
    assert exists(root_fs, "/usr/share/doc/cloud-init/copyright")
    assert exists(root_fs, "/usr/bin/cloud-init")
    assert not exists(root_fs, "/usr/share/doc/cloud-init/changelog.Debian.gz")
    assert not exists(root_fs, "/usr/share/man/man1/cloud-init.1.gz")


def test_missing_tool_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(debian.shutil, "which", lambda tool: None if tool == "mmdebstrap" else real_which(tool))
    with pytest.raises(ImageBuildError, match="apt-get install mmdebstrap") as info:
        build_debian_image(tmp_path)
    assert "\n" not in str(info.value)
