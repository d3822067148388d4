"""S3's restXml protocol, driven by the operation's shapes in botocore's model.

Input: members bound to the URI (``Bucket``, ``Key``), the query string, headers (``x-amz-meta-*``
as a prefixed map) and an XML payload are parsed by their shapes into the dict boto3 would have
been called with. Output: the dict a handler returns (boto3's parsed form) becomes headers, a status
code and an XML document (or a streaming body), by the output shape. Nothing here knows any
operation; the only per-operation data are the root element names of :data:`ROOT_ELEMENTS`.

Wire rules (botocore's ``RestXMLSerializer``/``RestXMLParser``): an element is named by the member's
``locationName`` or its name; a ``flattened`` list repeats that element, another list wraps items named
by the list member's ``locationName`` (``member`` by default); ``xmlAttribute`` members are attributes
(``xsi:type`` of a grantee); body timestamps are ISO 8601, header timestamps RFC 7231 dates.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from xml.etree.ElementTree import Element

from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape
from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

from cloudlab.api.protocol import format_timestamp, xml_escape
from cloudlab.api.query_output import unix_second
from cloudlab.api.s3.model import ROOT_ELEMENTS, XML_NAMESPACE
from cloudlab.walrus.errors import WalrusError

XSI = "http://www.w3.org/2001/XMLSchema-instance"
MAX_XML_BYTES = 1024 * 1024


def _malformed(detail: str = "") -> WalrusError:
    message = "The XML you provided was not well-formed or did not validate against our published schema"
    return WalrusError("MalformedXML", f"{message}{': ' + detail if detail else ''}")


def _invalid_argument(name: str, value: str) -> WalrusError:
    return WalrusError("InvalidArgument", f"Invalid value {value[:80]!r} for {name}", ArgumentName=name,
                       ArgumentValue=value[:80])  # fmt: skip


# -- scalars ---------------------------------------------------------------------------------------


def _parse_scalar(shape: Shape, text: str, where: str, in_header: bool) -> Any:
    kind = shape.type_name
    if kind == "string":
        if in_header and shape.serialization.get("jsonvalue"):
            try:
                return json.loads(base64.b64decode(text))
            except ValueError:
                raise _invalid_argument(where, text) from None
        return text
    if kind in ("integer", "long"):
        try:
            return int(text.strip())
        except ValueError:
            raise _invalid_argument(where, text) from None
    if kind == "boolean":
        if text.strip().lower() not in ("true", "false"):
            raise _invalid_argument(where, text)
        return text.strip().lower() == "true"
    if kind == "timestamp":
        return parse_time(text, where)
    if kind == "blob":
        return text.encode()
    if kind == "list" and in_header:
        return [part.strip() for part in text.split(",") if part.strip()]
    return text


def parse_time(text: str, where: str) -> datetime:
    """An HTTP date (RFC 7231) or ISO 8601 time, as aware UTC datetime; InvalidArgument otherwise."""
    text = text.strip()
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise _invalid_argument(where, text) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


_HTTP_DATES: dict[int, str] = {}  # a whole Unix second -> its HTTP date (Last-Modified of every GET and HEAD)


def http_date(value: float | datetime) -> str:
    """RFC 7231's date (whole seconds); a number's is formatted once per second (``format_datetime`` is a
    few microseconds of every GET's answer)."""
    if isinstance(value, datetime):
        return format_datetime(value.astimezone(UTC), usegmt=True)
    if not 0 <= value < 2**34:
        return format_datetime(datetime.fromtimestamp(value, UTC), usegmt=True)
    second, _ = unix_second(value)
    text = _HTTP_DATES.get(second)
    if text is None:
        text = format_datetime(datetime.fromtimestamp(second, UTC), usegmt=True)
        if len(_HTTP_DATES) >= 4096:
            _HTTP_DATES.clear()
        _HTTP_DATES[second] = text
    return text


# -- input -----------------------------------------------------------------------------------------


def parse_input(
    op: OperationModel,
    labels: Mapping[str, str],
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes | None,
) -> dict[str, Any]:
    """The operation's input as boto3 would have passed it (``headers`` keyed lower-case)."""
    shape = op.input_shape
    result: dict[str, Any] = {}
    if shape is None:
        return result
    payload = shape.serialization.get("payload")
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if location == "uri":
            if wire in labels:
                result[name] = labels[wire]
        elif location == "querystring":
            if member.type_name == "map":
                continue
            if wire in query:
                result[name] = _parse_scalar(member, query[wire], wire, False)
        elif location == "header":
            value = headers.get(wire.lower())
            if value is not None:
                result[name] = _parse_scalar(member, value, wire, True)
        elif location == "headers":
            prefix = wire.lower()
            found = {k[len(prefix) :]: v for k, v in headers.items() if k.startswith(prefix)}
            if found:
                result[name] = found
        elif name == payload and member.type_name == "structure" and body:
            result[name] = parse_xml(body, member)
    return result


def parse_xml(body: bytes, shape: StructureShape) -> dict[str, Any]:
    """An XML request document parsed by ``shape`` (namespaces ignored, as S3 does)."""
    if len(body) > MAX_XML_BYTES:
        raise _malformed("document too large")
    try:
        root = SafeET.fromstring(body)
    except (SafeET.ParseError, DefusedXmlException, ValueError) as exc:
        raise _malformed(str(exc)[:80]) from None
    return _parse_structure(root, shape)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse_node(element: Element, shape: Shape) -> Any:
    if isinstance(shape, StructureShape):
        return _parse_structure(element, shape)
    if isinstance(shape, ListShape):
        item = shape.member.serialization.get("name", "member")
        return [_parse_node(child, shape.member) for child in element if _local(child.tag) == item]
    if isinstance(shape, MapShape):
        return {}
    return _parse_scalar(shape, element.text or "", _local(element.tag), False)


def _parse_structure(element: Element, shape: StructureShape) -> dict[str, Any]:
    result: dict[str, Any] = {}
    children: dict[str, list[Element]] = {}
    for child in element:
        children.setdefault(_local(child.tag), []).append(child)
    for name, member in shape.members.items():
        wire = member.serialization.get("name", name)
        if member.serialization.get("xmlAttribute"):
            local = wire.split(":", 1)[-1]
            for attribute, value in element.attrib.items():
                if _local(attribute) == local:
                    result[name] = value
            continue
        if isinstance(member, ListShape) and member.serialization.get("flattened"):
            found = children.get(wire) or children.get(member.member.serialization.get("name", wire), [])
            if found:
                result[name] = [_parse_node(child, member.member) for child in found]
            continue
        if wire in children:
            result[name] = _parse_node(children[wire][-1], member)
    return result


# -- output ----------------------------------------------------------------------------------------


def _header_value(shape: Shape, value: Any) -> str:
    if shape.type_name == "timestamp":
        return http_date(value)
    if shape.type_name == "boolean":
        return "true" if value else "false"
    if shape.serialization.get("jsonvalue"):
        return base64.b64encode(json.dumps(value).encode()).decode()
    if shape.type_name == "list":
        return ",".join(str(v) for v in value)
    return str(value)


def serialize_output(op: OperationModel, output: Mapping[str, Any]) -> tuple[int, list[tuple[str, str]], Any]:
    """(status, headers, body) for a handler's output; body is bytes or the payload blob (a stream)."""
    shape = op.output_shape
    status = 200
    headers: list[tuple[str, str]] = []
    if shape is None:
        return status, headers, b""
    payload = shape.serialization.get("payload")
    body_members: dict[str, Any] = {}
    body: Any = b""
    for name, value in output.items():
        if value is None or name == "ResponseMetadata":
            continue
        member = shape.members.get(name)
        if member is None:
            raise ValueError(f"{op.name} has no output member {name!r}")
        location = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        if location == "header":
            headers.append((wire, _header_value(member, value)))
        elif location == "headers":
            headers += [(f"{wire}{k}", str(v)) for k, v in value.items()]
        elif location == "statusCode":
            status = int(value)
        elif name == payload:
            if member.type_name in ("blob", "string") and not isinstance(member, StructureShape):
                body = value
            else:
                root = member.serialization.get("name", member.name)
                body = document(root, member, value)
        else:
            body_members[name] = value
    if payload is None and (body_members or op.name in ROOT_ELEMENTS):
        root = ROOT_ELEMENTS.get(op.name, shape.name.removesuffix("Output"))
        if op.name == "GetBucketLocation":
            text = xml_escape(body_members.get("LocationConstraint") or "")
            body = f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{XML_NAMESPACE}">{text}</{root}>'.encode()
        else:
            body = document(root, shape, body_members)
    return status, headers, body


def document(root: str, shape: Shape, value: Mapping[str, Any]) -> bytes:
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n']
    _write_element(root, shape, value, out, top=True)
    return "".join(out).encode()


_PLANS: dict[str, tuple[tuple[str, str, Shape, str], ...]] = {}


def _plan(shape: StructureShape) -> tuple[tuple[str, str, Shape, str], ...]:
    """(member, wire name, shape, how) per member, compiled once per shape: "attr", "flat", "scalar" or
    "element"."""
    plan = _PLANS.get(shape.name)
    if plan is None:
        entries = []
        for name, member in shape.members.items():
            wire = member.serialization.get("name", name)
            how = "attr" if member.serialization.get("xmlAttribute") else "element"
            if isinstance(member, ListShape) and member.serialization.get("flattened"):
                how = "flat"
            elif how == "element" and not isinstance(member, StructureShape | ListShape):
                how = "scalar"  # written in place: a listing has ~6,000 of them per page
            entries.append((name, wire, member, how))
        plan = _PLANS[shape.name] = tuple(entries)
    return plan


def _write_element(tag: str, shape: Shape, value: Any, out: list[str], top: bool = False) -> None:
    if isinstance(shape, StructureShape):
        attributes = f' xmlns="{XML_NAMESPACE}"' if top else ""
        inner: list[str] = []
        for name, wire, member, how in _plan(shape):
            item = value.get(name)
            if item is None:
                continue
            if how == "scalar":
                inner.append(f"<{wire}>{xml_escape(item) if isinstance(item, str) else _text(member, item)}</{wire}>")
            elif how == "attr":
                if wire.startswith("xsi:"):
                    attributes += f' xmlns:xsi="{XSI}"'
                attributes += f' {wire}="{xml_escape(str(item))}"'
            elif how == "flat":
                element_shape = member.member  # type: ignore[attr-defined]
                for element in item:
                    _write_element(wire, element_shape, element, inner)
            else:
                _write_element(wire, member, item, inner)
        out.append(f"<{tag}{attributes}>")
        out += inner
        out.append(f"</{tag}>")
    elif isinstance(shape, ListShape):
        item_tag = shape.member.serialization.get("name", "member")
        out.append(f"<{tag}>")
        for element in value:
            _write_element(item_tag, shape.member, element, out)
        out.append(f"</{tag}>")
    else:
        out.append(f"<{tag}>{_text(shape, value)}</{tag}>")


def _text(shape: Shape, value: Any) -> str:
    if isinstance(value, str):
        return xml_escape(value)
    kind = shape.type_name
    if kind == "timestamp":
        return format_timestamp(value)
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "blob":
        return base64.b64encode(value).decode()
    return str(value)


def error_document(code: str, message: str, request_id: str, extra: Mapping[str, str] | None = None) -> bytes:
    """S3's error envelope: ``<Error><Code/><Message/>...<RequestId/><HostId/></Error>``."""
    fields = "".join(f"<{k}>{xml_escape(str(v))}</{k}>" for k, v in (extra or {}).items() if k.isidentifier())
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{xml_escape(code)}</Code>'
        f"<Message>{xml_escape(message)}</Message>{fields}<RequestId>{request_id}</RequestId>"
        f"<HostId>{request_id}</HostId></Error>"
    ).encode()
