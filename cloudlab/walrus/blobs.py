"""Object data as files under ``STATE/walrus/data``, written so that a crash never shows half of one.

A blob is written to ``tmp/`` as it streams in (every digest updated chunk by chunk, so memory stays
flat whatever the size), then ``fsync``-ed, renamed into ``data/xx/`` and the folder ``fsync``-ed. Only
after that does the engine commit the blob's metadata to SQLite, and it removes a blob's file only
after the metadata that named it is committed away. So after ``kill -9`` at any moment:

* a temporary file is garbage (never named by any metadata) and is removed at the next start;
* a data file that no metadata names (killed between rename and commit, or between the commit of a
  delete and the unlink) is unreachable and removed at the next start;
* a blob that metadata names is complete on disk: its rename happened before the commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cloudlab.walrus.checksums import Digest, new_digest

CHUNK = 1024 * 1024
#: From this many bytes on, digests run in a thread of their own beside the socket and the disk...
PARALLEL_FROM = 4 * CHUNK
#: ...unless this many blobs are being written at once already: then the writers' own threads keep every
#: core busy hashing, and a digest thread would only add a copy of every chunk and a thread switch.
PARALLEL_WRITERS = os.cpu_count() or 1


class _Active:
    """How many blobs are being written right now (in this process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self.count += delta


_writing = _Active()


class _DigestThread:
    """Updates digests from a queue in its own thread: hashlib and zlib release the GIL on large
    buffers, so on two cores MD5 of one chunk overlaps the receipt and write of the next (MD5 alone is
    slower than the disk; in line, it would halve a large PUT's throughput)."""

    def __init__(self, digests: list[Digest]) -> None:
        self._digests = digests
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)  # at most 8 MiB in flight
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="walrus-digest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    for digest in self._digests:
                        digest.update(data)
                except BaseException as exc:  # noqa: BLE001 - re-raised in finish()
                    self._error = exc

    def feed(self, data: bytes) -> None:
        self._queue.put(data)

    def finish(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A blob that is safely on disk: its id, size and the digests of its bytes."""

    blob_id: str
    size: int
    md5: bytes
    digests: dict[str, bytes] = field(default_factory=dict)


class BlobWriter:
    """One blob being written: feed it chunks, then :meth:`commit` (durable) or :meth:`abort`."""

    def __init__(self, store: BlobStore, algorithms: Iterable[str]) -> None:
        self._store = store
        self.blob_id = secrets.token_hex(16)
        self._tmp = store.tmp / self.blob_id
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._md5 = hashlib.md5()
        self._digests: dict[str, Digest] = {name: new_digest(name) for name in dict.fromkeys(algorithms)}
        self.size = 0
        self._done = False
        self._worker: _DigestThread | None = None
        self._inline_digests = False  # decided once the blob reaches PARALLEL_FROM
        _writing.add(1)
        self._counted = True

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            _writing.add(-1)

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk)
        if not view.nbytes:
            return
        if self._worker is None and not self._inline_digests and self.size + view.nbytes >= PARALLEL_FROM:
            if _writing.count > PARALLEL_WRITERS:
                self._inline_digests = True
            else:
                self._worker = _DigestThread([self._md5, *self._digests.values()])
        if self._worker is not None:
            # The caller may reuse its buffer; the digest thread reads this later (bytes never change).
            data = chunk if isinstance(chunk, bytes) else bytes(view)
            self._worker.feed(data)
            view = memoryview(data)
        else:
            self._md5.update(view)
            for digest in self._digests.values():
                digest.update(view)
        while view.nbytes:
            written = os.write(self._fd, view)
            view = view[written:]
            self.size += written

    def write_all(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def _settle(self) -> None:
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker.finish()

    def digests(self) -> tuple[bytes, dict[str, bytes]]:
        """MD5 and the other digests of everything written (to check before :meth:`commit`)."""
        self._settle()
        return self._md5.digest(), {name: d.digest() for name, d in self._digests.items()}

    def commit(self) -> BlobInfo:
        """fsync, rename into ``data/``, fsync the folder: from here the blob survives a crash."""
        self._uncount()
        self._settle()
        os.fsync(self._fd)
        os.close(self._fd)
        self._done = True
        final = self._store.path(self.blob_id)
        try:
            os.rename(self._tmp, final)
            self._store.sync_dir(final.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
            raise
        return BlobInfo(self.blob_id, self.size, self._md5.digest(), {k: d.digest() for k, d in self._digests.items()})

    def abort(self) -> None:
        self._uncount()
        with contextlib.suppress(Exception):
            self._settle()
        if not self._done:
            self._done = True
            os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class BlobStore:
    """The folder of blobs: ``tmp/`` for writes in progress, ``data/00..ff/`` for complete ones."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.tmp = root / "tmp"
        for folder in (root, self.data, self.tmp):
            folder.mkdir(mode=0o700, exist_ok=True)
        for index in range(256):
            (self.data / f"{index:02x}").mkdir(mode=0o700, exist_ok=True)
        self.sync_dir(self.data)

    def path(self, blob_id: str) -> Path:
        return self.data / blob_id[:2] / blob_id

    @staticmethod
    def sync_dir(folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def writer(self, algorithms: Iterable[str] = ()) -> BlobWriter:
        return BlobWriter(self, algorithms)

    def delete(self, blob_ids: Iterable[str]) -> None:
        """Remove blobs whose metadata is already gone (a crash before this leaves garbage, not damage)."""
        for blob_id in blob_ids:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(blob_id))

    def all_blob_ids(self) -> Iterator[str]:
        for folder in self.data.iterdir():
            if folder.is_dir():
                for entry in os.scandir(folder):
                    yield entry.name

    def collect_garbage(self, referenced: set[str]) -> int:
        """At start, before serving: drop temporary files and data files no metadata names."""
        removed = 0
        for entry in os.scandir(self.tmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
        for blob_id in list(self.all_blob_ids()):
            if blob_id not in referenced:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path(blob_id))
                    removed += 1
        return removed
