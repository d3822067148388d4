"""Walrus in the accounting ledger: storage GB-hours and bytes in and out per user, from the engine's exact
counters through ``storage`` readings in the append-only ledger into the usage report (by user, by day,
total), across a restart of the engine; and per-user quotas with S3-style errors over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from cloudlab.clc.store import Store
from cloudlab.clc.usage import usage_report
from cloudlab.walrus import Principal, Walrus, WalrusError, WriteSpec
from cloudlab.walrus.accounting import record_storage
from tests.s3_fixtures import S3Endpoint, error_code, s3  # noqa: F401

GIB = 1024**3
T0 = datetime(2026, 3, 1, 23, 0, tzinfo=UTC).timestamp()  # an hour before a midnight


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_storage_gb_hours_and_bytes_in_the_report(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "clc.db")
    walrus = Walrus(tmp_path / "walrus", "cloudlab-1", clock=clock)
    alice, bob = Principal("alice", "111111111111"), Principal("bob", "222222222222")
    walrus.create_bucket(alice, "alice-data", None, WriteSpec())
    walrus.create_bucket(bob, "bob-data", None, WriteSpec())
    mib = b"x" * (1024 * 1024)
    walrus.put_object(alice, "alice-data", "a", [mib] * 512, WriteSpec())  # 0.5 GiB from 23:00
    walrus.put_object(bob, "bob-data", "b", [mib] * 256, WriteSpec())  # 0.25 GiB from 23:00
    assert record_storage(walrus, store) == 2
    assert record_storage(walrus, store) == 0  # nothing moved: no new reading
    clock.now = T0 + 2 * 3600  # 01:00 the next day
    with walrus.open_object(alice, "alice-data", "a") as data:
        served = sum(len(chunk) for chunk in data.chunks(0, 99))
    walrus.count_out("alice", served)
    walrus.delete_object(bob, "bob-data", "b")  # bob stores nothing from 01:00
    record_storage(walrus, store)
    walrus.close()

    clock.now = T0 + 3 * 3600  # 02:00: a restarted engine over the same folder goes on counting
    walrus = Walrus(tmp_path / "walrus", "cloudlab-1", clock=clock)
    record_storage(walrus, store)
    end = T0 + 4 * 3600
    users = {row["key"]: row for row in usage_report(store, by="user", now=end)}
    assert users["alice"]["storage_gb_hours"] == pytest.approx(0.5 * 4)  # 0.5 GiB from 23:00 to 03:00
    assert users["bob"]["storage_gb_hours"] == pytest.approx(0.25 * 2)
    assert (users["alice"]["s3_bytes_in"], users["alice"]["s3_bytes_out"]) == (512 * 1024 * 1024, 100)
    assert users["bob"]["s3_bytes_in"] == 256 * 1024 * 1024 and users["bob"]["s3_bytes_out"] == 0
    days = {row["key"]: row for row in usage_report(store, by="day", now=end)}
    assert days["2026-03-01"]["storage_gb_hours"] == pytest.approx(0.5 + 0.25)  # 23:00-24:00
    assert days["2026-03-02"]["storage_gb_hours"] == pytest.approx(0.5 * 3 + 0.25)
    total = usage_report(store, by="total", now=end)[0]
    assert total["storage_gb_hours"] == pytest.approx(sum(r["storage_gb_hours"] for r in users.values()))
    window = usage_report(store, by="user", since=T0 + 3600, until=T0 + 2 * 3600, now=end)
    assert {r["key"]: round(r["storage_gb_hours"], 6) for r in window} == {"alice": 0.5, "bob": 0.25}
    rows = store.query("SELECT event FROM ledger WHERE event='storage'")
    with pytest.raises(Exception, match="append-only"), store.transaction() as db:
        db.execute("DELETE FROM ledger WHERE event='storage'")
    assert len(store.query("SELECT event FROM ledger WHERE event='storage'")) == len(rows)
    walrus.close()
    store.close()


def test_quotas_refuse_with_s3_errors_and_free_up(s3: S3Endpoint) -> None:  # noqa: F811
    key = s3.new_user("quota")
    client = s3.client(key)
    assert s3.walrus is not None
    bucket = s3.bucket(client, "quota")
    s3.walrus.set_quota(key.user_name, max_bytes=1000, max_objects=3)
    client.put_object(Bucket=bucket, Key="a", Body=b"x" * 600)
    with pytest.raises(ClientError) as excinfo:
        client.put_object(Bucket=bucket, Key="b", Body=b"x" * 500)
    assert error_code(excinfo) == "QuotaExceeded"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    client.put_object(Bucket=bucket, Key="b", Body=b"x" * 100)
    client.put_object(Bucket=bucket, Key="c", Body=b"x" * 100)
    with pytest.raises(ClientError) as excinfo:
        client.put_object(Bucket=bucket, Key="d", Body=b"x")
    assert error_code(excinfo) == "QuotaExceeded" and "object" in excinfo.value.response["Error"]["Message"]
    with pytest.raises(ClientError):
        client.head_object(Bucket=bucket, Key="d")
    client.delete_object(Bucket=bucket, Key="a")
    client.put_object(Bucket=bucket, Key="d", Body=b"x" * 700)  # the delete freed bytes and an object
    upload = client.create_multipart_upload(Bucket=bucket, Key="parts")["UploadId"]
    with pytest.raises(ClientError) as excinfo:
        client.upload_part(Bucket=bucket, Key="parts", UploadId=upload, PartNumber=1, Body=b"x" * 200)
    assert error_code(excinfo) == "QuotaExceeded"  # parts count against the bytes too
    s3.walrus.set_quota(key.user_name, None, None)
    client.upload_part(Bucket=bucket, Key="parts", UploadId=upload, PartNumber=1, Body=b"x" * 200)


def test_quota_is_checked_in_the_commit(tmp_path: Path) -> None:
    """Two writers that each fit alone cannot both pass: the final check is inside the transaction."""
    walrus = Walrus(tmp_path / "walrus", "cloudlab-1")
    owner = Principal("carol", "333333333333")
    walrus.create_bucket(owner, "carol-data", None, WriteSpec())
    walrus.set_quota("carol", 100, None)
    walrus.put_object(owner, "carol-data", "one", [b"x" * 60], WriteSpec())
    with pytest.raises(WalrusError) as excinfo:  # no declared size: only the commit can refuse it
        walrus.put_object(owner, "carol-data", "two", iter([b"x" * 60]), WriteSpec())
    assert excinfo.value.code == "QuotaExceeded"
    assert [e.key for e in walrus.list_objects(owner, "carol-data").entries] == ["one"]
    assert sum(1 for _ in walrus.blobs.all_blob_ids()) == 1  # the refused blob was removed
    walrus.close()
