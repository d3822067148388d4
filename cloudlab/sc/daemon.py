"""A storage controller as its own process (``cloudlab sc``): serves signed messages over HTTP and
registers with its cluster controller, again every few seconds, so a restarted CC finds it."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from cloudlab.contract import REGISTER_STORAGE, RegisterNode
from cloudlab.errors import CloudError
from cloudlab.rpc import Dispatcher, HttpChannel, serve_http
from cloudlab.sc.controller import StorageController
from cloudlab.security.ca import CertificateAuthority, Identity, load_ca_certificate
from cloudlab.security.messages import controller_keys

log = logging.getLogger(__name__)

REGISTER_EVERY_S = 10.0


def storage_identity(pki_dir: Path, name: str) -> tuple[Identity, Any]:
    """The SC's identity (role ``sc``) and the CA certificate: issued on the cloud's host, or copied
    to another host as ``ca.crt`` and ``sc-<name>.crt``/``.key``."""
    if (pki_dir / "ca.key").exists():
        ca = CertificateAuthority.load_or_create(pki_dir)
        return ca.identity(name, "sc"), ca.ca_certificate
    crt, key, ca_crt = pki_dir / f"sc-{name}.crt", pki_dir / f"sc-{name}.key", pki_dir / "ca.crt"
    missing = [str(p) for p in (crt, key, ca_crt) if not p.exists()]
    if missing:
        raise CloudError(
            "InvalidParameterValue",
            f"storage controller {name} needs {', '.join(missing)} from the cloud's .cloudlab/pki folder",
        )
    return Identity.load(crt, key), load_ca_certificate(ca_crt)


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
    identity, ca_certificate = storage_identity(pki_dir, name)
    signer, verifier = controller_keys(identity, ca_certificate)
    cc = HttpChannel(None, "cc", signer, verifier, cc_url, timeout=10)
    stop = stop or threading.Event()
    dispatcher = Dispatcher(f"sc-{name}", signer, verifier)
    server = serve_http(dispatcher, host, port)
    url = advertise or f"http://{host}:{server.server_port}"
    storage = StorageController(name, root, host, url)
    storage.register_routes(dispatcher)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("storage controller %s serving %s at %s; cluster controller %s", name, root, url, cc_url)
    registered = False
    while not stop.is_set():
        try:
            cc.ask(REGISTER_STORAGE, RegisterNode(url=url))
            if not registered:
                log.info("storage controller %s registered with %s", name, cc_url)
            registered = True
        except Exception as exc:
            log.warning("storage controller %s cannot register with %s: %s", name, cc_url, exc)
            registered = False
        stop.wait(REGISTER_EVERY_S if registered else 1.0)
    server.shutdown()
