"""Scheduling policies: which node gets the next instance.

This is the interface a student implements. A policy sees a snapshot of the cluster's live nodes
(with what is already promised to earlier instances of the same request subtracted) and names one
node that fits, or None. The cluster controller calls it once per instance, in order, so a policy
never has to track reservations itself::

    class MostFree:
        name = "MOSTFREE"
        def choose(self, request, nodes):
            fitting = [n for n in nodes if n.fits(request)]
            return max(fitting, key=lambda n: n.vcpus_free).name if fitting else None

Register it with :func:`register_policy` or name it as ``module:Class`` in ``--scheduler``.

A node that the cluster powered down (POWERSAVE) is in the snapshot too, with ``powered_on`` False and
the room it had when it went down: a policy that chooses it gets it woken before its instances start
(the wake costs the node's boot time, so POWERSAVE chooses one only when no node that is on fits).
A policy whose class says ``powers_down = True`` also has its cluster power down nodes idle past the
cluster's threshold (``--powersave-idle-s``).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class InstanceRequest:
    """One instance to place."""

    instance_id: str
    vcpus: int
    memory_mb: int


@dataclass(frozen=True)
class NodeView:
    """A node as a policy sees it: free capacity already net of earlier placements."""

    name: str
    vcpus_total: int
    memory_mb_total: int
    vcpus_free: int
    memory_mb_free: int
    instances: int
    powered_on: bool = True  # False: powered down (or still waking) by POWERSAVE; choosing it wakes it

    def fits(self, request: InstanceRequest) -> bool:
        return request.vcpus <= self.vcpus_free and request.memory_mb <= self.memory_mb_free


@runtime_checkable
class SchedulingPolicy(Protocol):
    """Choose a node for ``request`` among ``nodes`` (sorted by name), or return None if none fits."""

    name: str

    def choose(self, request: InstanceRequest, nodes: Sequence[NodeView]) -> str | None: ...


class Greedy:
    """Eucalyptus' GREEDY: the first node that fits, so instances pack onto as few nodes as possible."""

    name = "GREEDY"

    def choose(self, request: InstanceRequest, nodes: Sequence[NodeView]) -> str | None:
        return next((node.name for node in nodes if node.fits(request)), None)


class RoundRobin:
    """Eucalyptus' ROUNDROBIN: the next node after the last one chosen that fits, to spread load."""

    name = "ROUNDROBIN"

    def __init__(self) -> None:
        self._last: str | None = None

    def choose(self, request: InstanceRequest, nodes: Sequence[NodeView]) -> str | None:
        if not nodes:
            return None
        names = [node.name for node in nodes]
        start = 0
        if self._last is not None:
            start = next((i for i, name in enumerate(names) if name > self._last), 0)
        for offset in range(len(nodes)):
            node = nodes[(start + offset) % len(nodes)]
            if node.fits(request):
                self._last = node.name
                return node.name
        return None


class PowerSave:
    """Eucalyptus' POWERSAVE: pack as GREEDY does onto the nodes that are on, wake a powered-down node only
    when none of them fits; the cluster powers down the nodes that stay idle past its threshold."""

    name = "POWERSAVE"
    powers_down = True

    def choose(self, request: InstanceRequest, nodes: Sequence[NodeView]) -> str | None:
        on = next((node.name for node in nodes if node.powered_on and node.fits(request)), None)
        return on or next((node.name for node in nodes if not node.powered_on and node.fits(request)), None)


_POLICIES: dict[str, type] = {"GREEDY": Greedy, "ROUNDROBIN": RoundRobin, "POWERSAVE": PowerSave}


def register_policy(cls: type) -> type:
    """Make a policy class selectable by its ``name`` (usable as a decorator)."""
    _POLICIES[cls.name.upper()] = cls
    return cls


def policy_names() -> list[str]:
    return sorted(_POLICIES)


def load_policy(spec: str) -> SchedulingPolicy:
    """A policy by registered name (``GREEDY``) or by import path (``package.module:Class``)."""
    if ":" in spec:
        module_name, _, class_name = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load scheduling policy {spec!r}: {exc}") from exc
    else:
        cls = _POLICIES.get(spec.upper())
        if cls is None:
            raise ValueError(
                f"unknown scheduling policy {spec!r}; choose one of {', '.join(policy_names())} or give module:Class"
            )
    if not isinstance(cls, type):
        raise ValueError(f"{spec!r} is not a scheduling policy class")
    try:
        policy = cls()
    except TypeError as exc:
        raise ValueError(f"cannot create scheduling policy {spec!r} without arguments: {exc}") from exc
    if not isinstance(policy, SchedulingPolicy):
        raise ValueError(f"{spec!r} is not a scheduling policy: it needs a name and choose(request, nodes)")
    return policy


def place(policy: SchedulingPolicy, requests: Sequence[InstanceRequest], nodes: Sequence[NodeView]) -> dict[str, str]:
    """Place ``requests`` in order; stops at the first that fits nowhere. Returns instance → node.

    Each placement is subtracted from the chosen node's view before the next call, and a policy that
    names a node which does not exist or does not fit is refused with ValueError: a student's bug
    must not overcommit a node.
    """
    views = {node.name: node for node in sorted(nodes, key=lambda n: n.name)}
    placements: dict[str, str] = {}
    for request in requests:
        choice = policy.choose(request, list(views.values()))
        if choice is None:
            break
        node = views.get(choice)
        if node is None or not node.fits(request):
            raise ValueError(
                f"policy {policy.name} chose {choice!r}, which does not exist or does not fit "
                f"{request.instance_id} ({request.vcpus} vCPU, {request.memory_mb} MiB)"
            )
        views[choice] = dataclasses.replace(
            node,
            vcpus_free=node.vcpus_free - request.vcpus,
            memory_mb_free=node.memory_mb_free - request.memory_mb,
            instances=node.instances + 1,
        )
        placements[request.instance_id] = choice
    return placements
