"""EC2-looking identifiers (``i-0123456789abcdef0``), so that tools which check prefixes accept them."""

from __future__ import annotations

import re
import secrets

_ID_RE = re.compile(r"^(?P<prefix>[a-z]+)-(?P<hex>[0-9a-f]{8}|[0-9a-f]{17})$")


def new_id(prefix: str) -> str:
    """A new 17-hex-digit id, the long form EC2 has used since 2016."""
    return f"{prefix}-{secrets.token_hex(9)[:17]}"


def is_valid_id(value: str, prefix: str) -> bool:
    """True when ``value`` is a well-formed id with ``prefix`` (8 or 17 hex digits, as EC2 accepts)."""
    match = _ID_RE.match(value)
    return bool(match) and match.group("prefix") == prefix
