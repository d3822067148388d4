"""POST object: a browser uploads a file with an HTML form, authorised by a policy the owner signed.

The form (``multipart/form-data``, parsed as it streams by the ``multipart`` package) carries ``key``,
a base64 JSON ``policy`` with an expiration and conditions, its signature (SigV4: ``x-amz-algorithm``,
``x-amz-credential``, ``x-amz-date``, ``x-amz-signature``; or SigV2: ``AWSAccessKeyId``, ``signature``),
optional fields (``acl``, ``Content-Type``, ``x-amz-meta-*``, ``success_action_status``, ...) and
finally ``file``. As S3 requires, every field but the signature, the policy, the file and
``x-ignore-*`` must be allowed by a condition, and every condition must hold, before a byte is stored;
``content-length-range`` is enforced while the file streams. Without a policy, the bucket must be
writable by anyone (``public-read-write``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from multipart import MultipartSegment, ParserError, PushMultipartParser, parse_options_header

from cloudlab.api.protocol import xml_escape
from cloudlab.api.s3.model import XML_NAMESPACE
from cloudlab.api.s3.ops.common import tag_set
from cloudlab.api.sigv4 import signing_key
from cloudlab.walrus import Principal, WalrusError, WriteSpec

READ_SIZE = 64 * 1024
MAX_FIELD = 64 * 1024
_UNCHECKED = {"policy", "x-amz-signature", "signature", "file", "awsaccesskeyid"}


def _bad_policy(message: str) -> WalrusError:
    return WalrusError("InvalidPolicyDocument", f"Invalid Policy: {message}")


def _denied(message: str) -> WalrusError:
    return WalrusError("AccessDenied", message)


class _Form:
    """Pulls parser events off the socket: fields first, then the file's bytes as a stream."""

    def __init__(self, stream: Any, boundary: str, length: int) -> None:
        self._stream = stream
        self._remaining = length
        self._parser = PushMultipartParser(boundary, length, max_segment_count=1000)
        self._events = self._pull()

    def _pull(self) -> Iterator[Any]:
        while True:
            chunk = self._stream.read(min(READ_SIZE, self._remaining)) if self._remaining > 0 else b""
            self._remaining -= len(chunk)
            try:
                yield from self._parser.parse(chunk)
            except ParserError as exc:
                raise WalrusError("MalformedPOSTRequest", f"The body of your POST request is not well-formed "
                                  f"multipart/form-data: {exc}") from None  # fmt: skip
            if not chunk:
                return

    def fields(self) -> tuple[dict[str, str], str | None]:
        """Every field before ``file`` (names lower-cased) and the file's name."""
        fields: dict[str, str] = {}
        while True:
            event = next(self._events, None)
            if event is None:
                raise WalrusError("InvalidArgument", "POST requires exactly one file upload per request.",
                                  ArgumentName="file")  # fmt: skip
            assert isinstance(event, MultipartSegment)
            name = event.name.lower()
            if name == "file":
                return fields, event.filename
            value = bytearray()
            for data in self._events:
                if data is None:
                    break
                value += data
                if len(value) > MAX_FIELD:
                    raise WalrusError("MaxPostPreDataLengthExceededError", "Your POST request fields preceding the "
                                      "upload file were too large.")  # fmt: skip
            fields[name] = value.decode("utf-8", "replace")

    def file(self) -> Iterator[bytes]:
        for data in self._events:
            if data is None:
                return
            yield bytes(data)


def _check_conditions(policy: dict[str, Any], fields: Mapping[str, str], bucket: str) -> tuple[int, int]:
    """Every condition holds and every field is covered; returns the content-length-range."""
    values = dict(fields, bucket=bucket)
    covered = {"bucket"}
    size_range = (0, 5 * 1024**3)
    for condition in policy.get("conditions", []):
        if isinstance(condition, dict):
            if len(condition) != 1:
                raise _bad_policy("a condition object must have one entry")
            ((name, expected),) = condition.items()
            op, field = "eq", name.lower()
        elif isinstance(condition, list) and len(condition) == 3:
            op = str(condition[0]).lower()
            if op == "content-length-range":
                size_range = (int(condition[1]), int(condition[2]))
                continue
            field, expected = str(condition[1]).lower().removeprefix("$"), condition[2]
        else:
            raise _bad_policy(f"unknown condition {str(condition)[:80]}")
        covered.add(field)
        actual = values.get(field, "")
        if op == "eq" and actual != str(expected):
            raise _denied(f"Invalid according to Policy: Policy Condition failed: [\"eq\", \"${field}\", "
                          f"\"{expected}\"]")  # fmt: skip
        if op == "starts-with" and not actual.startswith(str(expected)):
            raise _denied(f"Invalid according to Policy: Policy Condition failed: [\"starts-with\", \"${field}\", "
                          f"\"{expected}\"]")  # fmt: skip
        if op not in ("eq", "starts-with"):
            raise _bad_policy(f"unknown operator {op}")
    for field in fields:
        if field not in covered and field not in _UNCHECKED and not field.startswith("x-ignore-"):
            raise _denied(f"Invalid according to Policy: Extra input fields: {field}")
    return size_range


def _authorise(api: Any, fields: Mapping[str, str], bucket: str) -> Principal | None:
    if "policy" not in fields:
        return None
    try:
        policy = json.loads(base64.b64decode(fields["policy"]))
        expiration = datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError):
        raise _bad_policy("the policy is not base64 JSON with an expiration") from None
    if expiration.astimezone(UTC) < datetime.now(UTC):
        raise _denied("Invalid according to Policy: Policy expired.")
    if fields.get("x-amz-algorithm") == "AWS4-HMAC-SHA256":
        credential = fields.get("x-amz-credential", "")
        parts = credential.split("/")
        if len(parts) != 5 or parts[3] != "s3" or parts[4] != "aws4_request":
            raise _bad_policy("x-amz-credential must be AKID/DATE/REGION/s3/aws4_request")
        access_key, date, region = parts[0], parts[1], parts[2]
        if region != api.region:
            raise WalrusError("AuthorizationQueryParametersError", f"the region {region!r} is wrong; expecting "
                              f"{api.region!r}")  # fmt: skip
        hit = api.lookup(access_key)
        if hit is None:
            raise WalrusError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        principal, secret = hit
        key = signing_key(secret, date, region, "s3")
        expected = hmac.new(key, fields["policy"].encode(), hashlib.sha256).hexdigest()
        provided = fields.get("x-amz-signature", "")
    elif "awsaccesskeyid" in fields:
        hit = api.lookup(fields["awsaccesskeyid"])
        if hit is None:
            raise WalrusError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
        principal, secret = hit
        digest = hmac.new(secret.encode(), fields["policy"].encode(), hashlib.sha1).digest()
        expected, provided = base64.b64encode(digest).decode(), fields.get("signature", "")
    else:
        raise _bad_policy("a policy needs x-amz-algorithm/x-amz-credential/x-amz-signature or AWSAccessKeyId")
    if not hmac.compare_digest(expected, provided):
        raise WalrusError("SignatureDoesNotMatch", "The request signature we calculated does not match the signature "
                          "you provided.")  # fmt: skip
    fields = dict(fields)
    _check_conditions(policy, fields, bucket)
    return principal


def handle(api: Any, bucket: str, headers: Mapping[str, str], stream: Any, length: int) -> tuple[int, list, bytes]:
    """Answer a POST object: (status, headers, body)."""
    _, options = parse_options_header(headers.get("content-type", ""))
    boundary = options.get("boundary")
    if not boundary:
        raise WalrusError("MalformedPOSTRequest", "multipart/form-data needs a boundary")
    form = _Form(stream, boundary, length)
    fields, filename = form.fields()
    principal = _authorise(api, fields, bucket)
    low, high = 0, 5 * 1024**3
    if "policy" in fields:
        policy = json.loads(base64.b64decode(fields["policy"]))
        low, high = _check_conditions(policy, fields, bucket)
    key = fields.get("key", "")
    if not key:
        raise WalrusError("InvalidArgument", "Bucket POST must contain a field named 'key'.", ArgumentName="key")
    key = key.replace("${filename}", filename or "")
    spec = WriteSpec(
        content_type=fields.get("content-type"),
        metadata={k.removeprefix("x-amz-meta-"): v for k, v in fields.items() if k.startswith("x-amz-meta-")},
        canned_acl=fields.get("acl"),
    )
    for name, header in (("cache-control", "Cache-Control"), ("content-disposition", "Content-Disposition"),
                         ("content-encoding", "Content-Encoding"), ("expires", "Expires")):  # fmt: skip
        if name in fields:
            spec.headers[header] = fields[name]
    if "tagging" in fields:
        spec.tags = _tags_xml(fields["tagging"])

    def sized() -> Iterator[bytes]:
        total = 0
        for chunk in form.file():
            total += len(chunk)
            if total > high:
                raise WalrusError("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size",
                                  MaxSizeAllowed=str(high))  # fmt: skip
            yield chunk
        if total < low:
            raise WalrusError("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size",
                              MinSizeAllowed=str(low))  # fmt: skip

    version = api.walrus.put_object(principal, bucket, key, sized(), spec)
    for _ in form._events:  # noqa: SLF001 - drain what follows the file (S3 ignores it)
        pass
    etag = f'"{version.etag}"'
    location = f"/{bucket}/{key}"
    redirect = fields.get("success_action_redirect") or fields.get("redirect")
    if redirect:
        query = urlencode({"bucket": bucket, "key": key, "etag": etag})
        return 303, [("ETag", etag), ("Location", f"{redirect}{'&' if '?' in redirect else '?'}{query}")], b""
    out = [("ETag", etag), ("Location", location)]
    status = fields.get("success_action_status", "204")
    if status == "201":
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<PostResponse xmlns="{XML_NAMESPACE}"><Location>'
            f"{xml_escape(location)}</Location><Bucket>{xml_escape(bucket)}</Bucket><Key>{xml_escape(key)}</Key>"
            f"<ETag>{xml_escape(etag)}</ETag></PostResponse>"
        ).encode()
        return 201, [*out, ("Content-Type", "application/xml")], body
    return (200 if status == "200" else 204), out, b""


def _tags_xml(text: str) -> dict[str, str]:
    from defusedxml import ElementTree

    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        raise WalrusError("MalformedXML", "The tagging field is not well-formed XML") from None
    tags = {}
    for tag in root.iter():
        if tag.tag.rsplit("}", 1)[-1] == "Tag":
            key = next((c.text for c in tag if c.tag.rsplit("}", 1)[-1] == "Key"), None)
            value = next((c.text for c in tag if c.tag.rsplit("}", 1)[-1] == "Value"), "")
            if key:
                tags[key] = value or ""
    return tags or tag_set(None)
