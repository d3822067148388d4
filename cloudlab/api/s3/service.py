"""Walrus as part of the cloud service: the engine over ``STATE/walrus``, its S3 endpoint and its ledger.

:class:`cloudlab.service.CloudService` calls :func:`start_walrus` beside the EC2 endpoint (the service
composes the faces; the core never imports them) and :meth:`WalrusService.stop` when it stops. The S3
port is ``cloud.json``'s ``extra.s3_port``: by default :data:`DEFAULT_S3_PORT`, or a free one when the
EC2 port is chosen freely (``--port 0``, as tests do).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from cloudlab.api.s3.routing import DEFAULT_DOMAIN
from cloudlab.api.s3.server import serve_s3
from cloudlab.clc.objects import FETCH_URL_S, ObjectStore
from cloudlab.clc.store import Store
from cloudlab.config import CloudConfig
from cloudlab.errors import CloudError
from cloudlab.paths import StateLayout
from cloudlab.walrus import Walrus
from cloudlab.walrus.accounting import StorageRecorder

log = logging.getLogger(__name__)

DEFAULT_S3_PORT = 8774  # beside EC2's 8773 (Eucalyptus served Walrus from its own port too)


@dataclass
class WalrusService:
    walrus: Walrus
    server: Any
    recorder: StorageRecorder
    host: str
    users: Any = None
    region: str = ""
    domain: str = DEFAULT_DOMAIN
    also: dict[str, Any] = field(default_factory=dict)  # cluster -> the endpoint on its underlay

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_port}"

    def serve_cluster(self, cluster: str, host: str) -> None:
        """The same endpoint on a cluster's underlay address, for nodes in their hosts' namespaces."""
        self.also[cluster] = serve_s3(self.walrus, self.users, self.region, host, 0, self.domain)

    def object_store(self) -> ObjectStore:
        """What the cloud controller reads buckets through (cloudlab.clc.objects)."""
        return ObjectStore(self.walrus, self.presign)

    def presign(self, owner: str, bucket: str, key: str, version_id: str | None, cluster: str | None) -> str:
        """A presigned GET of one object version (SigV4 in the query, expiring), signed with the owner's
        first active key, on the endpoint the cluster's controllers reach."""
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        keys = self.users.keys(owner)
        if not keys:
            raise CloudError("Unavailable", f"user {owner} has no active access key to read their bucket with")
        server = self.also.get(cluster or "", self.server)
        host = self.host if server is self.server else server.server_address[0]
        url = f"http://{host}:{server.server_port}/{quote(bucket)}/{quote(key, safe='/~')}"
        if version_id:
            url += f"?versionId={quote(version_id, safe='')}"
        request = AWSRequest(method="GET", url=url)
        credentials = Credentials(keys[0].access_key, keys[0].secret_key)
        S3SigV4QueryAuth(credentials, "s3", self.region, expires=FETCH_URL_S).add_auth(request)
        return str(request.url)

    def stop(self) -> None:
        for server in self.also.values():
            server.shutdown()
            server.server_close()
        self.server.shutdown()
        self.server.server_close()
        self.recorder.stop()
        self.walrus.close()


def s3_port(config: CloudConfig) -> int:
    if "s3_port" in config.extra:
        return int(config.extra["s3_port"])
    return 0 if config.api_port == 0 else DEFAULT_S3_PORT


def start_walrus(layout: StateLayout, config: CloudConfig, store: Store, users: Any) -> WalrusService:
    """Open the engine (collecting what a crash left behind), serve S3, start the ledger recorder."""
    walrus = Walrus(layout.root / "walrus", config.region)
    if walrus.collected:
        log.info("walrus: removed %d leftover file(s) of interrupted writes", walrus.collected)
    domain = str(config.extra.get("s3_domain", DEFAULT_DOMAIN))
    server = serve_s3(walrus, users, config.region, config.api_host, s3_port(config), domain)
    recorder = StorageRecorder(walrus, store, float(config.extra.get("s3_ledger_s", 10.0))).start()
    service = WalrusService(walrus, server, recorder, config.api_host, users, config.region, domain)
    log.info("S3 endpoint (Walrus) %s", service.url)
    return service
