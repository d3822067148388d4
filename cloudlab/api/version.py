"""The Query API's ``Version`` parameter, checked as EC2 checks it.

EC2 answers a version it does not have with ``NoSuchVersion`` ("The requested version (X) of
service AmazonEC2 does not exist"), whatever the action. cloudlab speaks the 2016-11-15 dialect
(botocore's model) and accepts the older dates that EC2's clients still send (euca2ools, old SDKs),
whose requests are a subset of it. A request without ``Version`` is accepted (EC2 would refuse it):
hand-written requests in notebooks and tests leave it out, and nothing is ambiguous without it.
"""

from __future__ import annotations

import re
from datetime import date

from cloudlab.api.errors import ApiError

FIRST_VERSION = date(2006, 6, 26)  # the EC2 API's earliest dated version still documented
LATEST_VERSION = date(2016, 11, 15)  # botocore's EC2 model: the dialect this cloud speaks
_VERSION_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def check_version(version: str | None) -> None:
    """Raise EC2's ``NoSuchVersion`` unless ``version`` is absent or a date EC2's API has had."""
    if version is None:
        return
    try:
        when = date.fromisoformat(version) if _VERSION_RE.fullmatch(version) else None
    except ValueError:
        when = None
    if when is None or not FIRST_VERSION <= when <= LATEST_VERSION:
        raise ApiError("NoSuchVersion", f"The requested version ({version[:40]}) of service AmazonEC2 does not exist")
