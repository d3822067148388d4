"""How a controller on its own host (a node, a storage controller) proves who it is and stays known to its
cluster controller.

Its identity is issued on demand on the cloud's own host (where the CA's key is) or copied from there. It
registers at start and again every :data:`REGISTER_EVERY_S` (every second while the CC does not answer),
so a restarted CC learns of it within seconds, until SIGTERM/SIGINT (or ``stop``) ends it.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from cloudlab.contract import RegisterNode
from cloudlab.errors import CloudError
from cloudlab.security.ca import CertificateAuthority, Identity, load_ca_certificate

log = logging.getLogger(__name__)

REGISTER_EVERY_S = 10.0
RETRY_S = 1.0


def controller_identity(pki_dir: Path, name: str, role: str, who: str) -> tuple[Identity, Any]:
    """The identity of controller ``name`` in ``role`` (``nc``, ``sc``) and the cloud CA's certificate.

    On the cloud's own host the CA is at hand and issues the certificate on demand; on another host the
    folder holds only ``ca.crt`` and ``<role>-<name>.crt``/``.key`` copied from the cloud.
    """
    if (pki_dir / "ca.key").exists():
        ca = CertificateAuthority.load_or_create(pki_dir)
        return ca.identity(name, role), ca.ca_certificate
    crt, key, ca_crt = pki_dir / f"{role}-{name}.crt", pki_dir / f"{role}-{name}.key", pki_dir / "ca.crt"
    missing = [str(p) for p in (crt, key, ca_crt) if not p.exists()]
    if missing:
        raise CloudError(
            "InvalidParameterValue", f"{who} needs {', '.join(missing)} from the cloud's .cloudlab/pki folder"
        )
    return Identity.load(crt, key), load_ca_certificate(ca_crt)


def stop_on_signals(stop: threading.Event) -> None:
    """Set ``stop`` on SIGTERM and SIGINT (only the main thread may install handlers); SIGUSR1 writes every
    thread's stack to stderr (the daemon's log), for a controller that does not stop when told.

    The handler sets ``stop`` from a thread of its own: a handler runs in the main thread between two
    bytecodes, and if that thread is inside ``stop.wait()`` holding the event's (non-reentrant) lock at
    that moment, ``stop.set()`` there would wait for that lock forever."""
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: object) -> None:
            threading.Thread(target=stop.set, name="stop-on-signal", daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def keep_registered(
    cc: Any, action: Any, url: str, who: str, cc_url: str, stop: threading.Event, silent: Any = None
) -> None:
    """Register ``url`` with the CC (``cc``, a Channel) through ``action`` until ``stop`` is set; not while
    ``silent()`` says so (a node powered down by POWERSAVE sends nothing, as a host that is off)."""
    registered = False
    while not stop.is_set():
        if silent is not None and silent():
            stop.wait(RETRY_S)
            continue
        try:
            cc.ask(action, RegisterNode(url=url))
            if not registered:
                log.info("%s registered with %s", who, cc_url)
            registered = True
        except Exception as exc:
            log.warning("%s cannot register with %s: %s", who, cc_url, exc)
            registered = False
        stop.wait(REGISTER_EVERY_S if registered else RETRY_S)
