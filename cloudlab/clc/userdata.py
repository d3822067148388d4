"""RunInstances' ``UserData``: base64 text of at most 16 KB of raw data, as EC2 has it.

EC2 documents the limit as "16 KB, in raw form, before it is base64-encoded", and refuses text that
is not base64 (``InvalidUserData.Malformed``). Without the check one request of 40 instances with
933 KB each grew the database by 38 MB: user data is stored once per instance.
"""

from __future__ import annotations

import base64
import binascii

from cloudlab.errors import CloudError

MAX_USER_DATA_BYTES = 16 * 1024
_WHITESPACE = str.maketrans("", "", " \t\r\n")


def check_user_data(user_data: str | None) -> str | None:
    """The user data as given (base64 text), once it decodes and fits; EC2's errors otherwise."""
    if not user_data:
        return None
    compact = user_data.translate(_WHITESPACE)
    if len(compact) > 4 * ((MAX_USER_DATA_BYTES + 2) // 3):  # cannot fit: refuse before decoding it
        raise _too_large(len(compact) * 3 // 4)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise CloudError("InvalidUserData.Malformed", "Invalid BASE64 encoding of user data.") from None
    if len(raw) > MAX_USER_DATA_BYTES:
        raise _too_large(len(raw))
    return user_data


def _too_large(size: int) -> CloudError:
    return CloudError(
        "InvalidParameterValue", f"User data is limited to {MAX_USER_DATA_BYTES} bytes (got about {size} bytes)"
    )
