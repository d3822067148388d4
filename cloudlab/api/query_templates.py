"""The fast path of the EC2 Query XML writer: one generated function per output structure *and the members a
value carries*, which writes the whole structure as a single f-string.

A DescribeInstances of 10,000 instances is some 700,000 elements; walking each dict member by member (what
:mod:`cloudlab.api.query_output`'s writers do) costs ~0.5 µs an element. Items built by one view carry the
same members in the same order, so the writer keys a template on the tuple of a dict's keys, unpacks its
values in one step, checks every value's type in one expression, looks for characters that need escaping
in all its strings at once, and formats the structure in one f-string (nested structures and lists are
calls inside it, each returning its text).

Anything a template does not expect (a ``None`` member, a value of another type, a string that needs
escaping, a tuple for a list, a member the shape lacks) sends that value to the member-by-member writer,
which writes it or raises its :class:`~cloudlab.api.errors.ResponseShapeError`: output and errors are the
same either way, only the common case is faster. :func:`serialize_response` (re-exported by
``cloudlab.api.protocol``) writes a whole response with it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from botocore.model import ListShape, OperationModel, Shape, StructureShape

from cloudlab.api import query_output as slow
from cloudlab.api.errors import ResponseShapeError
from cloudlab.api.model import XML_NAMESPACE

_Fast = Callable[[Any, str], str]

#: Templates per structure shape are bounded: values come from the cloud's own views, so a handful of
#: member sets per shape is the norm; past this the member-by-member writer serves the rest.
MAX_TEMPLATES_PER_SHAPE = 64

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_lock = threading.RLock()
_fast: dict[str, _Fast] = {}


def _generic(shape: Shape) -> _Fast:
    with slow._plan_lock:
        writer = slow._output_writer(shape)

    def write(value: Any, where: str) -> str:
        out: list[str] = []
        writer(value, out, where)
        return "".join(out)

    return write


def _text(value: Any, where: str) -> str:
    if type(value) is str and slow._XML_ATTENTION.search(value) is None:
        return value
    out: list[str] = []
    slow._write_string(value, out, where)
    return out[0]


_stamps: dict[float, str] = {}


def _timestamp(value: Any, where: str) -> str:
    """A number of Unix seconds as EC2's timestamp, remembered: the instances of one reservation share their
    launch time, and every describe writes it again."""
    text = _stamps.get(value) if type(value) is float or type(value) is int else None
    if text is not None:
        return text
    out: list[str] = []
    slow._write_timestamp(value, out, where)
    if type(value) is float or type(value) is int:
        if len(_stamps) >= 16384:
            _stamps.clear()
        _stamps[value] = out[0]
    return out[0]


def _scalar(shape: Shape) -> _Fast:
    if shape.type_name in ("string", "character"):
        return _text
    if shape.type_name == "timestamp":
        return _timestamp
    return _generic(shape)


def fast_writer(shape: Shape) -> _Fast:
    """A function ``(value, where) -> XML text`` for values of ``shape`` (compiled once per shape)."""
    found = _fast.get(shape.name) if not slow._SCALAR_WRITERS.get(shape.type_name) else None
    if found is not None:
        return found
    with _lock:
        return _compile(shape)


def _compile(shape: Shape) -> _Fast:
    if shape.type_name in slow._SCALAR_WRITERS:
        return _scalar(shape)
    found = _fast.get(shape.name)
    if found is not None:
        return found
    cell: list[_Fast] = []

    def forward(value: Any, where: str) -> str:  # recursive shapes: the writer is complete before it is called
        return cell[0](value, where)

    _fast[shape.name] = forward
    if isinstance(shape, StructureShape):
        writer = _structure(shape)
    elif isinstance(shape, ListShape):
        writer = _list(shape)
    else:
        writer = _generic(shape)
    cell.append(writer)
    _fast[shape.name] = writer
    return writer


def _list(shape: ListShape) -> _Fast:
    item_tag = shape.member.serialization.get("name") or "item"
    open_tag, close_tag = f"<{item_tag}>", f"</{item_tag}>"
    item = _compile(shape.member)
    generic = _generic(shape)

    def write_list(value: Any, where: str) -> str:
        if type(value) is not list:
            return generic(value, where)
        return "".join([open_tag + item(v, where) + close_tag for v in value if v is not None])

    return write_list


# per member kind: the type test and how its text is made in the template (``{x}`` is the value's variable)
_KIND_TESTS = {"string": "type({x}) is str", "boolean": "type({x}) is bool", "integer": "type({x}) is int",
               "long": "type({x}) is int"}  # fmt: skip
_KIND_TEXTS = {"string": "{{{x}}}", "boolean": "{{'true' if {x} else 'false'}}", "integer": "{{{x}}}",
               "long": "{{{x}}}"}  # fmt: skip


def _structure(shape: StructureShape) -> _Fast:
    generic = _generic(shape)
    templates: dict[tuple[Any, ...], _Fast] = {}
    members = shape.members
    flattened = {n for n, m in members.items() if isinstance(m, ListShape) and m.serialization.get("flattened")}

    def template(keys: tuple[Any, ...]) -> _Fast:
        if any(k not in members or k in flattened for k in keys) or not keys:
            return generic
        lines, tests, strings, parts = [], [], [], []
        env: dict[str, Any] = {"generic": generic, "retry": retry}
        names = [f"x{i}" for i in range(len(keys))]
        for i, (key, x) in enumerate(zip(keys, names, strict=True)):
            member = members[key]
            tag = member.serialization.get("name", key)
            kind = member.type_name
            if kind in _KIND_TESTS:
                tests.append(_KIND_TESTS[kind].format(x=x))
                text = _KIND_TEXTS[kind].format(x=x)
                if kind == "string":
                    strings.append(x)
            elif isinstance(member, StructureShape):
                tests.append(f"type({x}) is dict")
                env[f"w{i}"] = _compile(member)
                text = f"{{w{i}({x}, {key!r})}}"
            elif isinstance(member, ListShape):
                tests.append(f"type({x}) is list")
                env[f"w{i}"] = _compile(member)
                text = f"{{w{i}({x}, {key!r})}}"
            else:  # timestamps, floats, blobs, maps: their own writers (which also refuse a None)
                tests.append(f"{x} is not None")
                env[f"w{i}"] = _compile(member)
                text = f"{{w{i}({x}, {key!r})}}"
            if not _NAME.match(tag) or not _NAME.match(key):  # only plain names go into generated source
                return generic
            parts.append(f"<{tag}>{text}</{tag}>")
        unpack = ", ".join(names) + ("," if len(names) == 1 else "")
        lines.append("def write(value, where):")
        lines.append(f"    {unpack} = value.values()")
        lines.append(f"    if not ({' and '.join(tests)}):")
        lines.append("        return retry(value, where)")
        if strings:
            env["search"] = slow._XML_ATTENTION.search
            joined = " + ".join(strings)
            lines.append(f"    if search({joined}) is not None:")
            lines.append("        return generic(value, where)")
        lines.append(f'    return f"{"".join(parts)}"')
        exec("\n".join(lines), env)  # noqa: S102 - source built above from the botocore model's names only
        return env["write"]

    def retry(value: dict[str, Any], where: str) -> str:
        """A value its template did not take: without its None members (which are not written) it may fit
        another; else the member-by-member writer has it."""
        pruned = {k: v for k, v in value.items() if v is not None}
        return write_structure(pruned, where) if len(pruned) < len(value) else generic(value, where)

    def write_structure(value: Any, where: str) -> str:
        if type(value) is not dict:
            return generic(value, where)
        keys = tuple(value)
        writer = templates.get(keys)
        if writer is None:
            with _lock:
                writer = templates.get(keys) or (template(keys) if len(templates) < MAX_TEMPLATES_PER_SHAPE else None)
                if writer is None:
                    return generic(value, where)
                templates[keys] = writer
        return writer(value, where)

    return write_structure


def serialize_response(op: OperationModel, output: Mapping[str, Any] | None, request_id: str) -> bytes:
    """Serialise an action's result (botocore member names, as boto3 returns them) as EC2's XML.

    Operations without an output shape answer ``<return>true</return>``, as EC2 does.
    Raises :class:`ResponseShapeError` if ``output`` does not fit the output shape.
    """
    name = op.name
    out = [
        f'{slow._XML_DECLARATION}<{name}Response xmlns="{XML_NAMESPACE}"><requestId>',
        slow.xml_escape(request_id),
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
        out.append(fast_writer(shape)(body, name))
    out.append(f"</{name}Response>")
    return "".join(out).encode("utf-8")
