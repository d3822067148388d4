"""The EC2 Query protocol, driven entirely by botocore's EC2 service model.

Requests arrive as flat ``name=value`` pairs (``InstanceId.1=i-…``, ``Filter.1.Value.2=…``,
``Placement.AvailabilityZone=…``); responses leave as EC2's XML. Nothing here knows about any
particular action: the operation's input and output shapes say everything. That keeps every one of
EC2's ~800 actions parseable and serialisable the moment a handler exists for it, and keeps the
wire dialect exactly the one boto3/awscli speak (the tests round-trip through botocore itself).

Wire naming rules (from botocore's ``EC2Serializer`` / ``EC2QueryParser``, which define the dialect):

* Input: a structure member is sent as its ``queryName`` if it has one, else its ``locationName``
  with the first letter upper-cased, else its member name. Lists are always "flattened" as
  ``Name.N`` (N from 1); the list member's own ``locationName`` plays no part on input, so
  ``InstanceIds`` travels as ``InstanceId.1`` (the *member's* locationName) and ``Filters`` as
  ``Filter.1.Name``/``Filter.1.Value.1``. botocore sends nothing at all for an empty list.
* Output: members are written under their ``locationName`` as is (``instancesSet``,
  ``reservationSet``), else their member name; list elements are wrapped in
  ``<name><item>…</item></name>`` using the list member's ``locationName`` (``item`` by default).

Choices documented here (the callers rely on them):

* :func:`parse_request` ignores parameters it does not know (as EC2 does), including ``Action``,
  ``Version`` and the signature parameters; every client mistake is an :class:`ApiError`, never
  another exception, whatever the input.
* :func:`parse_body` rejects a parameter given twice with *different* values (body and query
  string together): the signature covers the raw bytes, and an ambiguous request must not be
  resolved differently by different layers. Identical repeats are accepted.
* :func:`serialize_response` raises :class:`ResponseShapeError` for output keys the shape does not
  have (a handler bug, best found early), skips members whose value is ``None`` and ignores a
  top-level ``ResponseMetadata`` key (so a parsed boto3 response can be fed back). Elements follow
  the output dict's order (botocore does not care about order).
* Values are typed, not validated against the model's enums or min/max: EC2 gives those errors
  per action with action-specific wording, so that is the handlers' job.

Speed: each shape is compiled once into a small plan (wire name -> member, pre-built ``<tag>``
strings), cached by shape name (valid because there is exactly one service model). Serialising a
1,000-instance DescribeInstances takes ~30 ms on the 2-core development machine, against ~300 ms
for botocore to parse the same document on the client side.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import unquote_to_bytes

from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape

from cloudlab.api.errors import (
    INVALID_PARAMETER_VALUE,
    MALFORMED_QUERY_STRING,
    ApiError,
    ResponseShapeError,
    invalid_parameter_value,
    missing_parameter,
)
from cloudlab.api.model import XML_NAMESPACE

__all__ = [
    "format_timestamp",
    "parse_body",
    "parse_request",
    "serialize_error",
    "serialize_response",
    "split_form",
    "xml_escape",
]

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


# ---------------------------------------------------------------------------------------------
# Response serialisation: output dict -> EC2 XML
# ---------------------------------------------------------------------------------------------

# Characters that need attention in XML text: markup, a bare CR (which XML parsers would turn into
# LF), and everything XML 1.0 forbids (C0 controls, lone surrogates, U+FFFE/U+FFFF), dropped.
_XML_ATTENTION = re.compile("[&<>\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_XML_REPLACEMENTS = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"}


def _xml_replacement(match: re.Match[str]) -> str:
    return _XML_REPLACEMENTS.get(match.group(), "")


def xml_escape(text: str) -> str:
    """Escape text for an XML element and strip characters that XML 1.0 cannot carry."""
    if _XML_ATTENTION.search(text) is None:
        return text
    return _XML_ATTENTION.sub(_xml_replacement, text)


_Writer = Callable[[Any, list[str], str], None]


def _shape_error(where: str, expected: str, value: Any) -> ResponseShapeError:
    return ResponseShapeError(f"{where}: expected {expected}, got {type(value).__name__} {value!r:.80}")


def _write_string(value: Any, out: list[str], where: str) -> None:
    if not isinstance(value, str):
        raise _shape_error(where, "str", value)
    out.append(xml_escape(value))


def _write_integer(value: Any, out: list[str], where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _shape_error(where, "int", value)
    out.append(str(int(value)))


def _write_boolean(value: Any, out: list[str], where: str) -> None:
    if not isinstance(value, bool):
        raise _shape_error(where, "bool", value)
    out.append("true" if value else "false")


def _write_float(value: Any, out: list[str], where: str) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _shape_error(where, "float", value)
    number = float(value)
    if math.isnan(number):
        out.append("NaN")
    elif math.isinf(number):
        out.append("Infinity" if number > 0 else "-Infinity")
    else:
        out.append(repr(number))


def format_timestamp(value: datetime | date | str | int | float) -> str:
    """EC2's timestamp form: ISO 8601 in UTC with milliseconds, ``2016-11-15T12:00:00.000Z``.

    Naive datetimes are taken as UTC; numbers are Unix seconds; strings must be ISO 8601 (as stored
    in a database, say) and are normalised, so the client never receives something it cannot parse.
    """
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, datetime):
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    elif isinstance(value, date):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    else:
        raise TypeError(type(value).__name__)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:"
        f"{value.second:02d}.{value.microsecond // 1000:03d}Z"
    )


def _write_timestamp(value: Any, out: list[str], where: str) -> None:
    try:
        out.append(format_timestamp(value))
    except (TypeError, ValueError, OverflowError, OSError):
        raise _shape_error(where, "datetime", value) from None


def _write_blob(value: Any, out: list[str], where: str) -> None:
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, bytes | bytearray | memoryview):
        raise _shape_error(where, "bytes", value)
    out.append(base64.b64encode(value).decode("ascii"))


_SCALAR_WRITERS: dict[str, _Writer] = {
    "string": _write_string,
    "character": _write_string,
    "integer": _write_integer,
    "long": _write_integer,
    "boolean": _write_boolean,
    "float": _write_float,
    "double": _write_float,
    "timestamp": _write_timestamp,
    "blob": _write_blob,
}

_out_writers: dict[str, _Writer] = {}
_out_ready: dict[str, _Writer] = {}


def _top_output_writer(shape: Shape) -> _Writer:
    writer = _out_ready.get(shape.name)
    if writer is None:
        with _plan_lock:
            writer = _output_writer(shape)
            _out_ready[shape.name] = writer
    return writer


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _output_writer(shape: Shape) -> _Writer:
    """Compile (once per shape) a function that appends a value's XML content to a list of parts.

    Per-shape closures with pre-built ``<tag>``/``</tag>`` strings keep serialisation to plain
    list appends: no model lookups, no ElementTree, no per-call dict building.
    """
    scalar = _SCALAR_WRITERS.get(shape.type_name)
    if scalar is not None:
        return scalar
    cached = _out_writers.get(shape.name)
    if cached is not None:
        return cached
    # A forwarding cell first, so recursive shapes compile (EC2's outputs have a few cycles).
    cell: list[_Writer] = []

    def forward(value: Any, out: list[str], where: str) -> None:
        cell[0](value, out, where)

    _out_writers[shape.name] = forward
    if isinstance(shape, StructureShape):
        writer = _structure_writer(shape)
    elif isinstance(shape, ListShape):
        writer = _list_writer(shape)
    elif isinstance(shape, MapShape):
        writer = _map_writer(shape)
    else:  # an unknown future type: write its text form
        writer = _write_string
    cell.append(writer)
    _out_writers[shape.name] = writer
    return writer


_INLINE_KINDS = {"string": 1, "boolean": 3, "integer": 4, "long": 4}


def _structure_writer(shape: StructureShape) -> _Writer:
    shape_name = shape.name
    # member name -> (open tag, close tag, writer, kind); kinds 1 (string), 3 (boolean) and
    # 4 (integer) are written inline, the common cases; 2 = flattened list (no wrapper element;
    # botocore supports it, EC2 uses none); 0 = call the writer.
    members: dict[str, tuple[str, str, _Writer, int]] = {}
    for name, member in shape.members.items():
        tag = member.serialization.get("name", name)
        kind = _INLINE_KINDS.get(member.type_name, 0)
        writer = _output_writer(member)
        if isinstance(member, ListShape) and member.serialization.get("flattened"):
            tag = member.member.serialization.get("name", tag)
            writer = _output_writer(member.member)
            kind = 2
        members[name] = (f"<{tag}>", f"</{tag}>", writer, kind)
    lookup = members.get
    search = _XML_ATTENTION.search

    def write_structure(value: Any, out: list[str], where: str) -> None:
        # Walks the keys given (not all members: an Instance has ~70, a typical one sets ~30), so
        # elements follow the output dict's order; botocore's parser does not care about order.
        if type(value) is not dict and not isinstance(value, Mapping):  # exact-type test first: cheaper
            raise _shape_error(where, f"a mapping for {shape_name}", value)
        append = out.append
        for name, member_value in value.items():
            if member_value is None:
                if name not in members:
                    raise _unknown_member(shape_name, name, members, where)
                continue
            entry = lookup(name)
            if entry is None:
                raise _unknown_member(shape_name, name, members, where)
            open_tag, close_tag, writer, kind = entry
            value_type = type(member_value)
            if kind == 1 and value_type is str:
                if search(member_value) is not None:
                    member_value = xml_escape(member_value)
                append(open_tag + member_value + close_tag)
            elif kind == 3 and value_type is bool:
                append(open_tag + ("true" if member_value else "false") + close_tag)
            elif kind == 4 and value_type is int:
                append(f"{open_tag}{member_value}{close_tag}")
            elif kind == 2:
                for item in member_value:
                    if item is not None:
                        append(open_tag)
                        writer(item, out, name)
                        append(close_tag)
            else:
                append(open_tag)
                writer(member_value, out, name)
                append(close_tag)

    return write_structure


def _unknown_member(shape_name: str, name: Any, members: Mapping[str, Any], where: str) -> ResponseShapeError:
    return ResponseShapeError(
        f"{shape_name} has no member {name!r} (in {where}); its members are: {', '.join(sorted(members))}"
    )


def _list_writer(shape: ListShape) -> _Writer:
    item_tag = shape.member.serialization.get("name") or "item"
    open_tag, close_tag = f"<{item_tag}>", f"</{item_tag}>"
    item_writer = _output_writer(shape.member)
    shape_name = shape.name

    def write_list(value: Any, out: list[str], where: str) -> None:
        if not _is_list(value):
            raise _shape_error(where, f"a list for {shape_name}", value)
        for item in value:
            if item is None:
                continue
            out.append(open_tag)
            item_writer(item, out, where)
            out.append(close_tag)

    return write_list


def _map_writer(shape: MapShape) -> _Writer:
    key_tag = shape.key.serialization.get("name") or "key"
    value_tag = shape.value.serialization.get("name") or "value"
    key_writer = _output_writer(shape.key)
    value_writer = _output_writer(shape.value)
    shape_name = shape.name

    def write_map(value: Any, out: list[str], where: str) -> None:
        if not isinstance(value, Mapping):
            raise _shape_error(where, f"a mapping for {shape_name}", value)
        for key, item in value.items():
            if item is None:
                continue
            out.append(f"<entry><{key_tag}>")
            key_writer(key, out, where)
            out.append(f"</{key_tag}><{value_tag}>")
            value_writer(item, out, where)
            out.append(f"</{value_tag}></entry>")

    return write_map


_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'


def serialize_response(op: OperationModel, output: Mapping[str, Any] | None, request_id: str) -> bytes:
    """Serialise an action's result (botocore member names, as boto3 returns them) as EC2's XML.

    Operations without an output shape answer ``<return>true</return>``, as EC2 does.
    Raises :class:`ResponseShapeError` if ``output`` does not fit the output shape.
    """
    name = op.name
    out = [
        f'{_XML_DECLARATION}<{name}Response xmlns="{XML_NAMESPACE}"><requestId>',
        xml_escape(request_id),
        "</requestId>",
    ]
    shape = op.output_shape
    body = output or {}
    if "ResponseMetadata" in body:
        body = {key: value for key, value in body.items() if key != "ResponseMetadata"}
    if shape is None:
        if body:
            raise ResponseShapeError(f"{name} has no output shape, but output was {sorted(body)}")
        out.append("<return>true</return>")
    else:
        _top_output_writer(shape)(body, out, name)
    out.append(f"</{name}Response>")
    return "".join(out).encode("utf-8")


MAX_ERROR_MESSAGE = 1024


def serialize_error(code: str, message: str, request_id: str) -> bytes:
    """EC2's error envelope, which botocore parses into ``Error.Code``/``Error.Message``.

    The message is capped: messages quote client input, and an error must never turn a huge
    parameter into a huge answer.
    """
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[: MAX_ERROR_MESSAGE - 3] + "..."
    return (
        f"{_XML_DECLARATION}<Response><Errors><Error><Code>{xml_escape(code)}</Code>"
        f"<Message>{xml_escape(message)}</Message></Error></Errors>"
        f"<RequestID>{xml_escape(request_id)}</RequestID></Response>"
    ).encode()
