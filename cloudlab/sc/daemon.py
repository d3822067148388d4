"""A storage controller as its own process (``cloudlab sc``): serves signed messages over HTTP and
registers with its cluster controller, again every few seconds, so a restarted CC finds it."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cloudlab.contract import REGISTER_STORAGE
from cloudlab.registration import controller_identity, keep_registered, stop_on_signals
from cloudlab.rpc import Dispatcher, HttpChannel, serve_http
from cloudlab.sc.controller import StorageController
from cloudlab.security.messages import controller_keys

log = logging.getLogger(__name__)


def run_storage(
    pki_dir: Path,
    name: str,
    cc_url: str,
    root: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    advertise: str | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run one SC until SIGTERM/SIGINT (or ``stop``); its exports keep serving (see ``sc/exports.py``)."""
    identity, ca_certificate = controller_identity(pki_dir, name, "sc", f"storage controller {name}")
    signer, verifier = controller_keys(identity, ca_certificate)
    cc = HttpChannel(None, "cc", signer, verifier, cc_url, timeout=10)
    stop = stop or threading.Event()
    dispatcher = Dispatcher(f"sc-{name}", signer, verifier)
    server = serve_http(dispatcher, host, port)
    url = advertise or f"http://{host}:{server.server_port}"
    storage = StorageController(name, root, host, url)
    storage.register_routes(dispatcher)
    stop_on_signals(stop)
    log.info("storage controller %s serving %s at %s; cluster controller %s", name, root, url, cc_url)
    keep_registered(cc, REGISTER_STORAGE, url, f"storage controller {name}", cc_url, stop)
    server.shutdown()
