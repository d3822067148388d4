"""Server-side SigV4 and SigV2 verification, against requests signed by botocore itself.

botocore's signers (SigV4Auth, SigV4QueryAuth, SigV2Auth) are the reference: what they sign must
verify, and any change to what they signed (body, query, a signed header, the secret, the clock)
must fail with the code EC2 would give. The last part runs real boto3 clients against a tiny HTTP
server built from the protocol layer, so the bytes on the wire are exactly boto3's.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import boto3
import botocore.auth
import pytest
from botocore import UNSIGNED
from botocore.auth import SigV2Auth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudlab.api.errors import ApiError, dry_run_operation, internal_error
from cloudlab.api.model import operation_model
from cloudlab.api.protocol import parse_body, parse_request, serialize_error, serialize_response
from cloudlab.api.sigv2 import SignedIdentity, verify_sigv2
from cloudlab.api.sigv4 import authenticate, canonical_query, canonical_uri, signing_key, verify_sigv4

UTC = dt.UTC
ACCESS_KEY = "AKIDCLOUDLAB0000001"
SECRET = "s3cr3t/with+special=chars"
SECRETS = {ACCESS_KEY: SECRET, "AKIDOTHER": "other-secret"}
CREDS = Credentials(ACCESS_KEY, SECRET)
T0 = dt.datetime(2024, 5, 17, 9, 30, 15, tzinfo=UTC)
FORM = "application/x-www-form-urlencoded; charset=utf-8"
PARAMS = {
    "Action": "DescribeInstances",
    "Version": "2016-11-15",
    "Filter.1.Name": "tag:Name",
    "Filter.1.Value.1": "web server é/+*~",
    "MaxResults": "10",
}


@dataclass(frozen=True)
class Signed:
    """A signed request as the server receives it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def verify(self, now: dt.datetime = T0, secrets: dict[str, str] = SECRETS, **kwargs: Any) -> SignedIdentity:
        return verify_sigv4(self.method, self.path, self.query, self.headers, self.body, secrets.get, now=now, **kwargs)

    def with_headers(self, **changes: str | None) -> Signed:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in {c.lower() for c in changes}}
        headers.update({k: v for k, v in changes.items() if v is not None})
        return replace(self, headers=headers)


@pytest.fixture(autouse=True)
def frozen_signing_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's SigV4 signers read the clock through this function; pin it to T0."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: T0.replace(tzinfo=None))


def sign(
    auth: Any,
    method: str = "POST",
    url: str = "http://localhost:8773/",
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Signed:
    if data is None and method == "POST":
        data = dict(PARAMS)
    if headers is None:
        headers = {"Content-Type": FORM} if data else {}
    request = AWSRequest(method=method, url=url, data=data or None, headers=headers)
    auth.add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    sent = dict(prepared.headers)
    sent.setdefault("Host", parts.netloc)  # what urllib3 adds on the wire
    body = prepared.body or b""
    return Signed(
        prepared.method, parts.path or "/", parts.query, sent, body.encode() if isinstance(body, str) else body
    )


def code_of(fn: Any) -> str:
    with pytest.raises(ApiError) as excinfo:
        fn()
    return excinfo.value.code


# -- SigV4, Authorization header ----------------------------------------------------------------


def test_sigv4_header_verifies() -> None:
    request = sign(SigV4Auth(CREDS, "ec2", "cloudlab-1"))
    assert request.headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=")
    assert request.verify() == SignedIdentity(ACCESS_KEY, "cloudlab-1", "ec2", 4)
    # the mapping may use any case, and may be an http.client-style message with repeated names
    lowered = {k.lower(): v for k, v in request.headers.items()}
    assert replace(request, headers=lowered).verify().access_key == ACCESS_KEY


def test_sigv4_accepts_clock_skew_within_limit() -> None:
    request = sign(SigV4Auth(CREDS, "ec2", "cloudlab-1"))
    expected = SignedIdentity(ACCESS_KEY, "cloudlab-1", "ec2", 4)
    assert request.verify(now=T0 + dt.timedelta(minutes=14)) == expected
    assert request.verify(now=T0 - dt.timedelta(minutes=14)) == expected
    naive = (T0 + dt.timedelta(minutes=50)).replace(tzinfo=None)  # naive = UTC
    assert request.verify(now=naive, max_skew_s=3600) == expected


def test_sigv4_get_with_query_and_odd_path() -> None:
    url = "http://LocalHost:8773/services/Cloud%20x/./a//b/?" + urlencode(PARAMS, quote_via=quote)
    request = sign(SigV4Auth(CREDS, "ec2", "r"), method="GET", url=url, data={}, headers={})
    assert request.verify().region == "r"


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (lambda r: replace(r, body=r.body.replace(b"MaxResults=10", b"MaxResults=11")), "SignatureDoesNotMatch"),
        (lambda r: replace(r, body=r.body + b"&DryRun=true"), "SignatureDoesNotMatch"),
        (lambda r: replace(r, query="InstanceId.1=i-1"), "SignatureDoesNotMatch"),
        (lambda r: replace(r, method="PUT"), "SignatureDoesNotMatch"),
        (lambda r: replace(r, path="/other"), "SignatureDoesNotMatch"),
        (lambda r: r.with_headers(Host="evil:8773"), "SignatureDoesNotMatch"),
        (lambda r: r.with_headers(**{"Content-Type": "text/plain"}), "SignatureDoesNotMatch"),
        (lambda r: r.with_headers(**{"X-Amz-Date": "20240517T093016Z"}), "SignatureDoesNotMatch"),
        (lambda r: r.with_headers(**{"X-Amz-Date": "20240518T093015Z"}), "RequestExpired"),
        (lambda r: r.with_headers(Host=None), "SignatureDoesNotMatch"),  # signed header missing
        (lambda r: r.with_headers(**{"X-Amz-Content-SHA256": "0" * 64}), "SignatureDoesNotMatch"),
        (lambda r: r.with_headers(**{"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}), "SignatureDoesNotMatch"),
        (
            lambda r: r.with_headers(**{"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}),
            "IncompleteSignature",
        ),
    ],
)
def test_sigv4_detects_tampering(tamper: Any, code: str) -> None:
    request = sign(SigV4Auth(CREDS, "ec2", "cloudlab-1"))
    request.verify()
    assert code_of(lambda: tamper(request).verify()) == code


def test_sigv4_unsigned_headers_may_change() -> None:
    request = sign(SigV4Auth(CREDS, "ec2", "cloudlab-1")).with_headers(**{"User-Agent": "changed", "X-Extra": "1"})
    assert request.verify() == SignedIdentity(ACCESS_KEY, "cloudlab-1", "ec2", 4)


def test_sigv4_wrong_secret_unknown_key_and_clock() -> None:
    request = sign(SigV4Auth(CREDS, "ec2", "cloudlab-1"))
    assert code_of(lambda: request.verify(secrets={ACCESS_KEY: "wrong"})) == "SignatureDoesNotMatch"
    assert code_of(lambda: request.verify(secrets={})) == "AuthFailure"
    assert code_of(lambda: request.verify(now=T0 + dt.timedelta(minutes=16))) == "RequestExpired"
    assert code_of(lambda: request.verify(now=T0 - dt.timedelta(minutes=16))) == "RequestExpired"
    other = sign(SigV4Auth(Credentials("AKIDOTHER", "other-secret"), "ec2", "cloudlab-1"))
    assert other.verify().access_key == "AKIDOTHER"


def test_sigv4_scope_must_be_ec2_and_match_the_date() -> None:
    assert code_of(sign(SigV4Auth(CREDS, "s3", "cloudlab-1")).verify) == "SignatureDoesNotMatch"
    request = sign(SigV4Auth(CREDS, "ec2", "cloudlab-1"))
    auth = request.headers["Authorization"].replace("/20240517/", "/20240518/")
    assert code_of(request.with_headers(Authorization=auth).verify) == "SignatureDoesNotMatch"


def test_sigv4_declared_payload_hash_is_checked_and_accepted() -> None:
    request = AWSRequest(method="POST", url="http://localhost:8773/", data=dict(PARAMS), headers={"Content-Type": FORM})
    body = request.prepare().body
    body = body.encode() if isinstance(body, str) else body
    request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    SigV4Auth(CREDS, "ec2", "cloudlab-1").add_auth(request)
    prepared = request.prepare()
    signed = Signed("POST", "/", "", dict(prepared.headers) | {"Host": "localhost:8773"}, body)
    assert "x-amz-content-sha256" in signed.headers["Authorization"]
    assert signed.verify().access_key == ACCESS_KEY
    assert code_of(lambda: replace(signed, body=body + b"&x=1").verify()) == "SignatureDoesNotMatch"


def test_sigv4_unsigned_payload_only_without_body() -> None:
    """A client may sign UNSIGNED-PAYLOAD, but an EC2 body is the parameters: it must be bound."""

    def signed_unsigned(data: dict[str, str] | None, method: str) -> Signed:
        headers = {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"} | ({"Content-Type": FORM} if data else {})
        return sign(
            SigV4Auth(CREDS, "ec2", "cloudlab-1"),
            method=method,
            url="http://localhost:8773/?Action=DescribeInstances",
            data=data or {},
            headers=headers,
        )

    assert signed_unsigned(None, "GET").verify() == SignedIdentity(ACCESS_KEY, "cloudlab-1", "ec2", 4)
    with_body = signed_unsigned(dict(PARAMS), "POST")
    assert code_of(with_body.verify) == "SignatureDoesNotMatch"
    assert code_of(replace(with_body, body=b"DryRun=true").verify) == "SignatureDoesNotMatch"


def test_sigv4_date_header_instead_of_x_amz_date() -> None:
    """The spec allows the HTTP Date header; sign by hand to cover it."""
    date = "Fri, 17 May 2024 09:30:15 GMT"
    body = urlencode(PARAMS).encode()
    headers = {"Host": "localhost:8773", "Date": date, "Content-Type": FORM}
    canonical = "\n".join(
        [
            "POST",
            "/",
            "",
            f"content-type:{FORM}\ndate:{date}\nhost:localhost:8773\n",
            "content-type;date;host",
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = "20240517/cloudlab-1/ec2/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n20240517T093015Z\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(signing_key(SECRET, "20240517", "cloudlab-1", "ec2"), to_sign.encode(), "sha256").hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders=content-type;date;host, Signature={signature}"
    )
    Signed("POST", "/", "", headers, body).verify()
    assert code_of(Signed("POST", "/", "", headers | {"Date": "not a date"}, body).verify) == "IncompleteSignature"


@pytest.mark.parametrize(
    "authorization",
    [
        "AWS4-HMAC-SHA256",
        "AWS4-HMAC-SHA256 ",
        "AWS AKID:c2lnbmF0dXJl",
        "AWS4-HMAC-SHA512 Credential={cred}, SignedHeaders=host;x-amz-date, Signature={sig}",
        "AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, Signature={sig}",
        "AWS4-HMAC-SHA256 Credential={cred}, Signature={sig}",
        "AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders=host;x-amz-date",
        "AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders=host;x-amz-date, Signature=xyz",
        "AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders=x-amz-date, Signature={sig}",
        "AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders=Host;X-Amz-Date, Signature={sig}",
        "AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders=host;;x, Signature={sig}",
        "AWS4-HMAC-SHA256 Credential={cred}, Credential={cred}, SignedHeaders=host, Signature={sig}",
        "AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders=host, Signature={sig}, Extra=1",
        "AWS4-HMAC-SHA256 Credential=AKID/20240517/cloudlab-1/ec2, SignedHeaders=host, Signature={sig}",
        "AWS4-HMAC-SHA256 Credential=AKID/2024-05-17/r/ec2/aws4_request, SignedHeaders=host, Signature={sig}",
        "AWS4-HMAC-SHA256 Credential=AKID/20240517/r/ec2/aws5_request, SignedHeaders=host, Signature={sig}",
        "AWS4-HMAC-SHA256 Credential=AKID//r/ec2/aws4_request, SignedHeaders=host, Signature={sig}",
    ],
)
def test_sigv4_malformed_authorization(authorization: str) -> None:
    request = sign(SigV4Auth(CREDS, "ec2", "cloudlab-1"))
    value = authorization.format(cred=f"{ACCESS_KEY}/20240517/cloudlab-1/ec2/aws4_request", sig="a" * 64)
    assert code_of(request.with_headers(Authorization=value).verify) == "IncompleteSignature"


@pytest.mark.parametrize("amz_date", [None, "2024-05-17T09:30:15Z", "20241317T093015Z", "yesterday"])
def test_sigv4_needs_a_valid_date(amz_date: str | None) -> None:
    request = sign(SigV4Auth(CREDS, "ec2", "cloudlab-1")).with_headers(**{"X-Amz-Date": amz_date})
    assert code_of(request.verify) == "IncompleteSignature"


def test_sigv4_without_any_authentication() -> None:
    request = Signed("POST", "/", "", {"Host": "localhost", "Content-Type": FORM}, urlencode(PARAMS).encode())
    assert code_of(request.verify) == "MissingAuthenticationToken"
    with pytest.raises(ApiError) as excinfo:
        request.verify()
    assert excinfo.value.status == 401


def test_sigv4_error_statuses_are_client_errors() -> None:
    request = sign(SigV4Auth(CREDS, "ec2", "cloudlab-1"))
    for secrets, now, status in (
        (SECRETS | {ACCESS_KEY: "x"}, T0, 403),
        ({}, T0, 401),
        (SECRETS, T0 + dt.timedelta(hours=1), 400),
    ):
        with pytest.raises(ApiError) as excinfo:
            request.verify(now=now, secrets=secrets)
        assert excinfo.value.status == status


def test_sigv4_both_mechanisms_at_once_is_refused() -> None:
    presigned = sign(
        SigV4QueryAuth(CREDS, "ec2", "cloudlab-1"),
        method="GET",
        url="http://localhost:8773/?" + urlencode(PARAMS),
        data={},
    )
    header = sign(SigV4Auth(CREDS, "ec2", "cloudlab-1"))
    both = presigned.with_headers(Authorization=header.headers["Authorization"])
    assert code_of(both.verify) == "IncompleteSignature"


# -- SigV4, presigned query string --------------------------------------------------------------


def presigned(expires: int = 300) -> Signed:
    return sign(
        SigV4QueryAuth(CREDS, "ec2", "cloudlab-1", expires=expires),
        method="GET",
        url="http://localhost:8773/?" + urlencode(PARAMS, quote_via=quote),
        data={},
    )


def test_presigned_verifies_within_its_lifetime() -> None:
    request = presigned(300)
    assert "X-Amz-Signature=" in request.query and "Authorization" not in request.headers
    assert request.verify(now=T0 + dt.timedelta(seconds=299)) == SignedIdentity(ACCESS_KEY, "cloudlab-1", "ec2")
    assert code_of(lambda: request.verify(now=T0 + dt.timedelta(seconds=301))) == "RequestExpired"
    assert code_of(lambda: request.verify(now=T0 - dt.timedelta(minutes=16))) == "RequestExpired"


def test_presigned_tampering_and_damage() -> None:
    request = presigned()
    assert (
        code_of(lambda: replace(request, query=request.query.replace("MaxResults=10", "MaxResults=99")).verify())
        == "SignatureDoesNotMatch"
    )
    assert code_of(lambda: replace(request, query=request.query + "&DryRun=true").verify()) == "SignatureDoesNotMatch"
    assert (
        code_of(
            lambda: replace(request, query=request.query.replace("X-Amz-Expires=300", "X-Amz-Expires=9000")).verify()
        )
        == "SignatureDoesNotMatch"
    )
    assert code_of(lambda: request.verify(secrets={})) == "AuthFailure"
    stripped = "&".join(p for p in request.query.split("&") if not p.startswith("X-Amz-Signature="))
    assert code_of(lambda: replace(request, query=stripped).verify()) == "IncompleteSignature"
    too_long = request.query.replace("X-Amz-Expires=300", "X-Amz-Expires=604801")
    assert code_of(lambda: replace(request, query=too_long).verify()) == "IncompleteSignature"
    assert (
        code_of(
            lambda: replace(
                request, query=request.query.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS3")
            ).verify()
        )
        == "IncompleteSignature"
    )


def test_presigned_body_is_still_bound() -> None:
    request = presigned()
    assert code_of(lambda: replace(request, body=b"DryRun=true").verify()) == "SignatureDoesNotMatch"


# -- SigV4 building blocks, against the AWS documentation --------------------------------------


def test_signing_key_matches_aws_documentation_example() -> None:
    # "Examples of how to derive a signing key for Signature Version 4" (AWS General Reference)
    key = signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        ("/documents%20and%20settings/", "/documents%2520and%2520settings/"),  # encoded twice (non-S3)
        ("/a/./b/../c//d", "/a/c/d"),
        ("/..", "/"),
        ("/~user/é", "/~user/%C3%A9"),
    ],
)
def test_canonical_uri(path: str, expected: str) -> None:
    assert canonical_uri(path) == expected


def test_canonical_query_sorts_encoded_pairs() -> None:
    pairs = [("b", "2"), ("a", "z"), ("a", "y"), ("A b", "c/d~e*"), ("é", "")]
    # sorted by the *encoded* names: '%' (0x25) sorts before letters
    assert canonical_query(pairs) == "%C3%A9=&A%20b=c%2Fd~e%2A&a=y&a=z&b=2"


# -- SigV2 --------------------------------------------------------------------------------------


def sign_v2(
    method: str = "POST", host: str = "localhost:8773", path: str = "/", params: dict[str, str] | None = None
) -> tuple[dict[str, str], str]:
    """Sign with botocore's SigV2Auth; return the parameters the server decodes, and the host."""
    data = dict(PARAMS if params is None else params)
    if method == "POST":
        request = AWSRequest(method="POST", url=f"http://{host}{path}", data=data, headers={"Content-Type": FORM})
    else:
        request = AWSRequest(method="GET", url=f"http://{host}{path}", params=data)
    SigV2Auth(CREDS).add_auth(request)
    prepared = request.prepare()
    body = prepared.body or b""
    body = body.encode() if isinstance(body, str) else body
    return parse_body(FORM, body, urlsplit(prepared.url).query), host


def v2_now(params: dict[str, str], seconds: int = 0) -> dt.datetime:
    return dt.datetime.fromisoformat(params["Timestamp"]) + dt.timedelta(seconds=seconds)


def hand_sign_v2(
    params: dict[str, str],
    method: str = "GET",
    host: str = "localhost:8773",
    path: str = "/",
    algorithm: str = "HmacSHA1",
    secret: str = SECRET,
) -> dict[str, str]:
    """SigV2 per the EC2 documentation, independently of botocore (and with HmacSHA1)."""
    signed = dict(params) | {"AWSAccessKeyId": ACCESS_KEY, "SignatureVersion": "2", "SignatureMethod": algorithm}
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(signed[k], safe='-_.~')}" for k in sorted(signed))
    digest = hashlib.sha1 if algorithm == "HmacSHA1" else hashlib.sha256
    mac = hmac.new(secret.encode(), f"{method}\n{host}\n{path}\n{query}".encode(), digest).digest()
    return signed | {"Signature": base64.b64encode(mac).decode()}


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_sigv2_botocore_signed_verifies(method: str) -> None:
    params, host = sign_v2(method)
    assert params["SignatureVersion"] == "2" and params["SignatureMethod"] == "HmacSHA256"
    identity = verify_sigv2(method, host, "/", params, SECRETS.get, now=v2_now(params, 60))
    assert identity == SignedIdentity(ACCESS_KEY, None, None, 2)
    assert verify_sigv2(method, host.upper(), "", params, SECRETS.get, now=v2_now(params)).access_key == ACCESS_KEY


def test_sigv2_failures() -> None:
    params, host = sign_v2()
    now = v2_now(params)

    def check(
        p: dict[str, str] = params,
        h: str = host,
        path: str = "/",
        method: str = "POST",
        secrets: dict[str, str] = SECRETS,
        when: dt.datetime = now,
    ) -> None:
        verify_sigv2(method, h, path, p, secrets.get, now=when)

    assert code_of(lambda: check(p=params | {"MaxResults": "11"})) == "SignatureDoesNotMatch"
    assert code_of(lambda: check(p=params | {"DryRun": "true"})) == "SignatureDoesNotMatch"
    assert code_of(lambda: check(h="evil:8773")) == "SignatureDoesNotMatch"
    assert code_of(lambda: check(path="/other")) == "SignatureDoesNotMatch"
    assert code_of(lambda: check(method="GET")) == "SignatureDoesNotMatch"
    assert code_of(lambda: check(secrets={ACCESS_KEY: "wrong"})) == "SignatureDoesNotMatch"
    assert code_of(lambda: check(secrets={})) == "AuthFailure"
    assert code_of(lambda: check(when=now + dt.timedelta(minutes=16))) == "RequestExpired"
    assert code_of(lambda: check(when=now - dt.timedelta(minutes=16))) == "RequestExpired"
    assert code_of(lambda: check(p=params | {"Signature": "!!notbase64"})) == "SignatureDoesNotMatch"
    assert code_of(lambda: check(p=params | {"SignatureVersion": "1"})) == "IncompleteSignature"
    assert code_of(lambda: check(p=params | {"SignatureMethod": "HmacMD5"})) == "IncompleteSignature"
    assert code_of(lambda: check(p=params | {"Timestamp": "17/05/2024"})) == "IncompleteSignature"
    assert code_of(lambda: check(p=params | {"Expires": "2030-01-01T00:00:00Z"})) == "InvalidParameterCombination"
    assert code_of(lambda: check(p={k: v for k, v in params.items() if k != "Timestamp"})) == "MissingParameter"
    assert code_of(lambda: check(p={k: v for k, v in params.items() if k != "SignatureMethod"})) == "MissingParameter"
    bare = {k: v for k, v in params.items() if k not in ("Signature", "AWSAccessKeyId")}
    assert code_of(lambda: check(p=bare)) == "MissingAuthenticationToken"


def test_sigv2_by_hand_hmac_sha1_and_expires() -> None:
    params = hand_sign_v2(PARAMS | {"Expires": "2024-05-17T10:00:00Z"})
    assert verify_sigv2("GET", "localhost:8773", "/", params, SECRETS.get, now=T0).signature_version == 2
    assert (
        code_of(lambda: verify_sigv2("GET", "localhost:8773", "/", params, SECRETS.get, now=T0 + dt.timedelta(hours=1)))
        == "RequestExpired"
    )
    sha256 = hand_sign_v2(PARAMS | {"Timestamp": "2024-05-17T09:30:00Z"}, algorithm="HmacSHA256")
    assert verify_sigv2("GET", "localhost:8773", "/", sha256, SECRETS.get, now=T0).access_key == ACCESS_KEY
    # a '+' the client forgot to encode arrives as a space; it is still the same signature
    spaced = sha256 | {"Signature": sha256["Signature"].replace("+", " ")}
    verify_sigv2("GET", "localhost:8773", "/", spaced, SECRETS.get, now=T0)


# -- choosing the signature version -------------------------------------------------------------


def test_authenticate_picks_the_mechanism() -> None:
    header = sign(SigV4Auth(CREDS, "ec2", "cloudlab-1"))
    params = parse_body(FORM, header.body, header.query)
    assert (
        authenticate(
            header.method, None, header.path, header.query, header.headers, header.body, params, SECRETS.get, now=T0
        ).signature_version
        == 4
    )
    query = presigned()
    assert (
        authenticate(
            "GET", None, "/", query.query, query.headers, b"", parse_body(None, b"", query.query), SECRETS.get, now=T0
        ).region
        == "cloudlab-1"
    )
    v2, host = sign_v2()
    assert (
        authenticate("POST", None, "/", "", {"Host": host}, b"", v2, SECRETS.get, now=v2_now(v2)).signature_version == 2
    )
    with pytest.raises(ApiError) as excinfo:
        authenticate("POST", "h", "/", "", {"Host": "h"}, b"Action=X", {"Action": "X"}, SECRETS.get, now=T0)
    assert excinfo.value.code == "MissingAuthenticationToken"


# -- fuzzing: only ApiError -----------------------------------------------------------------------

_header_values = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda c, s, sig: f"AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={s}, Signature={sig}",
        st.one_of(st.text(max_size=40), st.just(f"{ACCESS_KEY}/20240517/r/ec2/aws4_request")),
        st.one_of(st.text(max_size=20), st.just("host;x-amz-date")),
        st.one_of(st.text(max_size=70), st.just("0" * 64)),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    authorization=st.one_of(st.none(), _header_values),
    amz_date=st.one_of(st.none(), st.text(max_size=20), st.just("20240517T093015Z")),
    sha=st.one_of(st.none(), st.text(max_size=70)),
    query=st.one_of(st.text(max_size=80), st.just("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=a%2Fb")),
    path=st.text(max_size=20),
    body=st.binary(max_size=40),
    params=st.dictionaries(
        st.sampled_from(["AWSAccessKeyId", "Signature", "SignatureVersion", "SignatureMethod", "Timestamp", "Expires"]),
        st.text(max_size=30),
    ),
)
def test_fuzz_verifiers_raise_only_api_error(
    authorization: str | None,
    amz_date: str | None,
    sha: str | None,
    query: str,
    path: str,
    body: bytes,
    params: dict[str, str],
) -> None:
    headers = {"Host": "localhost"}
    for name, value in (("Authorization", authorization), ("X-Amz-Date", amz_date), ("X-Amz-Content-SHA256", sha)):
        if value is not None:
            headers[name] = value
    for call in (
        lambda: verify_sigv4("POST", path, query, headers, body, SECRETS.get, now=T0),
        lambda: verify_sigv2("POST", "localhost", path, params, SECRETS.get, now=T0),
        lambda: authenticate("POST", None, path, query, headers, body, params, SECRETS.get, now=T0),
    ):
        with contextlib.suppress(ApiError):
            call()


# -- the real thing: boto3 over HTTP against the protocol layer ----------------------------------


@dataclass
class Seen:
    requests: list[tuple[str, SignedIdentity, dict[str, Any]]]
    attempts: int = 0


CANNED: dict[str, dict[str, Any]] = {
    "DescribeInstances": {
        "Reservations": [
            {
                "ReservationId": "r-1",
                "OwnerId": "1",
                "Instances": [
                    {
                        "InstanceId": "i-1",
                        "State": {"Code": 16, "Name": "running"},
                        "LaunchTime": T0,
                        "Tags": [{"Key": "Name", "Value": "a & b"}],
                    }
                ],
            }
        ]
    },
    "ImportKeyPair": {"KeyName": "laptop", "KeyFingerprint": "ff:ee", "KeyPairId": "key-1"},
    "RunInstances": {
        "ReservationId": "r-2",
        "Instances": [{"InstanceId": "i-2", "State": {"Code": 0, "Name": "pending"}}],
    },
}


class _Handler(BaseHTTPRequestHandler):
    """The protocol pipeline, minus the cloud: what the real front end does, in ~20 lines."""

    seen: Seen

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _serve(self) -> None:
        self.seen.attempts += 1
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            params = parse_body(self.headers.get("Content-Type"), body, parts.query)
            identity = authenticate(
                self.command, None, parts.path or "/", parts.query, self.headers, body, params, SECRETS.get
            )
            op = operation_model(params.get("Action", ""))
            request = parse_request(op, params)
            self.seen.requests.append((op.name, identity, request))
            if request.get("DryRun"):
                raise dry_run_operation()
            if op.name == "RebootInstances":
                raise internal_error()
            status, payload = 200, serialize_response(op, CANNED.get(op.name, {}), "req-1")
        except ApiError as exc:
            status, payload = exc.status, serialize_error(exc.code, exc.message, "req-1")
        self.send_response(status)
        self.send_header("Content-Type", "text/xml;charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve


@pytest.fixture
def endpoint() -> Iterator[tuple[str, Seen]]:
    seen = Seen([])
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def real_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: dt.datetime.now(UTC).replace(tzinfo=None))


def client(url: str, secret: str = SECRET, key: str = ACCESS_KEY, **config: Any) -> Any:
    cfg = Config(retries={"total_max_attempts": 2, "mode": "standard"}, **config)
    return boto3.client(
        "ec2",
        endpoint_url=url,
        region_name="cloudlab-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=cfg,
    )


@pytest.mark.usefixtures("real_clock")
def test_boto3_end_to_end(endpoint: tuple[str, Seen]) -> None:
    url, seen = endpoint
    ec2 = client(url)
    reply = ec2.describe_instances(InstanceIds=["i-1"], Filters=[{"Name": "tag:Name", "Values": ["a & b", "é"]}])
    assert reply["Reservations"][0]["Instances"][0]["LaunchTime"] == T0
    assert reply["Reservations"][0]["Instances"][0]["Tags"] == [{"Key": "Name", "Value": "a & b"}]
    assert reply["ResponseMetadata"]["RequestId"] == "req-1"
    name, identity, request = seen.requests[-1]
    assert (name, identity.access_key, identity.region) == ("DescribeInstances", ACCESS_KEY, "cloudlab-1")
    assert request == {"InstanceIds": ["i-1"], "Filters": [{"Name": "tag:Name", "Values": ["a & b", "é"]}]}

    ec2.import_key_pair(KeyName="laptop", PublicKeyMaterial=b"ssh-ed25519 AAAA laptop")
    assert seen.requests[-1][2] == {"KeyName": "laptop", "PublicKeyMaterial": b"ssh-ed25519 AAAA laptop"}

    ec2.run_instances(ImageId="ami-1", MinCount=1, MaxCount=1, UserData="#!/bin/sh\necho hi")
    # boto3 base64-encodes UserData itself; the protocol layer hands over the string as sent
    assert base64.b64decode(seen.requests[-1][2]["UserData"]) == b"#!/bin/sh\necho hi"


@pytest.mark.usefixtures("real_clock")
def test_boto3_errors_surface_as_client_errors_without_retries(endpoint: tuple[str, Seen]) -> None:
    url, seen = endpoint
    cases = [
        (client(url, secret="wrong"), "SignatureDoesNotMatch", 403),
        (client(url, key="AKIDNOBODY"), "AuthFailure", 401),
        (client(url, signature_version=UNSIGNED), "MissingAuthenticationToken", 401),
    ]
    for ec2, code, status in cases:
        before = seen.attempts
        with pytest.raises(ClientError) as excinfo:
            ec2.describe_instances()
        assert excinfo.value.response["Error"]["Code"] == code
        assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        assert seen.attempts - before == 1  # not retried
    before = seen.attempts
    with pytest.raises(ClientError) as excinfo:
        client(url).terminate_instances(InstanceIds=["i-1"], DryRun=True)
    assert excinfo.value.response["Error"]["Code"] == "DryRunOperation"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert seen.attempts - before == 1
    before = seen.attempts
    with pytest.raises(ClientError) as excinfo:
        client(url).reboot_instances(InstanceIds=["i-1"])
    assert excinfo.value.response["Error"]["Code"] == "InternalError"
    assert seen.attempts - before == 2  # 5xx is retried, as against EC2


@pytest.mark.usefixtures("real_clock")
def test_boto3_sigv2_and_presigned_urls(endpoint: tuple[str, Seen]) -> None:
    url, seen = endpoint
    client(url, signature_version="v2").describe_instances(MaxResults=5)
    assert seen.requests[-1][1].signature_version == 2
    assert seen.requests[-1][2] == {"MaxResults": 5}

    # botocore signs a presigned URL with the operation's method (POST for EC2) unless told otherwise;
    # EC2 (like every AWS service) verifies the method actually used, so GET links need HttpMethod.
    link = client(url).generate_presigned_url(
        "describe_instances", Params={"InstanceIds": ["i-9"]}, ExpiresIn=60, HttpMethod="GET"
    )
    with urllib.request.urlopen(link, timeout=10) as response:
        assert response.status == 200 and b"<DescribeInstancesResponse" in response.read()
    assert seen.requests[-1][2] == {"InstanceIds": ["i-9"]}
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(link.replace("i-9", "i-8"), timeout=10)
    assert excinfo.value.code == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in excinfo.value.read()
