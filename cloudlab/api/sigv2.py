"""Server-side verification of AWS Signature Version 2 (the EC2 Query API's older signature).

SigV2 signs the request parameters themselves (not the raw bytes): the string to sign is::

    METHOD \\n host \\n path \\n name1=value1&name2=value2...

with the parameters (all except ``Signature``) sorted by name and percent-encoded per RFC 3986,
then HMAC-SHA256 or HMAC-SHA1 with the secret key, base64-encoded. Older tools (euca2ools, boto 2)
still speak it; boto3 can be made to with ``signature_version='v2'``.

This module also holds what both signature versions share (:class:`SignedIdentity`, the RFC 3986
encoder, clock handling); :mod:`cloudlab.api.sigv4` builds on it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from cloudlab.api.errors import (
    AUTH_FAILURE,
    INCOMPLETE_SIGNATURE,
    INVALID_PARAMETER_COMBINATION,
    MISSING_AUTHENTICATION_TOKEN,
    REQUEST_EXPIRED,
    SIGNATURE_DOES_NOT_MATCH,
    ApiError,
    missing_parameter,
    quote_value,
)

__all__ = ["SecretLookup", "SignedIdentity", "verify_sigv2"]

#: Maps an access key id to its secret key, or None if the key is unknown (or disabled).
SecretLookup = Callable[[str], "str | None"]

DEFAULT_MAX_SKEW_S = 900  # 15 minutes, as AWS allows

_DIGESTS = {"HmacSHA256": hashlib.sha256, "HmacSHA1": hashlib.sha1}
_ISO_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]{5,20}(?:Z|[+-][0-9]{2}:?[0-9]{2})?")


@dataclass(frozen=True, slots=True)
class SignedIdentity:
    """Who signed a request that verified, and for which region/service scope.

    ``region`` and ``service`` come from the SigV4 credential scope; SigV2 has no scope, so they are
    ``None`` for ``signature_version == 2``.
    """

    access_key: str
    region: str | None
    service: str | None
    signature_version: int = 4


def aws_percent_encode(text: str) -> str:
    """RFC 3986 percent-encoding as AWS signatures use it: only ``A-Za-z0-9-_.~`` stay literal."""
    return quote(text, safe="-_.~")


def utc_now(now: datetime | None) -> datetime:
    """``now`` as an aware UTC datetime (naive values are taken as UTC); the clock if ``None``."""
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    return now.astimezone(UTC)


def auth_failure() -> ApiError:
    """EC2's answer to an access key it does not know (deliberately says nothing more)."""
    return ApiError(AUTH_FAILURE, "AWS was not able to validate the provided access credentials")


def signature_mismatch() -> ApiError:
    """The standard mismatch message; it names the usual culprit without leaking the expected value."""
    return ApiError(
        SIGNATURE_DOES_NOT_MATCH,
        "The request signature we calculated does not match the signature you provided. "
        "Check your AWS Secret Access Key and signing method.",
    )


def request_expired(detail: str) -> ApiError:
    """Clock skew or an expired presigned request."""
    return ApiError(REQUEST_EXPIRED, f"Request has expired. {detail}")


def _parse_v2_time(name: str, text: str) -> datetime:
    try:
        if _ISO_TIMESTAMP.fullmatch(text) is None:
            raise ValueError(text)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(
            INCOMPLETE_SIGNATURE,
            f"Value ({quote_value(text)}) for parameter {name} is invalid: expected ISO 8601, "
            "e.g. 2016-11-15T12:00:00Z.",
        ) from None
    return utc_now(parsed)


def string_to_sign_v2(method: str, host: str, path: str, params: Mapping[str, str]) -> str:
    """SigV2's string to sign. Names sort by code point, i.e. by their UTF-8 bytes, as AWS requires."""
    pairs = "&".join(
        f"{aws_percent_encode(name)}={aws_percent_encode(params[name])}"
        for name in sorted(params)
        if name != "Signature"
    )
    return f"{method.upper()}\n{host}\n{path or '/'}\n{pairs}"


def verify_sigv2(
    method: str,
    host: str,
    path: str,
    params: Mapping[str, str],
    secret_for: SecretLookup,
    now: datetime | None = None,
    max_skew_s: int = DEFAULT_MAX_SKEW_S,
) -> SignedIdentity:
    """Verify a SignatureVersion=2 request; return the signer or raise :class:`ApiError`.

    ``host`` is the Host header as received (with its port, if any), ``path`` the request path as it
    appeared on the request line (``/`` for EC2), ``params`` the decoded parameters of query string
    and body together (see :func:`cloudlab.api.protocol.parse_body`).
    """
    access_key = params.get("AWSAccessKeyId")
    signature = params.get("Signature")
    if not access_key and not signature:
        raise ApiError(MISSING_AUTHENTICATION_TOKEN, "The request must contain the parameter AWSAccessKeyId")
    for name in ("AWSAccessKeyId", "Signature", "SignatureMethod", "SignatureVersion"):
        if not params.get(name):
            raise missing_parameter(name)
    if params["SignatureVersion"] != "2":
        raise ApiError(
            INCOMPLETE_SIGNATURE,
            f"SignatureVersion {quote_value(params['SignatureVersion'])} is not supported; use 2 or 4.",
        )
    digest = _DIGESTS.get(params["SignatureMethod"])
    if digest is None:
        raise ApiError(
            INCOMPLETE_SIGNATURE,
            f"SignatureMethod {quote_value(params['SignatureMethod'])} is not supported; use HmacSHA256 or HmacSHA1.",
        )

    current = utc_now(now)
    timestamp, expires = params.get("Timestamp"), params.get("Expires")
    if timestamp and expires:
        raise ApiError(INVALID_PARAMETER_COMBINATION, "Parameters Timestamp and Expires cannot be used together.")
    if timestamp:
        signed_at = _parse_v2_time("Timestamp", timestamp)
        if abs(current - signed_at) > timedelta(seconds=max_skew_s):
            raise request_expired(f"Timestamp date is {timestamp}, the server's time is {current:%Y-%m-%dT%H:%M:%SZ}.")
    elif expires:
        if current > _parse_v2_time("Expires", expires):
            raise request_expired(f"Expires date is {expires}.")
    else:
        raise missing_parameter("Timestamp")

    assert access_key is not None and signature is not None
    secret = secret_for(access_key)
    if secret is None:
        raise auth_failure()
    try:
        # A '+' sent unencoded arrives as a space after form decoding; base64 never has spaces.
        provided = base64.b64decode(signature.replace(" ", "+"), validate=True)
    except (binascii.Error, ValueError):
        raise signature_mismatch() from None
    key = secret.encode("utf-8")
    hosts = [host] if host == host.lower() else [host, host.lower()]
    for candidate in hosts:
        try:
            text = string_to_sign_v2(method, candidate, path, params).encode("utf-8")
        except UnicodeError:  # lone surrogates: nothing a client could have signed
            raise signature_mismatch() from None
        expected = hmac.new(key, text, digest).digest()
        if hmac.compare_digest(expected, provided):
            return SignedIdentity(access_key, None, None, signature_version=2)
    raise signature_mismatch()
