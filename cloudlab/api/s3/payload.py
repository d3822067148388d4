"""Request bodies as streams of chunks: plain (Content-Length) and the aws-chunked encodings.

aws-chunked frames the object as ``hex-size[;chunk-signature=SIG]\\r\\n DATA \\r\\n`` ... ``0...\\r\\n``,
optionally followed by trailing headers (a checksum computed while sending) and a blank line:

* ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``: every chunk signed, each signature chained to the one
  before, starting from the request's own signature (so a chunk cannot be changed, dropped or moved);
* ``STREAMING-UNSIGNED-PAYLOAD-TRAILER``: what current boto3 sends by default, unsigned chunks and a
  trailer such as ``x-amz-checksum-crc32:...`` (the checksum is what protects the bytes);
* ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER``: signed chunks and a signed trailer.

Each decoder yields the decoded bytes as they arrive (at most :data:`CHUNK` at a time), checks every
signature before it yields the chunk's bytes, and raises at the end if the decoded length differs
from ``x-amz-decoded-content-length``. The trailer's values are available once the stream is done,
which is when the engine checks the checksum (before anything is committed).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from typing import BinaryIO

from cloudlab.api.sigv4 import Sigv4Check
from cloudlab.walrus.errors import WalrusError

CHUNK = 1024 * 1024
MAX_LINE = 4096
MAX_CHUNK = 64 * 1024 * 1024
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING = frozenset({SIGNED, SIGNED_TRAILER, UNSIGNED_TRAILER})


def _incomplete(message: str) -> WalrusError:
    return WalrusError("IncompleteBody", message)


def plain_body(stream: BinaryIO, length: int) -> Iterator[memoryview]:
    """Exactly ``length`` bytes of ``stream`` in chunks (IncompleteBody if the client stops early)."""
    buffer = bytearray(min(CHUNK, max(length, 1)))
    view = memoryview(buffer)
    remaining = length
    while remaining > 0:
        want = min(len(buffer), remaining)
        got = stream.readinto(view[:want])  # type: ignore[attr-defined]
        if not got:
            raise _incomplete(f"The request body ended after {length - remaining} of {length} bytes")
        remaining -= got
        yield view[:got]


class ChunkedBody:
    """An aws-chunked body: iterate for the decoded bytes; :attr:`trailers` once iteration is done."""

    def __init__(
        self, stream: BinaryIO, mode: str, check: Sigv4Check | None, decoded_length: int | None, trailer: str | None
    ) -> None:
        if mode in (SIGNED, SIGNED_TRAILER) and check is None:
            raise WalrusError("InvalidRequest", f"{mode} needs a SigV4 signature in the Authorization header")
        self._stream = stream
        self._mode = mode
        self._check = check
        self._previous = check.signature if check else ""
        self._decoded_length = decoded_length
        self._trailer = trailer.lower() if trailer else None
        self.trailers: dict[str, str] = {}
        self.done = False

    def _line(self) -> bytes:
        line = self._stream.readline(MAX_LINE)
        if not line.endswith(b"\n"):
            raise _incomplete("The aws-chunked body ended in the middle of a chunk header")
        return line.rstrip(b"\r\n")

    def _verify_chunk(self, signature: str | None, digest: str) -> None:
        if self._mode == UNSIGNED_TRAILER:
            return
        check = self._check
        assert check is not None
        if signature is None:
            raise WalrusError("SignatureDoesNotMatch", "An aws-chunked chunk is missing its chunk-signature")
        to_sign = (
            f"AWS4-HMAC-SHA256-PAYLOAD\n{check.amz_date}\n{check.scope}\n{self._previous}\n{_EMPTY_SHA256}\n{digest}"
        )
        expected = hmac.new(check.key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise WalrusError(
                "SignatureDoesNotMatch", "The chunk signature we calculated does not match the one you provided."
            )
        self._previous = expected

    def __iter__(self) -> Iterator[bytes | memoryview]:
        total = 0
        signed = self._mode != UNSIGNED_TRAILER
        while True:
            header = self._line()
            size_text, _, extension = header.partition(b";")
            try:
                size = int(size_text.strip(), 16)
            except ValueError:
                raise _incomplete(f"Bad aws-chunked chunk size {size_text[:20]!r}") from None
            if size < 0 or size > MAX_CHUNK:
                raise _incomplete("aws-chunked chunk too large")
            signature = None
            if extension.startswith(b"chunk-signature="):
                signature = extension[len(b"chunk-signature=") :].decode("ascii", "replace")
            digest = hashlib.sha256() if signed else None
            pieces: list[bytes] = []
            remaining = size
            while remaining > 0:
                data = self._stream.read(min(CHUNK, remaining))
                if not data:
                    raise _incomplete("The aws-chunked body ended in the middle of a chunk")
                remaining -= len(data)
                if digest is not None:
                    digest.update(data)
                    pieces.append(data)  # held until the chunk's signature is checked (one chunk)
                else:
                    yield data
            if signed:
                self._verify_chunk(signature, digest.hexdigest() if digest else "")
                yield from pieces
            total += size
            if size == 0:
                break
            if self._stream.read(2) != b"\r\n":
                raise _incomplete("An aws-chunked chunk is not followed by CRLF")
        self._read_trailers()
        if self._decoded_length is not None and total != self._decoded_length:
            raise _incomplete(f"x-amz-decoded-content-length says {self._decoded_length} bytes, the body had {total}")
        self.done = True

    def _read_trailers(self) -> None:
        lines: list[str] = []
        trailer_signed = False
        if self._mode == SIGNED:
            self._line()  # the CRLF after the final chunk's (empty) data
            return
        while True:
            line = self._stream.readline(MAX_LINE)
            if not line:
                break
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")
            if not text:
                break
            name, _, value = text.partition(":")
            name = name.strip().lower()
            if name == "x-amz-trailer-signature":
                self._verify_trailer(lines, value.strip())
                trailer_signed = True
                continue
            self.trailers[name] = value.strip()
            lines.append(f"{name}:{value.strip()}\n")
        if self._mode == SIGNED_TRAILER and not trailer_signed:
            raise WalrusError("SignatureDoesNotMatch", "The trailer signature is missing")

    def _verify_trailer(self, lines: list[str], signature: str) -> None:
        check = self._check
        if check is None:
            raise WalrusError("SignatureDoesNotMatch", "A trailer signature on an unsigned payload")
        digest = hashlib.sha256("".join(lines).encode()).hexdigest()
        to_sign = f"AWS4-HMAC-SHA256-TRAILER\n{check.amz_date}\n{check.scope}\n{self._previous}\n{digest}"
        expected = hmac.new(check.key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise WalrusError("SignatureDoesNotMatch", "The trailer signature does not match")
        self._previous = expected

    def trailer_checksum(self) -> str | None:
        """The value of the trailer ``x-amz-trailer`` announced (None if it never came)."""
        return self.trailers.get(self._trailer) if self._trailer else None
