"""The image build cache: where finished images live, how a new one replaces an old one, and
finding the last finished one without resolving packages.

Every image (``default``, ``debian``) is a folder ``<cache>/images/<name>/`` holding its files and
a ``manifest.json`` that names its inputs hash and each output's size and sha256. A build happens in
a temporary folder beside it and is renamed into place, under a lock file, so readers only ever see
no image or a whole one.

Starting the cloud must not touch apt: it registers whatever image was built last
(``cloudlab image build`` decides whether that one is still current).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    """A finished image in the cache. ``rebuilt`` is False when an up-to-date one was found.

    ``disk`` is the image's root disk (the Debian image); the default image boots from its ramdisk.
    """

    kernel: Path
    ramdisk: Path
    manifest: dict
    rebuilt: bool
    directory: Path
    disk: Path | None = None

    @property
    def digests(self) -> dict[Path, str]:
        """Each output file's sha256 as the manifest gives it (registering a large disk need not read it)."""
        outputs = self.manifest.get("outputs", {})
        return {self.directory / n: info["sha256"] for n, info in outputs.items() if isinstance(info, dict)}

    @property
    def kernel_cmdline(self) -> str:
        """The kernel command line the image is meant to boot with (the node adds its identity)."""
        return str(self.manifest.get("kernel_cmdline", ""))


def default_cache_dir() -> Path:
    """``$CLOUDLAB_CACHE`` or ``~/.cache/cloudlab``: shared by images, downloaded debs, probes."""
    env = os.environ.get("CLOUDLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cloudlab"


def finished_image(target: Path, inputs_hash: str | None) -> BuiltImage | None:
    """The cached image in ``target`` if it is complete and was built from the same inputs, else None.

    ``inputs_hash=None`` accepts any complete image (starting the cloud must not ask apt).
    """
    try:
        manifest = json.loads((target / "manifest.json").read_text())
        if inputs_hash is not None and manifest.get("inputs_hash") != inputs_hash:
            return None
        outputs = manifest["outputs"]
        for name, info in outputs.items():
            if (target / name).stat().st_size != info["size"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    disk = next((target / name for name in outputs if name.startswith("disk.")), None)
    return BuiltImage(target / "vmlinuz", target / "initrd.img", manifest, False, target, disk)


def find_built_image(cache_dir: Path | None = None, name: str = "default") -> BuiltImage | None:
    """The last finished image called ``name`` (``default`` or ``debian``), current or not."""
    return finished_image((cache_dir or default_cache_dir()) / "images" / name, None)


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_info(path: Path) -> dict:
    return {"sha256": sha256_of(path), "size": path.stat().st_size}


def replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``. Each step is a rename, so a crash leaves either no image or a whole
    one (never a mixed one); a missing image is simply rebuilt by the next call."""
    old = target.with_name(f".{target.name}.old.{os.getpid()}.tmp")
    if target.exists():
        os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


class LockAbandoned(Exception):
    """``locked`` gave up waiting because its caller is stopping."""


@contextlib.contextmanager
def locked(path: Path, abandon: threading.Event | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block: one builder at a time.

    With ``abandon``, the wait polls and raises LockAbandoned once it is set: a stopping controller must
    not sit behind another process's build (and then do one itself for a cloud that is gone)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        if abandon is None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        else:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if abandon.wait(0.1):
                        raise LockAbandoned(str(path)) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
