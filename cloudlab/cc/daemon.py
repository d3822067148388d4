"""A cluster controller as its own process (``cloudlab cc --clc URL``), maybe on another host.

It serves signed messages over HTTP (the CLC's commands, its nodes' and its SC's registrations) and
registers with the CLC, again every few seconds, so a restarted CLC finds it and a restarted CC is found
again at the same URL (``--listen HOST:PORT``). Its nodes (``cloudlab nc --cc URL``) and its storage
controller (``cloudlab sc --cc URL``) register with it as they do with an in-service CC.

A CC that dies takes nothing with it: its nodes keep their VMs and re-register when it is back, and the
CLC keeps its instances' records (the zone shows ``unavailable`` meanwhile), so a CC started again on
the same address picks the cluster up where it was.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cloudlab.cc.cluster import ClusterController
from cloudlab.cc.power import DEFAULT_IDLE_S
from cloudlab.contract import REGISTER_CLUSTER
from cloudlab.registration import controller_identity, keep_registered, stop_on_signals
from cloudlab.rpc import Dispatcher, HttpChannel, serve_http
from cloudlab.security.messages import controller_keys

log = logging.getLogger(__name__)


def cc_identity_name(cluster: str) -> str:
    """The certificate name of ``cluster``'s CC (as the cloud service names its own CCs' certificates)."""
    return f"cc-{cluster}"


def run_cluster(
    pki_dir: Path,
    name: str,
    clc_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    advertise: str | None = None,
    policy: str = "GREEDY",
    heartbeat_s: float = 1.0,
    powersave_idle_s: float = DEFAULT_IDLE_S,
    stop: threading.Event | None = None,
) -> None:
    """Run the CC of cluster ``name`` until SIGTERM/SIGINT (or ``stop``)."""
    who = f"cluster controller {name}"
    identity, ca_certificate = controller_identity(pki_dir, cc_identity_name(name), "cc", who)
    signer, verifier = controller_keys(identity, ca_certificate)
    clc = HttpChannel(None, "clc", signer, verifier, clc_url, timeout=10)  # learns the CLC's name (HELLO)
    cc = ClusterController(
        name,
        policy=policy,
        heartbeat_s=heartbeat_s,
        signer=signer,
        verifier=verifier,
        powersave_idle_s=powersave_idle_s,
    )
    dispatcher = Dispatcher(cc_identity_name(name), signer, verifier)
    cc.register_routes(dispatcher)
    server = serve_http(dispatcher, host, port)
    url = advertise or f"http://{host}:{server.server_port}"  # behind a NAT: the forward the CLC reaches
    stop = stop or threading.Event()
    stop_on_signals(stop)
    cc.start()
    log.info("%s serving at %s (scheduler %s); cloud controller %s", who, url, cc.policy.name, clc_url)
    try:
        keep_registered(clc, REGISTER_CLUSTER, url, who, clc_url, stop)
    finally:
        cc.stop()
        server.shutdown()
