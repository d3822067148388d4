"""The filters EC2 documents for each Describe action, read from botocore's model, with getters
derived from their names for the ones an action does not define itself.

EC2 refuses a filter name it does not know, and clients (Terraform, Ansible, the console) send the
documented ones. An action lists getters for the filters whose meaning needs care; every other
documented filter is answered by walking the EC2-shaped item along the filter's name: each dotted
segment in kebab case names a member in camel case (``block-device-mapping.device-name`` →
``BlockDeviceMappings[].DeviceName``, a list member found by its plural), so a filter means what the
client sees. A filter on something this cloud does not model (``vpc-id``, ``placement-group-name``)
finds no value and so matches nothing, which is what EC2 answers for resources without it.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from cloudlab.api.model import operation_model

_NAME_RE = re.compile(r"<p> ?<code>([a-z][a-z0-9.\-]*)</code> - ")


@functools.cache
def documented(action: str) -> frozenset[str]:
    """The filter names the model's documentation gives for ``action``'s ``Filters`` (``tag:`` aside)."""
    shape = operation_model(action).input_shape
    member = shape.members.get("Filters") if shape is not None else None
    return frozenset(_NAME_RE.findall(member.documentation or "")) if member is not None else frozenset()


def _camel(segment: str) -> str:
    return "".join(word[:1].upper() + word[1:] for word in segment.split("-"))


def _step(value: Any, key: str) -> list[Any]:
    if isinstance(value, list):
        return [found for item in value for found in _step(item, key)]
    if not isinstance(value, dict):
        return []
    for name in (key, key + "s", key + "Set", key.replace("Id", "ID")):
        if name in value:
            found = value[name]
            return found if isinstance(found, list) else [found]
    return []


def derived_getter(name: str) -> Any:
    """A getter that walks an item along ``name``'s segments (see the module's docstring)."""
    keys = [_camel(segment) for segment in name.split(".")]

    def getter(item: dict[str, Any]) -> list[Any]:
        values: list[Any] = [item]
        for key in keys:
            values = [found for value in values for found in _step(value, key)]
        return [v for v in values if v is not None and not isinstance(v, dict | list)]

    return getter
