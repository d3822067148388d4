"""Which bucket, key and operation a request names: path-style, virtual-host style, and the model's URIs.

Addressing: ``http://HOST:PORT/bucket/key`` (path style) or ``http://bucket.DOMAIN:PORT/key``
(virtual-host style) where ``DOMAIN`` is the endpoint's local domain (``s3.localhost`` by default: a
``*.localhost`` name resolves to loopback without any DNS set-up, RFC 6761).

Operation: each of the model's operations has a method and a request URI such as
``/{Bucket}/{Key+}?uploads`` or ``/{Bucket}?list-type=2``. A request matches an operation when the
method and the URI's form (service, bucket, object) agree and every literal query key of the URI and
every required query-string and header member of its input is present; the most specific match wins
(so ``PUT`` with ``x-amz-copy-source`` is CopyObject, with ``partNumber`` and ``uploadId`` UploadPart).
Only operations the face implements take part, so a request for something else answers
``NotImplemented`` rather than silently doing the wrong thing.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from cloudlab.api.s3.model import service_model

DEFAULT_DOMAIN = "s3.localhost"


@dataclass(frozen=True)
class Target:
    bucket: str | None
    key: str | None


@dataclass(frozen=True)
class _Route:
    name: str
    method: str
    form: str  # "service", "bucket" or "object"
    literals: tuple[tuple[str, str | None], ...]
    required_query: tuple[str, ...]
    required_headers: tuple[str, ...]

    @property
    def weight(self) -> int:
        return len(self.literals) + len(self.required_query) + len(self.required_headers)


def split_target(host: str, path: str, domain: str = DEFAULT_DOMAIN) -> Target:
    """Bucket and key of a request, from its Host header and its (still percent-encoded) path."""
    hostname = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else host
    raw = path.split("?", 1)[0]
    if domain and hostname.endswith("." + domain):
        bucket = hostname[: -len(domain) - 1]
        key = unquote(raw[1:]) if len(raw) > 1 else None
        return Target(bucket, key)
    parts = raw[1:].split("/", 1) if raw.startswith("/") else [raw]
    bucket = unquote(parts[0]) or None
    key = unquote(parts[1]) if len(parts) > 1 and parts[1] != "" else None
    return Target(bucket, key)


@functools.cache
def _routes(implemented: frozenset[str]) -> tuple[_Route, ...]:
    model = service_model()
    routes = []
    for name in model.operation_names:
        if name not in implemented:
            continue
        op = model.operation_model(name)
        uri = op.http["requestUri"]
        path, _, query = uri.partition("?")
        form = "object" if "{Key+}" in path else "bucket" if "{Bucket}" in path else "service"
        literals = []
        for item in query.split("&") if query else []:
            key, eq, value = item.partition("=")
            if key != "x-id":  # botocore's own marker of the operation; clients do not always send it
                literals.append((key, value if eq else None))
        shape = op.input_shape
        required_query: list[str] = []
        required_headers: list[str] = []
        for member_name in shape.required_members if shape is not None else []:
            member = shape.members[member_name]
            location = member.serialization.get("location")
            wire = member.serialization.get("name", member_name)
            if location == "querystring":
                required_query.append(wire)
            elif location == "header":
                required_headers.append(wire.lower())
        routes.append(
            _Route(name, op.http["method"], form, tuple(literals), tuple(required_query), tuple(required_headers))
        )
    return tuple(sorted(routes, key=lambda r: -r.weight))


@functools.cache
def _subresources() -> frozenset[str]:
    """Every literal query key of any operation (``acl``, ``policy``, ``uploads``, ...)."""
    keys = set()
    model = service_model()
    for name in model.operation_names:
        query = model.operation_model(name).http["requestUri"].partition("?")[2]
        keys.update(item.partition("=")[0] for item in query.split("&") if item)
    keys.discard("x-id")
    return frozenset(keys)


def resolve_operation(
    method: str, target: Target, query: Mapping[str, str], headers: Collection[str], implemented: frozenset[str]
) -> str | None:
    """The name of the operation this request is (see the module docstring), or None."""
    form = "object" if target.key is not None else "bucket" if target.bucket else "service"
    for route in _routes(implemented):
        if route.method != method or route.form != form:
            continue
        if any(key not in query or (value is not None and query[key] != value) for key, value in route.literals):
            continue
        if any(name not in query for name in route.required_query):
            continue
        if any(name not in headers for name in route.required_headers):
            continue
        claimed = {key for key, _ in route.literals}
        if any(key in _subresources() and key not in claimed for key in query):
            return None  # e.g. ?policy on a bucket: not ListObjects, an operation this face lacks
        return route.name
    return None
