"""Walrus objects through boto3: put/get/head/delete, metadata and content headers, Range and conditional
requests, copy with metadata directives, tagging, and every digest a client can send (Content-MD5,
CRC32, CRC32C, SHA1, SHA256) checked before anything is stored."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from tests.s3_fixtures import S3Endpoint, error_code, s3  # noqa: F401


@pytest.fixture(scope="module")
def bucket(s3: S3Endpoint) -> str:  # noqa: F811
    return s3.bucket(prefix="objects")


def test_put_get_head_with_metadata(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client()
    body = b"hello walrus " * 1000
    put = client.put_object(Bucket=bucket, Key="dir/notes.txt", Body=body, ContentType="text/plain",
                            ContentEncoding="identity", ContentDisposition="attachment", CacheControl="no-cache",
                            ContentLanguage="en", Metadata={"experiment": "e1", "run": "7"})  # fmt: skip
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = client.get_object(Bucket=bucket, Key="dir/notes.txt")
    assert got["Body"].read() == body
    assert (got["ContentType"], got["ContentEncoding"], got["ContentDisposition"]) == ("text/plain", "identity",
                                                                                        "attachment")  # fmt: skip
    assert (got["CacheControl"], got["ContentLanguage"]) == ("no-cache", "en")
    assert got["Metadata"] == {"experiment": "e1", "run": "7"}
    assert got["ContentLength"] == len(body) and got["ETag"] == put["ETag"]
    head = client.head_object(Bucket=bucket, Key="dir/notes.txt")
    assert head["ContentLength"] == len(body) and head["Metadata"] == got["Metadata"]
    assert abs(head["LastModified"] - datetime.now(UTC)) < timedelta(minutes=1)
    overridden = client.get_object(Bucket=bucket, Key="dir/notes.txt", ResponseContentType="application/x-test")
    assert overridden["ContentType"] == "application/x-test"
    empty = client.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert empty["ETag"] == '"d41d8cd98f00b204e9800998ecf8427e"'
    assert client.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""


def test_missing_and_deleted(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client()
    with pytest.raises(ClientError) as excinfo:
        client.get_object(Bucket=bucket, Key="nope")
    assert error_code(excinfo) == "NoSuchKey"
    with pytest.raises(ClientError) as excinfo:
        client.head_object(Bucket=bucket, Key="nope")
    assert error_code(excinfo) == "404"
    with pytest.raises(ClientError) as excinfo:
        client.get_object(Bucket="no-such-bucket-here", Key="k")
    assert error_code(excinfo) == "NoSuchBucket"
    client.put_object(Bucket=bucket, Key="gone", Body=b"x")
    assert client.delete_object(Bucket=bucket, Key="gone")["ResponseMetadata"]["HTTPStatusCode"] == 204
    client.delete_object(Bucket=bucket, Key="gone")  # deleting what is not there is fine, as on S3
    with pytest.raises(ClientError):
        client.get_object(Bucket=bucket, Key="gone")
    for index in range(3):
        client.put_object(Bucket=bucket, Key=f"multi/{index}", Body=b"x")
    answer = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"multi/{i}"} for i in range(3)]})
    assert sorted(d["Key"] for d in answer["Deleted"]) == ["multi/0", "multi/1", "multi/2"]
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="multi/")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("bytes=0-4", b"01234"), ("bytes=5-", b"56789"), ("bytes=-3", b"789"), ("bytes=8-100", b"89")],
)
def test_ranges(s3: S3Endpoint, bucket: str, spec: str, expected: bytes) -> None:  # noqa: F811
    client = s3.client()
    client.put_object(Bucket=bucket, Key="digits", Body=b"0123456789")
    got = client.get_object(Bucket=bucket, Key="digits", Range=spec)
    assert got["Body"].read() == expected
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"].endswith("/10") and got["ContentLength"] == len(expected)


def test_unsatisfiable_range(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client()
    client.put_object(Bucket=bucket, Key="short", Body=b"abc")
    with pytest.raises(ClientError) as excinfo:
        client.get_object(Bucket=bucket, Key="short", Range="bytes=10-20")
    assert error_code(excinfo) == "InvalidRange"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 416


def test_conditional_requests(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client()
    etag = client.put_object(Bucket=bucket, Key="cond", Body=b"state")["ETag"]
    past, future = datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
    assert client.get_object(Bucket=bucket, Key="cond", IfMatch=etag)["Body"].read() == b"state"
    assert client.get_object(Bucket=bucket, Key="cond", IfModifiedSince=past)["Body"].read() == b"state"
    assert client.get_object(Bucket=bucket, Key="cond", IfUnmodifiedSince=future)["Body"].read() == b"state"
    for kwargs, code in (
        ({"IfMatch": '"0123"'}, "PreconditionFailed"),
        ({"IfUnmodifiedSince": past}, "PreconditionFailed"),
        ({"IfNoneMatch": etag}, "304"),
        ({"IfModifiedSince": future}, "304"),
    ):
        with pytest.raises(ClientError) as excinfo:
            client.get_object(Bucket=bucket, Key="cond", **kwargs)
        assert error_code(excinfo) == code, kwargs
    with pytest.raises(ClientError) as excinfo:
        client.head_object(Bucket=bucket, Key="cond", IfNoneMatch=etag)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304


def test_copy_with_metadata_directives(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client()
    source = {"Bucket": bucket, "Key": "orig"}
    client.put_object(Bucket=bucket, Key="orig", Body=b"payload", ContentType="text/csv", Metadata={"a": "1"},
                      Tagging="t=1")  # fmt: skip
    other = s3.bucket(prefix="copies")
    copied = client.copy_object(Bucket=other, Key="same", CopySource=source)
    assert copied["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(b"payload").hexdigest()}"'
    same = client.get_object(Bucket=other, Key="same")
    assert (same["Body"].read(), same["ContentType"], same["Metadata"]) == (b"payload", "text/csv", {"a": "1"})
    assert client.get_object_tagging(Bucket=other, Key="same")["TagSet"] == [{"Key": "t", "Value": "1"}]
    client.copy_object(Bucket=other, Key="replaced", CopySource=source, MetadataDirective="REPLACE",
                       ContentType="application/json", Metadata={"b": "2"}, TaggingDirective="REPLACE",
                       Tagging="t=2")  # fmt: skip
    replaced = client.head_object(Bucket=other, Key="replaced")
    assert (replaced["ContentType"], replaced["Metadata"]) == ("application/json", {"b": "2"})
    assert client.get_object_tagging(Bucket=other, Key="replaced")["TagSet"] == [{"Key": "t", "Value": "2"}]
    with pytest.raises(ClientError) as excinfo:
        client.copy_object(Bucket=bucket, Key="orig", CopySource=source)
    assert error_code(excinfo) == "InvalidRequest"
    client.copy_object(Bucket=bucket, Key="orig", CopySource=source, MetadataDirective="REPLACE",
                       Metadata={"a": "updated"})  # fmt: skip
    assert client.head_object(Bucket=bucket, Key="orig")["Metadata"] == {"a": "updated"}
    client.copy_object(Bucket=other, Key="public-copy", CopySource=source, ACL="public-read")
    assert s3.anonymous().get_object(Bucket=other, Key="public-copy")["Body"].read() == b"payload"
    with pytest.raises(ClientError):  # ACLs are not copied: a copy is private unless the request says otherwise
        s3.anonymous().get_object(Bucket=other, Key="same")
    with pytest.raises(ClientError) as excinfo:
        client.copy_object(Bucket=other, Key="x", CopySource=source, CopySourceIfMatch='"nope"')
    assert error_code(excinfo) == "PreconditionFailed"
    with pytest.raises(ClientError) as excinfo:
        client.copy_object(Bucket=other, Key="x", CopySource={"Bucket": bucket, "Key": "missing"})
    assert error_code(excinfo) == "NoSuchKey"


def test_object_tagging(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client()
    client.put_object(Bucket=bucket, Key="tagged", Body=b"x", Tagging="a=1&b=two")
    assert client.head_object(Bucket=bucket, Key="tagged").get("TagCount") == 2
    tags = client.get_object_tagging(Bucket=bucket, Key="tagged")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("a", "1"), ("b", "two")]
    client.put_object_tagging(Bucket=bucket, Key="tagged", Tagging={"TagSet": [{"Key": "c", "Value": "3"}]})
    assert client.get_object_tagging(Bucket=bucket, Key="tagged")["TagSet"] == [{"Key": "c", "Value": "3"}]
    with pytest.raises(ClientError) as excinfo:
        client.put_object_tagging(Bucket=bucket, Key="tagged",
                                  Tagging={"TagSet": [{"Key": f"k{i}", "Value": "v"} for i in range(11)]})  # fmt: skip
    assert error_code(excinfo) in ("BadRequest", "InvalidTag")
    client.delete_object_tagging(Bucket=bucket, Key="tagged")
    assert client.get_object_tagging(Bucket=bucket, Key="tagged")["TagSet"] == []


def test_content_md5_is_verified(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client()
    body = b"checked bytes"
    good = base64.b64encode(hashlib.md5(body).digest()).decode()
    client.put_object(Bucket=bucket, Key="md5", Body=body, ContentMD5=good)
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as excinfo:
        client.put_object(Bucket=bucket, Key="md5-bad", Body=body, ContentMD5=bad)
    assert error_code(excinfo) == "BadDigest"
    with pytest.raises(ClientError) as excinfo:
        client.put_object(Bucket=bucket, Key="md5-bad", Body=body, ContentMD5="not base64 at all")
    assert error_code(excinfo) == "InvalidDigest"
    with pytest.raises(ClientError):
        client.head_object(Bucket=bucket, Key="md5-bad")


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "SHA1", "SHA256"])
def test_checksums_are_stored_and_returned(s3: S3Endpoint, bucket: str, algorithm: str) -> None:  # noqa: F811
    client = s3.client()
    body = bytes(range(256)) * 4096
    put = client.put_object(Bucket=bucket, Key=f"sum-{algorithm}", Body=body, ChecksumAlgorithm=algorithm)
    value = put[f"Checksum{algorithm}"]
    if algorithm in ("SHA1", "SHA256"):
        assert value == base64.b64encode(hashlib.new(algorithm.lower(), body).digest()).decode()
    got = client.get_object(Bucket=bucket, Key=f"sum-{algorithm}", ChecksumMode="ENABLED")
    assert got[f"Checksum{algorithm}"] == value
    assert got["Body"].read() == body  # botocore validates the checksum while reading


@pytest.mark.parametrize("algorithm", ["CRC32", "SHA256"])
def test_wrong_checksum_header_is_refused(s3: S3Endpoint, bucket: str, algorithm: str) -> None:  # noqa: F811
    client = s3.client(request_checksum_calculation="when_required")
    wrong = base64.b64encode(hashlib.sha256(b"x").digest()[: 4 if algorithm == "CRC32" else 32]).decode()
    with pytest.raises(ClientError) as excinfo:
        client.put_object(Bucket=bucket, Key="wrong-sum", Body=b"payload", **{f"Checksum{algorithm}": wrong})
    assert error_code(excinfo) == "BadDigest"
    with pytest.raises(ClientError):
        client.head_object(Bucket=bucket, Key="wrong-sum")


def test_virtual_host_style(s3: S3Endpoint) -> None:  # noqa: F811
    """Bucket in the host name (``BUCKET.s3.localhost``). *.localhost resolves to loopback only where the
    resolver follows RFC 6761 (systemd-resolved does, this machine's glibc does not), so the client reaches
    the endpoint as its HTTP proxy: the request still names ``BUCKET.s3.localhost`` in its Host header."""
    import boto3
    from botocore.config import Config

    name = s3.bucket()
    client = boto3.client(
        "s3", endpoint_url=f"http://s3.localhost:{s3.port}", region_name="cloudlab-1",
        aws_access_key_id=s3.admin.access_key, aws_secret_access_key=s3.admin.secret_key,
        config=Config(s3={"addressing_style": "virtual"}, proxies={"http": f"http://127.0.0.1:{s3.port}"},
                      retries={"max_attempts": 1}),
    )  # fmt: skip
    seen: list[str] = []
    client.meta.events.register("before-send.s3.*", lambda request, **_: seen.append(request.url))
    client.put_object(Bucket=name, Key="vhost/key", Body=b"v")
    assert client.get_object(Bucket=name, Key="vhost/key")["Body"].read() == b"v"
    assert [o["Key"] for o in client.list_objects_v2(Bucket=name)["Contents"]] == ["vhost/key"]
    assert seen and all(url.startswith(f"http://{name}.s3.localhost:{s3.port}/") for url in seen), seen
    assert s3.client().get_object(Bucket=name, Key="vhost/key")["Body"].read() == b"v"  # the same object, path style
