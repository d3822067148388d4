"""Walrus's group commit (cloudlab.walrus.db): concurrent writes share COMMITs, and each caller still
returns only once its own write is committed; a failing write is rolled back alone. How much batching
happens depends on timing, so it is measured (``db.commits`` against PUTs in ``cloudlab bench s3``), not
asserted here."""

from __future__ import annotations

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
