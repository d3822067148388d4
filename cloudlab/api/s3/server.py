"""The S3 endpoint over HTTP: request → authenticate → route by the model → parse → operation → serialise.

Bodies stream: an object PUT is read from the socket a megabyte at a time (or decoded from
aws-chunked) straight into the engine's blob writer, and a GET is sent from the blob files with
``sendfile``; memory stays flat whatever the object's size. Threads are bounded (a client that opens
a thousand connections waits for a slot, it does not get a thousand threads) and every socket has a
timeout, so a stalled client is dropped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import ssl
import sys
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from cloudlab.api.errors import ApiError
from cloudlab.api.protocol import split_form
from cloudlab.api.s3 import cors, post_object
from cloudlab.api.s3.auth import Authenticated, KeyLookup, authenticate
from cloudlab.api.s3.model import operation_model
from cloudlab.api.s3.ops import OPERATIONS, S3Call, implemented
from cloudlab.api.s3.payload import STREAMING, ChunkedBody, plain_body
from cloudlab.api.s3.restxml import error_document, parse_input, serialize_output
from cloudlab.api.s3.routing import DEFAULT_DOMAIN, Target, resolve_operation, split_target
from cloudlab.errors import CloudError
from cloudlab.httpserve import HardenedHTTPServer, LeanRequestHandler
from cloudlab.walrus import Integrity, Principal, Walrus, WalrusError
from cloudlab.walrus.access import canonical_id
from cloudlab.walrus.base import decode_md5
from cloudlab.walrus.checksums import ALGORITHMS

log = logging.getLogger(__name__)

MAX_XML_BODY = 1024 * 1024
MAX_THREADS = 64
SMALL_BODY = 256 * 1024  # answers up to this size leave in one send with their headers
STREAMED_INPUT = frozenset({"PutObject", "UploadPart"})
_HEX64 = frozenset("0123456789abcdef")
#: Request ids (16 hex digits, as S3's): a random prefix per process and a counter, unique without a
#: system call per request (uuid4 reads the kernel's random pool every time).
_ID_PREFIX = secrets.token_hex(4).upper()
_ID_COUNTER = itertools.count()


def _request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFF:08X}"


class _Bounded:
    """At most ``length`` bytes of a socket file, so that a decoder never reads the next request."""

    def __init__(self, raw: Any, length: int) -> None:
        self._raw = raw
        self.remaining = length

    def read(self, size: int) -> bytes:
        data = self._raw.read(min(size, self.remaining)) if self.remaining > 0 else b""
        self.remaining -= len(data)
        return data

    def readinto(self, buffer: memoryview) -> int:
        if self.remaining <= 0:
            return 0
        got = self._raw.readinto(buffer[: min(len(buffer), self.remaining)])
        self.remaining -= got or 0
        return got or 0

    def readline(self, limit: int) -> bytes:
        data = self._raw.readline(min(limit, self.remaining)) if self.remaining > 0 else b""
        self.remaining -= len(data)
        return data


class _HttpChunked:
    """A body sent with ``Transfer-Encoding: chunked`` (as boto3 sends aws-chunked bodies over HTTPS)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._left = 0  # bytes left in the current HTTP chunk
        self._done = False

    @property
    def remaining(self) -> int:
        return 0 if self._done else 1

    def _next_chunk(self) -> bool:
        if self._done:
            return False
        if self._left == 0:
            line = self._raw.readline(4096)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise WalrusError("IncompleteBody", "Bad HTTP chunk size in a chunked request body") from None
            if size == 0:
                while self._raw.readline(4096) not in (b"\r\n", b"\n", b""):
                    pass  # HTTP trailers: none that S3 defines
                self._done = True
                return False
            self._left = size
        return True

    def read(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size and self._next_chunk():
            data = self._raw.read(min(size - len(out), self._left))
            if not data:
                raise WalrusError("IncompleteBody", "The chunked request body ended early")
            out += data
            self._left -= len(data)
            if self._left == 0 and self._raw.read(2) != b"\r\n":
                raise WalrusError("IncompleteBody", "An HTTP chunk is not followed by CRLF")
        return bytes(out)

    def readinto(self, buffer: memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, limit: int) -> bytes:
        out = bytearray()
        while len(out) < limit:
            byte = self.read(1)
            if not byte:
                break
            out += byte
            if byte == b"\n":
                break
        return bytes(out)


def _drained(stream: Any, limit: int = 64 * 1024) -> bool:
    """Read what an operation left of its body, up to ``limit`` bytes: the HTTP chunked terminator after an
    aws-chunked body (boto3 over HTTPS nests the two), else a next request on the kept-alive connection
    would begin with it. Whether the body is now read to its end."""
    while stream.remaining > 0 and limit > 0:
        data = stream.read(min(limit, 16 * 1024))
        if not data:
            break
        limit -= len(data)
    return stream.remaining <= 0


class Directory:
    """The cloud's users as S3 principals: by access key (with the secret), by name, by canonical id.

    Every signed request looks up its access key; the answers are kept while the users' database is
    unchanged (:meth:`Store.data_version`, read before each lookup, moves with any commit by anyone),
    so a key that is deactivated or a user who is disabled fails on the very next request, as before.
    Unknown keys are not kept (a client spraying made-up keys cannot fill memory).
    """

    MAX_KEPT = 4096

    def __init__(self, users: Any) -> None:
        self._users = users
        self._by_cid: dict[str, Principal] = {}
        store = getattr(users, "store", None)
        self._version: Callable[[], int] | None = getattr(store, "data_version", None)
        self._keys: dict[str, tuple[int, tuple[Principal, str]]] = {}

    def key(self, access_key: str) -> tuple[Principal, str] | None:
        version = self._version() if self._version is not None else None
        kept = self._keys.get(access_key) if version is not None else None
        if kept is not None and kept[0] == version:
            return kept[1]
        hit = self._users.authenticate(access_key)
        if hit is None:
            return None
        user, secret = hit
        found = Principal(user.name, user.user_id, user.is_admin), secret
        if version is not None:
            if len(self._keys) >= self.MAX_KEPT:
                self._keys.clear()
            self._keys[access_key] = (version, found)
        return found

    def named(self, name: str) -> Principal | None:
        user = self._users.get(name)
        return Principal(user.name, user.user_id, user.is_admin) if user else None

    def canonical(self, cid: str) -> Principal | None:
        if cid not in self._by_cid:
            self._by_cid = {
                canonical_id(u.user_id): Principal(u.name, u.user_id, u.is_admin) for u in self._users.list()
            }
        return self._by_cid.get(cid)


class S3Api:
    """Everything a request needs besides its socket: the engine, the users, the region, the domain."""

    def __init__(self, walrus: Walrus, users: Any, region: str, domain: str = DEFAULT_DOMAIN) -> None:
        self.walrus = walrus
        self.directory = Directory(users)
        self.lookup: KeyLookup = self.directory.key
        self.region = region
        self.domain = domain
        self.implemented = implemented()
        self.requests = 0
        self.errors = 0


def _integrity(headers: dict[str, str], auth: Authenticated, chunked: ChunkedBody | None) -> Integrity:
    integrity = Integrity()
    if "content-md5" in headers:
        integrity.content_md5 = decode_md5(headers["content-md5"])
    for algorithm in ALGORITHMS:
        value = headers.get(f"x-amz-checksum-{algorithm.lower()}")
        if value is not None:
            integrity.checksum_algorithm, integrity.checksum_value = algorithm, value
    trailer = headers.get("x-amz-trailer", "").strip().lower()
    if trailer.startswith("x-amz-checksum-") and chunked is not None:
        algorithm = trailer.removeprefix("x-amz-checksum-").upper()
        if algorithm not in ALGORITHMS:
            raise WalrusError("InvalidRequest", f"Unsupported trailer checksum {trailer!r}")
        integrity.checksum_algorithm, integrity.checksum_value = algorithm, chunked.trailer_checksum
    sdk = headers.get("x-amz-sdk-checksum-algorithm", "").upper()
    if sdk and integrity.checksum_algorithm is None:
        if sdk not in ALGORITHMS:
            raise WalrusError("InvalidRequest", f"Unsupported checksum algorithm {sdk!r}")
        integrity.checksum_algorithm = sdk
    declared = auth.payload_hash or ""
    if len(declared) == 64 and set(declared.lower()) <= _HEX64:
        integrity.content_sha256 = declared.lower()
    return integrity


class S3Handler(LeanRequestHandler):
    """One S3 connection. The whole-request deadline covers the request line and headers (a slow-loris
    client is cut off); an object body then streams for as long as it keeps moving (``timeout`` is the
    idle limit), since a gigabyte over a slow link legitimately takes longer than any fixed deadline."""

    api: S3Api
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 60
    server_version = "cloudlab-walrus"
    sys_version = ""

    # -- plumbing ---------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        return headers

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes = b"", length: int | None = None) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if not any(name.lower() == "content-length" for name, _ in headers):
            self.send_header("Content-Length", str(len(body) if length is None else length))
        if body and self.command != "HEAD" and len(body) <= SMALL_BODY:
            # Headers and a small body in one send: two sends cost a round of syscalls (and, with the
            # client's delayed ACK, more) per request, most of a small GET's time.
            self._headers_buffer.append(b"\r\n" + bytes(body))  # type: ignore[attr-defined]
            self.flush_headers()
            return
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, exc: CloudError, request_id: str, extra_headers: list[tuple[str, str]]) -> None:
        self.api.errors += 1
        status = exc.status
        extra = dict(getattr(exc, "extra", {}) or {})
        resource = getattr(exc, "resource", None)
        headers = [("x-amz-request-id", request_id), *extra_headers]
        if extra.get("delete_marker"):
            headers.append(("x-amz-delete-marker", "true"))
            if extra.get("version_id") and extra["version_id"] != "null":
                headers.append(("x-amz-version-id", extra["version_id"]))
        extra = {k: v for k, v in extra.items() if k[0].isupper()}
        if status == 304:
            self._send(304, headers)
            return
        body = b"" if self.command == "HEAD" else error_document(exc.code, exc.message, request_id, extra | (
            {"Resource": resource} if resource else {}))  # fmt: skip
        self._send(status, [("Content-Type", "application/xml"), *headers], body)

    # -- the request path -------------------------------------------------------------------------

    def _serve(self) -> None:
        self.server.end_deadline(self.connection)  # headers are in: from here the idle timeout governs
        request_id = _request_id()
        self.api.requests += 1
        headers = self._headers()
        parts = urlsplit(self.path)
        raw_path, raw_query = parts.path or "/", parts.query
        cors_headers: list[tuple[str, str]] = []
        body_left = True
        try:
            length_text = headers.get("content-length", "0")
            if not length_text.isdigit():
                raise WalrusError("InvalidArgument", "Content-Length must be a number")
            length = int(length_text)
            http_chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            body_left = length > 0 or http_chunked
            query = dict(split_form(raw_query))
            host = headers.get("host", "")
            target = split_target(host, raw_path, self.api.domain)
            virtual = target.bucket is not None and host.rsplit(":", 1)[0].lower().endswith("." + self.api.domain)
            if target.bucket and "origin" in headers:
                cors_headers = cors.response_headers(self.api.walrus.cors_rules(target.bucket), headers)
            if self.command == "OPTIONS":
                self._send(200, cors.preflight(self.api.walrus.cors_rules(target.bucket or ""), headers))
                return
            if (
                self.command == "POST"
                and target.key is None
                and headers.get("content-type", "").startswith("multipart/form-data")
            ):
                status, out_headers, body = post_object.handle(self.api, target.bucket or "", headers, self.rfile,
                                                               length)  # fmt: skip
                body_left = False
                self._send(status, [("x-amz-request-id", request_id), *cors_headers, *out_headers], body)
                return
            auth = authenticate(
                self.command, host, raw_path, raw_query, headers, self.api.lookup, self.api.region, target.bucket,
                virtual,
            )  # fmt: skip
            name = resolve_operation(self.command, target, query, headers, self.api.implemented)
            if name is None:
                raise WalrusError("NotImplemented", f"{self.command} {raw_path} with these parameters is not "
                                  "implemented by this store")  # fmt: skip
            op = operation_model(name)
            stream: Any = _HttpChunked(self.rfile) if http_chunked else _Bounded(self.rfile, length)
            chunked: ChunkedBody | None = None
            declared_size: int | None = length
            mode = auth.payload_hash or ""
            if mode in STREAMING or "aws-chunked" in headers.get("content-encoding", ""):
                decoded = headers.get("x-amz-decoded-content-length")
                declared_size = int(decoded) if decoded and decoded.isdigit() else None
                chunked = ChunkedBody(stream, mode or "STREAMING-UNSIGNED-PAYLOAD-TRAILER", auth.sigv4, declared_size,
                                      headers.get("x-amz-trailer"))  # fmt: skip
            if chunked is None and http_chunked:
                chunked_plain = stream
                body_iter: Any = iter(lambda: chunked_plain.read(1024 * 1024), b"")
            else:
                body_iter = chunked if chunked is not None else plain_body(stream, length)
            xml: bytes | None = None
            if name not in STREAMED_INPUT and body_left:
                if length > MAX_XML_BODY or http_chunked:
                    raise WalrusError("EntityTooLarge", "The request body is too large for this operation")
                xml = b"".join(bytes(chunk) for chunk in body_iter)
                body_left = False
            integrity = _integrity(headers, auth, chunked)
            if xml is not None:
                from cloudlab.walrus.base import verify_bytes

                verify_bytes(integrity, xml)
            params = parse_input(op, {"Bucket": target.bucket or "", "Key": target.key or ""}, query, headers, xml)
            call = S3Call(
                self.api.walrus, auth.principal, params, body_iter, integrity, declared_size,
                self.api.directory.named, self.api.directory.canonical,
            )  # fmt: skip
            output = OPERATIONS[name](call)
            body_left = body_left and not _drained(stream)
            if body_left:  # more than a framing's tail left unread: the next request's start is unknown
                self.close_connection = True
            status_override = output.pop("_status", None)
            status, out_headers, body = serialize_output(op, output)
            out_headers = [("x-amz-request-id", request_id), *cors_headers, *out_headers]
            if call.stream is not None:
                self._stream_object(status_override or status, out_headers, call.stream)
                return
            if status_override:
                status = status_override
            if body:
                out_headers.append(("Content-Type", "application/xml"))
            if name == "HeadObject" or name == "HeadBucket":
                self._send(status, out_headers, b"", length=int(output.get("ContentLength") or 0))
                return
            self._send(status, out_headers, body if isinstance(body, bytes) else b"")
        except CloudError as exc:
            if body_left:
                self.close_connection = True
            self._error(exc, request_id, cors_headers)
        except ApiError as exc:  # from the shared form decoder: a malformed query string
            self.close_connection = True
            self._error(WalrusError("InvalidArgument", exc.message), request_id, cors_headers)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("S3 request %s failed", request_id)
            self.close_connection = True
            self._error(WalrusError("InternalError", "We encountered an internal error. Please try again."),
                        request_id, cors_headers)  # fmt: skip

    def _stream_object(self, status: int, headers: list[tuple[str, str]], stream: tuple[Any, int, int]) -> None:
        data, first, last = stream
        with data:
            length = last - first + 1 if data.version.size else 0
            if data.inline is not None and self.command != "HEAD":
                self._send(status, headers, data.inline[first : last + 1])
                return
            self._send(status, headers, b"", length=length)
            if self.command == "HEAD" or length == 0:
                return
            self.wfile.flush()
            for fd, offset, count in data.pieces(first, last):
                with os.fdopen(os.dup(fd), "rb") as handle:
                    self.connection.sendfile(handle, offset, count)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_OPTIONS = _serve  # noqa: N815

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, oversized headers) in S3's envelope, not HTML."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            self.request_version = self.protocol_version
        body = error_document("BadRequest", message or explain or f"HTTP {code}", _request_id())
        with contextlib.suppress(OSError):
            self._send(code if 400 <= code < 500 else 400, [("Content-Type", "application/xml"),
                                                            ("Connection", "close")], body)  # fmt: skip

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if log.isEnabledFor(logging.DEBUG):  # not even the client's address is looked up otherwise
            log.debug("%s " + format, self.address_string(), *args)


class S3HTTPServer(HardenedHTTPServer):
    """The house's hardened server (bounded threads, header deadline) that stays quiet about hang-ups."""

    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up or stalls is normal traffic, not a traceback on stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            return
        log.exception("S3 connection from %s failed", client_address)


def serve_s3(
    walrus: Walrus, users: Any, region: str, host: str = "127.0.0.1", port: int = 0, domain: str = DEFAULT_DOMAIN,
    max_threads: int = MAX_THREADS, tls: ssl.SSLContext | None = None,
) -> S3HTTPServer:  # fmt: skip
    """Serve the S3 endpoint in a daemon thread (port 0 picks a free one: ``server.server_port``).

    With ``tls`` (a server-side SSL context) the endpoint speaks HTTPS; the handshake happens in the
    connection's own thread, so a slow client never holds up the accept loop.
    """
    api = S3Api(walrus, users, region, domain)
    handler = type("BoundS3Handler", (S3Handler,), {"api": api})
    try:
        server = S3HTTPServer((host, port), handler, max_threads=max_threads)
    except OSError as exc:
        raise CloudError("InvalidParameterValue", f"cannot listen on {host}:{port} for S3 ({exc.strerror})") from exc
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    server.api = api  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name="s3-api", daemon=True).start()
    return server


__all__ = ["Callable", "S3Api", "Target", "serve_s3"]
