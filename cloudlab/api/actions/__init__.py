"""EC2 actions: each turns a parsed request (botocore member names) into a domain call and an
EC2-shaped answer. No XML here and no protocol handling: parsing, signatures, serialisation and
errors are generic (``protocol``/``server``); state and rules live in the cloud controller.

Each module of this package registers its actions with :func:`action`; every module here is
imported when the package is, so adding a file is all it takes to add actions.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloudlab.clc.cloud import CloudController
from cloudlab.clc.users import User


@dataclass
class Context:
    """What an action knows about its request."""

    clc: CloudController
    user: User
    request_id: str
    host: str


Action = Callable[[Context, dict[str, Any]], dict[str, Any] | None]
ACTIONS: dict[str, Action] = {}


def action(name: str) -> Callable[[Action], Action]:
    def register(fn: Action) -> Action:
        if name in ACTIONS:
            raise RuntimeError(f"action {name} is registered twice")
        ACTIONS[name] = fn
        return fn

    return register


def owner_ids(ctx: Context) -> dict[str, str]:
    """User name → the 12-digit account number EC2 shows as OwnerId."""
    return {u.name: u.user_id for u in ctx.clc.users.list()}


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
