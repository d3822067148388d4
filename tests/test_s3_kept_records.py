"""What the engine keeps in memory instead of reading it per request: bucket records (retired by every bucket
write) and the version a PUT answers with (built from the row it committed). Both must be exactly what a
fresh read of the database gives, at once after any change."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlab.walrus import Principal, Walrus, WalrusError, WriteSpec
from cloudlab.walrus.base import INLINE_MAX

ADMIN = Principal("admin", "000000000000", True)
ALICE = Principal("alice", "111111111111", False)
BOB = Principal("bob", "222222222222", False)


@pytest.fixture
def walrus(tmp_path: Path) -> Iterator[Walrus]:
    engine = Walrus(tmp_path / "walrus", "cloudlab-1")
    yield engine
    engine.close()


def test_a_put_answers_with_the_version_a_fresh_read_gives(walrus: Walrus) -> None:
    walrus.create_bucket(ALICE, "bkt", None, WriteSpec())
    spec = WriteSpec("text/plain", {"Content-Encoding": "gzip"}, {"colour": "blue"}, {"t": "1"}, "public-read")
    for key, data in (("empty", b""), ("small", os.urandom(100)), ("large", os.urandom(INLINE_MAX + 1))):
        answered = walrus.put_object(ALICE, "bkt", key, [data], spec, None, len(data))
        assert answered == walrus.version("bkt", key, None)
    walrus.put_versioning(ALICE, "bkt", "Enabled")
    answered = walrus.put_object(ALICE, "bkt", "small", [b"v2"], WriteSpec(), None, 2)
    assert answered.version_id != "null" and answered == walrus.version("bkt", "small", None)


def test_bucket_changes_are_seen_by_the_next_request(walrus: Walrus) -> None:
    walrus.create_bucket(ALICE, "bkt", None, WriteSpec())
    with pytest.raises(WalrusError, match="Access Denied"):
        walrus.require_bucket(BOB, "bkt", "READ")
    walrus.put_bucket_acl(ALICE, "bkt", WriteSpec(canned_acl="public-read"))
    assert walrus.require_bucket(BOB, "bkt", "READ").name == "bkt"
    walrus.put_bucket_acl(ALICE, "bkt", WriteSpec(canned_acl="private"))
    with pytest.raises(WalrusError, match="Access Denied"):
        walrus.require_bucket(BOB, "bkt", "READ")

    assert walrus.bucket("bkt").versioning == ""
    walrus.put_versioning(ALICE, "bkt", "Enabled")
    assert walrus.put_object(ALICE, "bkt", "k", [b"x"], WriteSpec(), None, 1).version_id != "null"
    walrus.put_bucket_tags(ALICE, "bkt", {"team": "a"})
    assert walrus.get_bucket_tags(ALICE, "bkt") == {"team": "a"}
    walrus.put_cors(ALICE, "bkt", [{"AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}])
    assert walrus.cors_rules("bkt") == [{"AllowedMethods": ["GET"], "AllowedOrigins": ["*"]}]

    walrus.create_bucket(BOB, "gone", None, WriteSpec())
    assert walrus.bucket("gone").owner == "bob"
    walrus.delete_bucket(BOB, "gone")
    with pytest.raises(WalrusError, match="does not exist"):
        walrus.bucket("gone")
    walrus.create_bucket(ALICE, "gone", None, WriteSpec())  # the name taken again, by someone else
    assert walrus.bucket("gone").owner == "alice"


def test_readers_racing_a_writer_end_on_the_last_state(walrus: Walrus) -> None:
    """Readers that read a bucket while its ACL flips keep no record from before the last flip."""
    walrus.create_bucket(ALICE, "bkt", None, WriteSpec())
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            walrus.bucket("bkt")

    readers = [threading.Thread(target=read, daemon=True) for _ in range(4)]
    for thread in readers:
        thread.start()
    try:
        for n in range(60):
            walrus.put_bucket_acl(ALICE, "bkt", WriteSpec(canned_acl="public-read" if n % 2 else "private"))
            expected = walrus._read_bucket("bkt").acl  # noqa: SLF001 - the database's own answer
            assert walrus.bucket("bkt").acl == expected
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert walrus.bucket("bkt").acl == walrus._read_bucket("bkt").acl  # noqa: SLF001


def test_a_bucket_write_inside_another_transaction_is_refused(walrus: Walrus) -> None:
    """Its records would retire before the outer COMMIT made the change visible."""
    walrus.create_bucket(ALICE, "bkt", None, WriteSpec())
    with walrus.db.transaction(), pytest.raises(RuntimeError, match="transaction of its own"):
        walrus.put_versioning(ALICE, "bkt", "Enabled")
    assert walrus.bucket("bkt").versioning == ""
