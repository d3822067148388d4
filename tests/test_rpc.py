"""Signed request/reply between controllers (cloudlab.rpc), over the in-process and the HTTP transport."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlab.errors import CloudError, ControllerUnavailable
from cloudlab.rpc import Dispatcher, HttpChannel, LocalChannel, serve_http
from cloudlab.security.ca import CertificateAuthority
from cloudlab.security.messages import MessageRejected, MessageSigner, MessageVerifier, VerifiedMessage

Pair = tuple[MessageSigner, MessageVerifier]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("rpc") / "pki")


@pytest.fixture(scope="module")
def pair(ca: CertificateAuthority) -> Callable[[str, str], Pair]:
    def make(name: str, role: str) -> Pair:
        # as every controller has them: messages must be addressed to it and sent after it started
        return MessageSigner(ca.identity(name, role)), MessageVerifier(
            ca.ca_certificate, receiver=name, not_before=time.time() - 60
        )

    return make


class Server:
    """A CC-like dispatcher with a few routes, and a record of what its handlers saw."""

    def __init__(self, pair: Callable[[str, str], Pair]) -> None:
        signer, verifier = pair("cc-test", "cc")
        self.dispatcher = Dispatcher("cc-test", signer, verifier)
        self.seen: list[VerifiedMessage] = []
        self.dispatcher.route("echo", self.echo, {"clc"})
        self.dispatcher.route("not_found", self.not_found, {"clc"})
        self.dispatcher.route("crash", self.crash, {"clc"})
        self.dispatcher.route("register", self.echo, {"nc"})

    def echo(self, message: VerifiedMessage) -> Any:
        self.seen.append(message)
        return {"echo": message.body, "from": [message.sender, message.role]}

    def not_found(self, message: VerifiedMessage) -> Any:
        self.seen.append(message)
        raise CloudError("InvalidInstanceID.NotFound", "The instance ID 'i-0123456789abcdef0' does not exist")

    def crash(self, message: VerifiedMessage) -> Any:
        self.seen.append(message)
        raise KeyError("instance_id")


@pytest.fixture(scope="module")
def shared_server(pair: Callable[[str, str], Pair]) -> Server:
    return Server(pair)


@pytest.fixture
def server(shared_server: Server) -> Server:
    """The module's server with a clean record (one server, because stopping an HTTP server takes 0.5 s)."""
    shared_server.seen.clear()
    shared_server.dispatcher.refused.clear()
    return shared_server


@pytest.fixture(scope="module")
def http_url(shared_server: Server) -> Iterator[str]:
    httpd = serve_http(shared_server.dispatcher)
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def local(
    server: Server, pair: Callable[[str, str], Pair], name: str = "clc", role: str = "clc", peer_role: str = "cc"
) -> LocalChannel:
    signer, verifier = pair(name, role)
    return LocalChannel("cc-test", peer_role, signer, verifier, server.dispatcher)


def remote(
    url: str,
    pair: Callable[[str, str], Pair],
    name: str = "clc",
    role: str = "clc",
    peer_role: str = "cc",
    timeout: float = 5.0,
    peer: str | None = "cc-test",
) -> HttpChannel:
    signer, verifier = pair(name, role)
    return HttpChannel(peer, peer_role, signer, verifier, url, timeout=timeout)


@pytest.fixture(params=["local", "http"])
def channel_for(request: pytest.FixtureRequest, server: Server, pair: Callable[[str, str], Pair]) -> Callable[..., Any]:
    """Build a channel to ``server`` over the transport under test."""
    if request.param == "local":
        return lambda **kw: local(server, pair, **kw)
    url = request.getfixturevalue("http_url")
    return lambda **kw: remote(url, pair, **kw)


# -- the happy path ------------------------------------------------------------------------------------------


def test_call_returns_the_handlers_result_with_the_verified_sender(
    channel_for: Callable[..., Any], server: Server
) -> None:
    body = {"n": 1, "nested": {"list": [1, "two", None]}}
    assert channel_for().call("echo", body) == {"echo": body, "from": ["clc", "clc"]}
    (message,) = server.seen
    assert (message.action, message.sender, message.role, message.body) == ("echo", "clc", "clc", body)


def test_the_reply_is_signed_by_the_receiver_and_quotes_the_request(
    server: Server, pair: Callable[[str, str], Pair]
) -> None:
    signer, verifier = pair("clc", "clc")
    sent = signer.seal("echo", {"x": 1}, to="cc-test")
    reply_bytes = server.dispatcher.handle(sent.data)
    reply = verifier.verify(reply_bytes, {"cc"}, in_reply_to=sent.nonce)
    assert reply.action == "echo.reply"
    assert reply.sender == "cc-test" and reply.role == "cc"
    assert reply.reply_to == sent.nonce
    assert reply.body == {"ok": True, "result": {"echo": {"x": 1}, "from": ["clc", "clc"]}}
    # the same reply does not answer another request
    other = signer.seal("echo", {"x": 2}, to="cc-test")
    with pytest.raises(MessageRejected) as excinfo:
        MessageVerifier(verifier.ca_certificate).verify(reply_bytes, {"cc"}, in_reply_to=other.nonce)
    assert excinfo.value.reason == "unexpected-reply"


class StaleReplies:
    """A transport that answers every request after the first with the first reply (a replayed answer)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.first: bytes | None = None

    def handle(self, data: bytes) -> bytes:
        reply = self.dispatcher.handle(data)
        if self.first is None:
            self.first = reply
        return self.first


def test_the_channel_refuses_a_reply_to_another_request(server: Server, pair: Callable[[str, str], Pair]) -> None:
    signer, verifier = pair("clc", "clc")
    channel = LocalChannel("cc-test", "cc", signer, verifier, StaleReplies(server.dispatcher))  # type: ignore[arg-type]
    assert channel.call("echo", {"n": 1})["echo"] == {"n": 1}
    with pytest.raises(CloudError) as excinfo:
        channel.call("echo", {"n": 2})
    assert excinfo.value.code == "MessageRejected"
    assert "unexpected-reply" in excinfo.value.message


# -- errors ---------------------------------------------------------------------------------------------------


def test_unknown_action_is_invalid_action(channel_for: Callable[..., Any], server: Server) -> None:
    with pytest.raises(CloudError) as excinfo:
        channel_for().call("fly_to_the_moon", {})
    assert excinfo.value.code == "InvalidAction"
    assert "fly_to_the_moon" in excinfo.value.message
    assert server.seen == []


def test_unknown_action_from_an_untrusted_sender_is_refused_as_such(channel_for: Callable[..., Any]) -> None:
    with pytest.raises(CloudError) as excinfo:
        channel_for(name="mallory", role="user").call("fly_to_the_moon", {})
    assert excinfo.value.code == "MessageRejected"


def test_a_cloud_error_in_the_handler_keeps_its_code_and_message(channel_for: Callable[..., Any]) -> None:
    with pytest.raises(CloudError) as excinfo:
        channel_for().call("not_found", {})
    assert excinfo.value.code == "InvalidInstanceID.NotFound"
    assert excinfo.value.message == "The instance ID 'i-0123456789abcdef0' does not exist"


def test_an_unexpected_handler_exception_is_internal_error_and_the_server_lives_on(
    channel_for: Callable[..., Any], server: Server
) -> None:
    channel = channel_for()
    for _ in range(2):
        with pytest.raises(CloudError) as excinfo:
            channel.call("crash", {})
        assert excinfo.value.code == "InternalError"
        assert "KeyError" in excinfo.value.message
    assert channel.call("echo", {"still": "alive"})["echo"] == {"still": "alive"}
    assert len(server.seen) == 3


def test_a_sender_with_the_wrong_role_reaches_no_handler(channel_for: Callable[..., Any], server: Server) -> None:
    for name, role in (("node-01", "nc"), ("alice", "user"), ("cc-other", "cc")):
        with pytest.raises(CloudError) as excinfo:
            channel_for(name=name, role=role).call("echo", {"x": 1})
        assert excinfo.value.code == "MessageRejected"
        assert "role-not-allowed" in excinfo.value.message
    with pytest.raises(CloudError):
        channel_for().call("register", {})  # only an NC may register; the CLC may not
    assert server.seen == []
    assert len(server.dispatcher.refused) == 4
    assert channel_for(name="node-01", role="nc").call("register", {"u": 1})["from"] == ["node-01", "nc"]


def test_a_reply_signed_by_the_wrong_role_is_refused(channel_for: Callable[..., Any], server: Server) -> None:
    # the server is a CC; a caller that expects to talk to a node must not accept the CC's answer
    with pytest.raises(CloudError) as excinfo:
        channel_for(peer_role="nc").call("echo", {"x": 1})
    assert excinfo.value.code == "MessageRejected"
    assert "role-not-allowed" in excinfo.value.message


def test_a_reply_from_a_foreign_ca_is_refused(
    tmp_path: Path, ca: CertificateAuthority, pair: Callable[[str, str], Pair]
) -> None:
    # an impostor that trusts our CA (so it accepts and answers the request) but signs with a look-alike
    # identity from its own CA: same name, same role, different issuer
    foreign = CertificateAuthority.load_or_create(tmp_path / "foreign-pki")
    answered: list[str] = []
    impostor = Dispatcher(
        "cc-test", MessageSigner(foreign.identity("cc-test", "cc")), MessageVerifier(ca.ca_certificate)
    )
    impostor.route("echo", lambda m: answered.append(m.sender) or "hello", {"clc"})
    signer, verifier = pair("clc", "clc")
    with pytest.raises(CloudError) as excinfo:
        LocalChannel("cc-test", "cc", signer, verifier, impostor).call("echo", {})
    assert answered == ["clc"]  # the request went through; only the answer is refused
    assert excinfo.value.code == "MessageRejected"
    assert "untrusted-certificate" in excinfo.value.message


# -- HTTP specifics -------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_channel_to_a_closed_port_is_controller_unavailable(pair: Callable[[str, str], Pair]) -> None:
    channel = remote(f"http://127.0.0.1:{_free_port()}", pair)
    with pytest.raises(ControllerUnavailable) as excinfo:
        channel.call("echo", {})
    assert excinfo.value.code == "Unavailable" and excinfo.value.status == 503
    assert "unreachable" in excinfo.value.message


def test_http_channel_to_a_server_that_never_answers_times_out(pair: Callable[[str, str], Pair]) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts connections into the backlog, never reads or answers
        channel = remote(f"http://127.0.0.1:{listener.getsockname()[1]}", pair, timeout=0.3)
        with pytest.raises(ControllerUnavailable) as excinfo:
            channel.call("echo", {})
        assert "timed out" in excinfo.value.message  # the channel's own timeout ended the wait, nothing else


@pytest.mark.parametrize("url", ["https://127.0.0.1:1", "127.0.0.1:8000", "http://"])
def test_http_channel_wants_an_http_url(url: str, pair: Callable[[str, str], Pair]) -> None:
    signer, verifier = pair("clc", "clc")
    with pytest.raises(ValueError):
        HttpChannel("cc", "cc", signer, verifier, url)


def _post(url: str, path: str, data: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_http_server_refuses_garbage_and_keeps_serving(
    server: Server, http_url: str, pair: Callable[[str, str], Pair]
) -> None:
    status, _ = _post(http_url, "/elsewhere", b"{}")
    assert status == 400
    status, body = _post(http_url, "/message", b"\xff not json")
    assert status == 200
    reply = MessageVerifier(pair("clc", "clc")[1].ca_certificate).verify(body, {"cc"}).body
    assert reply["ok"] is False and reply["error"]["code"] == "MessageRejected"
    assert server.seen == []
    assert remote(http_url, pair).call("echo", {"a": 1})["echo"] == {"a": 1}


def _burst(channel: HttpChannel, n: int) -> tuple[list[Any], list[BaseException]]:
    results: list[Any] = []
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            answer = channel.call("echo", {"i": i})
            results.append(answer["echo"]["i"] if "echo" in answer else answer["i"])
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results, errors


def test_http_server_handles_concurrent_calls(server: Server, http_url: str, pair: Callable[[str, str], Pair]) -> None:
    results, errors = _burst(remote(http_url, pair), 8)
    assert errors == []
    assert sorted(results) == list(range(8))


def test_http_server_takes_a_burst_of_connections(pair: Callable[[str, str], Pair]) -> None:
    """A CC with dozens of NCs (re-registering together after a restart) or a busy CLC opens many
    connections at once. With socketserver's default listen backlog of 5, a burst of 32 stalls ~1 s
    on SYN retransmits and now and then fails with ECONNRESET (ControllerUnavailable)."""
    signer, verifier = pair("cc-burst", "cc")
    dispatcher = Dispatcher("cc-burst", signer, verifier)
    dispatcher.route("echo", lambda m: m.body, {"clc"})
    httpd = serve_http(dispatcher)
    try:
        assert httpd.request_queue_size >= 32  # the listen() backlog
        results, errors = _burst(remote(f"http://127.0.0.1:{httpd.server_port}", pair, peer="cc-burst"), 32)
        assert errors == []
        assert len(results) == 32
    finally:
        httpd.shutdown()
        httpd.server_close()
