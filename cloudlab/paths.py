"""Where a cloud keeps its state, and how a client finds it.

The cloud runs as a service; notebooks and the CLI find it through its state folder (endpoint and
credentials), never through an in-kernel object, so restarting a kernel loses nothing.
Resolution order: an explicit ``--state``, then ``$CLOUDLAB_STATE``, then the nearest ``.cloudlab``
folder in the current directory or its parents that holds a cloud, else ``./.cloudlab``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

STATE_DIR_NAME = ".cloudlab"


def find_state_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The state folder to use (see the module docstring for the order)."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("CLOUDLAB_STATE")
    if env:
        return Path(env).expanduser().resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        candidate = folder / STATE_DIR_NAME
        if (candidate / "cloud.json").exists():
            return candidate
    return here / STATE_DIR_NAME


def cache_dir() -> Path:
    """Build caches shared by every state folder on this machine (images, the KVM probe)."""
    return Path(os.environ.get("CLOUDLAB_CACHE") or Path.home() / ".cache" / "cloudlab").expanduser()


def outside_namespace_of(network_prefix: str) -> str:
    """The name of the outside namespace of the cloud whose namespaces start with ``network_prefix``."""
    return f"{network_prefix}-out"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and make it 0700: it holds secrets (keys, the database)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


@dataclass(frozen=True)
class StateLayout:
    """Names of everything inside one cloud's state folder (0700: it holds every secret of the cloud)."""

    root: Path

    def ensure(self) -> Path:
        """The state folder, created or tightened to 0700."""
        return private_dir(self.root)

    @property
    def config(self) -> Path:
        return self.root / "cloud.json"

    @property
    def database(self) -> Path:
        return self.root / "clc.db"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials"

    @property
    def pidfile(self) -> Path:
        return self.root / "service.pid"

    @property
    def endpoint_file(self) -> Path:
        return self.root / "endpoint.json"

    @property
    def log(self) -> Path:
        return self.root / "service.log"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    @property
    def short_prefix(self) -> str:
        """A short, per-state-folder path prefix under /run (or /tmp) for UNIX sockets.

        libvirt puts each guest's monitor socket under its driver root, and a UNIX socket path has
        at most 107 bytes; a state folder deep in a home or temp directory exceeds that. So the
        driver root is reached through a short symlink named after a hash of the state path.
        """
        base = "/run/cloudlab" if os.access("/run", os.W_OK) else "/tmp/cloudlab"
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:10]
        return f"{base}/{digest}-"

    @property
    def network_prefix(self) -> str:
        """Names of this cloud's namespaces (``<prefix>-out``, ``<prefix>-node-01``) and root veth: short and
        unique per state folder, because an interface name has at most 15 characters."""
        return "cl" + hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:6]

    @property
    def outside_namespace(self) -> str:
        """The cluster's outside namespace (router, NAT, metadata; where ``cloudlab exec`` runs)."""
        return outside_namespace_of(self.network_prefix)

    @property
    def network_run_dir(self) -> Path:
        """Where switches keep their sockets: a short path (UNIX socket paths have at most 107 bytes)."""
        return Path(self.short_prefix + "net")

    def libvirt_root(self, node: str) -> Path:
        """The embedded libvirt driver root of ``node``: a short symlink into the state folder."""
        real = self.node_dir(node) / "libvirt"
        real.mkdir(parents=True, exist_ok=True)
        link = Path(self.short_prefix + node)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not (link.is_symlink() and os.readlink(link) == str(real)):
            tmp = link.with_name(link.name + ".tmp")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(real)
            os.replace(tmp, link)
        return link

    def cluster_dir(self, cluster: str) -> Path:
        return self.root / "clusters" / cluster
