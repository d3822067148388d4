"""Hostile input to the S3 endpoint: random methods, paths, query strings, headers and bodies, unsigned and
signed. Every answer is an S3 XML error or a success, never a 5xx or a dropped connection, and the store
holds exactly what it held before (unsigned requests on a private bucket may change nothing)."""

from __future__ import annotations

import http.client
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudlab.walrus import Principal, WriteSpec
from tests.s3_fixtures import S3Endpoint, s3, signed_request  # noqa: F401

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
SUBRESOURCES = ["acl", "cors", "tagging", "versioning", "versions", "uploads", "uploadId=x", "partNumber=0",
                "list-type=2", "delete", "location", "policy", "continuation-token=%%%", "max-keys=-1",
                "encoding-type=zz", "versionId=nope", "x-id=PutObject"]  # fmt: skip
HEADERS = ["Content-MD5", "x-amz-content-sha256", "x-amz-copy-source", "Range", "If-Match", "x-amz-acl",
           "x-amz-tagging", "Content-Encoding", "x-amz-decoded-content-length", "x-amz-trailer",
           "x-amz-checksum-crc32", "x-amz-sdk-checksum-algorithm", "If-Modified-Since", "x-amz-date"]  # fmt: skip
texty = st.text(alphabet=st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=40)

request_parts = st.fixed_dictionaries({
    "method": st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS"]),
    "path": st.sampled_from(["/", "/fuzz-bucket", "/fuzz-bucket/", "/fuzz-bucket/k", "/fuzz-bucket/a/b%20c",
                             "/no-such-bucket/k", "/%", "//x", "/fuzz-bucket/" + "k" * 1100]),
    "query": st.lists(st.sampled_from(SUBRESOURCES), max_size=3),
    "headers": st.dictionaries(st.sampled_from(HEADERS), texty, max_size=4),
    "body": st.sampled_from([b"", b"<x/>", b"<Delete><Object><Key>k</Key></Object></Delete>", b"\x00" * 50,
                             b"5\r\nhello\r\n0\r\n\r\n", b"<" * 1000]),
    "signed": st.booleans(),
})  # fmt: skip


def _raw(endpoint: S3Endpoint, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=15)
    try:
        connection.request(method, target, body=body or None, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


ADMIN = Principal("admin", "", True)


def _state(endpoint: S3Endpoint) -> Any:
    """What the store holds, read from the engine (quick: the fuzz loop runs this twice per example)."""
    assert endpoint.walrus is not None
    page = endpoint.walrus.list_objects(ADMIN, "fuzz-bucket")
    bucket = endpoint.walrus.bucket("fuzz-bucket")
    return sorted((v.key, v.etag) for v in page.entries), bucket.acl, bucket.versioning, bucket.cors, bucket.tags


@FUZZ
@given(parts=request_parts)
def test_random_requests_get_clear_answers(s3: S3Endpoint, parts: dict[str, Any]) -> None:  # noqa: F811
    assert s3.walrus is not None
    if "fuzz-bucket" not in {b.name for b in s3.walrus.list_buckets(ADMIN)}:
        s3.walrus.create_bucket(ADMIN, "fuzz-bucket", None, WriteSpec())
        s3.walrus.put_object(ADMIN, "fuzz-bucket", "k", [b"keep me"], WriteSpec())
        s3.walrus.put_bucket_acl(ADMIN, "fuzz-bucket", WriteSpec(canned_acl="private"))
    target = parts["path"] + ("?" + "&".join(parts["query"]) if parts["query"] else "")
    before = _state(s3)
    if parts["signed"]:
        status, _, body = signed_request(s3, parts["method"], target, parts["body"], dict(parts["headers"]))
    else:
        status, body = _raw(s3, parts["method"], target, dict(parts["headers"]), parts["body"])
    assert status < 500 or (status == 501 and (parts["method"] == "HEAD" or b"<Code>NotImplemented</Code>" in body))
    if status >= 400 and parts["method"] != "HEAD":
        assert re.search(rb"<Error><Code>[A-Za-z.]+</Code><Message>[^<]+</Message>", body), body[:300]
    if not parts["signed"]:
        assert _state(s3) == before  # anonymous requests cannot touch a private bucket
    if parts["signed"]:  # whatever a signed request did, the next example starts from the same store
        s3.walrus.put_object(ADMIN, "fuzz-bucket", "k", [b"keep me"], WriteSpec())
        s3.walrus.put_bucket_acl(ADMIN, "fuzz-bucket", WriteSpec(canned_acl="private"))
