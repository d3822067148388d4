"""Build cloudlab's default machine image from Debian packages, and nothing else.

The default image is a kernel plus an initramfs, like an EC2 aki + ari pair:

* ``vmlinuz``    -- Debian's cloud kernel (``linux-image-<release>-cloud-amd64``), unchanged;
* ``initrd.img`` -- a gzip'd newc cpio holding busybox, iperf3, dropbear, the shared libraries they
  need, the kernel modules for virtio devices and the ACPI power button, and ``/init`` (init.sh);
* ``manifest.json`` -- what went in (packages and versions, modules) and what came out (sha256).

Why build it from the distribution's packages: the machines this project runs on reach package
registries only, and the result is reproducible from a package list -- no blobs from elsewhere.
Why kernel + initramfs and no disk: the guest boots straight into RAM in about 3 s even under TCG,
so experiments can start many instances quickly, and no partitioning or bootloader is involved.

Packages are only *extracted* (``dpkg-deb -x``), never installed. The shared libraries a binary needs
are found by reading its ELF ``DT_NEEDED`` entries and looking them up in the extracted library
packages (the closure of the ``lib*`` dependencies), so the image does not depend on what happens to
be installed on the host. Module dependencies are read from each ``.ko``'s ``.modinfo`` section,
so ``depmod`` is not needed either.

Building is cached: the *inputs hash* covers the resolved package versions, init.sh, the module and
binary lists, :data:`BUILDER_VERSION` and the digest of this file and ``formats.py``. Resolving versions costs a few
``apt-cache`` runs (about a second each on a host without apt's binary cache), so the resolution
itself is memoised against a fingerprint of apt's state; an up-to-date image is then found in
milliseconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cloudlab.files import write_atomic
from cloudlab.guest import DEFAULT_KERNEL_CMDLINE
from cloudlab.images import apt
from cloudlab.images.apt import KERNEL_METAPACKAGE, ImageBuildError, Package
from cloudlab.images.cached import (
    BuiltImage,
    default_cache_dir,
    file_info,
    finished_image,
    locked,
    replace_dir,
)
from cloudlab.images.formats import Cpio, Elf

__all__ = ["DEFAULT_KERNEL_CMDLINE", "BuiltImage", "ImageBuildError", "build_default_image", "default_cache_dir"]

#: Bump whenever the builder's logic changes the image it produces; part of the inputs hash (with
#: this file's own digest, so an edit that forgets the bump still rebuilds).
BUILDER_VERSION = "1"

#: The kernel command line the default image is meant to boot with (libvirt's ``<cmdline>``).

#: Userland packages whose programs go into the image (their library dependencies follow).
#: perl-base: one ioctl busybox cannot make (RNDRESEEDCRNG, the kernel's generator reseeded at once from
#: its pool), which a guest restored from a booted template needs (see cloudlab/nc/templates.py).
USERLAND_PACKAGES = ("busybox-static", "iperf3", "libiperf0", "dropbear-bin", "perl-base")
#: Programs copied from the extracted packages (paths inside the packages = paths in the guest).
GUEST_PROGRAMS = (
    "bin/busybox",
    "usr/bin/iperf3",
    "usr/sbin/dropbear",
    "usr/bin/dropbearkey",
    "usr/bin/dbclient",
    "usr/bin/perl",
)
#: Kernel modules the guest loads at boot (with their dependencies), unless built into the kernel:
#: virtio PCI transport, NIC, disk, console and entropy source; ``button`` turns the ACPI power
#: button into an input event and ``evdev`` exposes it as /dev/input/event*, where acpid reads it.
GUEST_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_console", "virtio_rng", "button", "evdev")

INIT_SCRIPT = Path(__file__).with_name("init.sh")
MULTIARCH = "x86_64-linux-gnu"
_LIBRARY_DIRS = (f"lib/{MULTIARCH}", f"usr/lib/{MULTIARCH}", "lib", "usr/lib", "lib64")
_REQUIRED_TOOLS = {"apt-cache": "apt", "apt-get": "apt", "dpkg-deb": "dpkg"}
#: The sources whose digest is part of the inputs hash: what packs the image (not what resolves it).
_BUILDER_SOURCES = (Path(__file__), Path(__file__).with_name("formats.py"))


# --------------------------------------------------------------------------------------------------
# public entry point


def build_default_image(
    cache_dir: Path | None = None,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> BuiltImage:
    """Return the default image, building it first if none with the current inputs exists.

    The image lives in ``<cache_dir>/images/default/``. A build happens in a temporary directory
    that is renamed into place at the end, so an interrupted build never leaves a half image, and
    concurrent callers serialise on a lock file (the second finds the first one's result).
    """
    say = progress or (lambda _msg: None)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    images = cache / "images"
    target = images / "default"
    _check_tools()

    packages, kernel_release = _resolve_packages(cache, say)
    inputs_hash = _inputs_hash(packages, kernel_release)
    if not force and (found := finished_image(target, inputs_hash)) is not None:
        return found

    images.mkdir(parents=True, exist_ok=True)
    with locked(images / ".default.lock"):
        if not force and (found := finished_image(target, inputs_hash)) is not None:
            return found  # another process built it while we waited for the lock
        for stale in images.glob(".default.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build; we hold the lock
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=".default.", suffix=".tmp", dir=images))
        try:
            manifest = _build(work, cache / "debs", packages, kernel_release, inputs_hash, say)
            manifest["build_seconds"] = round(time.monotonic() - started, 2)
            (work / "out" / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            replace_dir(work / "out", target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    say(f"image ready in {target} ({manifest['build_seconds']} s)")
    return BuiltImage(target / "vmlinuz", target / "initrd.img", manifest, True, target)


# --------------------------------------------------------------------------------------------------
# resolution: which package versions go in (cheap; memoised against apt's state)


def _check_tools() -> None:
    for tool, package in _REQUIRED_TOOLS.items():
        if shutil.which(tool) is None:
            raise ImageBuildError(f"{tool} not found: this builder needs Debian's apt; apt-get install {package}")


def _resolve_packages(cache: Path, say: Callable[[str], None]) -> tuple[list[Package], str]:
    """Resolve the image's packages to exact versions; memoised in ``<cache>/images/resolved.json``."""
    memo = cache / "images" / "resolved.json"
    fingerprint = apt.fingerprint()
    roots = [KERNEL_METAPACKAGE, *USERLAND_PACKAGES]
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(memo.read_text())
        if saved["fingerprint"] == fingerprint and saved["roots"] == roots:
            return [Package(**p) for p in saved["packages"]], saved["kernel_release"]

    say("resolving package versions with apt-cache")
    try:
        kernel_package = apt.kernel_package()
    except ImageBuildError:
        say(f"{KERNEL_METAPACKAGE} did not resolve; running apt-get update")
        apt.run(["apt-get", "update"], timeout=900)
        kernel_package = apt.kernel_package()
    names = [kernel_package, *apt.library_closure(USERLAND_PACKAGES)]
    packages = apt.show_candidates(names)
    kernel_release = kernel_package.removeprefix("linux-image-")

    memo.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "fingerprint": fingerprint,
        "roots": roots,
        "kernel_release": kernel_release,
        "packages": [dataclasses.asdict(p) for p in packages],
    }
    write_atomic(memo, json.dumps(record, indent=2) + "\n")
    return packages, kernel_release


def _inputs_hash(packages: list[Package], kernel_release: str) -> str:
    """Digest of everything the image is made from: versions, init.sh, lists, builder version."""
    try:
        init = INIT_SCRIPT.read_bytes()
    except OSError as exc:
        raise ImageBuildError(f"{INIT_SCRIPT} is missing; reinstall cloudlab") from exc
    doc = {
        "builder_version": BUILDER_VERSION,
        "kernel_release": kernel_release,
        "packages": sorted(f"{p.name}={p.version}" for p in packages),
        "init_sha256": hashlib.sha256(init).hexdigest(),
        # The builder's own source too, so a change to what it packs can never be served stale.
        "builder_sha256": hashlib.sha256(b"".join(p.read_bytes() for p in _BUILDER_SOURCES)).hexdigest(),
        "programs": list(GUEST_PROGRAMS),
        "modules": list(GUEST_MODULES),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# the build itself


def _build(
    work: Path,
    debs_dir: Path,
    packages: list[Package],
    kernel_release: str,
    inputs_hash: str,
    say: Callable[[str], None],
) -> dict:
    debs = apt.fetch_debs(packages, debs_dir, say)
    kernel_package = f"linux-image-{kernel_release}"
    kernel_tree = work / "kernel"
    user_tree = work / "userland"
    say(f"extracting {len(debs)} packages")
    for package, deb in debs.items():
        apt.run(["dpkg-deb", "-x", str(deb), str(kernel_tree if package == kernel_package else user_tree)])

    vmlinuz = kernel_tree / "boot" / f"vmlinuz-{kernel_release}"
    if not vmlinuz.is_file():
        raise ImageBuildError(f"{kernel_package} has no boot/vmlinuz-{kernel_release}; report this builder bug")

    initramfs = Cpio()
    initramfs.add_file("init", INIT_SCRIPT.read_bytes(), 0o755)
    for directory in ("dev", "proc", "sys", "run", "tmp", "mnt", "var/log", "etc/dropbear", "etc/cloudlab"):
        initramfs.add_dir(directory)
    initramfs.add_dir("root", 0o700)
    initramfs.add_dir("root/.ssh", 0o700)
    initramfs.add_device("dev/console", stat.S_IFCHR | 0o600, 5, 1)  # /init's stdio before devtmpfs
    initramfs.add_device("dev/null", stat.S_IFCHR | 0o666, 1, 3)
    _add_etc(initramfs)

    say("collecting programs and libraries")
    libraries = _add_programs(initramfs, user_tree)
    _add_busybox_links(initramfs, user_tree / "bin" / "busybox")

    say("collecting kernel modules")
    modules = _add_modules(initramfs, kernel_tree / "lib" / "modules" / kernel_release)

    out = work / "out"
    out.mkdir()
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    say("packing initrd.img")
    raw = initramfs.pack()
    (out / "initrd.img").write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))

    return {
        "name": "default",
        "builder_version": BUILDER_VERSION,
        "inputs_hash": inputs_hash,
        "kernel_release": kernel_release,
        "kernel_cmdline": DEFAULT_KERNEL_CMDLINE,
        "packages": {p.name: p.version for p in packages},
        "programs": ["/" + p for p in GUEST_PROGRAMS],
        "libraries": sorted(libraries),
        "modules": modules,
        "initramfs_uncompressed_bytes": len(raw),
        "outputs": {name: file_info(out / name) for name in ("vmlinuz", "initrd.img")},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _add_etc(cpio: Cpio) -> None:
    """The few files that login, dropbear and name lookups read. Root logs in with keys only."""
    cpio.add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
    cpio.add_file("etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o600)
    cpio.add_file("etc/group", b"root:x:0:\n", 0o644)
    cpio.add_file("etc/shells", b"/bin/sh\n/bin/ash\n", 0o644)
    cpio.add_file("etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n", 0o644)
    cpio.add_file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n", 0o644)
    cpio.add_file("etc/profile", b"export PATH=/sbin:/usr/sbin:/bin:/usr/bin\nexport PS1='\\h:\\w\\$ '\n", 0o644)
    # busybox acpid: the power button's input event is named "PWRF"; run /etc/acpi/power-button.
    cpio.add_file("etc/acpid.conf", b"PWRF power-button\n", 0o644)
    cpio.add_dir("etc/acpi")
    cpio.add_file(
        "etc/acpi/power-button",
        b"#!/bin/sh\n# ACPI power button: ask PID 1 (init.sh) for its clean power-off, as `poweroff` does.\n"
        b"exec /bin/kill -USR2 1\n",
        0o755,
    )


def _add_programs(cpio: Cpio, tree: Path) -> list[str]:
    """Copy GUEST_PROGRAMS and, transitively, every library and the loader they need."""
    libraries: dict[str, Path] = {}  # soname -> real file in the extracted tree
    pending: list[Path] = []
    for program in GUEST_PROGRAMS:
        source = tree / program
        if not source.is_file():
            raise ImageBuildError(f"no {program} in the extracted packages; report this builder bug")
        cpio.add_file(program, source.read_bytes(), 0o755)
        pending.append(source)

    interpreters: set[str] = set()
    while pending:
        elf = Elf(pending.pop().read_bytes())
        if elf.interpreter:
            interpreters.add(elf.interpreter)
        for soname in elf.needed():
            if soname not in libraries:
                libraries[soname] = _find_library(tree, soname)
                pending.append(libraries[soname])

    for soname, real in libraries.items():
        cpio.add_file(f"lib/{MULTIARCH}/{soname}", real.read_bytes(), 0o755)
    for interpreter in interpreters:  # e.g. /lib64/ld-linux-x86-64.so.2
        name = Path(interpreter).name
        if name not in libraries:
            libraries[name] = _find_library(tree, name)
            cpio.add_file(f"lib/{MULTIARCH}/{name}", libraries[name].read_bytes(), 0o755)
        if interpreter.lstrip("/") != f"lib/{MULTIARCH}/{name}":
            cpio.add_symlink(interpreter.lstrip("/"), f"/lib/{MULTIARCH}/{name}")
    return list(libraries)


def _find_library(tree: Path, soname: str) -> Path:
    for directory in _LIBRARY_DIRS:
        candidate = tree / directory / soname
        if candidate.exists() or candidate.is_symlink():
            return _resolve_in_tree(tree, candidate)
    raise ImageBuildError(
        f"library {soname} is not in the extracted packages; run apt-get update, or report this builder bug"
    )


def _resolve_in_tree(tree: Path, path: Path) -> Path:
    """Follow symlinks as if ``tree`` were ``/`` (absolute link targets must not escape to the host)."""
    for _ in range(40):
        if not path.is_symlink():
            if not path.is_file():
                break
            return path
        target = os.readlink(path)
        path = tree / target.lstrip("/") if target.startswith("/") else path.parent / target
    raise ImageBuildError(f"broken library link {path.relative_to(tree)} in the extracted packages")


def _add_busybox_links(cpio: Cpio, busybox: Path) -> None:
    """Symlink every busybox applet at build time, so /init needs no ``busybox --install`` at boot."""
    listing = apt.run([str(busybox), "--list-full"])  # a static binary: runs on any x86-64 host
    for applet in listing.split():
        if applet in ("linuxrc", "bin/busybox") or cpio.has(applet):
            continue
        cpio.add_symlink(applet, "/bin/busybox")


def _add_modules(cpio: Cpio, modules_dir: Path) -> list[str]:
    """Copy GUEST_MODULES plus their dependencies; write a load order and a matching modules.dep.

    The load order goes to /etc/cloudlab/modules (one path per line, dependencies first), which
    init.sh insmods; modules.dep lets ``modprobe`` work inside the guest as well.
    """
    release = modules_dir.name
    builtin = set()
    with contextlib.suppress(OSError):
        builtin = {_module_name(line) for line in (modules_dir / "modules.builtin").read_text().split()}
    available = {_module_name(p.name): p for p in modules_dir.rglob("*.ko")}

    order: list[str] = []
    deps_of: dict[str, list[str]] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order or name in builtin:
            return
        if name in chain:
            raise ImageBuildError(f"module dependency cycle {' -> '.join(chain + (name,))}; report this bug")
        if name not in available:
            raise ImageBuildError(f"kernel {release} has no module {name}; report this builder bug")
        deps_of[name] = Elf(available[name].read_bytes()).module_depends()
        for dep in deps_of[name]:
            visit(dep, chain + (name,))
        order.append(name)

    for module in GUEST_MODULES:
        visit(module, ())

    base = f"lib/modules/{release}"
    rel = {name: available[name].relative_to(modules_dir).as_posix() for name in order}
    for name in order:
        cpio.add_file(f"{base}/{rel[name]}", available[name].read_bytes(), 0o644)
    dep_lines = [f"{rel[n]}: {' '.join(rel[d] for d in deps_of[n] if d in rel)}".rstrip() for n in order]
    cpio.add_file(f"{base}/modules.dep", ("\n".join(dep_lines) + "\n").encode(), 0o644)
    if (modules_dir / "modules.builtin").is_file():
        cpio.add_file(f"{base}/modules.builtin", (modules_dir / "modules.builtin").read_bytes(), 0o644)
    cpio.add_file("etc/cloudlab/modules", ("\n".join(rel[n] for n in order) + "\n").encode(), 0o644)
    return order


def _module_name(filename: str) -> str:
    name = filename.rsplit("/", 1)[-1]
    for suffix in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        name = name.removesuffix(suffix)
    return name.replace("-", "_")
