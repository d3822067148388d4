"""Build ``cloudlab-debian``: a real Debian 12 with systemd, sshd, python3 and Debian's own cloud-init.

The image is made by ``mmdebstrap`` from Debian's packages only and packed for direct kernel boot,
like an EC2 aki + ari + root volume:

* ``vmlinuz``, ``initrd.img`` -- the cloud kernel and the initrd Debian's tiny-initramfs made for
  it inside the root (the virtio drivers and a static init, see ``debian-guest/early``), copied out;
* ``disk.qcow2`` -- the root file system: ext4 made by ``mke2fs -d`` straight from the tree (no
  loop device, no root mount), converted to qcow2. An instance boots a copy-on-write overlay of it
  (``qemu-img create -f qcow2 -b disk.qcow2 -F qcow2``), never the image itself;
* ``manifest.json`` -- inputs hash, the packages actually installed, the kernel command line, the
  root device and what the node needs to boot it, and each output's sha256.

What cloudlab changes in the stock Debian root is configuration only, in ``debian-guest/``
(``customize.sh`` says what and why): cloud-init told to use its EC2 datasource with cloudlab's
metadata service, ``cloudlab-identity.service`` (the instance's name and address, before the
network starts), ``cloudlab-boot-marker.service`` (the console line the cloud waits for), a small
initrd, no per-instance secrets in the image. Every program comes from a Debian package, unchanged.

Booting it (what a node does; ``cloudlab.bench.handboot`` does exactly this by hand): direct kernel
boot of ``vmlinuz`` + ``initrd.img`` with :data:`KERNEL_CMDLINE` plus the node's
``cloudlab.hostname=ID cloudlab.ip=ADDR/PREFIX,GATEWAY``; the instance's own qcow2 overlay of
``disk.qcow2`` as the FIRST virtio-blk disk (vda), writable; one virtio NIC; a virtio RNG; the
serial console to the console log; at least :data:`MIN_MEMORY_MB`. No SMBIOS data, no DHCP and no
config drive are needed: the address comes from the command line, everything else from the
metadata service through the default route.

Caching follows the default image: the inputs hash covers the versions apt would install (an
``apt-get --simulate`` onto an empty system, memoised against apt's state), this builder's
sources and the guest files. Downloaded .debs are kept in ``<cache>/debs`` and handed to
mmdebstrap, so a rebuild downloads only what changed. mmdebstrap runs in a private mount
namespace (``unshare --mount``): its /proc, /sys and /dev mounts in the new root cannot outlive it,
even when the build is killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cloudlab.files import write_atomic
from cloudlab.guest import (
    BOOT_MARKER,
    CLOUD_INIT_DONE_MARKER,
    DEBIAN_IMAGE_NAME,
    DEFAULT_KERNEL_CMDLINE,
    LAUNCH_MARKER,
)
from cloudlab.images import apt
from cloudlab.images.apt import ImageBuildError, Package
from cloudlab.images.cached import BuiltImage, default_cache_dir, file_info, finished_image, locked, replace_dir

#: Bump whenever the builder's logic changes the image it produces (its sources are hashed too).
BUILDER_VERSION = "1"
IMAGE_NAME = DEBIAN_IMAGE_NAME
CACHE_NAME = "debian"
SUITE = "bookworm"
#: mmdebstrap's "apt" variant: the Essential:yes set plus apt; everything else is named here.
VARIANT = "apt"
PACKAGES = (
    "linux-image-cloud-amd64",
    "tiny-initramfs",  # the kernel's initrd (debian-guest/early), instead of initramfs-tools
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "iproute2",
    "netbase",
    "procps",
    "sudo",
    "ca-certificates",
    "openssh-server",
    "python3",
    "python3-pip",
    "python3-venv",
    "iperf3",
    "fio",
    "e2fsprogs",
    "cloud-init",
)
#: Documentation and translations stay out (the copyright files stay in): ~90 MB less to pack,
#: store and copy. dpkg keeps the rule, so packages installed later in an instance follow it too.
DPKG_PATH_RULES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
#: The disk's size as the guest sees it. The root holds ~0.5 GB; the rest is room to pip install
#: and keep data. A node may make an instance's overlay larger: cloud-init's resizefs grows ext4.
DISK_SIZE_MB = 2048
DISK_FORMAT = "qcow2"
ROOT_DEVICE = "/dev/vda"
#: The kernel command line this image boots with; the node appends cloudlab.hostname= and
#: cloudlab.ip= (read by cloudlab-identity.service). The default image's console and TCG tuning
#: (cloudlab.guest.DEFAULT_KERNEL_CMDLINE), plus root=/dev/vda rw: the instance's own disk is always
#: the first virtio disk, mounted read-write by the initrd (no remount round trip under TCG).
KERNEL_CMDLINE = f"{DEFAULT_KERNEL_CMDLINE} root={ROOT_DEVICE} rw"
#: Memory a node should give it at least. Measured under TCG: systemd, cloud-init's four Python
#: stages and sshd boot to "cloud-init done" in 128 MiB too (no swap, no OOM); 256 MiB (t2.micro)
#: leaves room for a workload and pip. The by-hand benchmark uses 512 MiB.
MIN_MEMORY_MB = 256

GUEST_DIR = Path(__file__).with_name("debian-guest")
_REQUIRED_TOOLS = {
    "mmdebstrap": "mmdebstrap",
    "mke2fs": "e2fsprogs",
    "qemu-img": "qemu-utils",
    "apt-get": "apt",
    "unshare": "util-linux",
}


def build_debian_image(
    cache_dir: Path | None = None,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> BuiltImage:
    """Return the Debian image, building it first if none with the current inputs exists.

    Like the default image: ``<cache_dir>/images/debian/``, built in a temporary folder beside it
    and renamed into place, concurrent callers serialised on a lock file.
    """
    say = progress or (lambda _msg: None)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    images = cache / "images"
    target = images / CACHE_NAME
    _check_tools()

    packages = _resolve(cache, say)
    inputs_hash = _inputs_hash(packages)
    if not force and (found := finished_image(target, inputs_hash)) is not None:
        return found

    images.mkdir(parents=True, exist_ok=True)
    with locked(images / f".{CACHE_NAME}.lock"):
        if not force and (found := finished_image(target, inputs_hash)) is not None:
            return found  # another process built it while we waited for the lock
        for stale in images.glob(f".{CACHE_NAME}.*.tmp"):
            _remove_tree(stale)  # left by a killed build; we hold the lock
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}.", suffix=".tmp", dir=images))
        try:
            manifest = _build(work, cache / "debs", packages, inputs_hash, say)
            manifest["build_seconds"] = round(time.monotonic() - started, 1)
            write_atomic(work / "out" / "manifest.json", json.dumps(manifest, indent=2) + "\n")
            replace_dir(work / "out", target)
        except BaseException as exc:
            try:
                _remove_tree(work)
            except ImageBuildError as cleanup:  # never hide why the build failed
                exc.add_note(str(cleanup))
            raise
        _remove_tree(work)
    say(f"{IMAGE_NAME} ready in {target} ({manifest['build_seconds']} s)")
    built = finished_image(target, inputs_hash)
    if built is None:
        raise ImageBuildError(f"the image in {target} vanished right after its build; run the build again")
    return dataclasses.replace(built, rebuilt=True)


# --------------------------------------------------------------------------------------------------
# inputs


def _check_tools() -> None:
    for tool, package in _REQUIRED_TOOLS.items():
        if shutil.which(tool) is None:
            raise ImageBuildError(f"{tool} not found: the Debian image needs it; apt-get install {package}")


def _selection() -> list[str]:
    # mmdebstrap installs no Recommends (as debootstrap); the simulation leaves them out too.
    return ["?essential", "apt", *PACKAGES]


def _resolve(cache: Path, say: Callable[[str], None]) -> list[Package]:
    """The packages mmdebstrap will install, with versions; memoised against apt's state."""
    memo = cache / "images" / f"{CACHE_NAME}-resolved.json"
    fingerprint = apt.fingerprint()
    selection = _selection()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(memo.read_text())
        if saved["fingerprint"] == fingerprint and saved["selection"] == selection:
            return [Package(**p) for p in saved["packages"]]
    say("resolving the Debian image's packages with apt-get --simulate")
    try:
        packages = apt.simulate_install(selection)
    except ImageBuildError:
        say("the package selection did not resolve; running apt-get update")
        apt.run(["apt-get", "update"], timeout=900)
        packages = apt.simulate_install(selection)
    missing = [name for name in PACKAGES if name not in {p.name for p in packages}]
    if missing:
        raise ImageBuildError(f"apt would not install {missing[0]} for the Debian image; run apt-get update")
    memo.parent.mkdir(parents=True, exist_ok=True)
    record = {"fingerprint": fingerprint, "selection": selection, "packages": [dataclasses.asdict(p) for p in packages]}
    write_atomic(memo, json.dumps(record, indent=2) + "\n")
    return packages


def _guest_files() -> list[tuple[str, bytes, int]]:
    """(relative path, contents, mode) of every file in debian-guest/, sorted: part of the inputs."""
    if not GUEST_DIR.is_dir():
        raise ImageBuildError(f"{GUEST_DIR} is missing; reinstall cloudlab")
    files = []
    for path in sorted(p for p in GUEST_DIR.rglob("*") if p.is_file()):
        files.append((path.relative_to(GUEST_DIR).as_posix(), path.read_bytes(), path.stat().st_mode & 0o777))
    return files


def _inputs_hash(packages: list[Package]) -> str:
    """Digest of everything the image is made from: versions, guest files, this builder, settings."""
    digest = hashlib.sha256()
    for name, data, mode in _guest_files():
        digest.update(f"{name}\0{mode:o}\0".encode() + hashlib.sha256(data).digest())
    doc = {
        "builder_version": BUILDER_VERSION,
        "builder_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "guest_sha256": digest.hexdigest(),
        "packages": sorted(f"{p.name}={p.version}" for p in packages),
        "suite": SUITE,
        "variant": VARIANT,
        "dpkg_rules": list(DPKG_PATH_RULES),
        "disk": [DISK_SIZE_MB, DISK_FORMAT],
        "kernel_cmdline": KERNEL_CMDLINE,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# the build itself


def _build(work: Path, debs_dir: Path, packages: list[Package], inputs_hash: str, say: Callable[[str], None]) -> dict:
    timings: dict[str, float] = {}
    root, out = work / "root", work / "out"
    archives_in, archives_out = work / "archives-in", work / "archives-out"
    out.mkdir()
    archives_out.mkdir()
    cached = _stage_debs(packages, debs_dir, archives_in)

    say(f"installing {len(packages)} packages with mmdebstrap ({cached} from the cache)")
    started = time.monotonic()
    apt.run(_mmdebstrap_argv(root, archives_in, archives_out), timeout=3600)
    timings["mmdebstrap_s"] = round(time.monotonic() - started, 1)
    _keep_debs(archives_out, debs_dir)

    installed = _installed_packages(root)
    kernel_release = _kernel_release(root)
    for name, source in (("vmlinuz", f"vmlinuz-{kernel_release}"), ("initrd.img", f"initrd.img-{kernel_release}")):
        if not (root / "boot" / source).is_file():
            raise ImageBuildError(f"the Debian root has no /boot/{source}; report this builder bug")
        shutil.copyfile(root / "boot" / source, out / name)
    root_bytes = _tree_bytes(root)

    say("making the ext4 root file system with mke2fs -d")
    started = time.monotonic()
    raw = work / "disk.raw"
    apt.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-m", "1", "-E", "root_owner=0:0", "-d", str(root), str(raw)]
        + [f"{DISK_SIZE_MB}M"],
        timeout=900,
    )
    timings["mke2fs_s"] = round(time.monotonic() - started, 1)
    say(f"converting the disk to {DISK_FORMAT}")
    started = time.monotonic()
    disk = out / f"disk.{DISK_FORMAT}"
    apt.run(["qemu-img", "convert", "-f", "raw", "-O", DISK_FORMAT, str(raw), str(disk)], timeout=900)
    timings["convert_s"] = round(time.monotonic() - started, 1)
    raw_allocated = raw.stat().st_blocks * 512
    raw.unlink()

    predicted = {p.name: p.version for p in packages}
    drift = sorted(n for n, v in installed.items() if predicted.get(n) not in (None, v))
    if drift:
        say(f"the archive had newer versions than apt's lists for {len(drift)} packages (run apt-get update)")
    return {
        "name": CACHE_NAME,
        "image_name": IMAGE_NAME,
        "builder_version": BUILDER_VERSION,
        "inputs_hash": inputs_hash,
        "suite": SUITE,
        "kernel_release": kernel_release,
        "kernel_cmdline": KERNEL_CMDLINE,
        "root_device": ROOT_DEVICE,
        "disk_format": DISK_FORMAT,
        "disk_virtual_bytes": DISK_SIZE_MB * 2**20,
        "min_memory_mb": MIN_MEMORY_MB,
        "boot_marker": BOOT_MARKER,
        "launch_marker": LAUNCH_MARKER,
        "cloud_init_done_marker": CLOUD_INIT_DONE_MARKER,
        "packages": installed,
        "packages_newer_than_apt_lists": drift,
        "root_tree_bytes": root_bytes,
        "raw_disk_allocated_bytes": raw_allocated,
        "timings": timings,
        "outputs": {name: file_info(out / name) for name in ("vmlinuz", "initrd.img", disk.name)},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _mmdebstrap_argv(root: Path, archives_in: Path, archives_out: Path) -> list[str]:
    """The mmdebstrap command, in a private mount namespace (its chroot mounts die with it)."""
    customize = GUEST_DIR / "customize.sh"
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "mmdebstrap",
        "--mode=root",
        f"--variant={VARIANT}",
        "--skip=essential/unlink",
        f"--include={','.join(PACKAGES)}",
        *(f"--dpkgopt={rule}" for rule in DPKG_PATH_RULES),
        # The cached .debs go in before apt runs and every .deb used comes back out (apt skips
        # downloading a file that is already in its archives folder with the right checksum).
        '--setup-hook=mkdir -p "$1/var/cache/apt/archives"',
        f"--setup-hook=sync-in {archives_in} /var/cache/apt/archives/",
        f'--essential-hook=sh {customize} essential "$1"',
        f'--customize-hook=sh {customize} customize "$1"',
        f"--customize-hook=sync-out /var/cache/apt/archives {archives_out}",
        SUITE,
        str(root),
    ]
    return argv


def _stage_debs(packages: list[Package], debs_dir: Path, staging: Path) -> int:
    """Hard-link the cached .debs of ``packages`` into ``staging`` (for sync-in); how many there were."""
    staging.mkdir(parents=True, exist_ok=True)
    found = 0
    for package in packages:
        deb = debs_dir / package.deb_name
        if deb.is_file():
            try:
                os.link(deb, staging / deb.name)
            except OSError:
                shutil.copy2(deb, staging / deb.name)
            found += 1
    return found


def _keep_debs(archives: Path, debs_dir: Path) -> None:
    """Move the .debs mmdebstrap used into the shared cache, each one by an atomic rename."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    for deb in archives.glob("*.deb"):
        target = debs_dir / deb.name
        if not target.exists():
            tmp = debs_dir / f".{deb.name}.{os.getpid()}.tmp"
            shutil.move(deb, tmp)
            os.replace(tmp, target)


def _installed_packages(root: Path) -> dict[str, str]:
    """name -> version of every package dpkg says is installed in ``root``."""
    try:
        status = (root / "var/lib/dpkg/status").read_text()
    except OSError as exc:
        raise ImageBuildError(f"mmdebstrap left no dpkg status in {root}; report this builder bug") from exc
    found = {}
    for stanza in status.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+): ?(.*)$", stanza, flags=re.M))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            found[fields["Package"]] = fields["Version"]
    return dict(sorted(found.items()))


def _kernel_release(root: Path) -> str:
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in (root / "boot").glob("vmlinuz-*-cloud-amd64"))
    if len(kernels) != 1:
        raise ImageBuildError(f"expected one cloud kernel in the Debian root, found {kernels or 'none'}")
    return kernels[0]


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _remove_tree(path: Path) -> None:
    """Delete a build folder, refusing if anything is still mounted inside it (never follow a
    mount into the host's /dev or /proc); mmdebstrap's own namespace makes that unlikely."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as mounts:
        inside = [line.split()[4] for line in mounts if line.split()[4].startswith(prefix)]
    if inside:
        raise ImageBuildError(f"{inside[0]} is still mounted inside the build folder; umount it and build again")
    shutil.rmtree(path, ignore_errors=True)
