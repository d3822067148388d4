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
binary lists, :data:`BUILDER_VERSION` and this file's own digest. Resolving versions costs a few
``apt-cache`` runs (about a second each on a host without apt's binary cache), so the resolution
itself is memoised against a fingerprint of apt's state; an up-to-date image is then found in
milliseconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from cloudlab.files import write_atomic
from cloudlab.guest import DEFAULT_KERNEL_CMDLINE

#: Bump whenever the builder's logic changes the image it produces; part of the inputs hash (with
#: this file's own digest, so an edit that forgets the bump still rebuilds).
BUILDER_VERSION = "1"

#: The kernel command line the default image is meant to boot with (libvirt's ``<cmdline>``).

#: The metapackage whose dependency names the current cloud kernel package.
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
#: Userland packages whose programs go into the image (their library dependencies follow).
USERLAND_PACKAGES = ("busybox-static", "iperf3", "libiperf0", "dropbear-bin")
#: Programs copied from the extracted packages (paths inside the packages = paths in the guest).
GUEST_PROGRAMS = (
    "bin/busybox",
    "usr/bin/iperf3",
    "usr/sbin/dropbear",
    "usr/bin/dropbearkey",
    "usr/bin/dbclient",
)
#: Kernel modules the guest loads at boot (with their dependencies), unless built into the kernel:
#: virtio PCI transport, NIC, disk, console and entropy source; ``button`` turns the ACPI power
#: button into an input event and ``evdev`` exposes it as /dev/input/event*, where acpid reads it.
GUEST_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "virtio_console", "virtio_rng", "button", "evdev")

INIT_SCRIPT = Path(__file__).with_name("init.sh")
MULTIARCH = "x86_64-linux-gnu"
_LIBRARY_DIRS = (f"lib/{MULTIARCH}", f"usr/lib/{MULTIARCH}", "lib", "usr/lib", "lib64")
_LIBRARY_PACKAGE = re.compile(r"^(lib|zlib)[a-z0-9.+-]*$")
_REQUIRED_TOOLS = {"apt-cache": "apt", "apt-get": "apt", "dpkg-deb": "dpkg"}


class ImageBuildError(RuntimeError):
    """The image cannot be built; the message is one line and says how to fix it."""


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    """A finished image in the cache. ``rebuilt`` is False when an up-to-date one was found."""

    kernel: Path
    ramdisk: Path
    manifest: dict
    rebuilt: bool
    directory: Path


@dataclasses.dataclass(frozen=True)
class _Package:
    name: str
    version: str
    architecture: str
    sha256: str

    @property
    def deb_name(self) -> str:
        """The file name ``apt-get download`` gives this package (an epoch's ':' is quoted)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


# --------------------------------------------------------------------------------------------------
# public entry point


def default_cache_dir() -> Path:
    """``$CLOUDLAB_CACHE`` or ``~/.cache/cloudlab``: shared by images, downloaded debs, probes."""
    env = os.environ.get("CLOUDLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cloudlab"


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
    if not force and (found := _finished_image(target, inputs_hash)) is not None:
        return found

    images.mkdir(parents=True, exist_ok=True)
    with _locked(images / ".default.lock"):
        if not force and (found := _finished_image(target, inputs_hash)) is not None:
            return found  # another process built it while we waited for the lock
        for stale in images.glob(".default.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build; we hold the lock
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=".default.", suffix=".tmp", dir=images))
        try:
            manifest = _build(work, cache / "debs", packages, kernel_release, inputs_hash, say)
            manifest["build_seconds"] = round(time.monotonic() - started, 2)
            (work / "out" / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            _replace_dir(work / "out", target)
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


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = 600) -> str:
    try:
        done = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_c_locale(), check=False
        )
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{argv[0]} not found; install it with apt-get") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"{' '.join(argv[:3])} ... timed out after {timeout:.0f} s") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ImageBuildError(f"{' '.join(argv[:3])} ... failed: {last}")
    return done.stdout


def _c_locale() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C", "LANG": "C"}


def _apt_fingerprint() -> str:
    """A cheap digest of everything that decides apt's candidate versions.

    Package lists, sources, preferences and the dpkg status: when none of them changed since the
    last resolution, the candidates are the same and the ``apt-cache`` runs can be skipped.
    """
    digest = hashlib.sha256()
    roots = [Path("/var/lib/apt/lists"), Path("/etc/apt"), Path("/var/lib/dpkg/status")]
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            with contextlib.suppress(OSError):
                st = path.stat()
                digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _resolve_packages(cache: Path, say: Callable[[str], None]) -> tuple[list[_Package], str]:
    """Resolve the image's packages to exact versions; memoised in ``<cache>/images/resolved.json``."""
    memo = cache / "images" / "resolved.json"
    fingerprint = _apt_fingerprint()
    roots = [KERNEL_METAPACKAGE, *USERLAND_PACKAGES]
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(memo.read_text())
        if saved["fingerprint"] == fingerprint and saved["roots"] == roots:
            return [_Package(**p) for p in saved["packages"]], saved["kernel_release"]

    say("resolving package versions with apt-cache")
    try:
        kernel_package = _kernel_package()
    except ImageBuildError:
        say(f"{KERNEL_METAPACKAGE} did not resolve; running apt-get update")
        _run(["apt-get", "update"], timeout=900)
        kernel_package = _kernel_package()
    names = [kernel_package, *_library_closure(USERLAND_PACKAGES)]
    packages = _show_candidates(names)
    kernel_release = kernel_package.removeprefix("linux-image-")

    memo.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "fingerprint": fingerprint,
        "roots": roots,
        "kernel_release": kernel_release,
        "packages": [dataclasses.asdict(p) for p in packages],
    }
    _write_atomic(memo, json.dumps(record, indent=2) + "\n")
    return packages, kernel_release


def _depends(names: Iterable[str]) -> dict[str, list[str]]:
    """Map each package to its (pre-)dependencies, as ``apt-cache depends`` lists them."""
    out = _run(
        [
            "apt-cache",
            "depends",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            *names,
        ]
    )
    result: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            current = result.setdefault(line.strip(), [])
        elif current is not None and (m := re.match(r"^\s*\|?(?:Pre)?Depends:\s*([^<\s]\S*)", line)):
            current.append(m.group(1))  # <virtual> packages are skipped: their providers follow them
    return result


def _kernel_package() -> str:
    deps = _depends([KERNEL_METAPACKAGE]).get(KERNEL_METAPACKAGE, [])
    kernels = [d for d in deps if d.startswith("linux-image-") and d.endswith("-cloud-amd64")]
    if not kernels:
        raise ImageBuildError(
            f"cannot resolve {KERNEL_METAPACKAGE} to a kernel package; run apt-get update "
            "(and check that /etc/apt/sources.list has Debian's main archive)"
        )
    return kernels[0]


def _library_closure(roots: Iterable[str]) -> list[str]:
    """The root packages plus, transitively, every shared-library package (``lib*``) they depend on.

    Only library packages are followed: the image takes programs from the roots and ``.so`` files
    from the libraries; maintainer-script dependencies (debconf, adduser, ...) are irrelevant here.
    """
    seen: list[str] = []
    frontier = list(dict.fromkeys(roots))
    while frontier:
        deps = _depends(frontier)
        missing = [name for name in frontier if name not in deps]
        if missing:
            raise ImageBuildError(
                f"package {missing[0]} is unknown to apt; run apt-get update (or apt-get install {missing[0]})"
            )
        seen.extend(frontier)
        frontier = sorted({d for ds in deps.values() for d in ds if _LIBRARY_PACKAGE.match(d) and d not in seen})
    return seen


def _show_candidates(names: list[str]) -> list[_Package]:
    """Candidate version, architecture and sha256 of each package (what ``apt-get download`` fetches)."""
    out = _run(["apt-cache", "show", "--no-all-versions", *names])
    found: dict[str, _Package] = {}
    for stanza in out.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+): ?(.*)$", stanza, flags=re.M))
        if "Package" in fields and fields["Package"] not in found:
            found[fields["Package"]] = _Package(
                fields["Package"], fields["Version"], fields.get("Architecture", "amd64"), fields.get("SHA256", "")
            )
    for name in names:
        if name not in found:
            raise ImageBuildError(f"package {name} has no installable candidate; run apt-get update")
    return [found[name] for name in names]


def _inputs_hash(packages: list[_Package], kernel_release: str) -> str:
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
        "builder_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "programs": list(GUEST_PROGRAMS),
        "modules": list(GUEST_MODULES),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _finished_image(target: Path, inputs_hash: str | None) -> BuiltImage | None:
    """The cached image if it is complete and was built from the same inputs, else None.

    ``inputs_hash=None`` accepts any complete image (starting the cloud must not ask apt).
    """
    try:
        manifest = json.loads((target / "manifest.json").read_text())
        if inputs_hash is not None and manifest.get("inputs_hash") != inputs_hash:
            return None
        for name, info in manifest["outputs"].items():
            if (target / name).stat().st_size != info["size"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return BuiltImage(target / "vmlinuz", target / "initrd.img", manifest, False, target)


# --------------------------------------------------------------------------------------------------
# the build itself


def _build(
    work: Path,
    debs_dir: Path,
    packages: list[_Package],
    kernel_release: str,
    inputs_hash: str,
    say: Callable[[str], None],
) -> dict:
    debs = _fetch_debs(packages, debs_dir, say)
    kernel_package = f"linux-image-{kernel_release}"
    kernel_tree = work / "kernel"
    user_tree = work / "userland"
    say(f"extracting {len(debs)} packages")
    for package, deb in debs.items():
        _run(["dpkg-deb", "-x", str(deb), str(kernel_tree if package == kernel_package else user_tree)])

    vmlinuz = kernel_tree / "boot" / f"vmlinuz-{kernel_release}"
    if not vmlinuz.is_file():
        raise ImageBuildError(f"{kernel_package} has no boot/vmlinuz-{kernel_release}; report this builder bug")

    initramfs = _Cpio()
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
        "outputs": {name: _file_info(out / name) for name in ("vmlinuz", "initrd.img")},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _fetch_debs(packages: list[_Package], debs_dir: Path, say: Callable[[str], None]) -> dict[str, Path]:
    """Download the exact package versions into ``debs_dir`` (kept as a cache), verifying sha256."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: debs_dir / p.deb_name for p in packages}
    missing = [p for p in packages if not _deb_ok(wanted[p.name], p.sha256)]
    if missing:
        say(f"downloading {len(missing)} packages with apt-get download")
        with tempfile.TemporaryDirectory(prefix=".download.", dir=debs_dir) as tmp:
            # As root apt drops to the _apt user for downloads, which cannot write our directory.
            _run(
                [
                    "apt-get",
                    "download",
                    "-q",
                    "-o",
                    "APT::Sandbox::User=root",
                    *(f"{p.name}={p.version}" for p in missing),
                ],
                cwd=Path(tmp),
            )
            for p in missing:
                got = Path(tmp) / p.deb_name
                if not got.is_file():
                    raise ImageBuildError(f"apt-get download did not produce {p.deb_name}; run apt-get update")
                os.replace(got, wanted[p.name])
        for p in missing:
            if not _deb_ok(wanted[p.name], p.sha256):
                raise ImageBuildError(f"{p.deb_name} does not match apt's sha256; run apt-get update and retry")
    return wanted


def _deb_ok(path: Path, sha256: str) -> bool:
    if not path.is_file():
        return False
    return not sha256 or _sha256(path) == sha256


def _add_etc(cpio: _Cpio) -> None:
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


def _add_programs(cpio: _Cpio, tree: Path) -> list[str]:
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
        elf = _Elf(pending.pop().read_bytes())
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


def _add_busybox_links(cpio: _Cpio, busybox: Path) -> None:
    """Symlink every busybox applet at build time, so /init needs no ``busybox --install`` at boot."""
    listing = _run([str(busybox), "--list-full"])  # a static binary: runs on any x86-64 host
    for applet in listing.split():
        if applet in ("linuxrc", "bin/busybox") or cpio.has(applet):
            continue
        cpio.add_symlink(applet, "/bin/busybox")


def _add_modules(cpio: _Cpio, modules_dir: Path) -> list[str]:
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
        deps_of[name] = _Elf(available[name].read_bytes()).module_depends()
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


# --------------------------------------------------------------------------------------------------
# small file-format helpers: ELF (needed libraries, interpreter, module info) and newc cpio


class _Elf:
    """Just enough of ELF64 little-endian to read DT_NEEDED, PT_INTERP and ``.modinfo``."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ImageBuildError("not an ELF64 little-endian file in the extracted packages; report this bug")
        self.data = data
        (_, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, shstrndx) = struct.unpack_from(
            "<16sHHIQQQIHHHHHH", data, 0
        )
        self.sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        self.interpreter = ""
        for i in range(phnum):
            p_type, _, p_offset, _, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
            if p_type == 3:  # PT_INTERP
                self.interpreter = data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
        self._shstr = self.sections[shstrndx] if shnum else None

    def _string(self, section: tuple, offset: int) -> str:
        start = section[4] + offset
        return self.data[start : self.data.index(b"\0", start)].decode()

    def _section_named(self, name: str) -> tuple | None:
        if self._shstr is None:
            return None
        for section in self.sections:
            if self._string(self._shstr, section[0]) == name:
                return section
        return None

    def needed(self) -> list[str]:
        """Sonames from the dynamic section (empty for static programs)."""
        result = []
        for section in self.sections:
            if section[1] != 6:  # SHT_DYNAMIC
                continue
            strtab = self.sections[section[6]]
            for off in range(section[4], section[4] + section[5], 16):
                tag, value = struct.unpack_from("<qQ", self.data, off)
                if tag == 0:
                    break
                if tag == 1:  # DT_NEEDED
                    result.append(self._string(strtab, value))
        return result

    def module_depends(self) -> list[str]:
        """The ``depends=`` entry of a kernel module's ``.modinfo`` section."""
        section = self._section_named(".modinfo")
        if section is None:
            return []
        for entry in self.data[section[4] : section[4] + section[5]].split(b"\0"):
            if entry.startswith(b"depends="):
                return [d.replace("-", "_") for d in entry[8:].decode().split(",") if d]
        return []


class _Cpio:
    """An in-memory newc archive: deterministic (fixed times, root owner) and needs no root to make
    device nodes, which is why the builder does not stage a directory tree for the ``cpio`` tool."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, bytes, int, int]] = {}  # path -> (mode, data, rmajor, rminor)

    def has(self, path: str) -> bool:
        return path.strip("/") in self._entries

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            self._entries.setdefault(parent, (stat.S_IFDIR | 0o755, b"", 0, 0))

    def _put(self, path: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        path = path.strip("/")
        self._parents(path)
        self._entries[path] = (mode, data, *rdev)

    def add_dir(self, path: str, perm: int = 0o755) -> None:
        self._put(path, stat.S_IFDIR | perm)

    def add_file(self, path: str, data: bytes, perm: int) -> None:
        self._put(path, stat.S_IFREG | perm, data)

    def add_symlink(self, path: str, target: str) -> None:
        self._put(path, stat.S_IFLNK | 0o777, target.encode())

    def add_device(self, path: str, mode: int, major: int, minor: int) -> None:
        self._put(path, mode, b"", (major, minor))

    def pack(self) -> bytes:
        """Serialise with parents before children, ending with the TRAILER!!! record."""
        out = io.BytesIO()
        for ino, (path, (mode, data, rmajor, rminor)) in enumerate(sorted(self._entries.items()), start=1):
            nlink = 2 if stat.S_ISDIR(mode) else 1
            _cpio_record(out, path, ino, mode, nlink, data, rmajor, rminor)
        _cpio_record(out, "TRAILER!!!", 0, 0, 1, b"", 0, 0)
        return out.getvalue()


def _cpio_record(
    out: io.BytesIO, name: str, ino: int, mode: int, nlink: int, data: bytes, rmaj: int, rmin: int
) -> None:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmaj, rmin, len(encoded), 0)
    out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
    out.write(b"\0" * (-(110 + len(encoded)) % 4))
    out.write(data)
    out.write(b"\0" * (-len(data) % 4))


# --------------------------------------------------------------------------------------------------
# filesystem helpers


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _file_info(path: Path) -> dict:
    return {"sha256": _sha256(path), "size": path.stat().st_size}


def _write_atomic(path: Path, text: str) -> None:
    write_atomic(path, text)


def _replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``. Each step is a rename, so a crash leaves either no image or a whole
    one (never a mixed one); a missing image is simply rebuilt by the next call."""
    old = target.with_name(f".{target.name}.old.{os.getpid()}.tmp")
    if target.exists():
        os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
