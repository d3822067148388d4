"""Walrus buckets through boto3's unmodified S3 client: create, list, head, delete, location, canned ACLs,
tagging, versioning (list versions, delete markers), CORS and who sees what."""

from __future__ import annotations

import http.client
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.s3_fixtures import REGION, S3Endpoint, error_code, s3  # noqa: F401


def test_create_list_head_locate_delete(s3: S3Endpoint) -> None:  # noqa: F811
    client = s3.client()
    name = s3.bucket(client)
    assert name in [b["Name"] for b in client.list_buckets()["Buckets"]]
    assert client.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert client.get_bucket_location(Bucket=name)["LocationConstraint"] == REGION
    with pytest.raises(ClientError) as excinfo:
        client.create_bucket(Bucket=name)
    assert error_code(excinfo) == "BucketAlreadyOwnedByYou"
    client.put_object(Bucket=name, Key="k", Body=b"x")
    with pytest.raises(ClientError) as excinfo:
        client.delete_bucket(Bucket=name)
    assert error_code(excinfo) == "BucketNotEmpty"
    client.delete_object(Bucket=name, Key="k")
    client.delete_bucket(Bucket=name)
    assert name not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as excinfo:
        client.head_bucket(Bucket=name)
    assert error_code(excinfo) == "404"
    with pytest.raises(ClientError) as excinfo:
        client.delete_bucket(Bucket=name)
    assert error_code(excinfo) == "NoSuchBucket"


def test_location_constraint_must_be_the_region(s3: S3Endpoint) -> None:  # noqa: F811
    client = s3.client()
    client.create_bucket(Bucket="loc-ok-bucket", CreateBucketConfiguration={"LocationConstraint": REGION})
    with pytest.raises(ClientError) as excinfo:
        client.create_bucket(Bucket="loc-bad-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert error_code(excinfo) == "IllegalLocationConstraintException"


@pytest.mark.parametrize("name", ["ab", "UPPER", "under_score", "-dash", "a..b", "192.168.1.1", "x" * 64])
def test_invalid_bucket_names(s3: S3Endpoint, name: str) -> None:  # noqa: F811
    with pytest.raises(ClientError) as excinfo:
        s3.client().create_bucket(Bucket=name)
    assert error_code(excinfo) == "InvalidBucketName"


def test_buckets_are_owner_only_by_default_and_admin_sees_all(s3: S3Endpoint) -> None:  # noqa: F811
    alice, bob = s3.client(s3.new_user("alice")), s3.client(s3.new_user("bob"))
    name = s3.bucket(alice)
    alice.put_object(Bucket=name, Key="secret", Body=b"mine")
    assert name not in [b["Name"] for b in bob.list_buckets()["Buckets"]]
    assert name in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]  # the admin
    for call in (
        lambda: bob.get_object(Bucket=name, Key="secret"),
        lambda: bob.list_objects_v2(Bucket=name),
        lambda: bob.put_object(Bucket=name, Key="x", Body=b"y"),
        lambda: bob.delete_bucket(Bucket=name),
        lambda: s3.anonymous().get_object(Bucket=name, Key="secret"),
    ):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert error_code(excinfo) == "AccessDenied"
    with pytest.raises(ClientError) as excinfo:
        bob.create_bucket(Bucket=name)
    assert error_code(excinfo) == "BucketAlreadyExists"
    assert s3.client().get_object(Bucket=name, Key="secret")["Body"].read() == b"mine"


def _grants(acl: dict[str, Any]) -> set[tuple[str, str]]:
    return {(g["Grantee"].get("URI") or g["Grantee"]["Type"], g["Permission"]) for g in acl["Grants"]}


def test_canned_acls(s3: S3Endpoint) -> None:  # noqa: F811
    owner, other = s3.client(s3.new_user("own")), s3.client(s3.new_user("oth"))
    anon = s3.anonymous()
    all_users = "http://acs.amazonaws.com/groups/global/AllUsers"
    auth_users = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"

    public = s3.bucket(owner)
    owner.put_bucket_acl(Bucket=public, ACL="public-read")
    assert _grants(owner.get_bucket_acl(Bucket=public)) == {("CanonicalUser", "FULL_CONTROL"), (all_users, "READ")}
    owner.put_object(Bucket=public, Key="open", Body=b"data", ACL="public-read")
    owner.put_object(Bucket=public, Key="closed", Body=b"data")
    assert anon.get_object(Bucket=public, Key="open")["Body"].read() == b"data"
    assert [o["Key"] for o in anon.list_objects_v2(Bucket=public)["Contents"]] == ["closed", "open"]
    with pytest.raises(ClientError) as excinfo:
        anon.get_object(Bucket=public, Key="closed")
    assert error_code(excinfo) == "AccessDenied"
    with pytest.raises(ClientError):
        anon.put_object(Bucket=public, Key="w", Body=b"w")

    writable = s3.bucket(owner)
    owner.put_bucket_acl(Bucket=writable, ACL="public-read-write")
    anon.put_object(Bucket=writable, Key="dropped", Body=b"from anyone")
    assert owner.get_object(Bucket=writable, Key="dropped")["Body"].read() == b"from anyone"

    authenticated = s3.bucket(owner)
    owner.put_bucket_acl(Bucket=authenticated, ACL="authenticated-read")
    owner.put_object(Bucket=authenticated, Key="k", Body=b"v", ACL="authenticated-read")
    assert (auth_users, "READ") in _grants(owner.get_object_acl(Bucket=authenticated, Key="k"))
    assert other.get_object(Bucket=authenticated, Key="k")["Body"].read() == b"v"
    with pytest.raises(ClientError):
        anon.get_object(Bucket=authenticated, Key="k")

    owner.put_bucket_acl(Bucket=public, ACL="private")
    with pytest.raises(ClientError):
        anon.list_objects_v2(Bucket=public)


def test_bucket_tagging(s3: S3Endpoint) -> None:  # noqa: F811
    client = s3.client()
    name = s3.bucket(client)
    with pytest.raises(ClientError) as excinfo:
        client.get_bucket_tagging(Bucket=name)
    assert error_code(excinfo) == "NoSuchTagSet"
    client.put_bucket_tagging(Bucket=name, Tagging={"TagSet": [{"Key": "project", "Value": "walrus"}]})
    assert client.get_bucket_tagging(Bucket=name)["TagSet"] == [{"Key": "project", "Value": "walrus"}]
    with pytest.raises(ClientError) as excinfo:
        client.put_bucket_tagging(Bucket=name, Tagging={"TagSet": [{"Key": "k" * 129, "Value": "v"}]})
    assert error_code(excinfo) == "InvalidTag"
    client.delete_bucket_tagging(Bucket=name)
    with pytest.raises(ClientError):
        client.get_bucket_tagging(Bucket=name)


def test_versioning_versions_and_delete_markers(s3: S3Endpoint) -> None:  # noqa: F811
    client = s3.client()
    name = s3.bucket(client)
    assert "Status" not in client.get_bucket_versioning(Bucket=name)
    client.put_object(Bucket=name, Key="doc", Body=b"v0")  # before versioning: the null version
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    assert client.get_bucket_versioning(Bucket=name)["Status"] == "Enabled"
    v1 = client.put_object(Bucket=name, Key="doc", Body=b"v1")["VersionId"]
    v2 = client.put_object(Bucket=name, Key="doc", Body=b"v2")["VersionId"]
    assert len({v1, v2, "null"}) == 3
    assert client.get_object(Bucket=name, Key="doc")["Body"].read() == b"v2"
    assert client.get_object(Bucket=name, Key="doc", VersionId=v1)["Body"].read() == b"v1"
    assert client.get_object(Bucket=name, Key="doc", VersionId="null")["Body"].read() == b"v0"
    deleted = client.delete_object(Bucket=name, Key="doc")
    assert deleted["DeleteMarker"] is True
    marker = deleted["VersionId"]
    with pytest.raises(ClientError) as excinfo:
        client.get_object(Bucket=name, Key="doc")
    assert error_code(excinfo) == "NoSuchKey"
    assert excinfo.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-delete-marker"] == "true"
    assert "Contents" not in client.list_objects_v2(Bucket=name)
    listing = client.list_object_versions(Bucket=name)
    assert [(v["VersionId"], v["IsLatest"]) for v in listing["Versions"]] == [(v2, False), (v1, False), ("null", False)]
    assert [(m["VersionId"], m["IsLatest"]) for m in listing["DeleteMarkers"]] == [(marker, True)]
    client.delete_object(Bucket=name, Key="doc", VersionId=marker)  # removing the marker restores v2
    assert client.get_object(Bucket=name, Key="doc")["Body"].read() == b"v2"
    client.delete_object(Bucket=name, Key="doc", VersionId=v2)
    assert client.get_object(Bucket=name, Key="doc")["Body"].read() == b"v1"
    page = client.list_object_versions(Bucket=name, MaxKeys=1)
    assert page["IsTruncated"] and page["Versions"][0]["VersionId"] == v1
    rest = client.list_object_versions(Bucket=name, KeyMarker=page["NextKeyMarker"],
                                       VersionIdMarker=page["NextVersionIdMarker"])  # fmt: skip
    assert [v["VersionId"] for v in rest["Versions"]] == ["null"]

    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Suspended"})
    assert client.get_bucket_versioning(Bucket=name)["Status"] == "Suspended"
    client.put_object(Bucket=name, Key="doc", Body=b"s1")
    client.put_object(Bucket=name, Key="doc", Body=b"s2")  # suspended: replaces the null version
    versions = client.list_object_versions(Bucket=name)["Versions"]
    assert [(v["VersionId"], v["Size"]) for v in versions] == [("null", 2), (v1, 2)]


def _raw(s3: S3Endpoint, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:  # noqa: F811
    connection = http.client.HTTPConnection("127.0.0.1", s3.port, timeout=10)
    try:
        connection.request(method, path, headers=headers)
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def test_cors_lets_a_page_on_another_origin_fetch(s3: S3Endpoint) -> None:  # noqa: F811
    client = s3.client()
    name = s3.bucket(client)
    with pytest.raises(ClientError) as excinfo:
        client.get_bucket_cors(Bucket=name)
    assert error_code(excinfo) == "NoSuchCORSConfiguration"
    rules = [{"AllowedOrigins": ["http://127.0.0.1:8888", "http://*.lab.test"], "AllowedMethods": ["GET", "PUT"],
              "AllowedHeaders": ["*"], "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 600}]  # fmt: skip
    client.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": rules})
    assert client.get_bucket_cors(Bucket=name)["CORSRules"] == rules
    client.put_object(Bucket=name, Key="data.csv", Body=b"a,b\n", ACL="public-read")
    preflight = {"Origin": "http://jupyter.lab.test", "Access-Control-Request-Method": "PUT",
                 "Access-Control-Request-Headers": "content-type"}  # fmt: skip
    status, headers, _ = _raw(s3, "OPTIONS", f"/{name}/data.csv", preflight)
    assert status == 200
    assert headers["access-control-allow-origin"] == "http://jupyter.lab.test"
    assert "PUT" in headers["access-control-allow-methods"] and headers["access-control-max-age"] == "600"
    status, _, body = _raw(s3, "OPTIONS", f"/{name}/data.csv", preflight | {"Origin": "http://evil.example"})
    assert status == 403 and b"AccessForbidden" in body
    status, headers, body = _raw(s3, "GET", f"/{name}/data.csv", {"Origin": "http://127.0.0.1:8888"})
    assert (status, body) == (200, b"a,b\n")
    assert headers["access-control-allow-origin"] == "http://127.0.0.1:8888"
    assert headers["access-control-expose-headers"] == "ETag"
    client.delete_bucket_cors(Bucket=name)
    status, _, _ = _raw(s3, "OPTIONS", f"/{name}/data.csv", preflight)
    assert status == 403
