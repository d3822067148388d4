"""kill -9 of the S3 endpoint during uploads and deletes: no acknowledged object is lost, no half-written
object is ever visible, an interrupted multipart upload stays listed and can be aborted, and the garbage
a kill leaves (temporary files, unreferenced blobs) is gone after the restart. Also: memory stays flat
for a 2 GiB upload (the server streams it)."""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from cloudlab.waiting import wait_until
from tests.s3_fixtures import S3Endpoint, S3Process, error_code, s3_process, signer_declaring  # noqa: F401

MIB = 1024 * 1024


def _signed_headers(endpoint: S3Endpoint, method: str, path: str, length: int) -> dict[str, str]:
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=f"{endpoint.url}{path}", headers={"Content-Length": str(length)})
    signer_declaring("UNSIGNED-PAYLOAD")(Credentials(endpoint.admin.access_key, endpoint.admin.secret_key), "s3",
                                         "cloudlab-1").add_auth(request)  # fmt: skip
    return dict(request.headers)


def _blob_files(root: Path) -> list[Path]:
    return [p for p in (root / "walrus" / "data").rglob("*") if p.is_file()]


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_kill_during_uploads_and_deletes_loses_nothing(s3_process: S3Process) -> None:  # noqa: F811
    endpoint = s3_process.start()
    client = endpoint.client()
    client.create_bucket(Bucket="crash")
    acknowledged = {}
    for index in range(40):
        body = os.urandom((70_000 if index % 2 else 1_000) + index)  # files, and small ones kept inline
        client.put_object(Bucket="crash", Key=f"kept/{index:02d}", Body=body)
        acknowledged[f"kept/{index:02d}"] = hashlib.md5(body).hexdigest()
    client.put_object(Bucket="crash", Key="replaced", Body=b"old content")
    upload = client.create_multipart_upload(Bucket="crash", Key="interrupted")["UploadId"]
    part = client.upload_part(Bucket="crash", Key="interrupted", UploadId=upload, PartNumber=1,
                              Body=os.urandom(5 * MIB))["ETag"]  # fmt: skip

    # An upload in flight: headers and 30 of 200 MiB sent, then the kill (its temporary file exists).
    length = 200 * MIB
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=30)
    connection.putrequest("PUT", "/crash/replaced", skip_accept_encoding=True)
    for name, value in _signed_headers(endpoint, "PUT", "/crash/replaced", length).items():
        connection.putheader(name, value)
    connection.endheaders()
    chunk = os.urandom(MIB)
    for _ in range(30):
        connection.send(chunk)
    tmp = endpoint.root / "walrus" / "tmp"
    wait_until(lambda: any(p.stat().st_size > 0 for p in tmp.iterdir()), 20, what="a part written", interval_s=0.02)

    # Deletes in flight at the same moment, from another client.
    deleted: list[str] = []
    stop = threading.Event()

    def delete_some() -> None:
        other = endpoint.client()
        for key in sorted(acknowledged)[20:]:
            if stop.is_set():
                return
            try:
                other.delete_object(Bucket="crash", Key=key)
                deleted.append(key)
            except Exception:  # noqa: BLE001 - the server is being killed under this loop
                return

    deleter = threading.Thread(target=delete_some)
    deleter.start()
    wait_until(lambda: len(deleted) >= 3, 20, what="three deletions", interval_s=0.02)
    s3_process.kill()
    stop.set()
    deleter.join(timeout=30)
    connection.close()

    endpoint = s3_process.start()
    client = endpoint.client()
    assert client.get_object(Bucket="crash", Key="replaced")["Body"].read() == b"old content"  # never half-visible
    listed = {o["Key"]: o["ETag"].strip('"') for o in client.list_objects_v2(Bucket="crash")["Contents"]}
    for key, etag in acknowledged.items():
        if key in deleted:
            assert key not in listed
            with pytest.raises(ClientError) as excinfo:
                client.get_object(Bucket="crash", Key=key)
            assert error_code(excinfo) == "NoSuchKey"
        elif key in listed:  # acknowledged and not (acknowledged as) deleted: whole, with its bytes
            got = client.get_object(Bucket="crash", Key=key)["Body"].read()
            assert hashlib.md5(got).hexdigest() == etag == listed[key]
        else:
            assert key in sorted(acknowledged)[20:]  # only a delete in flight at the kill may have happened
    assert all(key in listed for key in sorted(acknowledged)[:20])
    assert list(tmp.iterdir()) == []  # the killed upload's temporary file was collected at the start
    uploads = client.list_multipart_uploads(Bucket="crash")["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("interrupted", upload)]
    assert [p["ETag"] for p in client.list_parts(Bucket="crash", Key="interrupted", UploadId=upload)["Parts"]] == [part]
    client.abort_multipart_upload(Bucket="crash", Key="interrupted", UploadId=upload)
    # Every blob on disk belongs to a listed object: nothing unreachable was left behind.
    sizes = sorted(p.stat().st_size for p in _blob_files(endpoint.root))
    from cloudlab.walrus.base import INLINE_MAX

    listed_sizes = [o["Size"] for o in client.list_objects_v2(Bucket="crash")["Contents"]]
    expected = sorted(size for size in listed_sizes if size > INLINE_MAX)
    assert sizes == expected
    s3_process.stop()


@pytest.mark.slow
def test_a_2_gib_upload_streams_in_flat_memory(s3_process: S3Process) -> None:  # noqa: F811
    endpoint = s3_process.start()
    client = endpoint.client()
    client.create_bucket(Bucket="huge")
    client.put_object(Bucket="huge", Key="warm-up", Body=os.urandom(MIB))  # load everything lazily loaded
    assert s3_process.process is not None
    pid = s3_process.process.pid
    before = _rss_kib(pid, "VmRSS")
    length = 2 * 1024 * MIB
    block = os.urandom(4 * MIB)
    digest = hashlib.md5()
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=120)
    connection.putrequest("PUT", "/huge/two-gib", skip_accept_encoding=True)
    for name, value in _signed_headers(endpoint, "PUT", "/huge/two-gib", length).items():
        connection.putheader(name, value)
    connection.endheaders()
    for _ in range(length // len(block)):
        connection.send(block)
        digest.update(block)
    answer = connection.getresponse()
    assert answer.status == 200, answer.read()
    assert answer.getheader("ETag") == f'"{digest.hexdigest()}"'
    connection.close()
    peak = _rss_kib(pid, "VmHWM")
    assert (peak - before) < 100 * 1024, f"resident memory grew by {(peak - before) / 1024:.0f} MiB"
    head = client.head_object(Bucket="huge", Key="two-gib")
    assert head["ContentLength"] == length
    streamed = hashlib.md5()
    for piece in client.get_object(Bucket="huge", Key="two-gib")["Body"].iter_chunks(4 * MIB):
        streamed.update(piece)
    assert streamed.hexdigest() == digest.hexdigest()
    assert (_rss_kib(pid, "VmHWM") - before) < 100 * 1024
    s3_process.stop()
