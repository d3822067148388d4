"""The EC2 instance metadata service (169.254.169.254) for guests, identified by their source address.

A small HTTP server (stdlib ``http.server``, one daemon thread per request) answering the subset of
EC2's instance metadata that cloudlab's default image and common tools read::

    GET /latest/meta-data/                       listing
    GET /latest/meta-data/instance-id            ami-id, instance-type, hostname, local-hostname,
                                                 local-ipv4, public-ipv4 (404 if none), mac,
                                                 security-groups, placement/availability-zone
    GET /latest/meta-data/public-keys/           "0=name" per key
    GET /latest/meta-data/public-keys/0/openssh-key
    GET /latest/user-data                        raw bytes (404 if none)
    GET /latest/dynamic/instance-identity/document   JSON
    PUT /latest/api/token                        IMDSv2 session token (optional: tokens are not required)

Who is asking is decided by ``lookup(source_ip)`` -- all domain logic (which instance has which
address, key and user data) lives with the caller; an unknown source gets a 404. The listening
socket is made by the caller (:func:`listen_socket`), typically inside a network namespace on
169.254.169.254:80, so this module never touches the host's network itself.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

METADATA_ADDRESS = "169.254.169.254"
METADATA_PORT = 80
#: Longest IMDSv2 token lifetime EC2 grants (6 hours); shorter requests are honoured as asked.
MAX_TOKEN_TTL = 21600


@dataclass(frozen=True)
class InstanceMetadata:
    instance_id: str
    local_ipv4: str
    public_ipv4: str | None
    instance_type: str
    ami_id: str
    availability_zone: str
    hostname: str
    security_groups: tuple[str, ...]
    public_keys: tuple[tuple[str, str], ...]  # (key name, OpenSSH public key line)
    user_data: bytes | None
    mac: str | None = None


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


def _meta_data(md: InstanceMetadata) -> dict[str, str | None]:
    """The leaf documents under /latest/meta-data/ (None: the path exists for others, 404 here)."""
    return {
        "ami-id": md.ami_id,
        "hostname": md.hostname,
        "instance-id": md.instance_id,
        "instance-type": md.instance_type,
        "local-hostname": md.hostname,
        "local-ipv4": md.local_ipv4,
        "mac": md.mac,
        "placement/availability-zone": md.availability_zone,
        "public-ipv4": md.public_ipv4,
        "security-groups": "\n".join(md.security_groups),
    }


def _listing(md: InstanceMetadata) -> str:
    names = {name.split("/")[0] + ("/" if "/" in name else "") for name, v in _meta_data(md).items() if v is not None}
    if md.public_keys:
        names.add("public-keys/")
    return "\n".join(sorted(names))


def _identity_document(md: InstanceMetadata) -> bytes:
    document = {
        "accountId": "000000000000",
        "architecture": "x86_64",
        "availabilityZone": md.availability_zone,
        "imageId": md.ami_id,
        "instanceId": md.instance_id,
        "instanceType": md.instance_type,
        "privateIp": md.local_ipv4,
        "region": md.availability_zone.rstrip("abcdefghijklmnopqrstuvwxyz") or md.availability_zone,
        "version": "2017-09-30",
    }
    return (json.dumps(document, indent=2) + "\n").encode()


def resolve(md: InstanceMetadata, path: str) -> bytes | None:
    """The body for ``path`` (query string removed) for this instance, or None for a 404."""
    if path == "/latest/user-data":
        return md.user_data
    if path in ("/latest/dynamic/instance-identity/document", "/latest/dynamic/instance-identity/document/"):
        return _identity_document(md)
    if path in ("/latest", "/latest/"):
        return b"dynamic\nmeta-data\n" + (b"user-data\n" if md.user_data is not None else b"")
    prefix = "/latest/meta-data/"
    if path == prefix.rstrip("/"):
        path = prefix
    if not path.startswith(prefix):
        return None
    rest = path[len(prefix) :]
    if rest == "":
        return _listing(md).encode()
    if rest in ("placement", "placement/"):
        return b"availability-zone"
    if rest in ("public-keys", "public-keys/"):
        return "\n".join(f"{i}={name}" for i, (name, _key) in enumerate(md.public_keys)).encode() or None
    if rest.startswith("public-keys/"):
        index, _, leaf = rest[len("public-keys/") :].partition("/")
        if not index.isdigit() or int(index) >= len(md.public_keys):
            return None
        if leaf == "":
            return b"openssh-key"
        if leaf == "openssh-key":
            return md.public_keys[int(index)][1].strip().encode() + b"\n"
        return None
    value = _meta_data(md).get(rest)
    return value.encode() if value is not None else None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "cloudlab-metadata"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass  # guests poll; a line per request would only be noise

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _instance(self) -> InstanceMetadata | None:
        try:
            return self.server.lookup(self.client_address[0])
        except Exception:  # noqa: BLE001 - a failing lookup must not kill the server
            return None

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        md = self._instance()
        if md is None:
            self._reply(404, f"no instance has address {self.client_address[0]}\n".encode())
            return
        path = self.path.split("?", 1)[0]
        body = resolve(md, path)
        if body is None:
            self._reply(404, b"not found\n")
        elif path.startswith("/latest/user-data"):
            self._reply(200, body, "application/octet-stream")
        elif path.startswith("/latest/dynamic/"):
            self._reply(200, body, "application/json")
        else:
            self._reply(200, body)

    do_HEAD = do_GET  # noqa: N815

    def do_PUT(self) -> None:  # noqa: N802
        if self._instance() is None:
            self._reply(404, f"no instance has address {self.client_address[0]}\n".encode())
            return
        if self.path.split("?", 1)[0] != "/latest/api/token":
            self._reply(404, b"not found\n")
            return
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TOKEN_TTL:
            self._reply(400, b"missing or invalid X-aws-ec2-metadata-token-ttl-seconds\n")
            return
        self.send_response(200)
        self.send_header("X-aws-ec2-metadata-token-ttl-seconds", ttl)
        body = secrets.token_urlsafe(32).encode()
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, lookup: Callable[[str], InstanceMetadata | None]) -> None:
        # Take the caller's bound socket (maybe from another network namespace) instead of binding.
        super().__init__(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]
        self.lookup = lookup


class MetadataServer:
    """Serves metadata on an already-listening socket from a daemon thread; ``stop()`` closes it."""

    def __init__(self, lookup: Callable[[str], InstanceMetadata | None], sock: socket.socket) -> None:
        self._server = _Server(sock, lookup)
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
