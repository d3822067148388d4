"""Who may talk to Walrus, and with which signatures: SigV4 in the header and presigned (expiry and scope
enforced, issue 10 item 7 on S3), UNSIGNED-PAYLOAD, signed payloads, the aws-chunked encodings (AWS's own
worked example, and boto3's default trailer form), SigV2 for older clients, and browser POST policies."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import urllib.error
import urllib.request
import uuid
import zlib
from typing import Any

import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from cloudlab.api.s3.payload import SIGNED, ChunkedBody
from cloudlab.api.sigv4 import check_sigv4
from cloudlab.walrus import WalrusError
from tests.s3_fixtures import REGION, S3Endpoint, error_code, s3, signed_request, signer_declaring  # noqa: F401

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNK_SIGNATURES = (
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
)


@pytest.fixture(scope="module")
def bucket(s3: S3Endpoint) -> str:  # noqa: F811
    name = s3.bucket(prefix="auth")
    s3.client().put_object(Bucket=name, Key="doc", Body=b"signed content")
    return name


def _fetch(
    url: str, method: str = "GET", data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method, headers=headers or {}),
                                    timeout=10) as answer:  # fmt: skip
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _code(body: bytes) -> str:
    found = re.search(rb"<Code>([^<]+)</Code>", body)
    return found.group(1).decode() if found else ""


# -- presigned SigV4 --------------------------------------------------------------------------------


def test_presigned_get_and_put_within_their_lifetime(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client()
    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "doc"}, ExpiresIn=300)
    assert _fetch(url) == (200, b"signed content")
    put = client.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "uploaded"}, ExpiresIn=300)
    assert _fetch(put, "PUT", b"from a presigned url")[0] == 200
    assert client.get_object(Bucket=bucket, Key="uploaded")["Body"].read() == b"from a presigned url"
    status, body = _fetch(url.replace("Key=doc", "Key=other").replace("/doc?", "/other?"))
    assert (status, _code(body)) == (403, "SignatureDoesNotMatch")


def _freeze_signing_clock(monkeypatch: pytest.MonkeyPatch, when: dt.datetime) -> None:
    """botocore signs with its own signer, or awscrt's where that is installed: set the clock of both."""

    def frozen(remove_tzinfo: bool = True) -> dt.datetime:
        return when if remove_tzinfo else when.replace(tzinfo=dt.UTC)

    monkeypatch.setattr(botocore.auth, "get_current_datetime", frozen)
    try:
        import botocore.crt.auth as crt_auth
    except ImportError:
        return
    monkeypatch.setattr(crt_auth, "get_current_datetime", frozen)


def test_presigned_url_expires(s3: S3Endpoint, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    two_hours_ago = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=2)
    _freeze_signing_clock(monkeypatch, two_hours_ago)
    url = s3.client().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "doc"}, ExpiresIn=3600)
    status, body = _fetch(url)
    assert (status, _code(body)) == (403, "AccessDenied") and b"expired" in body


class _NoExpires(S3SigV4QueryAuth):
    def _modify_request_before_signing(self, request: AWSRequest) -> None:
        super()._modify_request_before_signing(request)
        request.url = re.sub(r"&?X-Amz-Expires=[0-9]+", "", request.url)


def _presign(s3: S3Endpoint, auth_class: Any, path: str, **kwargs: Any) -> str:  # noqa: F811
    request = AWSRequest(method="GET", url=f"{s3.url}{path}")
    auth_class(Credentials(s3.admin.access_key, s3.admin.secret_key), "s3", kwargs.pop("region", REGION),
               **kwargs).add_auth(request)  # fmt: skip
    return request.url


def test_presigned_needs_an_expiry_of_at_most_a_week(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    assert _fetch(_presign(s3, S3SigV4QueryAuth, f"/{bucket}/doc", expires=60))[0] == 200
    status, body = _fetch(_presign(s3, _NoExpires, f"/{bucket}/doc"))
    assert (status, _code(body)) == (400, "AuthorizationQueryParametersError") and b"X-Amz-Expires" in body
    status, body = _fetch(_presign(s3, S3SigV4QueryAuth, f"/{bucket}/doc", expires=604801))
    assert (status, _code(body)) == (400, "AuthorizationQueryParametersError")


def _header_signed(s3: S3Endpoint, path: str, service: str, region: str) -> tuple[int, bytes]:  # noqa: F811
    request = AWSRequest(method="GET", url=f"{s3.url}{path}",
                         headers={"X-Amz-Content-SHA256": hashlib.sha256(b"").hexdigest()})  # fmt: skip
    S3SigV4Auth(Credentials(s3.admin.access_key, s3.admin.secret_key), service, region).add_auth(request)
    return _fetch(request.url, headers=dict(request.headers))


def test_scope_must_name_the_region_and_s3(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    assert _header_signed(s3, f"/{bucket}/doc", "s3", REGION) == (200, b"signed content")
    status, body = _header_signed(s3, f"/{bucket}/doc", "s3", "us-east-1")
    assert (status, _code(body)) == (400, "AuthorizationHeaderMalformed")
    assert f"<Region>{REGION}</Region>".encode() in body  # what botocore's region redirector reads
    status, body = _fetch(_presign(s3, S3SigV4QueryAuth, f"/{bucket}/doc", expires=60, region="eu-west-1"))
    assert (status, _code(body)) == (400, "AuthorizationQueryParametersError")
    status, body = _header_signed(s3, f"/{bucket}/doc", "ec2", REGION)
    assert (status, _code(body)) == (403, "SignatureDoesNotMatch")


def test_unknown_key_and_wrong_secret(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    import boto3
    from botocore.config import Config

    def client(access: str, secret: str) -> Any:
        return boto3.client("s3", endpoint_url=s3.url, region_name=REGION, aws_access_key_id=access,
                            aws_secret_access_key=secret, config=Config(retries={"max_attempts": 1}))  # fmt: skip

    with pytest.raises(ClientError) as excinfo:
        client("AKIANOSUCHKEY0000000", "x" * 40).list_buckets()
    assert error_code(excinfo) == "InvalidAccessKeyId"
    with pytest.raises(ClientError) as excinfo:
        client(
            s3.admin.access_key, s3.admin.secret_key[:-1] + ("A" if s3.admin.secret_key[-1] != "A" else "B")
        ).list_buckets()
    assert error_code(excinfo) == "SignatureDoesNotMatch"


def test_a_deactivated_key_or_disabled_user_fails_on_the_next_request(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    """The endpoint keeps the keys it has looked up, but only while the users' database is unchanged: a
    key deactivated (or a user disabled) between two requests of one keep-alive client is refused at once."""
    from cloudlab.clc.users import Users

    assert s3.store is not None
    users = Users(s3.store, None)
    key = s3.new_user("revoked")
    client = s3.client(key)
    name = s3.bucket(client, prefix="revoke")
    for _ in range(3):  # looked up once, then from memory
        assert client.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPStatusCode"] == 200
    users.set_enabled(key.user_name, False)
    with pytest.raises(ClientError) as excinfo:
        client.head_bucket(Bucket=name)
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    users.set_enabled(key.user_name, True)
    assert client.list_objects_v2(Bucket=name)["KeyCount"] == 0
    users.revoke_key(key.user_name, key.access_key)
    with pytest.raises(ClientError) as excinfo:
        client.list_objects_v2(Bucket=name)
    assert error_code(excinfo) == "InvalidAccessKeyId"


# -- payload modes -----------------------------------------------------------------------------------


def test_unsigned_payload_and_signed_payload_hash(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    status, _, _ = signed_request(s3, "PUT", f"/{bucket}/unsigned", b"no payload hash",
                                  {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})  # fmt: skip
    assert status == 200
    assert s3.client().get_object(Bucket=bucket, Key="unsigned")["Body"].read() == b"no payload hash"
    lying = hashlib.sha256(b"something else").hexdigest()
    status, _, body = signed_request(s3, "PUT", f"/{bucket}/lying", b"actual bytes", {"X-Amz-Content-SHA256": lying})
    assert (status, _code(body)) == (400, "XAmzContentSHA256Mismatch")
    with pytest.raises(ClientError):
        s3.client().head_object(Bucket=bucket, Key="lying")


def _self_signed(folder: Any) -> tuple[str, str]:
    """A certificate for localhost and 127.0.0.1 (the test's own; the cloud's endpoints are plain HTTP)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return str(cert_path), str(key_path)


def test_boto3_default_is_the_unsigned_trailer_form(s3: S3Endpoint, tmp_path: Any) -> None:  # noqa: F811
    """Over HTTPS, current boto3 sends STREAMING-UNSIGNED-PAYLOAD-TRAILER with a CRC32 trailer by default."""
    import ssl

    import boto3
    from botocore.config import Config

    from cloudlab.api.s3.server import serve_s3

    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    assert s3.walrus is not None and s3.store is not None
    from cloudlab.clc.users import Users

    server = serve_s3(s3.walrus, Users(s3.store, None), REGION, tls=context)
    try:
        client = boto3.client("s3", endpoint_url=f"https://localhost:{server.server_port}", region_name=REGION,
                              aws_access_key_id=s3.admin.access_key, aws_secret_access_key=s3.admin.secret_key,
                              verify=cert, config=Config(retries={"max_attempts": 1},
                                                         s3={"addressing_style": "path"}))  # fmt: skip
        name = s3.bucket(client, "tls")
        seen: dict[str, str] = {}

        def capture(request: Any, **_: Any) -> None:
            for header, value in request.headers.items():
                seen[header.lower()] = value.decode() if isinstance(value, bytes) else value

        client.meta.events.register("before-send.s3.PutObject", capture)
        data = b"t" * 300_000
        put = client.put_object(Bucket=name, Key="trailer", Body=io.BytesIO(data))
        assert seen["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        assert seen["x-amz-trailer"] == "x-amz-checksum-crc32" and "aws-chunked" in seen["content-encoding"]
        got = client.get_object(Bucket=name, Key="trailer", ChecksumMode="ENABLED")
        assert got["Body"].read() == data and got["ChecksumCRC32"] == put["ChecksumCRC32"]
        assert "ContentEncoding" not in got  # aws-chunked is the transfer's, not the object's
    finally:
        server.shutdown()
        server.server_close()


def _trailer_body(data: bytes, checksum: str) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n" + f"x-amz-checksum-crc32:{checksum}\r\n\r\n".encode()


def test_trailer_checksum_is_verified(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    import base64

    data = b"payload with a trailer"
    good = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    headers = {"X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "Content-Encoding": "aws-chunked",
               "X-Amz-Trailer": "x-amz-checksum-crc32", "X-Amz-Decoded-Content-Length": str(len(data))}  # fmt: skip
    status, _, _ = signed_request(s3, "PUT", f"/{bucket}/trailed", _trailer_body(data, good), headers)
    assert status == 200
    got = s3.client().get_object(Bucket=bucket, Key="trailed", ChecksumMode="ENABLED")
    assert got["Body"].read() == data and got["ChecksumCRC32"] == good
    status, _, body = signed_request(s3, "PUT", f"/{bucket}/bad-trailer", _trailer_body(data, "AAAAAA=="), headers)
    assert (status, _code(body)) == (400, "BadDigest")
    with pytest.raises(ClientError):
        s3.client().head_object(Bucket=bucket, Key="bad-trailer")


def test_an_http_chunked_trailer_body_leaves_the_connection_ready_for_the_next_request(
    s3: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    """boto3 over HTTPS wraps the aws-chunked body in HTTP chunks: once the object is stored, the HTTP
    terminator (``0``, CRLF) must be read too, or the next request on the kept-alive connection starts
    with it (seen once as "Bad request syntax ('0')" on a GetObject after a PutObject)."""
    import base64
    import http.client

    data = b"x" * 70_000
    checksum = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    body = _trailer_body(data, checksum)
    headers = {"X-Amz-Content-SHA256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "Content-Encoding": "aws-chunked",
               "X-Amz-Trailer": "x-amz-checksum-crc32", "X-Amz-Decoded-Content-Length": str(len(data))}  # fmt: skip
    request = AWSRequest(method="PUT", url=f"{s3.url}/{bucket}/http-chunked", headers=headers)
    signer = signer_declaring("STREAMING-UNSIGNED-PAYLOAD-TRAILER")
    signer(Credentials(s3.admin.access_key, s3.admin.secret_key), "s3", REGION).add_auth(request)
    sent = {name: value for name, value in request.prepare().headers.items() if name != "Content-Length"}
    sent["Transfer-Encoding"] = "chunked"  # as urllib3 sends a body of unknown length
    connection = http.client.HTTPConnection("127.0.0.1", s3.port, timeout=30)
    try:
        pieces = [body[i : i + 16384] for i in range(0, len(body), 16384)]
        connection.request("PUT", f"/{bucket}/http-chunked", body=iter(pieces), headers=sent, encode_chunked=True)
        answer = connection.getresponse()
        reply = answer.read()
        assert (answer.status, reply) == (200, b""), reply
        get = AWSRequest(method="GET", url=f"{s3.url}/{bucket}/http-chunked")
        S3SigV4Auth(Credentials(s3.admin.access_key, s3.admin.secret_key), "s3", REGION).add_auth(get)
        connection.request("GET", f"/{bucket}/http-chunked", headers=dict(get.prepare().headers))
        again = connection.getresponse()
        assert (again.status, again.read()) == (200, data)
    finally:
        connection.close()


def _aws_example_headers() -> dict[str, str]:
    return {
        "Host": "s3.amazonaws.com",
        "x-amz-date": "20130524T000000Z",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
        f"x-amz-decoded-content-length;x-amz-storage-class,Signature={SEED}",
        "x-amz-content-sha256": SIGNED,
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": "66560",
        "Content-Length": "66824",
    }


def _aws_example_body(signatures: tuple[str, ...] = CHUNK_SIGNATURES) -> bytes:
    return (
        f"10000;chunk-signature={signatures[0]}\r\n".encode() + b"a" * 65536 + b"\r\n"
        + f"400;chunk-signature={signatures[1]}\r\n".encode() + b"a" * 1024 + b"\r\n"
        + f"0;chunk-signature={signatures[2]}\r\n\r\n".encode()
    )  # fmt: skip


def test_signed_chunks_verify_as_in_aws_worked_example() -> None:
    check = check_sigv4("PUT", "/examplebucket/chunkObject.txt", "", _aws_example_headers(), None,
                        {"AKIAIOSFODNN7EXAMPLE": AWS_SECRET}.get, now=dt.datetime(2013, 5, 24, tzinfo=dt.UTC),
                        region="us-east-1", service="s3")  # fmt: skip
    assert check.signature == SEED and len(_aws_example_body()) == 66824
    assert b"".join(ChunkedBody(io.BytesIO(_aws_example_body()), SIGNED, check, 66560, None)) == b"a" * 66560
    tampered = bytearray(_aws_example_body())
    tampered[1000] = ord("b")
    swapped = (CHUNK_SIGNATURES[1], CHUNK_SIGNATURES[0], CHUNK_SIGNATURES[2])
    for body in (bytes(tampered), _aws_example_body(swapped)):
        with pytest.raises(WalrusError) as excinfo:
            b"".join(ChunkedBody(io.BytesIO(body), SIGNED, check, 66560, None))
        assert excinfo.value.code == "SignatureDoesNotMatch"
    with pytest.raises(WalrusError) as excinfo:
        b"".join(ChunkedBody(io.BytesIO(_aws_example_body()), SIGNED, check, 66561, None))
    assert excinfo.value.code == "IncompleteBody"


def test_signed_chunks_over_http(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    """A STREAMING-AWS4-HMAC-SHA256-PAYLOAD upload signed with botocore's key derivation, end to end."""
    import hmac
    import http.client

    from cloudlab.api.sigv4 import signing_key

    data = [b"x" * 70_000, b"y" * 9000]
    amz_date = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    key_path = f"/{bucket}/chunked"
    framed_length = (
        sum(len(f"{len(c):x};chunk-signature=") + 64 + 4 + len(c) for c in data) + len("0;chunk-signature=") + 64 + 4
    )
    request = AWSRequest(method="PUT", url=f"{s3.url}{key_path}", headers={
        "X-Amz-Content-SHA256": SIGNED, "Content-Encoding": "aws-chunked", "X-Amz-Date": amz_date,
        "X-Amz-Decoded-Content-Length": str(sum(map(len, data))), "Content-Length": str(framed_length)})  # fmt: skip
    request.context["timestamp"] = amz_date
    auth = signer_declaring(SIGNED)(Credentials(s3.admin.access_key, s3.admin.secret_key), "s3", REGION)
    auth.add_auth(request)
    previous = re.search(r"Signature=([0-9a-f]{64})", request.headers["Authorization"]).group(1)  # type: ignore[union-attr]
    key = signing_key(s3.admin.secret_key, amz_date[:8], REGION, "s3")
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    body = b""
    for chunk in [*data, b""]:
        to_sign = (f"AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n{previous}\n{hashlib.sha256(b'').hexdigest()}\n"
                   f"{hashlib.sha256(chunk).hexdigest()}")  # fmt: skip
        previous = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        body += f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + chunk + b"\r\n"
    assert len(body) == framed_length
    connection = http.client.HTTPConnection("127.0.0.1", s3.port, timeout=10)
    connection.request("PUT", key_path, body=body, headers=dict(request.headers))
    answer = connection.getresponse()
    assert answer.status == 200, answer.read()
    connection.close()
    assert s3.client().get_object(Bucket=bucket, Key="chunked")["Body"].read() == b"".join(data)


# -- SigV2 ---------------------------------------------------------------------------------------------


def test_sigv2_header_and_presigned(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client(signature_version="s3")
    client.put_object(Bucket=bucket, Key="v2 key+odd", Body=b"signed the old way", Metadata={"m": "1"})
    assert client.get_object(Bucket=bucket, Key="v2 key+odd")["Body"].read() == b"signed the old way"
    assert "v2 key+odd" in [o["Key"] for o in client.list_objects(Bucket=bucket)["Contents"]]
    assert client.get_bucket_versioning(Bucket=bucket).get("Status") is None
    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "doc"}, ExpiresIn=60)
    assert "AWSAccessKeyId=" in url and "Signature=" in url
    assert _fetch(url) == (200, b"signed content")
    status, body = _fetch(url.replace("/doc?", "/v2%20key%2Bodd?"))
    assert (status, _code(body)) == (403, "SignatureDoesNotMatch")
    expired = re.sub(r"Expires=[0-9]+", "Expires=1000000000", url)
    assert _code(_fetch(expired)[1]) == "AccessDenied"


# -- POST object (browser uploads) -------------------------------------------------------------------


def _form(fields: dict[str, str], content: bytes, filename: str = "upload.txt") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
    parts.append(f"{head}Content-Type: text/plain\r\n\r\n".encode() + content + f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _post(s3: S3Endpoint, post: dict[str, Any], content: bytes, **extra: str) -> tuple[int, bytes]:  # noqa: F811
    body, content_type = _form({**post["fields"], **extra}, content)
    return _fetch(post["url"], "POST", body, {"Content-Type": content_type})


def test_post_object_with_a_signed_policy(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    client = s3.client()
    conditions = [["starts-with", "$key", "uploads/"], ["content-length-range", 1, 1000],
                  {"success_action_status": "201"}]  # fmt: skip
    post = client.generate_presigned_post(bucket, "uploads/${filename}", Fields={"success_action_status": "201"},
                                          Conditions=conditions, ExpiresIn=300)  # fmt: skip
    status, body = _post(s3, post, b"browser bytes")
    assert status == 201 and b"<Key>uploads/upload.txt</Key>" in body
    assert client.get_object(Bucket=bucket, Key="uploads/upload.txt")["Body"].read() == b"browser bytes"
    status, body = _post(s3, post, b"x" * 1001)
    assert (status, _code(body)) == (400, "EntityTooLarge")
    outside = dict(post, fields=dict(post["fields"], key="elsewhere/file"))
    status, body = _post(s3, outside, b"data")
    assert (status, _code(body)) == (403, "AccessDenied")
    status, body = _post(s3, post, b"data", **{"x-amz-meta-extra": "not in the policy"})
    assert (status, _code(body)) == (403, "AccessDenied") and b"Extra input fields" in body
    forged = dict(post, fields=dict(post["fields"], **{"x-amz-signature": "0" * 64}))
    status, body = _post(s3, forged, b"data")
    assert (status, _code(body)) == (403, "SignatureDoesNotMatch")
    with pytest.raises(ClientError):
        client.head_object(Bucket=bucket, Key="elsewhere/file")


def test_post_policy_expires(s3: S3Endpoint, bucket: str) -> None:  # noqa: F811
    import base64
    import json

    post = s3.client().generate_presigned_post(bucket, "late", ExpiresIn=60)
    policy = json.loads(base64.b64decode(post["fields"]["policy"]))
    policy["expiration"] = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = base64.b64encode(json.dumps(policy).encode()).decode()
    fields = dict(post["fields"], policy=text)  # re-signed below with the same key, as the owner would
    import hmac

    from cloudlab.api.sigv4 import signing_key

    date = fields["x-amz-credential"].split("/")[1]
    fields["x-amz-signature"] = hmac.new(signing_key(s3.admin.secret_key, date, REGION, "s3"), text.encode(),
                                         hashlib.sha256).hexdigest()  # fmt: skip
    status, body = _post(s3, dict(post, fields=fields), b"too late")
    assert (status, _code(body)) == (403, "AccessDenied") and b"expired" in body
    with pytest.raises(ClientError):
        s3.client().head_object(Bucket=bucket, Key="late")
