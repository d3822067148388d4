"""Signed messages between controllers, over an in-process or an HTTP transport.

Every hop (CLC→CC, CC→NC, NC→CC registration) carries a signed envelope and every reply is signed
by the receiver, so both directions are checked. The two transports differ only in how the bytes
travel: :class:`LocalChannel` hands them to the receiver's :class:`Dispatcher` in the same process,
:class:`HttpChannel` POSTs them; signing and verification are identical, so a test of one covers
the checks of the other.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Callable, Collection
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

from cloudlab.contract import Action, decode, encode
from cloudlab.errors import CloudError, ControllerUnavailable
from cloudlab.security.messages import MessageRejected, MessageSigner, MessageVerifier, VerifiedMessage

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Rep = TypeVar("Rep")

Handler = Callable[[VerifiedMessage], Any]
TypedHandler = Callable[[Req, VerifiedMessage], Rep]
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Route:
    handler: Handler
    allowed_roles: frozenset[str]


class Dispatcher:
    """The receiving side of a controller: verifies, routes by action, signs the reply.

    A refused message reaches no handler, so it changes nothing; the refusal is logged and answered
    with a signed error reply naming the reason. Whatever arrives (garbage, a body that does not fit
    the action's dataclass, a handler that fails), the sender gets a reply, never a closed connection.
    """

    def __init__(self, name: str, signer: MessageSigner, verifier: MessageVerifier) -> None:
        self.name = name
        self._signer = signer
        self._verifier = verifier
        self._routes: dict[str, Route] = {}
        self.refused: list[str] = []

    def serve(self, action: Action[Req, Rep], handler: TypedHandler[Req, Rep]) -> None:
        """Answer ``action`` with ``handler(request, message)``: the request decoded, the reply encoded."""

        def typed(message: VerifiedMessage) -> Any:
            request = decode(action.request, message.body, what=f"{action.name} request")
            return encode(handler(request, message))

        self.route(action.name, typed, action.callers)

    def route(self, action: str, handler: Handler, allowed_roles: Collection[str]) -> None:
        """Answer ``action`` with ``handler(message)`` (untyped: for the transport's own tests)."""
        self._routes[action] = Route(handler, frozenset(allowed_roles))

    def handle(self, data: bytes) -> bytes:
        action, nonce = _peek(data)
        route = self._routes.get(action)
        try:
            if route is None:
                # Verify anyway so that garbage is refused as garbage, then report the unknown action.
                self._verifier.verify(data, {"clc", "cc", "nc"})
                raise CloudError("InvalidAction", f"{self.name} has no action {action[:64]!r}")
            message = self._verifier.verify(data, route.allowed_roles)
            reply: dict[str, Any] = {"ok": True, "result": route.handler(message)}
        except MessageRejected as exc:
            self.refused.append(str(exc))
            del self.refused[:-100]
            log.warning("%s refused a message: %s", self.name, exc)
            reply = _error_reply("MessageRejected", str(exc))
        except CloudError as exc:
            reply = _error_reply(exc.code, exc.message)
        except Exception as exc:  # a handler bug must not kill the controller's server thread
            log.exception("%s: action %s failed", self.name, action[:64])
            reply = _error_reply("InternalError", f"{type(exc).__name__}: {exc}")
        # The reply quotes the request's nonce, so a requester can tell it answers *its* request.
        try:
            return self._signer.sign(f"{action[:64] or 'unknown'}.reply", reply, reply_to=nonce)
        except (TypeError, ValueError) as exc:  # a result that is not JSON: still answer, and say so
            log.error("%s: the reply to %s could not be signed: %s", self.name, action[:64], exc)
            return self._signer.sign("unknown.reply", _error_reply("InternalError", "unsignable reply"))


def _error_reply(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message[:1024]}}


def _peek(data: bytes) -> tuple[str, str | None]:
    """The claimed action and nonce of a message, before (or without) verifying it."""
    try:
        envelope = json.loads(data)
        action, nonce = envelope.get("action", ""), envelope.get("nonce")
        return (
            action if isinstance(action, str) else "",
            nonce if isinstance(nonce, str) and _NONCE.fullmatch(nonce) else None,
        )
    except Exception:
        return "", None


_NONCE = re.compile(r"[0-9a-f]{32}")


class Channel(Protocol):
    """What a controller holds to talk to another one."""

    peer: str

    def call(self, action: str, body: dict[str, Any], timeout: float | None = None) -> Any: ...

    def ask(self, action: Action[Req, Rep], request: Req, timeout: float | None = None) -> Rep: ...


class _SignedChannel:
    def __init__(self, peer: str, peer_role: str, signer: MessageSigner, verifier: MessageVerifier) -> None:
        self.peer = peer
        self._peer_role = peer_role
        self._signer = signer
        self._verifier = verifier

    def _send(self, data: bytes, timeout: float | None) -> bytes:
        raise NotImplementedError

    def ask(self, action: Action[Req, Rep], request: Req, timeout: float | None = None) -> Rep:
        """Send ``request`` as ``action`` and return the reply decoded to the action's reply type."""
        result = self.call(action.name, encode(request), timeout)
        return decode(action.reply, result, what=f"{action.name} reply from {self.peer}")

    def call(self, action: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        sent = self._signer.seal(action, body)
        reply_bytes = self._send(sent.data, timeout)
        try:
            reply = self._verifier.verify(reply_bytes, {self._peer_role}, in_reply_to=sent.nonce).body
        except MessageRejected as exc:
            raise CloudError("MessageRejected", f"reply from {self.peer} refused: {exc}") from exc
        if not isinstance(reply, dict) or "ok" not in reply:
            raise CloudError("InternalError", f"malformed reply from {self.peer}")
        if reply["ok"]:
            return reply.get("result")
        error = reply.get("error") or {}
        raise CloudError(str(error.get("code", "InternalError")), str(error.get("message", "")))


class LocalChannel(_SignedChannel):
    """Same-process transport: the bytes go straight to the receiver's dispatcher."""

    def __init__(
        self, peer: str, peer_role: str, signer: MessageSigner, verifier: MessageVerifier, dispatcher: Dispatcher
    ) -> None:
        super().__init__(peer, peer_role, signer, verifier)
        self._dispatcher = dispatcher

    def _send(self, data: bytes, timeout: float | None) -> bytes:
        return self._dispatcher.handle(data)


class HttpChannel(_SignedChannel):
    """HTTP transport: POST the envelope to ``<url>/message``; the reply body is the signed reply."""

    def __init__(
        self,
        peer: str,
        peer_role: str,
        signer: MessageSigner,
        verifier: MessageVerifier,
        url: str,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(peer, peer_role, signer, verifier)
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"controller URL must look like http://HOST:PORT, got {url!r}")
        self.url = url
        self._host = parsed.hostname
        self._port = parsed.port or 80
        self._timeout = timeout

    def _send(self, data: bytes, timeout: float | None) -> bytes:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout or self._timeout)
        try:
            conn.request("POST", "/message", body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.read(MAX_MESSAGE_BYTES)
        except OSError as exc:
            raise ControllerUnavailable(f"{self.peer} at {self.url} is unreachable: {exc}") from exc
        finally:
            conn.close()


class _MessageHandler(BaseHTTPRequestHandler):
    dispatcher: Dispatcher
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # see cloudlab.api.server: two writes per answer otherwise wait ~40 ms

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        if self.path != "/message" or length <= 0 or length > MAX_MESSAGE_BYTES:
            self.send_error(400, "POST a signed message to /message")
            return
        reply = self.dispatcher.handle(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep the log quiet
        log.debug("%s " + format, self.address_string(), *args)


class BurstTolerantHTTPServer(ThreadingHTTPServer):
    """socketserver's listen backlog of 5 makes a burst of calls stall for a second (SYN retry) or
    fail with ECONNRESET; a controller takes bursts (a scheduler fan-out, 100 instances at once)."""

    request_queue_size = 128
    daemon_threads = True


def serve_http(dispatcher: Dispatcher, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Serve ``dispatcher`` over HTTP in a daemon thread; ``server.server_port`` tells the port."""
    handler = type("BoundMessageHandler", (_MessageHandler,), {"dispatcher": dispatcher})
    server = BurstTolerantHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"rpc-{dispatcher.name}", daemon=True).start()
    return server
