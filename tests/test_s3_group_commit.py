"""Walrus's group commit (cloudlab.walrus.db): concurrent writes share COMMITs, and each caller still
returns only once its own write is committed; a failing write is rolled back alone. How much batching
happens depends on timing, so it is measured (``db.commits`` against PUTs in ``cloudlab bench s3``), not
asserted here."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cloudlab.walrus import Principal, Walrus, WalrusError, WriteSpec
from cloudlab.walrus.db import MetaDB

ADMIN = Principal("admin", "000000000000", True)


def test_concurrent_puts_share_commits_and_every_acknowledged_one_is_committed(tmp_path: Path) -> None:
    walrus = Walrus(tmp_path / "walrus", "cloudlab-1")
    walrus.create_bucket(ADMIN, "bench", None, WriteSpec())
    before = walrus.db.commits
    seen_committed: list[bool] = []
    data = b"x" * 4096

    def work(index: int) -> None:
        for n in range(40):
            walrus.put_object(ADMIN, "bench", f"c{index}/{n}", [data], WriteSpec(), declared_size=len(data))
            # what this PUT returned is committed: a fresh connection (another process's view) sees it
            other = MetaDB(walrus.db.path)
            row = other.one("SELECT 1 FROM versions WHERE bucket='bench' AND key=?", (f"c{index}/{n}",))
            seen_committed.append(row is not None)
            other.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen_committed) == 320 and all(seen_committed)
    commits = walrus.db.commits - before
    assert 0 < commits <= 320
    keys = [r["key"] for r in walrus.db.query("SELECT key FROM versions WHERE bucket='bench' AND latest=1")]
    assert len(keys) == 320
    walrus.close()


def test_a_failing_body_is_rolled_back_alone(tmp_path: Path) -> None:
    db = MetaDB(tmp_path / "m.db")
    with db.transaction() as conn:
        conn.execute("INSERT INTO quotas VALUES ('kept', 1, 1)")
    with pytest.raises(WalrusError), db.transaction() as conn:
        conn.execute("INSERT INTO quotas VALUES ('gone', 2, 2)")
        raise WalrusError("InternalError", "a body that fails")
    with db.transaction() as conn:
        conn.execute("INSERT INTO quotas VALUES ('after', 3, 3)")
        with db.transaction() as inner:  # nested: part of the same body
            inner.execute("UPDATE quotas SET max_bytes = 10 WHERE user='after'")
    rows = {r["user"]: r["max_bytes"] for r in MetaDB(tmp_path / "m.db").query("SELECT * FROM quotas")}
    assert rows == {"kept": 1, "after": 10}


def test_every_caller_returns_after_a_wal_fsync_that_covers_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer runs with synchronous=NORMAL and fsyncs the WAL itself after each COMMIT, outside its
    lock: a caller must still hear of success only after an fsync that followed its own COMMIT."""
    db = MetaDB(tmp_path / "m.db")
    assert db._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: the fsync is ours
    synced: list[int] = []  # batches whose WAL fsync has completed
    real_sync = MetaDB._sync_wal
    wal_files: list[int] = []
    real_fdatasync = os.fdatasync

    def sync(self: MetaDB) -> None:
        batch = self._batch - 1  # the committer owns the batch counter until it has synced
        real_sync(self)
        synced.append(batch)

    def fdatasync(fd: int) -> None:
        wal_files.append(os.fstat(fd).st_ino)
        real_fdatasync(fd)

    monkeypatch.setattr(MetaDB, "_sync_wal", sync)
    monkeypatch.setattr("cloudlab.walrus.db.os.fdatasync", fdatasync)
    late: list[tuple[int, int]] = []

    def work(index: int) -> None:
        for n in range(30):
            with db.transaction() as conn:
                ticket = db._batch
                conn.execute("INSERT INTO quotas VALUES (?, 1, 1)", (f"u{index}-{n}",))
            if not synced or max(synced) < ticket:
                late.append((ticket, max(synced, default=-1)))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert late == []
    assert len(synced) == db.commits > 0  # one WAL fsync per COMMIT, none skipped
    assert set(wal_files) == {(tmp_path / "m.db-wal").stat().st_ino}  # the WAL itself, not another file
    assert len(db.query("SELECT * FROM quotas")) == 240
    db.close()
