"""Errors the core raises, carrying EC2 error codes.

The core (clc, cc, nc) must not import the API layer, yet API clients expect EC2's error codes.
So domain code raises :class:`CloudError` with an EC2 code, and the API layer translates it into
its protocol envelope without knowing any domain logic.
"""

from __future__ import annotations


class CloudError(Exception):
    """A domain error with an EC2 error code (e.g. ``InvalidInstanceID.NotFound``)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class ControllerUnavailable(CloudError):
    """A controller could not be reached (connection refused, timeout, process gone)."""

    def __init__(self, message: str) -> None:
        super().__init__("Unavailable", message, status=503)
