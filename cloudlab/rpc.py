"""Signed messages between controllers, over an in-process or an HTTP transport.

Every hop (CLC→CC, CC→NC, NC→CC registration) carries a signed envelope and every reply is signed
by the receiver, so both directions are checked. The two transports differ only in how the bytes
travel: :class:`LocalChannel` hands them to the receiver's :class:`Dispatcher` in the same process,
:class:`HttpChannel` POSTs them; signing and verification are identical, so a test of one covers
the checks of the other.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import threading
import urllib.parse
from collections.abc import Callable, Collection
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

from cryptography import x509

from cloudlab.contract import HELLO, Action, decode, encode
from cloudlab.errors import CloudError, ControllerUnavailable
from cloudlab.httpserve import HardenedHTTPServer, HardenedRequestHandler, serve_in_thread
from cloudlab.security.ca import subject_identity
from cloudlab.security.messages import MessageRejected, MessageSigner, MessageVerifier, VerifiedMessage

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Rep = TypeVar("Rep")

Handler = Callable[[VerifiedMessage], Any]
TypedHandler = Callable[[Req, VerifiedMessage], Rep]
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
MESSAGE_IDLE_S = 15.0  # a controller connection that sends nothing for this long is closed


@dataclass(frozen=True)
class Route:
    handler: Handler
    allowed_roles: frozenset[str]
    unaddressed_ok: bool = False


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
        self.route(HELLO.name, lambda m: {}, HELLO.callers, unaddressed_ok=True)

    def serve(self, action: Action[Req, Rep], handler: TypedHandler[Req, Rep]) -> None:
        """Answer ``action`` with ``handler(request, message)``: the request decoded, the reply encoded."""

        def typed(message: VerifiedMessage) -> Any:
            request = decode(action.request, message.body, what=f"{action.name} request")
            return encode(handler(request, message))

        self.route(action.name, typed, action.callers, unaddressed_ok=action.unaddressed)

    def route(
        self, action: str, handler: Handler, allowed_roles: Collection[str], *, unaddressed_ok: bool = False
    ) -> None:
        """Answer ``action`` with ``handler(message)`` (untyped: for the transport's own tests)."""
        self._routes[action] = Route(handler, frozenset(allowed_roles), unaddressed_ok)

    def handle(self, data: bytes) -> bytes:
        action, nonce = _peek(data)
        route = self._routes.get(action)
        sender: str | None = None  # the reply is addressed to whoever the request is (or says it is) from
        try:
            if route is None:
                # Verify anyway so that garbage is refused as garbage, then report the unknown action.
                sender = self._verifier.verify(data, {"clc", "cc", "nc", "sc"}).sender
                raise CloudError("InvalidAction", f"{self.name} has no action {action[:64]!r}")
            message = self._verifier.verify(data, route.allowed_roles, unaddressed_ok=route.unaddressed_ok)
            sender = message.sender
            reply: dict[str, Any] = {"ok": True, "result": route.handler(message)}
        except MessageRejected as exc:
            self.refused.append(str(exc))
            del self.refused[:-100]
            log.warning("%s refused a message: %s", self.name, exc)
            sender = exc.sender or _claimed_name(data)
            reply = _error_reply("MessageRejected", str(exc))
        except CloudError as exc:
            reply = _error_reply(exc.code, exc.message)
        except Exception as exc:  # a handler bug must not kill the controller's server thread
            log.exception("%s: action %s failed", self.name, action[:64])
            reply = _error_reply("InternalError", f"{type(exc).__name__}: {exc}")
        # The reply quotes the request's nonce, so a requester can tell it answers *its* request.
        try:
            return self._signer.sign(f"{action[:64] or 'unknown'}.reply", reply, reply_to=nonce, to=sender)
        except (TypeError, ValueError) as exc:  # a result that is not JSON: still answer, and say so
            log.error("%s: the reply to %s could not be signed: %s", self.name, action[:64], exc)
            return self._signer.sign("unknown.reply", _error_reply("InternalError", "unsignable reply"), to=sender)


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


def _claimed_name(data: bytes) -> str | None:
    """The name in a refused message's certificate, unchecked (only to address the error reply)."""
    try:
        pem = json.loads(data).get("sender_cert")
        if not isinstance(pem, str) or len(pem) > 16 * 1024:
            return None
        return subject_identity(x509.load_pem_x509_certificate(pem.encode()))[0]
    except Exception:
        return None


_NONCE = re.compile(r"[0-9a-f]{32}")


class Channel(Protocol):
    """What a controller holds to talk to another one."""

    peer: str

    def call(self, action: str, body: dict[str, Any], timeout: float | None = None) -> Any: ...

    def ask(self, action: Action[Req, Rep], request: Req, timeout: float | None = None) -> Rep: ...


class _SignedChannel:
    """Signs each request, addressed to ``peer`` (the receiver's certificate name), and checks the reply.

    A channel made with ``peer=None`` first asks the receiver who it is (:data:`~cloudlab.contract.HELLO`,
    the one unaddressed action) and addresses everything after to the name in its signed answer.
    """

    def __init__(self, peer: str | None, peer_role: str, signer: MessageSigner, verifier: MessageVerifier) -> None:
        self.peer = peer or ""
        self._addressed = peer is not None
        self._peer_role = peer_role
        self._signer = signer
        self._verifier = verifier
        self._hello_lock = threading.Lock()
        # messages and bytes (request + reply) per action: what the scale benchmark reports as traffic
        self.traffic: dict[str, list[int]] = {}
        self._traffic_lock = threading.Lock()

    def _send(self, data: bytes, timeout: float | None) -> bytes:
        raise NotImplementedError

    def ask(self, action: Action[Req, Rep], request: Req, timeout: float | None = None) -> Rep:
        """Send ``request`` as ``action`` and return the reply decoded to the action's reply type."""
        result = self.call(action.name, encode(request), timeout)
        return decode(action.reply, result, what=f"{action.name} reply from {self.peer}")

    def call(self, action: str, body: dict[str, Any], timeout: float | None = None) -> Any:
        if not self._addressed and action != HELLO.name:
            self._learn_peer(timeout)
        to = self.peer if self._addressed else None
        return self._exchange(action, body, to, timeout)[0]

    def _learn_peer(self, timeout: float | None) -> None:
        with self._hello_lock:
            if self._addressed:
                return
            _, replier = self._exchange(HELLO.name, {}, None, timeout)
            self.peer, self._addressed = replier, True

    def _exchange(self, action: str, body: dict[str, Any], to: str | None, timeout: float | None) -> tuple[Any, str]:
        """Send one request; return its result and the name of whoever signed the reply."""
        sent = self._signer.seal(action, body, to=to)
        reply_bytes = self._send(sent.data, timeout)
        with self._traffic_lock:
            counted = self.traffic.setdefault(action, [0, 0])
            counted[0] += 1
            counted[1] += len(sent.data) + len(reply_bytes)
        try:
            verified = self._verifier.verify(reply_bytes, {self._peer_role}, in_reply_to=sent.nonce)
        except MessageRejected as exc:
            raise CloudError("MessageRejected", f"reply from {self.peer or 'the peer'} refused: {exc}") from exc
        if to is not None and verified.sender != to:
            raise CloudError("MessageRejected", f"the reply came from {verified.sender!r}, not from {to!r}")
        return self._result(verified.body), verified.sender

    def _result(self, reply: Any) -> Any:
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
        self.url = url
        self._host, self._port = parse_controller_url(url)
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


def parse_controller_url(url: object) -> tuple[str, int]:
    """(host, port) of a controller URL ``http://HOST[:PORT]`` (nothing after it); ValueError otherwise."""
    problem = f"controller URL must look like http://HOST:PORT, got {str(url)[:100]!r}"
    if not isinstance(url, str) or len(url) > 256:
        raise ValueError(problem)
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port or 80
    except ValueError:
        raise ValueError(problem) from None
    if parsed.scheme != "http" or not parsed.hostname or parsed.path not in ("", "/") or parsed.query:
        raise ValueError(problem)
    return parsed.hostname, port


class _MessageHandler(HardenedRequestHandler):
    dispatcher: Dispatcher
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # see cloudlab.api.server: two writes per answer otherwise wait ~40 ms
    timeout = MESSAGE_IDLE_S

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if self.path != "/message" or not 0 < length <= MAX_MESSAGE_BYTES:
            self._refuse(400, "POST a signed message of 1 byte to 32 MiB to /message (with its Content-Length)")
            return
        data = self.rfile.read(length)
        if len(data) != length:
            self._refuse(400, f"the message ended after {len(data)} of {length} bytes")
            return
        reply = self.dispatcher.handle(data)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self) -> None:  # noqa: N802
        self._refuse(405, "controllers take signed messages: POST them to /message")

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET  # noqa: N815

    def _refuse(self, status: int, message: str) -> None:
        """A clear answer for what is not even a message (unsigned: there is nothing to sign it for)."""
        body = json.dumps({"ok": False, "error": {"code": "InvalidRequest", "message": message}}).encode()
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a bad request line, huge headers) as JSON too."""
        if self.request_version == "HTTP/0.9":
            self.request_version = self.protocol_version
        with contextlib.suppress(OSError):
            self._refuse(code if 400 <= code < 500 else 400, message or explain or f"HTTP {code}")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep the log quiet
        log.debug("%s " + format, self.address_string(), *args)


def serve_http(dispatcher: Dispatcher, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Serve ``dispatcher`` over HTTP in a daemon thread; ``server.server_port`` tells the port."""
    handler = type("BoundMessageHandler", (_MessageHandler,), {"dispatcher": dispatcher})
    return serve_in_thread(HardenedHTTPServer((host, port), handler), f"rpc-{dispatcher.name}")
