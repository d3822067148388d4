"""Region and availability-zone names, following EC2's patterns.

Some clients accept only AWS's region names (Apache Libcloud's EC2 driver refuses ``cloudlab-1``),
so a cloud may take any name of AWS's form (``cloudlab up --region us-east-1``). Its zones are then
named as EC2 names them: the region and a letter (``us-east-1a``, one per cluster), with EC2's zone
ids (``use1-az1``: the region's short form, ``-az`` and a number). A name of another form (the
default ``cloudlab-1``) keeps the same zone letters and the id ``cloudlab-1-az1``.
"""

from __future__ import annotations

import re

from cloudlab.errors import CloudError

DEFAULT_REGION = "cloudlab-1"
#: AWS's region names: a partition/country prefix, one or more words, a number (``ap-southeast-2``).
AWS_REGION_RE = re.compile(r"^[a-z]{2}(?:-(?:gov|iso[a-z]?))?-[a-z]+-[0-9]{1,2}$")
#: Any region name the cloud accepts (what fits in a SigV4 credential scope and a host name label).
REGION_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
_DIRECTIONS = {
    "east": "e",
    "west": "w",
    "north": "n",
    "south": "s",
    "central": "c",
    "northeast": "ne",
    "northwest": "nw",
    "southeast": "se",
    "southwest": "sw",
}
_ZONE_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def check_region(name: str) -> str:
    """``name`` if the cloud can use it as its region, else a one-line error saying what fits."""
    if not isinstance(name, str) or not 1 <= len(name) <= 50 or not REGION_RE.match(name):
        raise CloudError(
            "InvalidParameterValue",
            f"region {str(name)[:60]!r} must be lower-case letters, digits and '-' (such as us-east-1 or cloudlab-1)",
        )
    return name


def zone_name(region: str, index: int = 0) -> str:
    """The ``index``-th availability zone of ``region`` (0 → ``us-east-1a``)."""
    if not 0 <= index < len(_ZONE_LETTERS):
        raise CloudError("InvalidParameterValue", f"a region has at most {len(_ZONE_LETTERS)} zones")
    return f"{region}{_ZONE_LETTERS[index]}"


def region_short(region: str) -> str | None:
    """EC2's short form of an AWS-style region name (``us-east-1`` → ``use1``), or None."""
    if not AWS_REGION_RE.match(region):
        return None
    *words, number = region.split("-")
    prefix, *rest = words
    short = prefix
    for word in rest:
        if word == "gov":
            short += "g"
        elif word in _DIRECTIONS:
            short += _DIRECTIONS[word]
        else:
            short += word[0]
    return short + number


def zone_id(region: str, zone: str) -> str:
    """EC2's ZoneId of ``zone`` in ``region``: ``use1-az1`` for us-east-1a, ``cloudlab-1-az1`` otherwise."""
    letter = zone[len(region) :] if zone.startswith(region) else ""
    number = _ZONE_LETTERS.index(letter) + 1 if len(letter) == 1 and letter in _ZONE_LETTERS else 1
    short = region_short(region)
    return f"{short}-az{number}" if short else f"{region}-az{number}"
