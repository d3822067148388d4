"""Cluster controllers in processes of their own (``cloudlab cc --clc URL``), maybe on another host.

Such a CC registers with the CLC over signed HTTP (``register_cluster``) at start and again every few
seconds (:func:`cloudlab.registration.keep_registered`), as a node registers with its CC. Its cluster's name
is its certificate's (``cc-<cluster>``, issued by ``cloudlab cluster-credentials``), never a field, so a CC
can speak only for its own cluster, and never for one that runs inside the cloud service.

A new URL is taken only once the CC answers there *as itself* (a cluster report signed by that
certificate): a bad or hostile URL is refused and the cluster stays where it was. The cluster keeps the
zone it had (the ``clusters`` table remembers it across restarts), else it gets the region's first free
zone letter. From then on the CLC follows it as it follows an in-service cluster: its zone is unavailable
while its CC does not answer, its instances' records stay as they were, and they reconcile when it answers
again (a CC that is started again registers the same URL, which the CLC still holds). The URL is
remembered too, so a restarted CLC follows the cluster at once (its zone ``unavailable`` until the CC answers
there) rather than forgetting the zone until the CC's next registration.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from cloudlab import contract as c
from cloudlab.clc.regions import zone_name
from cloudlab.errors import CloudError
from cloudlab.rpc import Dispatcher, HttpChannel
from cloudlab.security.messages import MessageSigner, MessageVerifier

log = logging.getLogger(__name__)

#: How long a CC that registers a new URL has to answer there.
REGISTER_CHECK_S = 5.0
#: The prefix of a cluster controller's certificate name (``cc-cluster2`` speaks for ``cluster2``).
CC_PREFIX = "cc-"
MAX_ZONES = 26

SCHEMA = """
CREATE TABLE IF NOT EXISTS remote_clusters (
    name TEXT PRIMARY KEY,       -- the cluster (its CC's certificate is cc-<name>)
    url TEXT NOT NULL,           -- where its CC last registered
    registered REAL NOT NULL
);
"""


class RemoteClusters:
    """Takes registrations of cluster controllers that run outside the cloud service."""

    def __init__(self, clc: Any, signer: MessageSigner, verifier: MessageVerifier, *, local: set[str]) -> None:
        self._clc = clc  # cloudlab.clc.cloud.CloudController
        self._signer = signer
        self._verifier = verifier
        self._local = set(local)  # the clusters the service runs itself: no outside CC may take their place
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()
        clc.store.ensure_schema(SCHEMA)

    def restore(self) -> None:
        """Follow the clusters whose CCs registered before this CLC started, at the URLs they gave (the channel
        is addressed to ``cc-<name>`` and checks who signs each reply, so nobody else can answer there)."""
        for row in self._clc.store.query("SELECT name, url FROM remote_clusters ORDER BY registered"):
            name, url = str(row["name"]), str(row["url"])
            if name in self._local or self._clc.clusters.get(name) is not None:
                continue
            try:
                channel = HttpChannel(CC_PREFIX + name, "cc", self._signer, self._verifier, url)
            except ValueError as exc:
                log.warning("cluster %s: its remembered URL %s is unusable: %s", name, url, exc)
                continue
            link = self._clc.add_cluster(name, self._zone_for(name), channel, network="none")
            with self._lock:
                self._urls[name] = url
            log.info("cluster %s (zone %s): following its cluster controller at %s", name, link.zone, url)

    def register_routes(self, dispatcher: Dispatcher) -> None:
        dispatcher.serve(c.REGISTER_CLUSTER, lambda r, m: self.register(m.sender, r.url))

    def urls(self) -> dict[str, str]:
        """Each remote cluster's CC URL, as it registered it."""
        with self._lock:
            return dict(self._urls)

    def register(self, sender: str, url: str) -> c.ClusterRegistered:
        """The CC whose certificate is ``sender`` announces its URL: checked, then its cluster is followed."""
        if not sender.startswith(CC_PREFIX) or len(sender) == len(CC_PREFIX):
            raise CloudError("InvalidParameterValue", f"{sender!r} is no cluster controller's certificate name")
        name = sender[len(CC_PREFIX) :]
        if name in self._local:
            raise CloudError(
                "InvalidParameterValue",
                f"cluster {name} runs inside the cloud service; a cluster controller elsewhere needs a name of its own",
            )
        link = self._clc.clusters.get(name)
        with self._lock:
            if link is not None and self._urls.get(name) == url:
                return c.ClusterRegistered(cluster=name, zone=link.zone)
        try:
            channel = HttpChannel(sender, "cc", self._signer, self._verifier, url)
        except ValueError as exc:
            raise CloudError("InvalidParameterValue", f"cluster {name}: {exc}") from None
        try:
            report = channel.ask(c.DESCRIBE_CLUSTER, c.DescribeCluster(), timeout=REGISTER_CHECK_S)
        except CloudError as exc:
            raise CloudError(
                "InvalidParameterValue", f"cluster {name} does not answer as itself at {url}: {exc.message}"
            ) from None
        with self._lock:
            link = self._clc.clusters.get(name)
            if link is not None:
                link.channel = channel  # the reconciler and the dispatch read it at every call
            else:
                link = self._clc.add_cluster(name, self._zone_for(name), channel, network="none", policy=report.policy)
                self._clc.reconciler.follow(link)
            self._urls[name] = url
            with self._clc.store.transaction() as db:
                db.execute(
                    "INSERT INTO remote_clusters (name, url, registered) VALUES (?,?,?)"
                    " ON CONFLICT(name) DO UPDATE SET url=excluded.url, registered=excluded.registered",
                    (name, url, time.time()),
                )
        log.info("cluster %s (zone %s): its cluster controller registered at %s", name, link.zone, url)
        return c.ClusterRegistered(cluster=name, zone=link.zone)

    def _zone_for(self, name: str) -> str:
        """The zone ``name`` had (if no other cluster holds it now), else the region's first free one."""
        taken = {link.zone: link.name for link in self._clc.clusters.all()}
        row = self._clc.store.one("SELECT zone FROM clusters WHERE name=?", (name,))
        if row is not None and taken.get(row["zone"], name) == name:
            return str(row["zone"])
        remembered = {r["zone"] for r in self._clc.store.query("SELECT zone FROM clusters WHERE name<>?", (name,))}
        for index in range(MAX_ZONES):
            zone = zone_name(self._clc.clusters.region, index)
            if zone not in taken and zone not in remembered:
                return zone
        raise CloudError("InvalidParameterValue", f"the region has no free zone for cluster {name}")
