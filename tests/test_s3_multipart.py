"""Multipart uploads through boto3: create, upload part, upload part copy (ranged), complete, abort, list;
S3's ETag (``-N``) and its errors (EntityTooSmall, InvalidPart, InvalidPartOrder, NoSuchUpload)."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.s3_fixtures import S3Endpoint, error_code, s3  # noqa: F401

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def bucket(s3: S3Endpoint) -> str:  # noqa: F811
    return s3.bucket(prefix="multipart")


def _etag(parts: list[bytes]) -> str:
    return f'"{hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()}-{len(parts)}"'


def test_upload_complete_and_etag(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client()
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), b"tail"]
    upload = client.create_multipart_upload(Bucket=bucket, Key="big.bin", ContentType="application/x-big",
                                            Metadata={"kind": "parts"})["UploadId"]  # fmt: skip
    assert [u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [upload]
    etags = [
        client.upload_part(Bucket=bucket, Key="big.bin", UploadId=upload, PartNumber=n, Body=data)["ETag"]
        for n, data in enumerate(parts, 1)
    ]
    listed = client.list_parts(Bucket=bucket, Key="big.bin", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == [
        (n, etags[n - 1], len(parts[n - 1])) for n in (1, 2, 3)
    ]
    page = client.list_parts(Bucket=bucket, Key="big.bin", UploadId=upload, MaxParts=2)
    assert page["IsTruncated"] and page["NextPartNumberMarker"] == 2
    done = client.complete_multipart_upload(
        Bucket=bucket, Key="big.bin", UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )  # fmt: skip
    assert done["ETag"] == _etag(parts)
    got = client.get_object(Bucket=bucket, Key="big.bin")
    assert got["Body"].read() == b"".join(parts)
    assert (got["ContentType"], got["Metadata"], got["ETag"]) == ("application/x-big", {"kind": "parts"}, _etag(parts))
    ranged = client.get_object(Bucket=bucket, Key="big.bin", Range=f"bytes={5 * MIB - 2}-{5 * MIB + 1}")
    assert ranged["Body"].read() == parts[0][-2:] + parts[1][:2]  # a range across two parts
    assert "Uploads" not in client.list_multipart_uploads(Bucket=bucket)


def test_transfer_manager_round_trip(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client()
    data = os.urandom(20 * MIB + 123)
    config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4)
    client.upload_fileobj(io.BytesIO(data), bucket, "managed", Config=config)
    head = client.head_object(Bucket=bucket, Key="managed")
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"')
    out = io.BytesIO()
    client.download_fileobj(bucket, "managed", out, Config=config)
    assert out.getvalue() == data


def test_upload_part_copy_ranges(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client()
    source = os.urandom(12 * MIB)
    client.put_object(Bucket=bucket, Key="source", Body=source)
    upload = client.create_multipart_upload(Bucket=bucket, Key="assembled")["UploadId"]
    first = client.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=1,
                                    CopySource={"Bucket": bucket, "Key": "source"},
                                    CopySourceRange=f"bytes={6 * MIB}-{12 * MIB - 1}")  # fmt: skip
    second = client.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=2,
                                     CopySource={"Bucket": bucket, "Key": "source"},
                                     CopySourceRange="bytes=0-99")  # fmt: skip
    for bad_range, code in ((f"bytes=0-{12 * MIB}", "InvalidRange"), ("bytes=5-", "InvalidArgument"),
                            ("items=0-1", "InvalidArgument")):  # fmt: skip
        with pytest.raises(ClientError) as excinfo:
            client.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=3,
                                    CopySource={"Bucket": bucket, "Key": "source"},
                                    CopySourceRange=bad_range)  # fmt: skip
        assert error_code(excinfo) == code, bad_range
    with pytest.raises(ClientError) as excinfo:
        client.upload_part_copy(Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=3,
                                CopySource={"Bucket": bucket, "Key": "no-such-source"})  # fmt: skip
    assert error_code(excinfo) == "NoSuchKey"
    client.complete_multipart_upload(
        Bucket=bucket, Key="assembled", UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": first["CopyPartResult"]["ETag"]},
                                   {"PartNumber": 2, "ETag": second["CopyPartResult"]["ETag"]}]},
    )  # fmt: skip
    assert client.get_object(Bucket=bucket, Key="assembled")["Body"].read() == source[6 * MIB :] + source[:100]


def test_multipart_errors(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client()
    upload = client.create_multipart_upload(Bucket=bucket, Key="bad")["UploadId"]
    small = client.upload_part(Bucket=bucket, Key="bad", UploadId=upload, PartNumber=1, Body=b"tiny")["ETag"]
    last = client.upload_part(Bucket=bucket, Key="bad", UploadId=upload, PartNumber=2, Body=b"end")["ETag"]

    def complete(parts: list[dict[str, object]]) -> str:
        with pytest.raises(ClientError) as excinfo:
            client.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=upload,
                                             MultipartUpload={"Parts": parts})  # fmt: skip
        return error_code(excinfo)

    assert complete([{"PartNumber": 1, "ETag": small}, {"PartNumber": 2, "ETag": last}]) == "EntityTooSmall"
    assert complete([{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]) == "InvalidPart"
    assert complete([{"PartNumber": 3, "ETag": last}]) == "InvalidPart"
    assert complete([{"PartNumber": 2, "ETag": last}, {"PartNumber": 1, "ETag": small}]) == "InvalidPartOrder"
    with pytest.raises(ClientError) as excinfo:
        client.upload_part(Bucket=bucket, Key="bad", UploadId=upload, PartNumber=10001, Body=b"x")
    assert error_code(excinfo) == "InvalidArgument"
    client.abort_multipart_upload(Bucket=bucket, Key="bad", UploadId=upload)
    for call in (
        lambda: client.upload_part(Bucket=bucket, Key="bad", UploadId=upload, PartNumber=1, Body=b"x"),
        lambda: client.list_parts(Bucket=bucket, Key="bad", UploadId=upload),
        lambda: client.abort_multipart_upload(Bucket=bucket, Key="bad", UploadId=upload),
        lambda: client.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=upload,
                                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": small}]}),
    ):  # fmt: skip
        with pytest.raises(ClientError) as excinfo:
            call()
        assert error_code(excinfo) == "NoSuchUpload"
    with pytest.raises(ClientError):
        client.head_object(Bucket=bucket, Key="bad")
