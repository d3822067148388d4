"""EC2 Query requests in: the form body and query string decoded, then the flat ``name=value`` pairs
parsed into the dict a boto3 user passed in, by the operation's input shape.

The wire dialect, and the choices callers rely on, are written down once in ``cloudlab.api.protocol``
(which re-exports :func:`parse_body`, :func:`split_form` and :func:`parse_request`).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_to_bytes

from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

from cloudlab.api.errors import (
    INVALID_PARAMETER_VALUE,
    MALFORMED_QUERY_STRING,
    ApiError,
    invalid_parameter_value,
    missing_parameter,
)

# ---------------------------------------------------------------------------------------------
# Form decoding (query string and application/x-www-form-urlencoded bodies)
# ---------------------------------------------------------------------------------------------

_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def _decode_component(text: str) -> str:
    """Percent-decode one name or value of a form (``+`` is a space), strictly as UTF-8."""
    if "%" not in text and "+" not in text:
        return text
    if _BAD_PERCENT.search(text):
        raise ApiError(MALFORMED_QUERY_STRING, "The query string contains a malformed percent-escape.")
    try:
        return unquote_to_bytes(text.replace("+", " ")).decode("utf-8")
    except (UnicodeError, ValueError):
        raise ApiError(
            MALFORMED_QUERY_STRING, "The query string contains percent-escapes that are not valid UTF-8."
        ) from None


def split_form(text: str) -> list[tuple[str, str]]:
    """Split and decode ``a=1&b=2`` into pairs, keeping order and repeats.

    Shared with SigV4 verification so that what is signed and what is acted upon are decoded by
    one and the same function. Empty segments are skipped; a segment without ``=`` has value ``''``.
    """
    pairs: list[tuple[str, str]] = []
    if not text:
        return pairs
    for segment in text.split("&"):
        if not segment:
            continue
        name, _, value = segment.partition("=")
        pairs.append((_decode_component(name), _decode_component(value)))
    return pairs


def parse_body(content_type: str | None, body: bytes, query_string: str | bytes = "") -> dict[str, str]:
    """Merge the query string and a form-encoded body into one flat ``{name: value}`` dict.

    A non-form body (JSON, XML…) is refused rather than silently ignored: a client sending one is
    talking another protocol and deserves a clear error, not a confusing ``MissingAction``.
    """
    try:
        if isinstance(query_string, bytes | bytearray):
            query_string = bytes(query_string).decode("utf-8")
        body_text = bytes(body).decode("utf-8") if body else ""
    except UnicodeDecodeError:
        raise ApiError(MALFORMED_QUERY_STRING, "The request is not valid UTF-8.") from None
    if body_text:
        media_type = (content_type or "").split(";", 1)[0].strip().lower()
        if media_type not in ("", FORM_CONTENT_TYPE):
            raise ApiError(
                INVALID_PARAMETER_VALUE,
                f"Unsupported Content-Type {media_type[:80]!r}: the EC2 Query API takes {FORM_CONTENT_TYPE}.",
            )
    params: dict[str, str] = {}
    for source in (query_string, body_text):
        for name, value in split_form(source):
            previous = params.get(name)
            if previous is not None and previous != value:
                raise ApiError(
                    INVALID_PARAMETER_VALUE,
                    f"The parameter {name[:80]} was given more than once with different values.",
                )
            params[name] = value
    return params


# ---------------------------------------------------------------------------------------------
# Request parsing: flat params -> the dict a boto3 user passed in
# ---------------------------------------------------------------------------------------------

#: More dotted segments than any EC2 input needs (the deepest, RequestSpotFleet, needs ~24). Deeper
#: keys cannot name a member and are dropped before they cost memory.
_MAX_SEGMENTS = 64
_MAX_LIST_INDEX = 1000
_INDEX_RE = re.compile(r"[1-9][0-9]{0,3}")
_INT_RE = re.compile(r"[+-]?[0-9]{1,20}")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
_FLOAT_WORDS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_INT_RANGES = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_B64_WHITESPACE = str.maketrans("", "", " \t\r\n")

#: Key under which a tree node keeps the value sent for the node's own name (a node can be both a
#: value and a prefix, e.g. ``Placement=x&Placement.Tenancy=y``). Not a str, so never a segment.
_LEAF: Any = None
_ABSENT: Any = object()

_Node = str | dict


@dataclass(slots=True)
class _InStruct:
    by_wire: dict[str, tuple[str, Any]]  # wire name -> (member name, plan)
    required: tuple[tuple[str, str], ...]  # (member name, wire name)


@dataclass(slots=True)
class _InList:
    member: Any


@dataclass(slots=True)
class _InMap:
    flattened: bool
    key_wire: str
    value_wire: str
    key: Any
    value: Any


# Plans are compiled under one lock (recursive shapes are registered before they are complete) and
# published in the *_ready dicts only once complete, so other threads never see a half-built plan.
_plan_lock = threading.RLock()
_in_plans: dict[str, Any] = {}
_in_ready: dict[str, Any] = {}


def _top_input_plan(shape: Shape) -> Any:
    plan = _in_ready.get(shape.name)
    if plan is None:
        with _plan_lock:
            plan = _input_plan(shape)
            _in_ready[shape.name] = plan
    return plan


def _wire_name(member: Shape, default: str) -> str:
    """The input name of a member, per botocore's EC2Serializer._get_serialized_name."""
    serialization = member.serialization
    query_name = serialization.get("queryName")
    if query_name:
        return query_name
    location_name = serialization.get("name")
    if location_name:
        return location_name[0].upper() + location_name[1:]
    return default


def _input_plan(shape: Shape) -> Any:
    """Compile (once per shape) what parsing needs: wire-name lookups instead of model walks."""
    type_name = shape.type_name
    if type_name not in ("structure", "list", "map"):
        return type_name
    plan = _in_plans.get(shape.name)
    if plan is not None:
        return plan
    if isinstance(shape, StructureShape):
        struct = _InStruct({}, ())
        _in_plans[shape.name] = struct  # before recursing: tolerates recursive shapes
        required = set(shape.required_members)
        req: list[tuple[str, str]] = []
        for name, member in shape.members.items():
            wire = _wire_name(member, name)
            struct.by_wire[wire] = (name, _input_plan(member))
            if name in required:
                req.append((name, wire))
        struct.required = tuple(req)
        return struct
    if isinstance(shape, ListShape):
        lst = _InList(None)
        _in_plans[shape.name] = lst
        lst.member = _input_plan(shape.member)
        return lst
    assert isinstance(shape, MapShape)
    mapping = _InMap(
        bool(shape.serialization.get("flattened")),
        _wire_name(shape.key, "key"),
        _wire_name(shape.value, "value"),
        None,
        None,
    )
    _in_plans[shape.name] = mapping
    mapping.key = _input_plan(shape.key)
    mapping.value = _input_plan(shape.value)
    return mapping


def _build_tree(params: Mapping[str, str]) -> dict:
    """Turn ``{"Filter.1.Name": "x"}`` into ``{"Filter": {"1": {"Name": "x"}}}`` (leaves are str)."""
    root: dict = {}
    for key, value in params.items():
        if type(value) is not str:  # tolerate typed values (e.g. botocore's serialised dict) from tests/tools
            value = str(value).lower() if isinstance(value, bool) else str(value)
        if not isinstance(key, str):
            continue
        segments = key.split(".", _MAX_SEGMENTS)
        if len(segments) > _MAX_SEGMENTS:
            continue
        node = root
        for segment in segments[:-1]:
            child = node.get(segment)
            if child is None:
                child = node[segment] = {}
            elif isinstance(child, str):
                child = node[segment] = {_LEAF: child}
            node = child
        last = segments[-1]
        existing = node.get(last)
        if isinstance(existing, dict):
            existing[_LEAF] = value
        else:
            node[last] = value
    return root


def _parse_integer(text: str, wire: str, type_name: str) -> int:
    if _INT_RE.fullmatch(text) is None:
        raise invalid_parameter_value(wire, text, "Expected an integer.")
    number = int(text)
    low, high = _INT_RANGES[type_name]
    if not low <= number <= high:
        raise invalid_parameter_value(wire, text, f"Expected an integer from {low} to {high}.")
    return number


def _parse_boolean(text: str, wire: str) -> bool:
    lowered = text.lower() if len(text) <= 5 else ""
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise invalid_parameter_value(wire, text, "Expected true or false.")


def _parse_float(text: str, wire: str) -> float:
    word = _FLOAT_WORDS.get(text)
    if word is not None:
        return word
    if len(text) > 64 or _FLOAT_RE.fullmatch(text) is None:
        raise invalid_parameter_value(wire, text, "Expected a number.")
    return float(text)


def _parse_timestamp(text: str, wire: str) -> datetime:
    try:
        if len(text) > 40 or not text.isascii():
            raise ValueError(text)
        parsed = datetime.fromisoformat(text)
    except (ValueError, TypeError, OverflowError):
        raise invalid_parameter_value(
            wire, text, "Expected an ISO 8601 timestamp such as 2016-11-15T12:00:00Z."
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise invalid_parameter_value(wire, text, "The timestamp is out of range.") from None


def _parse_blob(text: str, wire: str) -> bytes:
    try:
        return base64.b64decode(text.translate(_B64_WHITESPACE), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_parameter_value(wire, text, "Expected base64-encoded data.") from None


def _parse_scalar(type_name: str, text: str, wire: str) -> Any:
    if type_name == "string":
        return text
    if type_name in ("integer", "long"):
        return _parse_integer(text, wire, type_name)
    if type_name == "boolean":
        return _parse_boolean(text, wire)
    if type_name == "timestamp":
        return _parse_timestamp(text, wire)
    if type_name == "blob":
        return _parse_blob(text, wire)
    if type_name in ("float", "double"):
        return _parse_float(text, wire)
    return text  # 'character' and anything newer: the string as sent


def _list_index(segment: str, wire: str) -> int:
    if _INDEX_RE.fullmatch(segment) is None or int(segment) > _MAX_LIST_INDEX:
        raise invalid_parameter_value(
            f"{wire}.{segment}", segment, f"List indexes must be integers from 1 to {_MAX_LIST_INDEX}."
        )
    return int(segment)


def _indexed_children(node: _Node, wire: str) -> list[tuple[int, str, _Node]]:
    """The ``.N`` children of a list (or map) node, in index order; a bare ``''`` means empty."""
    if isinstance(node, str):
        if node == "":
            return []
        raise invalid_parameter_value(wire, node, f"Expected indexed parameters such as {wire}.1.")
    children = []
    for segment, child in node.items():
        if segment is _LEAF:
            continue  # "Name=" next to "Name.1=…": the query protocol's empty-list marker; ignore
        children.append((_list_index(segment, wire), segment, child))
    children.sort(key=lambda item: item[0])
    return children


def _parse_node(plan: Any, node: _Node, wire: str) -> Any:
    if isinstance(plan, str):
        text = node if isinstance(node, str) else node.get(_LEAF)
        if text is None:
            return _ABSENT
        return _parse_scalar(plan, text, wire)
    if isinstance(plan, _InStruct):
        if isinstance(node, str):
            return _ABSENT  # a bare value where a structure belongs names nothing: ignored
        return _parse_struct(plan, node, wire + ".")
    if isinstance(plan, _InList):
        items = []
        for _, segment, child in _indexed_children(node, wire):
            value = _parse_node(plan.member, child, f"{wire}.{segment}")
            if value is not _ABSENT:
                items.append(value)
        if not items and not isinstance(node, str):
            return _ABSENT  # elements were sent but none names anything: as if nothing was sent
        return items
    return _parse_map(plan, node, wire)


def _parse_map(plan: _InMap, node: _Node, wire: str) -> Any:
    if not plan.flattened:
        if isinstance(node, str):
            return _ABSENT
        entries = node.get("entry")
        if entries is None:
            return _ABSENT
        node = entries
        wire = f"{wire}.entry"
    result = {}
    for _, segment, child in _indexed_children(node, wire):
        if isinstance(child, str):
            continue
        entry_wire = f"{wire}.{segment}"
        key_node = child.get(plan.key_wire)
        value_node = child.get(plan.value_wire)
        if key_node is None:
            raise missing_parameter(f"{entry_wire}.{plan.key_wire}")
        key = _parse_node(plan.key, key_node, f"{entry_wire}.{plan.key_wire}")
        if key is _ABSENT:
            raise missing_parameter(f"{entry_wire}.{plan.key_wire}")
        value = _ABSENT
        if value_node is not None:
            value = _parse_node(plan.value, value_node, f"{entry_wire}.{plan.value_wire}")
        if value is not _ABSENT:
            result[key] = value
    return result


def _parse_struct(plan: _InStruct, node: dict, prefix: str) -> dict:
    result = {}
    by_wire = plan.by_wire
    for segment, child in node.items():
        if segment is _LEAF:
            continue
        entry = by_wire.get(segment)
        if entry is None:
            continue  # unknown parameter: EC2 ignores those
        name, member_plan = entry
        value = _parse_node(member_plan, child, prefix + segment)
        if value is not _ABSENT:
            result[name] = value
    for name, wire in plan.required:
        if name not in result:
            raise missing_parameter(prefix + wire)
    return result


def parse_request(op: OperationModel, params: Mapping[str, str]) -> dict[str, Any]:
    """Turn flat query parameters into the input dict a boto3 user would have passed.

    The exact inverse of botocore's EC2 query serializer: ``{"InstanceId.1": "i-1"}`` for
    TerminateInstances becomes ``{"InstanceIds": ["i-1"]}``; integers, booleans, timestamps
    (timezone-aware UTC ``datetime``), floats and blobs (``bytes``) are typed by the model. Strings
    stay strings, including RunInstances' ``UserData``, which boto3 base64-encodes itself.
    Raises :class:`ApiError` (``MissingParameter``, ``InvalidParameterValue``) and nothing else.
    """
    shape = op.input_shape
    if shape is None:
        return {}
    plan = _top_input_plan(shape)
    try:
        return _parse_struct(plan, _build_tree(params), "")
    except RecursionError:  # impossible with EC2's (acyclic, shallow) input shapes; kept as a guard
        raise ApiError(INVALID_PARAMETER_VALUE, "The request parameters are nested too deeply.") from None
