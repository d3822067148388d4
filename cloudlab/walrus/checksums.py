"""The digests an object is checked with while it streams: MD5 (its ETag) and S3's additional checksums.

S3 clients send one of CRC32, CRC32C, SHA1 or SHA256 (base64 of the big-endian digest) in a header
or an aws-chunked trailer; boto3 sends CRC32 by default. Every digest is updated chunk by chunk as
the bytes arrive, so a 2 GiB object is checked without ever being held in memory. CRC32 comes from
zlib, CRC32C from the ``crc32c`` package (hardware CRC instructions where the CPU has them).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Callable
from typing import Protocol

import crc32c as _crc32c

ALGORITHMS = ("CRC32", "CRC32C", "SHA1", "SHA256")


class Digest(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc:
    """A running CRC with hashlib's ``update``/``digest`` interface (4 bytes, big-endian)."""

    __slots__ = ("_fn", "_value")

    def __init__(self, fn: Callable[[bytes | memoryview, int], int]) -> None:
        self._fn = fn
        self._value = 0

    def update(self, data: bytes | memoryview) -> None:
        self._value = self._fn(data, self._value)

    def digest(self) -> bytes:
        return (self._value & 0xFFFFFFFF).to_bytes(4, "big")


def new_digest(algorithm: str) -> Digest:
    """A fresh running digest for one of :data:`ALGORITHMS` (upper-case, as in S3's headers)."""
    if algorithm == "CRC32":
        return _Crc(zlib.crc32)
    if algorithm == "CRC32C":
        return _Crc(_crc32c.crc32c)
    if algorithm == "SHA1":
        return hashlib.sha1()
    if algorithm == "SHA256":
        return hashlib.sha256()
    raise ValueError(algorithm)


def encode(raw: bytes) -> str:
    """S3's text form of a checksum: base64 of the raw digest."""
    return base64.b64encode(raw).decode()


def composite(algorithm: str, part_checksums: list[str]) -> str:
    """The checksum S3 gives a multipart object: the digest of the parts' raw digests, then ``-N``."""
    digest = new_digest(algorithm)
    for value in part_checksums:
        digest.update(base64.b64decode(value))
    return f"{encode(digest.digest())}-{len(part_checksums)}"


def multipart_etag(part_md5s: list[bytes]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the concatenated part MD5s, then ``-N``."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"
