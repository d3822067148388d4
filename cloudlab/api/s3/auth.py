"""Who sent an S3 request: SigV4 (header or presigned), SigV2 (header or presigned), or nobody.

The users and keys are the cloud's own (``cloudlab.clc.users``: the same as EC2's). SigV4 is checked
by :mod:`cloudlab.api.sigv4` with service ``s3`` and the cloud's region; its refusals are re-worded in
S3's codes here (S3 says ``InvalidAccessKeyId`` where EC2 says ``AuthFailure``, and so on). SigV2 for
S3 signs headers, not parameters (``AWS AKID:SIG``, or ``AWSAccessKeyId``/``Expires``/``Signature`` in
the query): HMAC-SHA1 over method, Content-MD5, Content-Type, Date (or Expires), the ``x-amz-*``
headers and the canonical resource with its sub-resources.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import quote

from cloudlab.api.errors import ApiError
from cloudlab.api.protocol import split_form
from cloudlab.api.sigv4 import Sigv4Check, check_sigv4
from cloudlab.walrus import Principal
from cloudlab.walrus.errors import WalrusError

#: access key -> (principal, secret), or None for an unknown or disabled key.
KeyLookup = Callable[[str], "tuple[Principal, str] | None"]

MAX_SKEW_S = 900
#: Sub-resources that SigV2 signs as part of the canonical resource (S3's documented list).
SIGNED_SUBRESOURCES = frozenset(
    {
        "acl",
        "cors",
        "delete",
        "lifecycle",
        "location",
        "logging",
        "notification",
        "partNumber",
        "policy",
        "requestPayment",
        "restore",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
        "versionId",
        "versioning",
        "versions",
        "website",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
        "response-content-language",
        "response-content-type",
        "response-expires",
    }
)


@dataclass(frozen=True)
class Authenticated:
    principal: Principal | None  # None: an anonymous request
    sigv4: Sigv4Check | None = None
    payload_hash: str | None = None  # what x-amz-content-sha256 declared (SigV4 header auth)


def _s3_error(exc: ApiError, presigned: bool, region: str) -> WalrusError:
    kind = getattr(exc, "kind", "")
    if exc.code == "AuthFailure":
        return WalrusError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    if exc.code == "RequestExpired":
        if presigned:
            return WalrusError("AccessDenied", "Request has expired")
        return WalrusError("RequestTimeTooSkewed", "The difference between the request time and the current time "
                           "is too large.")  # fmt: skip
    if kind == "region":
        code = "AuthorizationQueryParametersError" if presigned else "AuthorizationHeaderMalformed"
        return WalrusError(code, f"{exc.message}", Region=region)
    if exc.code == "IncompleteSignature":
        code = "AuthorizationQueryParametersError" if presigned else "AuthorizationHeaderMalformed"
        return WalrusError(code, exc.message)
    if exc.code == "SignatureDoesNotMatch":
        return WalrusError("SignatureDoesNotMatch", exc.message)
    return WalrusError("AccessDenied", exc.message)


def authenticate(
    method: str,
    host: str,
    raw_path: str,
    raw_query: str,
    headers: Mapping[str, str],
    lookup: KeyLookup,
    region: str,
    bucket: str | None,
    virtual_host: bool,
) -> Authenticated:
    """Verify the request's signature; an unsigned request is anonymous (ACLs decide what it may do)."""
    authorization = headers.get("authorization", "")
    query = dict(split_form(raw_query))
    found: dict[str, Principal] = {}

    def secret_for(access_key: str) -> str | None:
        hit = lookup(access_key)
        if hit is None:
            return None
        found["principal"] = hit[0]
        return hit[1]

    if authorization.startswith("AWS4-") or "X-Amz-Algorithm" in query:
        presigned = "X-Amz-Algorithm" in query
        declared = headers.get("x-amz-content-sha256")
        if not presigned and not declared:
            raise WalrusError("InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
        try:
            check = check_sigv4(method, raw_path, raw_query, headers, None, secret_for, service="s3",
                                region=region)  # fmt: skip
        except ApiError as exc:
            raise _s3_error(exc, presigned, region) from None
        return Authenticated(found["principal"], check, None if presigned else declared)
    if authorization.startswith("AWS "):
        access_key, _, signature = authorization[4:].strip().rpartition(":")
        date = headers.get("x-amz-date") or headers.get("date", "")
        _check_v2_clock(date)
        secret = secret_for(access_key)
        _check_v2(method, headers, raw_path, query, bucket, virtual_host, secret, signature, None)
        return Authenticated(found["principal"])
    if "AWSAccessKeyId" in query and "Signature" in query:
        expires = query.get("Expires", "")
        if not expires.isdigit():
            raise WalrusError("AccessDenied", "Query-string authentication requires the Expires parameter")
        if time.time() > int(expires):
            raise WalrusError("AccessDenied", "Request has expired")
        secret = secret_for(query["AWSAccessKeyId"])
        _check_v2(method, headers, raw_path, query, bucket, virtual_host, secret, query["Signature"], expires)
        return Authenticated(found["principal"])
    return Authenticated(None)


def _check_v2_clock(date: str) -> None:
    try:
        signed_at = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError, IndexError):
        raise WalrusError("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header") from None
    if abs(time.time() - signed_at) > MAX_SKEW_S:
        raise WalrusError("RequestTimeTooSkewed", "The difference between the request time and the current time is "
                          "too large.")  # fmt: skip


def string_to_sign_v2(
    method: str, headers: Mapping[str, str], raw_path: str, query: Mapping[str, str], bucket: str | None,
    virtual_host: bool, expires: str | None, bucket_slash: bool = False,
) -> str:  # fmt: skip
    """S3's SigV2 string to sign (the canonical resource keeps the path's encoding as sent).

    ``bucket_slash`` spells a request on a bucket itself ``/bucket/``, as botocore signs it; S3 takes
    ``/bucket`` too, so the verifier tries both.
    """
    amz = sorted((k, " ".join(v.split())) for k, v in headers.items() if k.startswith("x-amz-"))
    date = expires if expires is not None else ("" if "x-amz-date" in headers else headers.get("date", ""))
    resource = raw_path.split("?", 1)[0]
    if virtual_host and bucket:
        resource = f"/{quote(bucket)}{resource}"
    if bucket_slash and not resource.endswith("/"):
        resource += "/"
    subresources = sorted((k, v) for k, v in query.items() if k in SIGNED_SUBRESOURCES)
    if subresources:
        resource += "?" + "&".join(f"{k}={v}" if v != "" else k for k, v in subresources)
    lines = [method, headers.get("content-md5", ""), headers.get("content-type", ""), date]
    lines += [f"{k}:{v}" for k, v in amz]
    return "\n".join(lines) + "\n" + resource


def _check_v2(
    method: str, headers: Mapping[str, str], raw_path: str, query: Mapping[str, str], bucket: str | None,
    virtual_host: bool, secret: str | None, signature: str, expires: str | None,
) -> None:  # fmt: skip
    if secret is None:
        raise WalrusError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    provided = signature.replace(" ", "+")
    on_bucket = raw_path.split("?", 1)[0].strip("/").count("/") == 0 and not virtual_host
    texts = [string_to_sign_v2(method, headers, raw_path, query, bucket, virtual_host, expires)]
    if on_bucket or (virtual_host and raw_path.split("?", 1)[0] in ("", "/")):
        texts.append(string_to_sign_v2(method, headers, raw_path, query, bucket, virtual_host, expires, True))
    for text in texts:
        expected = base64.b64encode(hmac.new(secret.encode(), text.encode("utf-8"), hashlib.sha1).digest()).decode()
        if hmac.compare_digest(expected, provided):
            return
    raise WalrusError("SignatureDoesNotMatch", "The request signature we calculated does not match the signature "
                      "you provided. Check your key and signing method.", StringToSign=texts[0])  # fmt: skip
