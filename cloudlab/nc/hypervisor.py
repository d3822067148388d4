"""The libvirt connection of a node controller, with libvirt's default event loop running.

The embedded QEMU driver needs an event loop to notice a guest's monitor going away: with the loop
starved a guest that powered itself off took ~50 s to be seen as shut off, with it running ~2 s.
So the loop is registered once per process, before any connection opens, and runs in its own thread.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import libvirt

from cloudlab.errors import CloudError

log = logging.getLogger(__name__)

_loop_lock = threading.Lock()
_loop_started = False

QEMU_CONF = """\
# Written by cloudlab for its embedded libvirt QEMU driver.
# QEMU runs as root here so that console logs and (later) VDE sockets in the state folder are
# reachable without per-file ownership changes; there is no security driver in this sandbox.
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
namespaces = []
remember_owner = 0
# QEMU's own stdout/stderr go to a plain file: the embedded driver has no virtlogd to talk to.
stdio_handler = "file"
# No per-guest cgroups: QEMU stays in the node controller's group, a task among the host's others.
# libvirt's machine/<guest> groups gave all guests together one share against each other process
# (qemu-nbd, the SC, a hand-started QEMU), so on a busy 2-core host a TCG guest got about half the
# CPU of the same QEMU started by hand; and the embedded driver left a group behind per guest.
cgroup_controllers = []
"""


def ensure_event_loop() -> None:
    """Register and run libvirt's default event loop (idempotent, process-wide)."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # Failures reach us as exceptions; libvirt's default handler would also print each to stderr
        # ("Domain not found" for every lookup of an instance that is not there).
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except libvirt.libvirtError:  # pragma: no cover - keep the loop alive
                    log.exception("libvirt event loop iteration failed")

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def embed_root(uri: str) -> Path | None:
    """The ``root=`` folder of a ``qemu:///embed`` URI, or None for other URIs."""
    parts = urlsplit(uri)
    if parts.scheme == "qemu" and parts.path == "/embed":
        roots = parse_qs(parts.query).get("root")
        if not roots:
            raise CloudError("InvalidParameterValue", f"{uri}: the embedded driver needs ?root=DIR")
        return Path(roots[0])
    return None


def driver_kind(uri: str) -> str:
    """``qemu`` or ``test`` (the libvirt driver family the URI selects)."""
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme not in ("qemu", "test"):
        raise CloudError(
            "InvalidParameterValue",
            f"unsupported hypervisor URI {uri!r}: use qemu:///embed?root=DIR, qemu:///system or test:///default",
        )
    return scheme


def open_connection(uri: str) -> libvirt.virConnect:
    """Open ``uri`` with the event loop running; prepares an embedded driver's root first."""
    ensure_event_loop()
    root = embed_root(uri)
    if root is not None:
        (root / "etc").mkdir(parents=True, exist_ok=True)
        conf = root / "etc" / "qemu.conf"
        if not conf.exists() or conf.read_text() != QEMU_CONF:
            conf.write_text(QEMU_CONF)
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        hint = ""
        if root is not None and "libvirt-qemu" in str(exc):
            hint = " (create the user and group: make setup)"
        raise CloudError("InternalError", f"cannot open libvirt {uri}: {exc}{hint}") from exc


def test_driver_uri(node_dir: Path, vcpus: int, memory_mb: int) -> str:
    """A private ``test://`` URI for one simulated node.

    ``test:///default`` is one shared in-memory host per process, so fifty simulated nodes in one
    process would all see each other's domains. A custom node file gives each node its own host with
    the requested size.
    """
    node_dir.mkdir(parents=True, exist_ok=True)
    path = node_dir / "test-node.xml"
    path.write_text(
        "<node><cpu><nodes>1</nodes><sockets>1</sockets>"
        f"<cores>{vcpus}</cores><threads>1</threads><active>{vcpus}</active>"
        "<mhz>2000</mhz><model>cloudlab-test</model></cpu>"
        f"<memory>{memory_mb * 1024}</memory></node>\n"
    )
    return f"test://{path.resolve()}"
