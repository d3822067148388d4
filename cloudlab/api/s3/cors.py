"""CORS as S3 applies a bucket's rules: preflight (OPTIONS) answers and headers on actual requests.

A rule matches when the request's Origin matches one of its AllowedOrigins (one ``*`` wildcard
allowed), the method (the preflight's Access-Control-Request-Method) is one of its AllowedMethods and
every requested header matches its AllowedHeaders. The first matching rule answers. This is what
lets a JupyterLab page on another origin fetch objects and upload with a presigned URL or POST.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

from cloudlab.walrus import WalrusError


def _match(pattern: str, value: str) -> bool:
    return fnmatch.fnmatchcase(value.lower(), pattern.lower()) if "*" in pattern else pattern.lower() == value.lower()


def _rule_for(rules: list[dict[str, Any]], origin: str, method: str, requested: list[str]) -> dict[str, Any] | None:
    for rule in rules:
        if not any(_match(o, origin) for o in rule.get("AllowedOrigins", [])):
            continue
        if method not in rule.get("AllowedMethods", []):
            continue
        allowed = rule.get("AllowedHeaders", [])
        if all(any(_match(a, h) for a in allowed) for h in requested):
            return rule
    return None


def _headers(rule: dict[str, Any], origin: str) -> list[tuple[str, str]]:
    wildcard = rule.get("AllowedOrigins") == ["*"]
    out = [
        ("Access-Control-Allow-Origin", "*" if wildcard else origin),
        ("Access-Control-Allow-Methods", ", ".join(rule.get("AllowedMethods", []))),
        ("Vary", "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"),
    ]
    if not wildcard:
        out.append(("Access-Control-Allow-Credentials", "true"))
    if rule.get("ExposeHeaders"):
        out.append(("Access-Control-Expose-Headers", ", ".join(rule["ExposeHeaders"])))
    if rule.get("MaxAgeSeconds") is not None:
        out.append(("Access-Control-Max-Age", str(rule["MaxAgeSeconds"])))
    return out


def preflight(rules: list[dict[str, Any]], headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """Headers of a 200 answer to an OPTIONS preflight, or 403 AccessForbidden as S3 answers."""
    origin = headers.get("origin")
    method = headers.get("access-control-request-method")
    if not origin or not method:
        raise WalrusError("BadRequest", "Insufficient information. Origin request header needed.")
    requested = [h.strip() for h in headers.get("access-control-request-headers", "").split(",") if h.strip()]
    rule = _rule_for(rules, origin, method, requested)
    if rule is None:
        raise WalrusError("AccessForbidden", "CORSResponse: This CORS request is not allowed. This is usually "
                          "because the evalution of Origin, request method / Access-Control-Request-Method or "
                          "Access-Control-Request-Headers are not allowed by the bucket's CORS rules.")  # fmt: skip
    out = _headers(rule, origin)
    if requested:
        out.append(("Access-Control-Allow-Headers", ", ".join(requested)))
    return out


def response_headers(rules: list[dict[str, Any]], headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """CORS headers for an actual cross-origin request (none when no rule allows it)."""
    origin = headers.get("origin", "")
    rule = _rule_for(rules, origin, headers.get("x-http-method", "") or "GET", []) if origin else None
    return _headers(rule, origin) if rule else []
