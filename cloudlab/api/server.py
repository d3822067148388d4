"""The EC2 Query endpoint over HTTP: request → authenticate → parse by shape → action → serialise.

Everything here is generic over the EC2 service model; an action only has to exist in
:mod:`cloudlab.api.actions`. Any failure becomes EC2's error envelope with the right status; an
unexpected exception is logged and answered as ``InternalError`` without a traceback to the client.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from cloudlab.api import actions
from cloudlab.api.dryrun import dry_run
from cloudlab.api.errors import ApiError
from cloudlab.api.model import operation_model, operation_names
from cloudlab.api.protocol import parse_body, parse_request, serialize_error, serialize_response
from cloudlab.api.sigv4 import authenticate
from cloudlab.api.version import check_version
from cloudlab.clc.cloud import CloudController
from cloudlab.clc.users import User
from cloudlab.errors import CloudError
from cloudlab.httpserve import HardenedHTTPServer, HardenedRequestHandler, serve_in_thread

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # EC2 refuses larger query requests too
API_VERSION = "2016-11-15"


class Ec2Api:
    """The protocol pipeline, independent of the HTTP server so that tests can drive it directly."""

    def __init__(self, clc: CloudController, status: Callable[[], dict[str, Any]] | None = None) -> None:
        self.clc = clc
        self.status = status
        self.requests = 0
        self.errors = 0

    def _authenticate(
        self,
        method: str,
        host: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        params: dict[str, str],
    ) -> User:
        found: dict[str, User] = {}

        def secret_for(access_key: str) -> str | None:
            hit = self.clc.users.authenticate(access_key)
            if hit is None:
                return None
            found["user"] = hit[0]
            return hit[1]

        authenticate(method, host, path, query, headers, body, params, secret_for, region=self.clc.region)
        if "user" not in found:
            raise ApiError("AuthFailure", "AWS was not able to validate the provided access credentials")
        return found["user"]

    def service_status(self, target: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """``GET /_cloudlab/health`` and ``/_cloudlab/status``: (HTTP status, JSON answer).

        Unsigned, both say only that the service answers (all a health check needs): the full
        status names the service's PID, the cluster controller's URL and every node, which is the
        administrator's to know. A request SigV4-signed by the admin (``cloudlab status`` signs
        with the admin's key from the state folder) gets it; one signed by anyone else is refused.
        """
        parts = urlsplit(target)
        signed = "authorization" in headers or "X-Amz-Signature=" in parts.query
        if not signed or self.status is None or parts.path.rstrip("/").endswith("health"):
            return 200, {"ok": True}
        try:
            params = parse_body(None, b"", parts.query)
            user = self._authenticate("GET", headers.get("host", ""), parts.path, parts.query, headers, b"", params)
        except (ApiError, CloudError) as exc:
            return exc.status, {"ok": False, "error": exc.code, "message": exc.message}
        if not user.is_admin:
            return 403, {"ok": False, "error": "UnauthorizedOperation", "message": "the status is the admin's"}
        return 200, self.status()

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """Answer one HTTP request: (status, XML body)."""
        request_id = str(uuid.uuid4())
        self.requests += 1
        try:
            parts = urlsplit(target)
            params = parse_body(headers.get("content-type"), body if method == "POST" else b"", parts.query)
            name = params.get("Action")
            if not name:
                raise ApiError("MissingAction", "The request must contain the parameter Action")
            user = self._authenticate(
                method, headers.get("host", ""), parts.path or "/", parts.query, headers, body, params
            )
            check_version(params.get("Version"))
            handler = actions.ACTIONS.get(name)
            if handler is None:
                if name in operation_names():
                    raise ApiError("UnsupportedOperation", f"The action {name} is not supported by this cloud yet")
                raise ApiError("InvalidAction", f"The action {name} is not valid for this web service.")
            op = operation_model(name)
            request = parse_request(op, params)
            ctx = actions.Context(self.clc, user, request_id, headers.get("host", ""))
            if request.get("DryRun"):
                dry_run(ctx, name, request)
            output = handler(ctx, request)
            return 200, serialize_response(op, output or {}, request_id)
        except ApiError as exc:
            self.errors += 1
            return exc.status, serialize_error(exc.code, exc.message, request_id)
        except CloudError as exc:
            self.errors += 1
            status = exc.status if exc.code not in ("Unavailable", "MessageRejected") else 503
            return status, serialize_error(exc.code, exc.message, request_id)
        except Exception as exc:
            self.errors += 1
            log.exception("request %s failed", request_id)
            return 500, serialize_error(
                "InternalError", f"An internal error has occurred ({type(exc).__name__})", request_id
            )


class _Handler(HardenedRequestHandler):
    api: Ec2Api
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle's algorithm and the client's delayed ACK
    # every answer waited ~40 ms. TCP_NODELAY sends them at once.
    disable_nagle_algorithm = True
    timeout = 30  # seconds a client may stay silent before its connection is dropped (the whole request
    # must arrive within the server's request deadline: see cloudlab.httpserve)
    server_version = "cloudlab"
    sys_version = ""

    def _answer(self, status: int, body: bytes, content_type: str = "text/xml;charset=UTF-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, method: str) -> None:
        started = time.perf_counter()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._answer(
                413 if length > 0 else 400,
                serialize_error(
                    "InvalidParameterValue", f"request body must be 0..{MAX_BODY_BYTES} bytes", str(uuid.uuid4())
                ),
            )
            return
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            self._drain_and_refuse(
                400, "IncompleteRequest", f"the request body ended after {len(body)} of {length} bytes"
            )
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        if method == "GET" and urlsplit(self.path).path.rstrip("/") in ("/_cloudlab/status", "/_cloudlab/health"):
            code, info = self.api.service_status(self.path, headers)
            self._answer(code, json.dumps(info, default=str).encode(), "application/json")
            return
        status, payload = self.api.handle(method, self.path, headers, body)
        self._answer(status, payload)
        log.debug("%s %s -> %d in %.1f ms", method, self.path[:80], status, (time.perf_counter() - started) * 1e3)

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def _unsupported_method(self) -> None:
        self._drain_and_refuse(405, "InvalidHttpRequest", f"The EC2 Query API takes GET and POST, not {self.command}")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _unsupported_method  # noqa: N815

    def _drain_and_refuse(self, status: int, code: str, message: str) -> None:
        self.close_connection = True
        self._answer(status, serialize_error(code, message, str(uuid.uuid4())))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, oversized headers) in EC2's envelope, not HTML."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # an unparsable request line: answer with a full status line
            self.request_version = self.protocol_version
        body = serialize_error("InvalidHttpRequest", message or explain or f"HTTP {code}", str(uuid.uuid4()))
        try:
            self.send_response(code if 400 <= code < 500 else 400)
            self.send_header("Content-Type", "text/xml;charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


def serve_api(
    clc: CloudController, host: str, port: int, status: Callable[[], dict[str, Any]] | None = None
) -> ThreadingHTTPServer:
    """Serve the EC2 endpoint in a daemon thread. Port 0 picks a free port (``server.server_port``)."""
    api = Ec2Api(clc, status)
    handler = type("BoundEc2Handler", (_Handler,), {"api": api})
    try:
        server = HardenedHTTPServer((host, port), handler)
    except OSError as exc:
        raise CloudError(
            "InvalidParameterValue",
            f"cannot listen on {host}:{port} ({exc.strerror}): another program uses it; "
            "choose another port with 'cloudlab up --port N' (0 picks a free one)",
        ) from exc
    server.api = api  # type: ignore[attr-defined]
    return serve_in_thread(server, "ec2-api")


__all__ = ["API_VERSION", "Ec2Api", "serve_api"]
