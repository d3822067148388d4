"""Small objects kept in their metadata row (``inline``, at most ``INLINE_MAX`` bytes) against large ones
streamed to files: which path each size takes, and that listing, versioning, ranges, copies, checksums and
multipart behave the same on both. (Durability of inline objects under kill -9: tests/test_s3_crash.py.)"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlab.walrus import Integrity, Principal, Walrus, WriteSpec
from cloudlab.walrus.base import INLINE_MAX
from cloudlab.walrus.blobs import CHUNK

ADMIN = Principal("admin", "000000000000", True)


@pytest.fixture
def walrus(tmp_path: Path) -> Iterator[Walrus]:
    engine = Walrus(tmp_path / "walrus", "cloudlab-1")
    engine.create_bucket(ADMIN, "bkt", None, WriteSpec())
    yield engine
    engine.close()


def _files(walrus: Walrus) -> list[str]:
    return sorted(walrus.blobs.all_blob_ids())


def _put(walrus: Walrus, key: str, data: bytes, integrity: Integrity | None = None) -> None:
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
    walrus.put_object(ADMIN, "bkt", key, chunks, WriteSpec(), integrity, declared_size=len(data))


def _read(walrus: Walrus, key: str, version_id: str | None = None, first: int = 0, last: int | None = None) -> bytes:
    with walrus.open_object(ADMIN, "bkt", key, version_id) as data:
        return b"".join(data.chunks(first, last))


def test_small_objects_live_in_their_row_and_large_ones_in_files(walrus: Walrus) -> None:
    small, edge, large = os.urandom(4096), os.urandom(INLINE_MAX), os.urandom(INLINE_MAX + 1)
    for key, data in (("small", small), ("edge", edge), ("large", large)):
        _put(walrus, key, data)
    versions = {key: walrus.version("bkt", key, None) for key in ("small", "edge", "large")}
    assert versions["small"].inline == small and versions["small"].segments == []
    assert versions["edge"].inline == edge and versions["edge"].segments == []
    assert versions["large"].inline is None and len(versions["large"].segments) == 1
    assert _files(walrus) == [versions["large"].segments[0][0]]  # only the large one has a file
    for key, data in (("small", small), ("edge", edge), ("large", large)):
        assert _read(walrus, key) == data
        assert versions[key].etag == hashlib.md5(data).hexdigest()  # S3's ETag either way
    assert _read(walrus, "small", first=10, last=19) == small[10:20]  # ranges on inline bytes


def test_an_object_without_a_declared_size_is_streamed_to_a_file(walrus: Walrus) -> None:
    data = os.urandom(1000)
    walrus.put_object(ADMIN, "bkt", "unsized", iter([data]), WriteSpec(), None, declared_size=None)
    version = walrus.version("bkt", "unsized", None)
    assert version.inline is None and len(_files(walrus)) == 1 and _read(walrus, "unsized") == data


def test_listing_shows_inline_and_file_objects_alike(walrus: Walrus) -> None:
    _put(walrus, "k/1", b"a" * 10)
    _put(walrus, "k/2", os.urandom(INLINE_MAX + 10))
    page = walrus.list_objects(ADMIN, "bkt", prefix="k/")
    assert [(e.key, e.size) for e in page.entries] == [("k/1", 10), ("k/2", INLINE_MAX + 10)]
    assert page.entries[0].etag == hashlib.md5(b"a" * 10).hexdigest()


def test_versions_of_a_key_may_switch_between_inline_and_files(walrus: Walrus) -> None:
    walrus.put_versioning(ADMIN, "bkt", "Enabled")
    first, second, third = b"one", os.urandom(INLINE_MAX * 2), b"three"
    for data in (first, second, third):
        _put(walrus, "v", data)
    walrus.delete_object(ADMIN, "bkt", "v")  # a delete marker on top
    page = walrus.list_versions(ADMIN, "bkt")
    ids = [e.version_id for e in page.entries if not e.delete_marker]
    assert len(ids) == 3 and page.entries[0].delete_marker
    assert sorted(_read(walrus, "v", version_id) for version_id in ids) == sorted([first, second, third])
    assert len(_files(walrus)) == 1  # only the large version
    large_id = next(i for i in ids if walrus.version("bkt", "v", i).size == len(second))
    walrus.delete_object(ADMIN, "bkt", "v", large_id)
    assert _files(walrus) == []


def test_overwriting_removes_the_replaced_file_and_keeps_nothing_stale(walrus: Walrus) -> None:
    _put(walrus, "o", os.urandom(INLINE_MAX + 1))
    assert len(_files(walrus)) == 1
    _put(walrus, "o", b"small now")
    assert _files(walrus) == [] and _read(walrus, "o") == b"small now"
    _put(walrus, "o", os.urandom(3 * CHUNK))
    assert len(_files(walrus)) == 1
    assert walrus.usage_counters()[0]["bytes"] == 3 * CHUNK  # the ledger counts the current bytes only


def test_checksums_and_copies_of_inline_objects(walrus: Walrus) -> None:
    from cloudlab.walrus import checksums

    data = b"checked bytes"
    digest = checksums.new_digest("CRC32")
    digest.update(data)
    _put(walrus, "c", data, Integrity(checksum_algorithm="CRC32", checksum_value=checksums.encode(digest.digest())))
    version = walrus.version("bkt", "c", None)
    assert version.inline == data and version.checksum == checksums.encode(digest.digest())
    walrus.copy_object(ADMIN, ("bkt", "c", None), "bkt", "c-copy", None)
    assert _read(walrus, "c-copy") == data and walrus.version("bkt", "c-copy", None).etag == version.etag


def test_multipart_parts_are_files_even_when_small(walrus: Walrus) -> None:
    walrus.min_part_bytes = 1  # parts of any size, to see that a small one still becomes a file
    upload = walrus.create_upload(ADMIN, "bkt", "mp", WriteSpec())
    parts = [walrus.upload_part(ADMIN, "bkt", "mp", upload.upload_id, n, [data], None, len(data))
             for n, data in ((1, b"x" * 100), (2, b"y" * 50))]  # fmt: skip
    assert len(_files(walrus)) == 2
    walrus.complete_upload(ADMIN, "bkt", "mp", upload.upload_id, [(p.part_number, p.etag) for p in parts])
    version = walrus.version("bkt", "mp", None)
    assert version.inline is None and len(version.segments) == 2 and version.etag.endswith("-2")
    assert _read(walrus, "mp") == b"x" * 100 + b"y" * 50
