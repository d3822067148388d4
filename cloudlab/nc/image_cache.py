"""A node's cache of boot files fetched from the object store, keyed by content (SHA-256).

An image registered from a bucket keeps its kernel and ramdisk there (see
:mod:`cloudlab.clc.bucket_images`); the start request names each by a presigned URL and its digest.
The node fetches a file only when no file of that digest is cached, so a second launch of the same
image (or of another image with the same kernel) fetches nothing. A fetch streams to a temporary
file, is hashed on the way, and is renamed into place only if its digest and size are the ones asked
for: what the cache holds under a digest is always that content, and a changed or truncated object is
refused (``InvalidAMIID.Unavailable``), never booted. Concurrent starts of one image fetch it once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

from cloudlab.contract import FetchFile
from cloudlab.errors import CloudError

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
FETCH_TIMEOUT_S = 60.0  # per socket operation: a stalled transfer fails instead of hanging a start
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


class ImageCache:
    """``root/<sha256[:2]>/<sha256>``: files fetched once, kept while the node lives."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fetched = 0  # fetches made (a cache hit does not count): what a test or a report reads
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def path_of(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def get(self, wanted: FetchFile) -> Path:
        """The cached file of ``wanted.sha256``, fetched from ``wanted.url`` first if missing."""
        if not _DIGEST_RE.match(wanted.sha256):
            raise CloudError("InvalidParameterValue", f"not a SHA-256 digest: {wanted.sha256[:80]!r}")
        path = self.path_of(wanted.sha256)
        if path.is_file():
            return path
        with self._locks_lock:
            lock = self._locks.setdefault(wanted.sha256, threading.Lock())
        with lock:  # a second start of the same file waits for the first fetch, then finds it
            if not path.is_file():
                self._fetch(wanted, path)
        return path

    def _fetch(self, wanted: FetchFile, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        digest, received = hashlib.sha256(), 0
        try:
            with urllib.request.urlopen(wanted.url, timeout=FETCH_TIMEOUT_S) as answer, tmp.open("wb") as out:  # noqa: S310 - a URL the CLC signed
                while chunk := answer.read(CHUNK):
                    received += len(chunk)
                    if received > wanted.size:
                        raise CloudError("InvalidAMIID.Unavailable", f"the {wanted.role} is larger than registered")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if received != wanted.size or digest.hexdigest() != wanted.sha256:
                raise CloudError(
                    "InvalidAMIID.Unavailable",
                    f"the {wanted.role} in the bucket changed since it was registered (SHA-256 {digest.hexdigest()},"
                    f" {received} bytes; registered {wanted.sha256}, {wanted.size} bytes)",
                )
            os.replace(tmp, path)
        except urllib.error.HTTPError as exc:
            raise CloudError("InvalidAMIID.Unavailable", f"fetching the {wanted.role}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise CloudError("InvalidAMIID.Unavailable", f"fetching the {wanted.role} failed: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)
        self.fetched += 1
        log.info("image cache: fetched the %s %s (%d bytes)", wanted.role, wanted.sha256, received)
