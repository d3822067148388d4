"""The EC2 instance metadata service (169.254.169.254) for guests, identified by their source address.

A small HTTP server (stdlib ``http.server``, one daemon thread per request) speaking EC2's instance
metadata protocol, IMDSv1 and IMDSv2, so that cloud-init's Ec2 datasource, the AWS SDKs and the
shell one-liners of EC2's documentation work unmodified::

    GET  /                                     the dated API versions and "latest"
    GET  /VERSION/meta-data/...                the tree in ``metadata_tree`` (VERSION: a date or latest)
    GET  /VERSION/user-data                    raw bytes (404 if none)
    GET  /VERSION/dynamic/instance-identity/document   JSON
    PUT  /latest/api/token                     an IMDSv2 session token, for
                                               X-aws-ec2-metadata-token-ttl-seconds: 1..21600

IMDSv2 as EC2 does it: a request that carries ``X-aws-ec2-metadata-token`` must carry a valid one
(401 otherwise), whatever the instance's setting; a request without one is served unless the
instance's ``http_tokens`` is "required" (401). A token PUT with ``X-Forwarded-For`` is refused
(403): tokens are for the instance itself, not for whatever it proxies. Tokens are HMACs of the
asking address and the expiry under a key made at start, so they need no table, expire by
themselves, are worthless from another instance's address, and die with the server.

Who is asking is decided by ``lookup(source_ip)`` -- all domain logic (which instance has which
address, key and user data) lives with the caller; an unknown source gets a 404. The listening
socket is made by the caller (:func:`listen_socket`), typically inside a network namespace on
169.254.169.254:80, so this module never touches the host's network itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudlab.net.metadata_tree import InstanceMetadata, resolve

__all__ = ["InstanceMetadata", "MetadataServer", "listen_socket", "resolve"]

METADATA_ADDRESS = "169.254.169.254"
METADATA_PORT = 80
#: Longest IMDSv2 token lifetime EC2 grants (6 hours); shorter requests are honoured as asked.
MAX_TOKEN_TTL = 21600
TOKEN_PATH = "/latest/api/token"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"


def listen_socket(host: str = METADATA_ADDRESS, port: int = METADATA_PORT) -> socket.socket:
    """A TCP socket bound and listening on ``host:port`` in the calling thread's network namespace."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


class SessionTokens:
    """IMDSv2 tokens: ``expiry.nonce.mac`` with mac = HMAC-SHA256(key, address|expiry|nonce)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._key = secrets.token_bytes(32)
        self._clock = clock

    def _mac(self, address: str, expiry: str, nonce: str) -> str:
        digest = hmac.new(self._key, f"{address}|{expiry}|{nonce}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, address: str, ttl: int) -> str:
        expiry = str(int(self._clock()) + ttl)
        nonce = secrets.token_urlsafe(12)
        return f"{expiry}.{nonce}.{self._mac(address, expiry, nonce)}"

    def valid(self, address: str, token: str) -> bool:
        """True for an unexpired token issued to ``address`` by this server."""
        expiry, _, rest = token.strip().partition(".")
        nonce, _, mac = rest.partition(".")
        if not expiry.isdigit() or not nonce or not mac:
            return False
        if not hmac.compare_digest(mac, self._mac(address, expiry, nonce)):
            return False
        return self._clock() < int(expiry)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "cloudlab-metadata"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass  # guests poll; a line per request would only be noise

    def _reply(
        self, status: int, body: bytes, content_type: str = "text/plain", headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _instance(self) -> InstanceMetadata | None:
        """The asking instance, or None after answering 404 (unknown address, failing lookup)."""
        address = self.client_address[0]
        try:
            md = self.server.lookup(address)
        except Exception:  # noqa: BLE001 - a failing lookup must not kill the server
            md = None
        if md is None:
            self._reply(404, f"no instance has address {address}\n".encode())
        return md

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        md = self._instance()
        if md is None:
            return
        token = self.headers.get(TOKEN_HEADER)
        if token is not None and not self.server.tokens.valid(self.client_address[0], token):
            self._reply(401, b"invalid or expired session token: PUT /latest/api/token for a new one\n")
            return
        if token is None and md.http_tokens == "required":
            self._reply(401, b"this instance requires IMDSv2: PUT /latest/api/token for a session token\n")
            return
        path = self.path.split("?", 1)[0]
        if path == TOKEN_PATH:
            self._reply(405, b"use PUT for a session token\n", headers={"Allow": "PUT"})
            return
        body = resolve(md, path)
        if body is None:
            self._reply(404, b"not found\n")
        elif path.rstrip("/").endswith("/user-data"):
            self._reply(200, body, "application/octet-stream")
        elif path.rstrip("/").endswith("/instance-identity/document"):
            self._reply(200, body, "application/json")
        else:
            self._reply(200, body)

    do_HEAD = do_GET  # noqa: N815

    def do_PUT(self) -> None:  # noqa: N802
        md = self._instance()
        if md is None:
            return
        if self.path.split("?", 1)[0] != TOKEN_PATH:
            self._reply(405, b"only /latest/api/token takes PUT\n", headers={"Allow": "GET, HEAD"})
            return
        if self.headers.get("X-Forwarded-For") is not None:
            self._reply(403, b"session tokens are not issued through proxies (X-Forwarded-For)\n")
            return
        ttl = self.headers.get(TTL_HEADER, "").strip()
        if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TOKEN_TTL:
            self._reply(400, f"missing or invalid {TTL_HEADER} (1 to {MAX_TOKEN_TTL})\n".encode())
            return
        token = self.server.tokens.issue(self.client_address[0], int(ttl))
        self._reply(200, token.encode(), headers={TTL_HEADER: ttl})

    def _not_allowed(self) -> None:
        self._reply(405, b"method not allowed\n", headers={"Allow": "GET, HEAD, PUT"})

    do_POST = do_DELETE = do_PATCH = _not_allowed  # noqa: N815


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self, sock: socket.socket, lookup: Callable[[str], InstanceMetadata | None], clock: Callable[[], float]
    ) -> None:
        # Take the caller's bound socket (maybe from another network namespace) instead of binding.
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.lookup = lookup
        self.tokens = SessionTokens(clock)


class MetadataServer:
    """Serves metadata on an already-listening socket from a daemon thread; ``stop()`` closes it.

    ``clock`` (epoch seconds) decides when session tokens expire; tests pass their own.
    """

    def __init__(
        self,
        lookup: Callable[[str], InstanceMetadata | None],
        sock: socket.socket,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._server = _Server(sock, lookup, clock)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="metadata", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> MetadataServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
