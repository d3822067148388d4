"""EC2 ``Filters`` and ``MaxResults``/``NextToken``, applied generically to output dicts.

Each action names its filters as getters on the EC2-shaped items it returns, so a filter always
means what the client sees. Values match with EC2's wildcards (``*`` and ``?``), case-sensitively;
several values of one filter are ORed, several filters ANDed. Unknown filter names are refused
with ``InvalidParameterValue`` as EC2 does.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from cloudlab.api.errors import ApiError

Getter = Callable[[dict[str, Any]], Any]


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set)):
        return [str(v).lower() if isinstance(v, bool) else str(v) for v in value]
    return [str(value).lower() if isinstance(value, bool) else str(value)]


def _tag_keys(item: dict[str, Any]) -> list[str]:
    return [t["Key"] for t in item.get("Tags") or []]


def _tag_values(item: dict[str, Any]) -> list[str]:
    return [t.get("Value", "") for t in item.get("Tags") or []]


def apply_filters(
    items: Iterable[dict[str, Any]],
    filters: Sequence[Mapping[str, Any]] | None,
    getters: Mapping[str, Getter],
    action: str | None = None,
) -> list[dict[str, Any]]:
    """``items`` that pass every filter. With ``action``, the filters EC2 documents for it that
    ``getters`` lacks are answered too (:mod:`cloudlab.api.documented_filters`)."""
    items = list(items)
    if filters and action is not None:
        from cloudlab.api.documented_filters import derived_getter, documented

        tag_getters: dict[str, Getter] = {"tag-key": _tag_keys, "tag-value": _tag_values}
        derived = {n: tag_getters.get(n) or derived_getter(n) for n in documented(action)}
        getters = {**derived, **getters}
    for flt in filters or []:
        name = flt.get("Name")
        wanted = [str(v) for v in flt.get("Values") or []]
        if not name:
            raise ApiError("InvalidParameterValue", "a filter needs a Name")
        getter = getters.get(name)
        if getter is None and name.startswith("tag:"):
            key = name[4:]

            def getter(item: dict[str, Any], key: str = key) -> Any:
                return [t["Value"] for t in item.get("Tags") or [] if t.get("Key") == key]

        if getter is None:
            raise ApiError(
                "InvalidParameterValue", f"The filter '{name}' is invalid; valid filters: " + ", ".join(sorted(getters))
            )
        items = [
            item
            for item in items
            if any(fnmatch.fnmatchcase(have, want) for have in _values(getter(item)) for want in wanted)
        ]
    return items


def _start_of(next_token: str | None) -> int:
    if not next_token:
        return 0
    try:
        start = int(base64.urlsafe_b64decode(next_token.encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError("InvalidNextToken", "The specified NextToken is not valid") from None
    if start < 0:
        raise ApiError("InvalidNextToken", "The specified NextToken is not valid")
    return start


def _token(end: int) -> str:
    return base64.urlsafe_b64encode(str(end).encode()).decode()


def page_window(
    max_results: int | None, next_token: str | None, bounds: tuple[int, int] = (5, 1000)
) -> tuple[int, int | None]:
    """(offset, size) of the page ``MaxResults``/``NextToken`` ask for (size None: all the rest), checked as
    :func:`paginate` checks them, for a listing that reads only its page (SQL's ``LIMIT``/``OFFSET``)."""
    start = _start_of(next_token)
    if max_results is not None:
        low, high = bounds
        if not low <= max_results <= high:
            raise ApiError(
                "InvalidParameterValue",
                f"Value ( {max_results} ) for parameter maxResults is invalid. Expecting a value between {low} and"
                f" {high}.",
            )
    return start, max_results


def windowed_page(
    read: Callable[[int, int | None], list[Any]], max_results: int | None, next_token: str | None
) -> tuple[list[Any], str | None]:
    """The page :func:`paginate` would give of the whole listing, read as ``read(offset, limit)`` (one item more
    than the page, to know whether another follows; an empty page past the start checks the token's offset)."""
    start, size = page_window(max_results, next_token)
    items = read(start, None if size is None else size + 1)
    if not items and start > 0 and not read(start - 1, 1):
        raise ApiError("InvalidNextToken", "The specified NextToken is not valid")
    if size is None or len(items) <= size:
        return items, None
    return items[:size], _token(start + size)


def paginate(
    items: list[Any], max_results: int | None, next_token: str | None, bounds: tuple[int, int] = (5, 1000)
) -> tuple[list[Any], str | None]:
    """A page of ``items`` and the token for the next one (None on the last page)."""
    start, size = page_window(max_results, next_token, bounds)
    if start > len(items):
        raise ApiError("InvalidNextToken", "The specified NextToken is not valid")
    if size is None:
        return items[start:], None
    end = start + size
    return items[start:end], _token(end) if end < len(items) else None
