"""A node controller as its own process: serves signed messages over HTTP, registers with its CC.

One process per node keeps each embedded libvirt driver (one per process) and, later, each node's
network namespace apart. The NC re-announces itself periodically, so a restarted CC finds it again.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cloudlab.contract import NODE_CHANGED, REGISTER_NODE, Empty
from cloudlab.nc.node import NodeController
from cloudlab.registration import controller_identity, keep_registered, stop_on_signals
from cloudlab.rpc import Dispatcher, HttpChannel, serve_http
from cloudlab.security.messages import controller_keys

log = logging.getLogger(__name__)


def run_node(
    pki_dir: Path,
    name: str,
    cc_url: str,
    uri: str,
    node_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    vcpus: int | None = None,
    memory_mb: int | None = None,
    accel: str = "auto",
    accel_cache: Path | None = None,
    stop: threading.Event | None = None,
    advertise: str | None = None,
    launch: str = "restore",
    template_nic: bool = False,
    template_nic_mtu: int = 0,
    wake_s: float | None = None,
) -> None:
    """Run one NC until SIGTERM/SIGINT (or ``stop`` is set)."""
    identity, ca_certificate = controller_identity(pki_dir, name, "nc", f"node {name}")
    signer, verifier = controller_keys(identity, ca_certificate)
    cc = HttpChannel(None, "cc", signer, verifier, cc_url, timeout=10)  # learns its CC's name (HELLO)
    stop = stop or threading.Event()
    nudger = ChangeNudger(cc, stop)
    node = NodeController(
        name,
        uri,
        node_dir,
        vcpus=vcpus,
        memory_mb=memory_mb,
        accel=accel,
        accel_cache=accel_cache,
        on_change=nudger.changed,
        launch=launch,
        template_nic=template_nic,
        template_nic_mtu=template_nic_mtu,
        **({} if wake_s is None else {"wake_s": wake_s}),
    )
    dispatcher = Dispatcher(f"nc-{name}", signer, verifier)
    node.register_routes(dispatcher)
    server = serve_http(dispatcher, host, port)
    # Behind a NAT the CC reaches this node at the NAT's forwarded address, not at the one it listens on.
    url = advertise or f"http://{host}:{server.server_port}"
    stop_on_signals(stop)
    log.info("node %s serving %s at %s; cluster controller %s", name, uri, url, cc_url)
    keep_registered(cc, REGISTER_NODE, url, f"node {name}", cc_url, stop, silent=lambda: node.power == "off")
    server.shutdown()
    node.close()


class ChangeNudger:
    """Tells the CC, from a thread of its own, that this node has news (it then asks for the report).

    Lifecycle events arrive on libvirt's event thread, which must never wait for the network; a
    burst of events (a hundred VMs starting) becomes one nudge per round trip.
    """

    def __init__(self, cc: HttpChannel, stop: threading.Event) -> None:
        self._cc = cc
        self._stop = stop
        self._pending = threading.Event()
        threading.Thread(target=self._run, name="nc-nudge", daemon=True).start()

    def changed(self) -> None:
        self._pending.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._pending.wait(timeout=1.0):
                continue
            self._pending.clear()
            try:
                self._cc.ask(NODE_CHANGED, Empty(), timeout=5)
            except Exception as exc:  # the next heartbeat carries the change anyway
                log.debug("node change not announced: %s", exc)
