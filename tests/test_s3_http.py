"""The S3 endpoint's own request-line and header parser (cloudlab.httpserve.LeanRequestHandler): the stdlib's
limits and refusals (in S3's XML envelope), keep-alive and Connection: close, and Headers' lookups."""

from __future__ import annotations

import socket

from cloudlab.httpserve import MAX_HEADERS, Headers
from tests.s3_fixtures import S3Endpoint, s3  # noqa: F401


def _exchange(endpoint: S3Endpoint, raw: bytes, answers: int = 1) -> list[bytes]:
    """Send ``raw`` on one connection; read until ``answers`` responses (or the server closes)."""
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=30) as conn:
        conn.sendall(raw)
        data = b""
        while data.count(b"HTTP/1.1 ") < answers or not data.endswith((b">", b"\r\n\r\n")):
            got = conn.recv(65536)
            if not got:
                break
            data += got
    return [b"HTTP/1.1 " + part for part in data.split(b"HTTP/1.1 ")[1:]]


def test_keep_alive_serves_several_requests_on_one_connection(s3: S3Endpoint) -> None:  # noqa: F811
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answers = _exchange(s3, request * 3, answers=3)
    assert len(answers) == 3
    assert all(a.startswith(b"HTTP/1.1 403") and b"<Code>AccessDenied</Code>" in a for a in answers)


def test_connection_close_is_honoured(s3: S3Endpoint) -> None:  # noqa: F811
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answers = _exchange(s3, request * 2, answers=2)
    assert len(answers) == 1  # the second request was never read: the server closed after the first


def test_too_many_headers_a_too_long_line_and_a_bad_line_are_refused_in_s3s_envelope(
    s3: S3Endpoint,  # noqa: F811
) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    (answer,) = _exchange(s3, b"GET / HTTP/1.1\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431") and b"<Code>BadRequest</Code>" in answer
    (answer,) = _exchange(s3, b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431")
    (answer,) = _exchange(s3, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") and b"<Code>BadRequest</Code>" in answer
    (answer,) = _exchange(s3, b"GET / HTTP/2.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400") or answer.startswith(b"HTTP/1.1 505")


def test_headers_are_case_insensitive_ordered_and_keep_every_value() -> None:
    headers = Headers([("Host", "a"), ("X-Amz-Meta-K", "1"), ("x-amz-meta-k", "2"), ("Content-Length", "0")])
    assert headers.get("host") == "a" and headers["HOST"] == "a" and headers.get("missing", "d") == "d"
    assert headers.get("X-AMZ-META-K") == "1" and headers.get_all("x-amz-meta-k") == ["1", "2"]
    assert headers.items()[1:3] == [("X-Amz-Meta-K", "1"), ("x-amz-meta-k", "2")]
    assert "content-length" in headers and "Nope" not in headers and len(headers) == 4
