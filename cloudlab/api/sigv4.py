"""Server-side verification of AWS Signature Version 4, and the choice between SigV4 and SigV2.

boto3 and the AWS CLI sign every EC2 call with SigV4 in the ``Authorization`` header (a form-encoded
POST); presigned URLs carry the same signature in the query string (``X-Amz-Algorithm``,
``X-Amz-Credential``, ``X-Amz-Date``, ``X-Amz-Expires``, ``X-Amz-SignedHeaders``,
``X-Amz-Signature``). Both are verified here by rebuilding the canonical request exactly as the AWS
specification (and botocore's signer) builds it:

    METHOD \\n canonical URI \\n canonical query \\n canonical headers \\n signed headers \\n payload hash

then ``AWS4-HMAC-SHA256 \\n date \\n scope \\n sha256(canonical request)`` signed with the key derived
from the secret, the date, the region and the service. The body is always covered: a declared
``x-amz-content-sha256`` must match the body, and ``UNSIGNED-PAYLOAD`` is accepted only for an
empty body (an EC2 body *is* the request's parameters).

The same verifier serves S3 (``service="s3"``): S3 signs the request path as sent (no second
encoding, no normalisation) and the payload hash the client declared in ``x-amz-content-sha256``
(a hex digest, ``UNSIGNED-PAYLOAD`` or a ``STREAMING-*`` aws-chunked mode), which the S3 face checks
against the body as it streams. :func:`check_sigv4` returns the derived key and the seed signature
for the chunk signatures of ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``.

Both services bind the credential scope: its region must be the cloud's and its service the
endpoint's (``ec2`` or ``s3``), and a presigned request must say when it expires (``X-Amz-Expires``,
at most 604800 s), as AWS requires; a request presigned without it would otherwise never expire.
Every such refusal carries a ``kind`` attribute (``region``, ``service``, ``expires``, ...) so that
a face can answer in its own service's words.

Status codes: botocore retries 5xx, so every authentication failure here is 4xx (AuthFailure and
MissingAuthenticationToken 401, SignatureDoesNotMatch 403, IncompleteSignature and RequestExpired
400, as EC2 answers) and boto3 raises ``ClientError`` at once with the code.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import quote

from cloudlab.api.errors import (
    INCOMPLETE_SIGNATURE,
    MISSING_AUTHENTICATION_TOKEN,
    SIGNATURE_DOES_NOT_MATCH,
    ApiError,
    quote_value,
)
from cloudlab.api.protocol import split_form
from cloudlab.api.sigv2 import (
    DEFAULT_MAX_SKEW_S,
    SecretLookup,
    SignedIdentity,
    auth_failure,
    aws_percent_encode,
    request_expired,
    signature_mismatch,
    utc_now,
    verify_sigv2,
)

__all__ = ["SignedIdentity", "Sigv4Check", "authenticate", "check_sigv4", "verify_sigv4"]

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "ec2"
TERMINATOR = "aws4_request"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_PRESIGNED_EXPIRES_S = 7 * 24 * 3600  # AWS's limit for presigned requests

_AMZ_DATE_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_HEX64_RE = re.compile(r"[0-9a-fA-F]{64}")
_HEADER_NAME_RE = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, slots=True)
class _Claim:
    """What a request claims about its signature, before anything is checked cryptographically."""

    access_key: str
    scope_date: str
    region: str
    service: str
    terminator: str
    signed_headers: str
    signature: str
    amz_date: str  # the date as it goes into the string to sign (YYYYMMDDTHHMMSSZ)
    signed_at: datetime
    expires_s: int | None  # presigned requests only
    presigned: bool


def _incomplete(message: str, kind: str = "malformed") -> ApiError:
    return _refusal(INCOMPLETE_SIGNATURE, message, kind)


def _refusal(code: str, message: str, kind: str) -> ApiError:
    """An ApiError that also says what was wrong (``error.kind``), for faces that phrase it their way."""
    error = ApiError(code, message)
    error.kind = kind  # type: ignore[attr-defined]
    return error


@dataclass(frozen=True, slots=True)
class Sigv4Check:
    """A verified SigV4 signature and what a streaming body needs to go on verifying its chunks."""

    identity: SignedIdentity
    key: bytes
    signature: str
    amz_date: str
    scope: str
    payload_hash: str
    presigned: bool


def _header_values(headers: Mapping[str, str]) -> dict[str, list[str]]:
    """Lower-cased header name -> all its values (``http.client.HTTPMessage`` may repeat names)."""
    values: dict[str, list[str]] = {}
    for name, value in headers.items():
        values.setdefault(name.lower(), []).append(value)
    return values


def _parse_amz_date(text: str, source: str) -> datetime:
    if _AMZ_DATE_RE.fullmatch(text) is None:
        raise _incomplete(f"{source} must be in ISO 8601 basic format, e.g. 20161115T120000Z; got {quote_value(text)}")
    try:  # the digits are checked above; datetime() checks the ranges (strptime is 10x slower)
        return datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[9:11]), int(text[11:13]),
                        int(text[13:15]), tzinfo=UTC)  # fmt: skip
    except ValueError:
        raise _incomplete(f"{source} is not a valid date: {quote_value(text)}") from None


def _parse_credential(credential: str) -> tuple[str, str, str, str, str]:
    parts = credential.rsplit("/", 4)
    if len(parts) != 5 or not all(parts):
        raise _incomplete(
            "Credential must have the form <access key>/<YYYYMMDD>/<region>/<service>/aws4_request; "
            f"got {quote_value(credential)}"
        )
    access_key, scope_date, region, service, terminator = parts
    if not (len(scope_date) == 8 and scope_date.isascii() and scope_date.isdigit()):
        raise _incomplete(f"Credential scope date must be YYYYMMDD; got {quote_value(scope_date)}")
    if terminator != TERMINATOR:
        raise _incomplete(f"Credential should be scoped with a valid terminator: '{TERMINATOR}'")
    return access_key, scope_date, region, service, terminator


def _parse_authorization(value: str) -> tuple[str, str, str]:
    """Split ``AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`` into its three fields."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(f"Unsupported Authorization algorithm {quote_value(algorithm)}; use {ALGORITHM}")
    fields: dict[str, str] = {}
    for component in rest.split(","):
        name, sep, field_value = component.strip().partition("=")
        if not sep or name not in ("Credential", "SignedHeaders", "Signature") or name in fields:
            raise _incomplete(f"Authorization header is malformed near {quote_value(component.strip())}")
        fields[name] = field_value
    missing = [name for name in ("Credential", "SignedHeaders", "Signature") if not fields.get(name)]
    if missing:
        raise _incomplete(" ".join(f"Authorization header requires '{name}' parameter." for name in missing))
    return fields["Credential"], fields["SignedHeaders"], fields["Signature"]


def _check_signed_headers(signed_headers: str) -> list[str]:
    names = signed_headers.split(";")
    for name in names:
        if _HEADER_NAME_RE.fullmatch(name) is None:
            raise _incomplete(
                f"SignedHeaders must be lower-case header names separated by ';': {quote_value(signed_headers)}"
            )
    if "host" not in names:
        raise _incomplete("The host header must be signed (SignedHeaders must include 'host').")
    return names


def _claim_from_header(authorization: str, headers: dict[str, list[str]]) -> _Claim:
    credential, signed_headers, signature = _parse_authorization(authorization)
    access_key, scope_date, region, service, terminator = _parse_credential(credential)
    amz_dates = headers.get("x-amz-date")
    if amz_dates:
        amz_date = amz_dates[-1].strip()
        signed_at = _parse_amz_date(amz_date, "X-Amz-Date")
    elif headers.get("date"):
        try:
            signed_at = parsedate_to_datetime(headers["date"][-1])
        except (TypeError, ValueError, IndexError):
            raise _incomplete(f"Date header is not a valid HTTP date: {quote_value(headers['date'][-1])}") from None
        signed_at = utc_now(signed_at)
        amz_date = signed_at.strftime("%Y%m%dT%H%M%SZ")
    else:
        raise _incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.")
    return _Claim(
        access_key,
        scope_date,
        region,
        service,
        terminator,
        signed_headers,
        signature,
        amz_date,
        signed_at,
        None,
        False,
    )


def _claim_from_query(query: Mapping[str, str]) -> _Claim:
    missing = [
        name
        for name in ("X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature")
        if not query.get(name)
    ]
    if missing:
        raise _incomplete(" ".join(f"Query-string authentication requires the {name} parameter." for name in missing))
    if query["X-Amz-Algorithm"] != ALGORITHM:
        raise _incomplete(f"X-Amz-Algorithm only supports '{ALGORITHM}'")
    access_key, scope_date, region, service, terminator = _parse_credential(query["X-Amz-Credential"])
    amz_date = query["X-Amz-Date"]
    signed_at = _parse_amz_date(amz_date, "X-Amz-Date")
    raw_expires = query.get("X-Amz-Expires")
    if raw_expires is None:
        raise _incomplete("Query-string authentication requires the X-Amz-Expires parameter.", "expires")
    if not (raw_expires.isascii() and raw_expires.isdigit() and len(raw_expires) <= 7):
        raise _incomplete(f"X-Amz-Expires must be a number of seconds; got {quote_value(raw_expires)}", "expires")
    expires_s = int(raw_expires)
    if expires_s > MAX_PRESIGNED_EXPIRES_S:
        raise _incomplete(
            f"X-Amz-Expires must be less than a week (in seconds); that is, the given "
            f"X-Amz-Expires must be less than {MAX_PRESIGNED_EXPIRES_S} seconds",
            "expires",
        )
    return _Claim(
        access_key,
        scope_date,
        region,
        service,
        terminator,
        query["X-Amz-SignedHeaders"],
        query["X-Amz-Signature"],
        amz_date,
        signed_at,
        expires_s,
        True,
    )


def canonical_uri(path: str) -> str:
    """The canonical URI for non-S3 services: dot segments and repeated slashes removed, then the
    (already percent-encoded) path encoded once more, exactly as botocore's signer does."""
    path = path.split("?", 1)[0]
    if not path:
        return "/"
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    normalized = ("/" if path.startswith("/") else "") + "/".join(segments)
    if path.endswith("/") and segments:
        normalized += "/"
    return quote(normalized or "/", safe="/~")


def canonical_uri_s3(path: str) -> str:
    """S3's canonical URI: the path exactly as it was sent (clients sign their own encoding of the key)."""
    return path.split("?", 1)[0] or "/"


def canonical_query(pairs: list[tuple[str, str]]) -> str:
    """Names and values RFC 3986-encoded, sorted by encoded name then value, joined by ``&``."""
    encoded = sorted((aws_percent_encode(name), aws_percent_encode(value)) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def _canonical_headers(names: list[str], headers: dict[str, list[str]]) -> str:
    lines = []
    for name in names:
        values = headers.get(name)
        if values is None:
            raise ApiError(SIGNATURE_DOES_NOT_MATCH, f"The signed header {name!r} is not in the request.")
        lines.append(f"{name}:{','.join(' '.join(value.split()) for value in values)}\n")
    return "".join(lines)


@functools.lru_cache(maxsize=256)
def signing_key(secret: str, scope_date: str, region: str, service: str) -> bytes:
    """SigV4's derived key: HMAC chain over date, region, service and ``aws4_request``. It depends on
    nothing else, so it is kept (as AWS's SDKs keep it) for the day's requests of each key: a request
    still needs its own signature, computed with this key, to pass."""
    key = hmac.new(f"AWS4{secret}".encode(), scope_date.encode(), hashlib.sha256).digest()
    for part in (region, service, TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _payload_hashes(headers: dict[str, list[str]], body: bytes, presigned: bool) -> list[str]:
    """The payload hash(es) the signer may have used; every one of them binds the body we got."""
    actual = hashlib.sha256(body).hexdigest()
    declared_values = headers.get("x-amz-content-sha256")
    if not declared_values:
        # Presigners for other services sign UNSIGNED-PAYLOAD; harmless when there is no body.
        return [actual, UNSIGNED_PAYLOAD] if presigned and not body else [actual]
    declared = declared_values[-1].strip()
    if declared == UNSIGNED_PAYLOAD:
        if body:
            raise ApiError(
                SIGNATURE_DOES_NOT_MATCH,
                "UNSIGNED-PAYLOAD is not accepted for a request with a body: the body carries the parameters.",
            )
        return [declared]
    if _HEX64_RE.fullmatch(declared) is None:
        raise _incomplete(f"Unsupported x-amz-content-sha256 value {quote_value(declared)}")
    if declared.lower() != actual:
        raise ApiError(
            SIGNATURE_DOES_NOT_MATCH,
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        )
    return [declared]


def check_sigv4(
    method: str,
    path: str,
    query_string: str,
    headers: Mapping[str, str],
    body: bytes | None,
    secret_for: SecretLookup,
    now: datetime | None = None,
    max_skew_s: int = DEFAULT_MAX_SKEW_S,
    *,
    region: str | None = None,
    service: str = SERVICE,
) -> Sigv4Check:
    """Verify a SigV4 signature (header or presigned) and return it with its derived key.

    ``body`` is the raw body for EC2 (its hash is checked here); for S3 pass ``None`` and the declared
    ``x-amz-content-sha256`` (or ``UNSIGNED-PAYLOAD`` when presigned) is what is signed, to be checked
    against the body by the caller as it streams. ``region``, when given, is the only region a
    credential scope may name; ``service`` the only service.
    """
    header_map = _header_values(headers)
    authorization = (header_map.get("authorization") or [""])[-1]
    pairs = split_form(query_string)
    query = dict(pairs)
    if authorization and "X-Amz-Algorithm" in query:
        raise _incomplete(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the "
            "Authorization header should be specified"
        )
    if authorization:
        claim = _claim_from_header(authorization, header_map)
    elif "X-Amz-Algorithm" in query:
        claim = _claim_from_query(query)
        pairs = [(name, value) for name, value in pairs if name != "X-Amz-Signature"]
    else:
        raise ApiError(MISSING_AUTHENTICATION_TOKEN, "Request is missing Authentication Token")
    if _HEX64_RE.fullmatch(claim.signature) is None:
        raise _incomplete("Signature must be 64 hexadecimal digits.")
    signed_header_names = _check_signed_headers(claim.signed_headers)

    secret = secret_for(claim.access_key)
    if secret is None:
        raise auth_failure()

    current = utc_now(now)
    skew = timedelta(seconds=max_skew_s)
    if claim.presigned:
        if claim.signed_at - current > skew:
            raise request_expired(f"Request date {claim.amz_date} is in the future.")
        if claim.expires_s is not None and current > claim.signed_at + timedelta(seconds=claim.expires_s):
            raise request_expired(f"Request was signed at {claim.amz_date} and expired after {claim.expires_s} s.")
    elif abs(current - claim.signed_at) > skew:
        raise request_expired(
            f"Signature date {claim.amz_date} is more than {max_skew_s} s from the server's time "
            f"{current:%Y%m%dT%H%M%SZ}."
        )
    if claim.scope_date != claim.amz_date[:8]:
        raise ApiError(
            SIGNATURE_DOES_NOT_MATCH,
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{claim.scope_date}' != '{claim.amz_date[:8]}'",
        )
    if claim.service != service:
        raise _refusal(
            SIGNATURE_DOES_NOT_MATCH, f"Credential should be scoped to correct service: '{service}'.", "service"
        )
    if region is not None and claim.region != region:
        raise _refusal(
            SIGNATURE_DOES_NOT_MATCH,
            f"Credential should be scoped to a valid region: the region {quote_value(claim.region)} is wrong; "
            f"expecting {quote_value(region)}.",
            "region",
        )

    uri = canonical_uri_s3(path) if service == "s3" else canonical_uri(path)
    prefix = f"{method.upper()}\n{uri}\n{canonical_query(pairs)}\n"
    suffix = f"\n{claim.signed_headers}\n"
    header_blocks = [_canonical_headers(signed_header_names, header_map)]
    host_values = header_map.get("host", [])
    if any(value != value.lower() for value in host_values):
        # Host names are case-insensitive and botocore signs the host from the URL lower-cased,
        # while the HTTP client sends it as written in the endpoint URL: accept either spelling.
        lowered = dict(header_map, host=[value.lower() for value in host_values])
        header_blocks.append(_canonical_headers(signed_header_names, lowered))
    scope = f"{claim.scope_date}/{claim.region}/{claim.service}/{TERMINATOR}"
    if body is None:
        declared = (header_map.get("x-amz-content-sha256") or [""])[-1].strip()
        payload_hashes = [declared or UNSIGNED_PAYLOAD] if claim.presigned else [declared]
    try:
        key = signing_key(secret, claim.scope_date, claim.region, claim.service)
        provided = claim.signature.lower()
        if body is not None:
            payload_hashes = _payload_hashes(header_map, body, claim.presigned)
        for block in header_blocks:
            for payload_hash in payload_hashes:
                canonical_request = f"{prefix}{block}{suffix}{payload_hash}".encode()
                string_to_sign = (
                    f"{ALGORITHM}\n{claim.amz_date}\n{scope}\n{hashlib.sha256(canonical_request).hexdigest()}"
                )
                expected = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
                if hmac.compare_digest(expected, provided):
                    identity = SignedIdentity(claim.access_key, claim.region, claim.service)
                    return Sigv4Check(identity, key, provided, claim.amz_date, scope, payload_hash, claim.presigned)
    except UnicodeError:  # lone surrogates in a header or the region: nothing anyone could have signed
        pass
    raise signature_mismatch()


def verify_sigv4(
    method: str,
    path: str,
    query_string: str,
    headers: Mapping[str, str],
    body: bytes,
    secret_for: SecretLookup,
    now: datetime | None = None,
    max_skew_s: int = DEFAULT_MAX_SKEW_S,
    *,
    region: str | None = None,
    service: str = SERVICE,
) -> SignedIdentity:
    """Verify a SigV4-signed EC2-style request (Authorization header or presigned query string).

    ``path`` and ``query_string`` are as they appeared on the request line (still percent-encoded),
    ``headers`` as received (any case; repeated names allowed if the mapping's ``items()`` repeats
    them), ``body`` the raw body bytes. Returns the signer; raises :class:`ApiError` with
    MissingAuthenticationToken, IncompleteSignature, AuthFailure, RequestExpired or
    SignatureDoesNotMatch.
    """
    return check_sigv4(
        method, path, query_string, headers, body, secret_for, now, max_skew_s, region=region, service=service
    ).identity


def authenticate(
    method: str,
    host: str | None,
    path: str,
    query_string: str,
    headers: Mapping[str, str],
    body: bytes,
    params: Mapping[str, str],
    secret_for: SecretLookup,
    now: datetime | None = None,
    max_skew_s: int = DEFAULT_MAX_SKEW_S,
    *,
    region: str | None = None,
) -> SignedIdentity:
    """Verify whichever signature the request carries: SigV4 (header or presigned) or SigV2.

    ``params`` are the decoded parameters of query string and body (:func:`parse_body`), which SigV2
    signs; ``host`` is the Host header (looked up in ``headers`` when ``None``).
    """
    header_map = _header_values(headers)
    if header_map.get("authorization") or any(name == "X-Amz-Algorithm" for name, _ in split_form(query_string)):
        return verify_sigv4(method, path, query_string, headers, body, secret_for, now, max_skew_s, region=region)
    if any(name in params for name in ("Signature", "SignatureVersion", "AWSAccessKeyId")):
        if host is None:
            host = (header_map.get("host") or [""])[-1]
        return verify_sigv2(method, host, path, params, secret_for, now, max_skew_s)
    raise ApiError(MISSING_AUTHENTICATION_TOKEN, "Request is missing Authentication Token")
