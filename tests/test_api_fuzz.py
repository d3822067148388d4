"""Robustness of the EC2 endpoint: whatever arrives over HTTP, the answer is EC2's error envelope.

Requests go over real HTTP (``http.client`` or a raw socket, to 127.0.0.1 only) to the shared cloud on
libvirt's test driver: malformed and huge bodies, random form parameters, bytes that are not UTF-8,
wrong Content-Types, missing, garbled and wrongly computed signatures (signed with botocore's
``SigV4Auth``, then altered), stale or malformed ``X-Amz-Date``, GETs with query strings. Each
answer must be a 4xx whose body is ``<Response><Errors><Error><Code/><Message/></Error></Errors>
<RequestID/></Response>`` (never a 5xx, never a traceback), and the cloud must be exactly as before:
the admin's DescribeInstances and DescribeImages answers and the ledger's row count.

Signed requests that *should* work (random parameters for read-only actions) may also answer 200,
with a well-formed ``<ActionResponse>``.
"""

from __future__ import annotations

import datetime as dt
import errno
import http.client
import socket
import sqlite3
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudlab.api.actions import ACTIONS
from cloudlab.api.model import operation_model
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud

HOST = "127.0.0.1"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
VERSION = "2016-11-15"
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    # ``unchanged`` is function-scoped on purpose: one snapshot before all examples, one check after them
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
TRANSITIONAL = {"pending", "shutting-down", "stopping"}
READ_ONLY = sorted(name for name in ACTIONS if name.startswith("Describe"))


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes


class Endpoint:
    """Raw HTTP to the cloud's EC2 endpoint, and SigV4 signing with a user's keys."""

    def __init__(self, cloud: RunningCloud) -> None:
        parts = urllib.parse.urlsplit(cloud.url)
        assert parts.hostname == HOST, "fuzzing talks to loopback only"
        self.port = parts.port or 80
        self.host = f"{HOST}:{self.port}"
        self.region = cloud.info["region"]
        creds = cloud.credentials()
        self.credentials = Credentials(creds["access_key"], creds["secret_key"])

    def send(
        self, method: str, target: str, headers: dict[str, str] | list[tuple[str, str]], body: bytes = b""
    ) -> Reply:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=20)
        try:
            connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            items = headers.items() if isinstance(headers, dict) else headers
            names = {name.lower() for name, _ in items}
            if "host" not in names:
                connection.putheader("Host", self.host)
            for name, value in items:
                connection.putheader(name, value)
            if "content-length" not in names and (body or method == "POST"):
                connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body or None)
            response = connection.getresponse()
            return Reply(response.status, response.getheader("Content-Type") or "", response.read())
        finally:
            connection.close()

    def send_raw(self, data: bytes, shutdown: bool = True) -> Reply:
        """Write ``data`` to a fresh connection as it is (no HTTP library in between) and read the first answer."""
        with socket.create_connection((HOST, self.port), timeout=20) as sock:
            try:
                sock.sendall(data)
                if shutdown:
                    sock.shutdown(socket.SHUT_WR)
            except OSError as error:  # EPIPE, ECONNRESET, or ENOTCONN from shutdown() once the peer has gone
                if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                    raise
                # the server answered and closed before reading everything: its answer may still be there
            response = http.client.HTTPResponse(sock)
            response.begin()
            return Reply(response.status, response.getheader("Content-Type") or "", response.read())

    def sign(
        self,
        params: dict[str, str],
        *,
        when: dt.datetime | None = None,
        credentials: Credentials | None = None,
        method: str = "POST",
    ) -> tuple[str, dict[str, str], bytes]:
        """A request exactly as boto3 signs it: (target, headers, body); GET puts the parameters in the query."""
        form = urllib.parse.urlencode({"Version": VERSION, **params})
        if method == "GET":
            request = AWSRequest("GET", f"http://{self.host}/?{form}")
        else:
            request = AWSRequest("POST", f"http://{self.host}/", data=form.encode(), headers={"Content-Type": FORM})
        signer = SigV4Auth(credentials or self.credentials, "ec2", self.region)
        if when is None:
            signer.add_auth(request)
        else:
            with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
                signer.add_auth(request)
        headers = {name: value for name, value in request.headers.items()} | {"Host": self.host}
        target = f"/?{form}" if method == "GET" else "/"
        return target, headers, (b"" if method == "GET" else form.encode())


def ec2_error(reply: Reply) -> str:
    """Check that ``reply`` is EC2's error envelope with a 4xx status; return its code."""
    text = reply.body.decode("utf-8", "replace")
    assert 400 <= reply.status < 500, f"status {reply.status}: {text[:500]}"
    assert "Traceback" not in text and 'File "' not in text, text[:2000]
    assert "xml" in reply.content_type, reply.content_type
    root = ET.fromstring(reply.body)
    assert root.tag == "Response", text[:500]
    code = root.findtext("Errors/Error/Code")
    assert code, text[:500]
    assert root.find("Errors/Error/Message") is not None, text[:500]
    assert root.findtext("RequestID"), text[:500]
    assert len(reply.body) < 4096, "an error quotes at most a short part of the request"
    return code


def ec2_answer(reply: Reply, action: str) -> None:
    """A signed request to a read-only action: a well-formed answer, or EC2's 4xx error envelope."""
    if reply.status == 200:
        root = ET.fromstring(reply.body)
        assert root.tag.endswith(f"{action}Response"), reply.body[:300]
        assert root.find("{*}requestId") is not None
    else:
        ec2_error(reply)


# -- the cloud's state must not change --------------------------------------------------------------------------


def settle(admin: Any, timeout: float = 30.0) -> None:
    """Wait until no instance is between states (other tests' instances may still be terminating)."""

    def between() -> set[str]:
        found = admin.describe_instances()["Reservations"]
        return {i["State"]["Name"] for r in found for i in r["Instances"]} & TRANSITIONAL

    wait_until(lambda: not between(), timeout, what="no instance between states", interval_s=0.2)


def snapshot(cloud: RunningCloud, admin: Any) -> tuple[Any, Any, int]:
    with sqlite3.connect(cloud.layout.database, timeout=30) as db:
        (ledger,) = db.execute("SELECT COUNT(*) FROM ledger").fetchone()
    return admin.describe_instances()["Reservations"], admin.describe_images()["Images"], ledger


@pytest.fixture(scope="module")
def endpoint(sim_cloud: RunningCloud) -> Endpoint:
    return Endpoint(sim_cloud)


@pytest.fixture(scope="module")
def default_image(sim_cloud: RunningCloud) -> str:
    """The image a real RunInstances would use, so that only the alteration can make it fail."""
    images = sim_cloud.ec2().describe_images(Filters=[{"Name": "name", "Values": ["cloudlab-default"]}])["Images"]
    return images[0]["ImageId"] if images else "ami-00000000000000000"


@pytest.fixture
def unchanged(sim_cloud: RunningCloud) -> Iterator[None]:
    """The test must leave DescribeInstances, DescribeImages and the ledger exactly as they were."""
    admin = sim_cloud.ec2()
    settle(admin)
    before = snapshot(sim_cloud, admin)
    yield
    after = snapshot(sim_cloud, admin)
    assert after[2] == before[2], "the accounting ledger grew"
    assert after[0] == before[0], "DescribeInstances changed"
    assert after[1] == before[1], "DescribeImages changed"


@contextmanager
def no_new_instances(sim_cloud: RunningCloud) -> Iterator[None]:
    with sqlite3.connect(sim_cloud.layout.database, timeout=30) as db:
        (before,) = db.execute("SELECT COUNT(*) FROM instances").fetchone()
    yield
    with sqlite3.connect(sim_cloud.layout.database, timeout=30) as db:
        (after,) = db.execute("SELECT COUNT(*) FROM instances").fetchone()
    assert after == before, "a refused request started an instance"


# -- strategies ---------------------------------------------------------------------------------------------------

# header values http.client can send: latin-1, no line breaks (those are a different attack, on the client)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300)
param_text = st.text(max_size=200)
action_names = st.sampled_from([*sorted(ACTIONS), "", "Bogus", "describeinstances", "RunInstances\x00", "ÄÖÜ"])
content_types = st.sampled_from(
    [None, FORM, "application/x-www-form-urlencoded", "application/json", "text/xml", "multipart/form-data; b=x", "ä"]
)


def _sendable(text: str) -> str:
    return "".join(ch for ch in text if 0x20 <= ord(ch) <= 0xFF and ch != "\x7f")


@st.composite
def garbled_authorization(draw: st.DrawFn) -> str:
    """Authorization headers from plausible to nonsense."""
    piece = st.one_of(st.text(max_size=30), st.sampled_from(["", "AKIA0000000000000000", "20240101", "ec2"]))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(header_text)
    if kind == 1:
        return _sendable(f"AWS {draw(piece)}:{draw(piece)}")  # the S3-style SigV2 header
    credential = "/".join(draw(piece) for _ in range(draw(st.integers(0, 6))))
    signed = draw(st.sampled_from(["host;x-amz-date", "host", "", "Host;X-Amz-Date", "content-type;host;x-amz-date"]))
    signature = draw(st.one_of(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), header_text))
    text = f"AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders={signed}, Signature={signature}"
    if kind == 3:  # drop or duplicate a component
        parts = text.split(", ")
        index = draw(st.integers(0, len(parts) - 1))
        parts = parts[:index] + parts[index + 1 :] if draw(st.booleans()) else [*parts, parts[index]]
        text = ", ".join(parts)
    return _sendable(text)


# -- properties ---------------------------------------------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=4000), content_type=content_types, authorization=st.none() | garbled_authorization())
def test_malformed_bodies(
    endpoint: Endpoint, unchanged: None, body: bytes, content_type: str | None, authorization: str | None
) -> None:
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if authorization is not None:
        headers["Authorization"] = authorization
    ec2_error(endpoint.send("POST", "/", headers, body))


@FUZZ
@given(
    action=action_names,
    params=st.dictionaries(st.text(min_size=1, max_size=40), param_text, max_size=12),
    authorization=st.none() | garbled_authorization(),
    amz_date=st.none() | header_text | st.sampled_from(["20240101T000000Z", "99999999T999999Z", "now"]),
    as_query=st.booleans(),
)
def test_random_form_parameters(
    endpoint: Endpoint,
    unchanged: None,
    action: str,
    params: dict[str, str],
    authorization: str | None,
    amz_date: str | None,
    as_query: bool,
) -> None:
    form = urllib.parse.urlencode({"Action": action, "Version": VERSION, **params})
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if amz_date is not None:
        headers["X-Amz-Date"] = amz_date
    if as_query:
        reply = endpoint.send("GET", f"/?{form}", headers)
    else:
        reply = endpoint.send("POST", "/", headers | {"Content-Type": FORM}, form.encode())
    ec2_error(reply)


@FUZZ
@given(
    query=st.one_of(
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"), max_size=300),
        st.dictionaries(
            st.sampled_from(
                [
                    "Action",
                    "Version",
                    "X-Amz-Algorithm",
                    "X-Amz-Credential",
                    "X-Amz-Date",
                    "X-Amz-Expires",
                    "X-Amz-SignedHeaders",
                    "X-Amz-Signature",
                    "AWSAccessKeyId",
                    "SignatureVersion",
                    "SignatureMethod",
                    "Signature",
                    "Timestamp",
                    "Expires",
                ]
            ),
            st.one_of(param_text, st.sampled_from(["AWS4-HMAC-SHA256", "2", "HmacSHA256", "DescribeInstances"])),
        ).map(urllib.parse.urlencode),
    ),
    path=st.sampled_from(["/", "//", "/x", "/services/Eucalyptus", "/..", "/?", "/%ZZ"]),
)
def test_get_with_query_strings(endpoint: Endpoint, unchanged: None, query: str, path: str) -> None:
    ec2_error(endpoint.send("GET", f"{path}?{query}" if "?" not in path else f"{path}{query}", {}))


MUTATIONS = [
    "flip-body-byte",
    "append-parameter",
    "flip-signature",
    "shift-date",
    "other-host",
    "other-region",
    "other-service",
    "drop-date",
    "content-type",
    "as-get",
    "other-secret",
    "truncate-body",
]


@FUZZ
@given(
    mutation=st.sampled_from(MUTATIONS),
    position=st.integers(0, 10_000),
    byte=st.integers(0, 255),
    shift=st.integers(1, 10_000),
)
def test_wrongly_signed_run_instances(
    endpoint: Endpoint,
    sim_cloud: RunningCloud,
    default_image: str,
    unchanged: None,
    mutation: str,
    position: int,
    byte: int,
    shift: int,
) -> None:
    """A correctly signed RunInstances, altered after signing, is refused and starts nothing."""
    params = {"Action": "RunInstances", "ImageId": default_image, "MinCount": "1", "MaxCount": "1"}
    credentials = Credentials(endpoint.credentials.access_key, "not-the-secret") if mutation == "other-secret" else None
    target, headers, body = endpoint.sign(params, credentials=credentials)
    method = "POST"
    authorization = headers["Authorization"]
    if mutation == "flip-body-byte":
        index = position % len(body)
        new = byte if byte != body[index] else (byte + 1) % 256
        body = body[:index] + bytes([new]) + body[index + 1 :]
    elif mutation == "append-parameter":
        body += b"&InstanceType=m1.small"
    elif mutation == "truncate-body":
        body = body[: position % len(body)]
    elif mutation == "flip-signature":
        head, signature = authorization.rsplit("Signature=", 1)
        index = position % len(signature)
        signature = signature[:index] + ("0" if signature[index] != "0" else "1") + signature[index + 1 :]
        headers["Authorization"] = f"{head}Signature={signature}"
    elif mutation == "shift-date":
        signed = dt.datetime.strptime(headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
        headers["X-Amz-Date"] = (signed + dt.timedelta(seconds=shift if byte % 2 else -shift)).strftime(
            "%Y%m%dT%H%M%SZ"
        )
    elif mutation == "other-host":
        headers["Host"] = f"localhost:{endpoint.port}" if byte % 2 else f"{HOST}:{(endpoint.port % 65535) + 1}"
    elif mutation in ("other-region", "other-service"):
        region = endpoint.region
        old = f"/{region}/ec2/"
        new = "/us-east-1/ec2/" if mutation == "other-region" else f"/{region}/s3/"
        headers["Authorization"] = authorization.replace(old, new)
    elif mutation == "drop-date":
        del headers["X-Amz-Date"]
    elif mutation == "content-type":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif mutation == "as-get":
        method, target, body = "GET", "/?" + body.decode(), b""
        headers.pop("Content-Type")
    with no_new_instances(sim_cloud):
        code = ec2_error(endpoint.send(method, target, headers, body))
    assert code in {
        "SignatureDoesNotMatch",
        "AuthFailure",
        "IncompleteSignature",
        "RequestExpired",
        "MissingAuthenticationToken",
        "MalformedQueryString",
        "InvalidParameterValue",
        "MissingAction",  # the body cut to nothing
    }, code


@FUZZ
@given(
    offset=st.one_of(st.integers(20 * 60, 10 * 365 * 86400), st.integers(-10 * 365 * 86400, -20 * 60)),
    method=st.sampled_from(["POST", "GET"]),
)
def test_stale_or_future_x_amz_date(endpoint: Endpoint, unchanged: None, offset: int, method: str) -> None:
    """Correctly signed, but at a time outside the 15-minute window: RequestExpired."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    target, headers, body = endpoint.sign({"Action": "DescribeInstances"}, when=when, method=method)
    assert ec2_error(endpoint.send(method, target, headers, body)) == "RequestExpired"


@FUZZ
@given(amz_date=header_text)
def test_malformed_x_amz_date(endpoint: Endpoint, unchanged: None, amz_date: str) -> None:
    target, headers, body = endpoint.sign({"Action": "DescribeInstances"})
    if amz_date == headers["X-Amz-Date"]:
        return
    headers["X-Amz-Date"] = amz_date
    ec2_error(endpoint.send("POST", target, headers, body))


def _wire_names(action: str) -> list[str]:
    """Parameter names as the EC2 Query protocol spells them on the wire, from the service model (two levels)."""
    shape = operation_model(action).input_shape
    names: list[str] = []
    if shape is None:
        return names

    def wire(name: str, member: Any) -> str:
        return member.serialization.get("name") or (name[0].upper() + name[1:])

    for name, member in shape.members.items():
        key = wire(name, member)
        if member.type_name == "list":
            inner = member.member
            if inner.type_name == "structure":
                names += [f"{key}.1.{wire(n, m)}" for n, m in inner.members.items()]
                names += [f"{key}.1.{wire(n, m)}.1" for n, m in inner.members.items() if m.type_name == "list"]
            else:
                names += [f"{key}.1", f"{key}.2"]
        elif member.type_name == "structure":
            names += [f"{key}.{wire(n, m)}" for n, m in member.members.items()]
        else:
            names.append(key)
    return names


@FUZZ
@given(data=st.data())
def test_signed_garbage_for_read_only_actions(endpoint: Endpoint, unchanged: None, data: st.DataObject) -> None:
    """Authentic requests with random values for every parameter the model knows: 200 or 4xx, never 5xx."""
    action = data.draw(st.sampled_from(READ_ONLY))
    names = _wire_names(action)
    value = st.one_of(
        param_text,
        st.integers(-(2**63), 2**63).map(str),
        st.sampled_from(["true", "false", "", "i-0123456789abcdef0", "ami-x", "1e400", "NaN", "-1", "0", "5"]),
    )
    params = data.draw(st.dictionaries(st.sampled_from(names), value, max_size=6)) if names else {}
    params = {k: v for k, v in params.items() if k != "DryRun" or data.draw(st.booleans())}
    target, headers, body = endpoint.sign({"Action": action, **params})
    ec2_answer(endpoint.send("POST", target, headers, body), action)


# -- single, deliberate cases -----------------------------------------------------------------------------------


def test_two_megabyte_body(endpoint: Endpoint, unchanged: None) -> None:
    body = b"Action=DescribeInstances&Junk=" + b"x" * (2 * 1024 * 1024)
    request = (
        f"POST / HTTP/1.1\r\nHost: {endpoint.host}\r\nContent-Type: {FORM}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        reply = endpoint.send_raw(request + body)
    except ConnectionResetError:  # refused so early that the answer was lost in the reset: ask without the body
        reply = endpoint.send_raw(request, shutdown=False)
    assert reply.status == 413
    ec2_error(reply)


@pytest.mark.parametrize("signed", [False, True])
def test_hundred_thousand_character_value(endpoint: Endpoint, unchanged: None, signed: bool) -> None:
    params = {"Action": "DescribeInstances", "InstanceId.1": "i-" + "0" * 100_000}
    if signed:
        target, headers, body = endpoint.sign(params)
    else:
        target, headers, body = "/", {"Content-Type": FORM}, urllib.parse.urlencode(params).encode()
    code = ec2_error(endpoint.send("POST", target, headers, body))
    assert code in (
        {"InvalidInstanceID.Malformed", "InvalidParameterValue"}
        if signed
        else {"AuthFailure", "MissingAuthenticationToken"}
    )


def test_many_parameters(endpoint: Endpoint, unchanged: None) -> None:
    params = {f"InstanceId.{n}": f"i-{n:017x}" for n in range(1, 5001)}
    target, headers, body = endpoint.sign({"Action": "DescribeInstances", **params})
    ec2_error(endpoint.send("POST", target, headers, body))
    deep = {"Filter." + ".".join(["1"] * 200): "x", "Filter.99999.Name": "instance-id", "Filter.1.Value.100000": "x"}
    target, headers, body = endpoint.sign({"Action": "DescribeInstances", **deep})
    ec2_answer(endpoint.send("POST", target, headers, body), "DescribeInstances")


@pytest.mark.parametrize(
    "body",
    [
        b"Action=DescribeInstances&Version=2016-11-15&X=\xff\xfe",
        b"Action=\xc3\x28",
        "Action=DescribeInstances&X=ü".encode("latin-1"),
        b"Action=DescribeInstances&X=%FF%FE",
        b"\x00\x01\x02\x03",
    ],
)
def test_bytes_that_are_not_utf8(endpoint: Endpoint, unchanged: None, body: bytes) -> None:
    ec2_error(endpoint.send("POST", "/", {"Content-Type": FORM}, body))
    _, headers, _ = endpoint.sign({"Action": "DescribeInstances"})
    headers["Content-Type"] = FORM
    ec2_error(endpoint.send("POST", "/", headers, body))  # a valid signature for another body does not help


def test_non_utf8_query_string(endpoint: Endpoint, unchanged: None) -> None:
    reply = endpoint.send_raw(
        f"GET /?Action=Describe\xffInstances HTTP/1.1\r\nHost: {endpoint.host}\r\n\r\n".encode("latin-1")
    )
    ec2_error(reply)
    ec2_error(endpoint.send("GET", "/?Action=%FF%FE", {}))


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"Action": "DescribeInstances", "Version": "2016-11-15"}'),
        ("text/xml", b"<DescribeInstances/>"),
        ("application/x-amz-json-1.1", b"{}"),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=Action\r\n\r\nRunInstances\r\n--x--",
        ),
    ],
)
def test_wrong_content_type(endpoint: Endpoint, unchanged: None, content_type: str, body: bytes) -> None:
    ec2_error(endpoint.send("POST", "/", {"Content-Type": content_type}, body))
    target, headers, signed_body = endpoint.sign({"Action": "DescribeInstances"})
    headers["Content-Type"] = content_type
    ec2_error(endpoint.send("POST", target, headers, signed_body))


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", "99999999999999999999", ""])
def test_bad_content_length(endpoint: Endpoint, unchanged: None, length: str) -> None:
    reply = endpoint.send_raw(
        f"POST / HTTP/1.1\r\nHost: {endpoint.host}\r\nContent-Type: {FORM}\r\nContent-Length: {length}\r\n\r\n"
        "Action=DescribeInstances".encode()
    )
    ec2_error(reply)


def test_body_shorter_than_declared(endpoint: Endpoint, unchanged: None) -> None:
    _, headers, body = endpoint.sign({"Action": "DescribeInstances"})
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if k.lower() != "content-length")
    request = f"POST / HTTP/1.1\r\n{lines}Content-Length: {len(body) + 100}\r\n\r\n".encode() + body
    ec2_error(endpoint.send_raw(request))  # the client gave up half-way: refused, not executed


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "AWS4-HMAC-SHA256"},
        {"Authorization": "AWS4-HMAC-SHA256 Credential=AKIA0000000000000000/20240101/cloudlab-1/ec2/aws4_request"},
        {"Authorization": "Bearer abc.def.ghi"},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "x" * 8000},
    ],
)
def test_missing_or_garbled_authorization(endpoint: Endpoint, unchanged: None, headers: dict[str, str]) -> None:
    body = urllib.parse.urlencode({"Action": "RunInstances", "ImageId": "ami-0", "MinCount": 1, "MaxCount": 1})
    ec2_error(endpoint.send("POST", "/", headers | {"Content-Type": FORM}, body.encode()))


def test_unknown_access_key_with_a_valid_signature_shape(endpoint: Endpoint, unchanged: None) -> None:
    stranger = Credentials("AKIA0000000000000000", "x" * 40)
    target, headers, body = endpoint.sign({"Action": "DescribeInstances"}, credentials=stranger)
    assert ec2_error(endpoint.send("POST", target, headers, body)) == "AuthFailure"


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_http_methods(endpoint: Endpoint, unchanged: None, method: str) -> None:
    ec2_error(endpoint.send(method, "/?Action=DescribeInstances", {"Content-Type": FORM}, b"Action=RunInstances"))


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"POST / HTTP/9.9\r\n\r\n",
        b"POST / HTTP/1.1\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
    ],
)
def test_malformed_http(endpoint: Endpoint, unchanged: None, raw: bytes) -> None:
    ec2_error(endpoint.send_raw(raw))
