"""Debian packages for the image builders, through the host's own apt: which versions, and the .debs.

Both images are made from Debian's packages only, resolved against the host's apt lists (the
machines this project runs on reach package registries and nothing else):

* the default image extracts a few packages and their shared libraries (:func:`library_closure`,
  :func:`show_candidates`, :func:`fetch_debs`);
* the Debian image is installed by mmdebstrap, whose package set :func:`simulate_install` predicts
  by asking apt to install the same selection onto an empty system.

Resolving costs a few seconds of ``apt-cache``/``apt-get -s``; callers memoise it against
:func:`fingerprint`, a cheap digest of apt's state, so an up-to-date image is found in milliseconds.
Every failure is an :class:`ImageBuildError` whose one-line message says what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from cloudlab.images.cached import sha256_of

#: The metapackage whose dependency names the current cloud kernel package.
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
_LIBRARY_PACKAGE = re.compile(r"^(lib|zlib)[a-z0-9.+-]*$")
_INST_LINE = re.compile(r"^Inst (\S+) \((\S+) [^\[]*\[([^\]]+)\]\)", re.M)


class ImageBuildError(RuntimeError):
    """The image cannot be built; the message is one line and says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Package:
    name: str
    version: str
    architecture: str
    sha256: str

    @property
    def deb_name(self) -> str:
        """The file name ``apt-get download`` gives this package (an epoch's ':' is quoted)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


def run(argv: list[str], *, cwd: Path | None = None, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Run a tool to completion and return its stdout; any failure is one ImageBuildError line."""
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**c_locale(), **(env or {})},
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{argv[0]} not found; install it with apt-get") from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"{' '.join(argv[:3])} ... timed out after {timeout:.0f} s") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ImageBuildError(f"{' '.join(argv[:3])} ... failed: {last}")
    return done.stdout


def c_locale() -> dict[str, str]:
    return {**os.environ, "LC_ALL": "C", "LANG": "C"}


def fingerprint() -> str:
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


def depends(names: Iterable[str]) -> dict[str, list[str]]:
    """Map each package to its (pre-)dependencies, as ``apt-cache depends`` lists them."""
    out = run(
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


def kernel_package(metapackage: str = KERNEL_METAPACKAGE) -> str:
    """The versioned kernel package (linux-image-6.1.0-NN-cloud-amd64) the metapackage points at."""
    deps = depends([metapackage]).get(metapackage, [])
    kernels = [d for d in deps if d.startswith("linux-image-") and d.endswith("-cloud-amd64")]
    if not kernels:
        raise ImageBuildError(
            f"cannot resolve {metapackage} to a kernel package; run apt-get update "
            "(and check that /etc/apt/sources.list has Debian's main archive)"
        )
    return kernels[0]


def library_closure(roots: Iterable[str]) -> list[str]:
    """The root packages plus, transitively, every shared-library package (``lib*``) they depend on.

    Only library packages are followed: the image takes programs from the roots and ``.so`` files
    from the libraries; maintainer-script dependencies (debconf, adduser, ...) are irrelevant here.
    """
    seen: list[str] = []
    frontier = list(dict.fromkeys(roots))
    while frontier:
        deps = depends(frontier)
        missing = [name for name in frontier if name not in deps]
        if missing:
            raise ImageBuildError(
                f"package {missing[0]} is unknown to apt; run apt-get update (or apt-get install {missing[0]})"
            )
        seen.extend(frontier)
        frontier = sorted({d for ds in deps.values() for d in ds if _LIBRARY_PACKAGE.match(d) and d not in seen})
    return seen


def show_candidates(names: list[str]) -> list[Package]:
    """Candidate version, architecture and sha256 of each package (what ``apt-get download`` fetches)."""
    out = run(["apt-cache", "show", "--no-all-versions", *names])
    found: dict[str, Package] = {}
    for stanza in out.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+): ?(.*)$", stanza, flags=re.M))
        if "Package" in fields and fields["Package"] not in found:
            found[fields["Package"]] = Package(
                fields["Package"], fields["Version"], fields.get("Architecture", "amd64"), fields.get("SHA256", "")
            )
    for name in names:
        if name not in found:
            raise ImageBuildError(f"package {name} has no installable candidate; run apt-get update")
    return [found[name] for name in names]


def simulate_install(selection: Iterable[str]) -> list[Package]:
    """Every package apt would install for ``selection`` onto an EMPTY system, with its version.

    This is what mmdebstrap installs for the same selection (it runs apt on an empty dpkg status
    too), so the list decides when the Debian image must be rebuilt. Recommends are left out, as
    the image builder leaves them out. The sha256 field stays empty (not needed to compare).
    """
    with tempfile.NamedTemporaryFile(prefix="cloudlab-empty-status-") as empty:
        out = run(
            [
                "apt-get",
                "--simulate",
                "--quiet",
                "-o",
                f"Dir::State::status={empty.name}",
                "-o",
                "APT::Install-Recommends=false",
                "-o",
                "Debug::NoLocking=true",
                "install",
                *selection,
            ]
        )
    packages = [Package(name, version, arch, "") for name, version, arch in _INST_LINE.findall(out)]
    if not packages:
        raise ImageBuildError("apt-get --simulate installed nothing for the Debian image; run apt-get update")
    return sorted(packages, key=lambda p: p.name)


def fetch_debs(packages: list[Package], debs_dir: Path, say: Callable[[str], None]) -> dict[str, Path]:
    """Download the exact package versions into ``debs_dir`` (kept as a cache), verifying sha256."""
    debs_dir.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: debs_dir / p.deb_name for p in packages}
    missing = [p for p in packages if not deb_ok(wanted[p.name], p.sha256)]
    if missing:
        say(f"downloading {len(missing)} packages with apt-get download")
        with tempfile.TemporaryDirectory(prefix=".download.", dir=debs_dir) as tmp:
            # As root apt drops to the _apt user for downloads, which cannot write our directory.
            run(
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
            if not deb_ok(wanted[p.name], p.sha256):
                raise ImageBuildError(f"{p.deb_name} does not match apt's sha256; run apt-get update and retry")
    return wanted


def deb_ok(path: Path, sha256: str) -> bool:
    """A downloaded .deb is usable: present and (when apt gave one) matching apt's sha256."""
    if not path.is_file():
        return False
    return not sha256 or sha256_of(path) == sha256
