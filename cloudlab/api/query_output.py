"""EC2 Query responses out: an action's result (botocore member names) serialised as EC2's XML by the
operation's output shape, and EC2's error envelope.

Each shape is compiled once into a writer (pre-built ``<tag>`` strings) and cached by shape name. The
rules (``locationName``, ``<item>`` wrapping, ``None`` skipped, unknown keys refused) are written down
in ``cloudlab.api.protocol``, which re-exports :func:`serialize_error`, :func:`xml_escape` and
:func:`format_timestamp` (and :func:`cloudlab.api.query_templates.serialize_response`, whose fast path falls
back on these writers).
"""

from __future__ import annotations

import base64
import math
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from botocore.model import ListShape, MapShape, Shape, StructureShape

from cloudlab.api.errors import ResponseShapeError

#: Writers are compiled under one lock (recursive shapes are registered before they are complete) and
#: published in ``_out_ready`` only once complete, so other threads never see a half-built writer.
_plan_lock = threading.RLock()

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


_FAST_LIMIT = 2**34  # Unix seconds below this (the year 2514) take the fast path
_SECONDS: dict[int, str] = {}  # a whole Unix second -> "YYYY-MM-DDTHH:MM:SS", each formatted once
_SECONDS_KEPT = 4096


def unix_second(value: float) -> tuple[int, int]:
    """Whole Unix second and microseconds of ``value`` >= 0, as ``datetime.fromtimestamp`` splits them
    (microseconds rounded half to even, a carry into the next second)."""
    fraction, whole = math.modf(value)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    return int(whole), micro


def _unix_timestamp(value: float) -> str:
    """``format_timestamp`` of Unix seconds, exactly as through ``datetime.fromtimestamp``, with the date
    and time of day formatted once per second: a listing of 1,000 keys has 1,000 timestamps, mostly of a
    few seconds, and building a datetime for each was a fifth of its time."""
    second, micro = unix_second(value)
    text = _SECONDS.get(second)
    if text is None:
        d = datetime.fromtimestamp(second, UTC)
        text = f"{d.year:04d}-{d.month:02d}-{d.day:02d}T{d.hour:02d}:{d.minute:02d}:{d.second:02d}"
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        _SECONDS[second] = text
    return f"{text}.{micro // 1000:03d}Z"


def format_timestamp(value: datetime | date | str | int | float) -> str:
    """EC2's timestamp form: ISO 8601 in UTC with milliseconds, ``2016-11-15T12:00:00.000Z``.

    Naive datetimes are taken as UTC; numbers are Unix seconds; strings must be ISO 8601 (as stored
    in a database, say) and are normalised, so the client never receives something it cannot parse.
    """
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 0 <= value < _FAST_LIMIT:
            return _unix_timestamp(value)
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
