"""Listings over HTTP through boto3: ListObjects (v1 markers) and ListObjectsV2 (continuation tokens) with
prefix, delimiter, max-keys and encoding-type=url, in S3's order and pages, across 100,000 keys.

The 100,000 keys are made in the engine directly (one transaction: 100,000 PUTs over HTTP would take
minutes) and listed over HTTP only."""

from __future__ import annotations

import urllib.request
from urllib.parse import quote, unquote
from xml.etree import ElementTree

import pytest
from botocore.exceptions import ClientError

from tests.s3_fixtures import S3Endpoint, error_code, s3, signed_request  # noqa: F401

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"

ODD_KEYS = ["enc/with space", "enc/plus+sign", "enc/é-accent", "enc/percent%41", "enc/amp&lt", "enc/日本", "enc/a?b"]
N = 100_000


@pytest.fixture(scope="module")
def big(s3: S3Endpoint) -> tuple[str, list[str]]:  # noqa: F811
    name = s3.bucket(prefix="listing")
    keys = [f"data/{i // 1000:03d}/{i:06d}.csv" for i in range(N - len(ODD_KEYS) - 3)]
    keys += ODD_KEYS + ["top-a", "top-b", "zz"]
    assert s3.walrus is not None
    from cloudlab.walrus import Principal

    owner = Principal("admin", "", True)
    for start in range(0, len(keys), 20_000):
        s3.walrus.put_empty_objects(owner, name, keys[start : start + 20_000])
    return name, sorted(keys)


def _keys(xml: bytes) -> tuple[list[str], dict[str, str]]:
    """Keys and the top-level fields of a ListBucketResult (parsed without botocore: 100 pages stay quick)."""
    root = ElementTree.fromstring(xml)
    keys = [unquote(c.findtext(f"{NS}Key") or "") for c in root.iter(f"{NS}Contents")]
    fields = {child.tag.removeprefix(NS): child.text or "" for child in root if len(child) == 0}
    return keys, fields


@pytest.mark.slow
def test_100k_keys_page_in_order_over_http(s3: S3Endpoint, big: tuple[str, list[str]]) -> None:  # noqa: F811
    """ListObjectsV2 (continuation tokens) and ListObjects (markers) walk all 100,000 keys, 1,000 a page."""
    name, keys = big
    listed, token, pages = [], "", 0
    while True:
        query = f"?list-type=2&encoding-type=url&max-keys=1000{'&continuation-token=' + quote(token) if token else ''}"
        status, _, body = signed_request(s3, "GET", f"/{name}{query}")
        assert status == 200, body[:300]
        page, fields = _keys(body)
        assert int(fields["KeyCount"]) == len(page) <= 1000
        listed += page
        pages += 1
        if fields["IsTruncated"] != "true":
            break
        token = fields["NextContinuationToken"]
    assert listed == keys and pages == N // 1000
    listed, marker = [], ""
    while True:
        status, _, body = signed_request(s3, "GET", f"/{name}?encoding-type=url&marker={quote(marker, safe='')}")
        page, fields = _keys(body)
        listed += page
        if fields["IsTruncated"] != "true":
            break
        marker = page[-1]  # v1 without a delimiter: the next marker is the last key, as clients do
    assert listed == keys


def test_boto3_paginators_walk_a_prefix(s3: S3Endpoint, big: tuple[str, list[str]]) -> None:  # noqa: F811
    name, keys = big
    client = s3.client()
    expected = [k for k in keys if k.startswith("data/01")]
    v2 = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix="data/01",
          PaginationConfig={"PageSize": 1000}) for o in page["Contents"]]  # fmt: skip
    v1 = [o["Key"] for page in client.get_paginator("list_objects").paginate(Bucket=name, Prefix="data/01")
          for o in page["Contents"]]  # fmt: skip
    assert v2 == v1 == expected and len(expected) == 10_000


def test_delimiter_and_prefix(s3: S3Endpoint, big: tuple[str, list[str]]) -> None:  # noqa: F811
    name, keys = big
    client = s3.client()
    top = client.list_objects_v2(Bucket=name, Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["data/", "enc/"]
    assert [o["Key"] for o in top["Contents"]] == ["top-a", "top-b", "zz"]
    folders = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix="data/", Delimiter="/",
                                                                 PaginationConfig={"PageSize": 7}):  # fmt: skip
        folders += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        assert "Contents" not in page
    assert folders == [f"data/{i:03d}/" for i in range(len(folders))] and len(folders) == 100
    inside = client.list_objects_v2(Bucket=name, Prefix="data/042/", MaxKeys=5)
    assert [o["Key"] for o in inside["Contents"]] == [f"data/042/{i:06d}.csv" for i in range(42000, 42005)]
    assert inside["IsTruncated"]
    after = client.list_objects_v2(Bucket=name, StartAfter="data/099/099997.csv", MaxKeys=3)
    assert [o["Key"] for o in after["Contents"]] == [k for k in keys if k > "data/099/099997.csv"][:3]
    v1 = client.list_objects(Bucket=name, Delimiter="/", Prefix="data/", MaxKeys=10)
    assert v1["IsTruncated"] and v1["NextMarker"] == "data/009/"
    rest = client.list_objects(Bucket=name, Delimiter="/", Prefix="data/", Marker=v1["NextMarker"], MaxKeys=1000)
    assert len(rest["CommonPrefixes"]) == 90 and not rest["IsTruncated"]
    assert client.list_objects_v2(Bucket=name, MaxKeys=0)["KeyCount"] == 0


def test_odd_keys_round_trip_with_url_encoding(s3: S3Endpoint, big: tuple[str, list[str]]) -> None:  # noqa: F811
    name, _ = big
    client = s3.client()
    assert [o["Key"] for o in client.list_objects_v2(Bucket=name, Prefix="enc/")["Contents"]] == sorted(ODD_KEYS)
    assert [o["Key"] for o in client.list_objects(Bucket=name, Prefix="enc/")["Contents"]] == sorted(ODD_KEYS)
    url = client.generate_presigned_url("list_objects_v2", Params={"Bucket": name, "Prefix": "enc/",
                                                                   "EncodingType": "url"}, ExpiresIn=60)  # fmt: skip
    raw = urllib.request.urlopen(url, timeout=10).read().decode()
    assert "<Key>enc/with%20space</Key>" in raw and "<Key>enc/plus%2Bsign</Key>" in raw
    assert "<Key>enc/%C3%A9-accent</Key>" in raw and "<EncodingType>url</EncodingType>" in raw
    status, _, plain = signed_request(s3, "GET", f"/{name}?list-type=2&prefix=enc%2F")  # no encoding-type
    assert (
        status == 200
        and "<Key>enc/amp&amp;lt</Key>" in plain.decode()
        and "<Key>enc/with space</Key>" in plain.decode()
    )
    with pytest.raises(ClientError) as excinfo:
        client.list_objects_v2(Bucket=name, EncodingType="base64")  # type: ignore[arg-type]
    assert error_code(excinfo) in ("InvalidArgument",)


def test_bad_continuation_token(s3: S3Endpoint, big: tuple[str, list[str]]) -> None:  # noqa: F811
    name, _ = big
    with pytest.raises(ClientError) as excinfo:
        s3.client().list_objects_v2(Bucket=name, ContinuationToken="%%%not-a-token")
    assert error_code(excinfo) == "InvalidArgument"
