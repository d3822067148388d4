"""Which cluster (availability zone) a request goes to when it names none: the cloud-level policy.

The two levels are pluggable the same way: a CC's :class:`~cloudlab.cc.scheduler.SchedulingPolicy` picks a
node, a :class:`ZonePolicy` here picks a zone, from a snapshot of each zone as the CLC last heard of it
(its CC's report: health and free room, powered-down nodes included, since they can be woken)::

    class Emptiest:
        name = "EMPTIEST"
        def choose(self, request, zones):
            fitting = [z for z in zones if z.available and z.fits(request)]
            return max(fitting, key=lambda z: z.vcpus_free).zone if fitting else None

Register it with :func:`register_zone_policy` or name it as ``module:Class`` in ``cloud.json``'s
``zone_policy``. A zone the request names (``Placement.AvailabilityZone``) or its subnet's zone always wins;
a zone that is unavailable (its CC does not answer, or has no node alive or powered down) is refused then
with EC2's ``InsufficientInstanceCapacity``, as AWS refuses a zone that cannot take a launch now, naming the
zones that can (AWS: "We currently do not have sufficient capacity in the Availability Zone you requested
(...). Our system will be working on provisioning additional capacity. You can currently get capacity by
not specifying an Availability Zone in your request or choosing us-east-1a, us-east-1b.").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cloudlab.errors import CloudError


@dataclass(frozen=True)
class ZoneRequest:
    """What a RunInstances asks for: ``count`` instances (at least ``min_count``) of one size."""

    vcpus: int
    memory_mb: int
    min_count: int
    count: int


@dataclass(frozen=True)
class ZoneView:
    """A zone as a zone policy sees it: its cluster, health and room (sums over its nodes that are alive
    or powered down), from the last report of its CC."""

    zone: str
    cluster: str
    available: bool
    vcpus_free: int
    memory_mb_free: int
    vcpus_total: int
    memory_mb_total: int
    nodes: int
    slots: int  # instances of the request's size that fit, node by node

    def fits(self, request: ZoneRequest) -> bool:
        return self.slots >= request.min_count


@runtime_checkable
class ZonePolicy(Protocol):
    """Choose a zone for ``request`` among ``zones`` (in the cloud's order), or None to take the first."""

    name: str

    def choose(self, request: ZoneRequest, zones: Sequence[ZoneView]) -> str | None: ...


class First:
    """The first available zone with room for the request (else the first available): one cluster fills
    before the next is used, as Eucalyptus' cloud controller did."""

    name = "FIRST"

    def choose(self, request: ZoneRequest, zones: Sequence[ZoneView]) -> str | None:
        available = [z for z in zones if z.available]
        fitting = next((z.zone for z in available if z.fits(request)), None)
        return fitting or (available[0].zone if available else None)


class RoundRobinZones:
    """The next available zone that fits after the last one chosen: requests spread over the zones."""

    name = "ROUNDROBIN"

    def __init__(self) -> None:
        self._last: str | None = None

    def choose(self, request: ZoneRequest, zones: Sequence[ZoneView]) -> str | None:
        names = [z.zone for z in zones]
        start = names.index(self._last) + 1 if self._last in names else 0
        ordered = [zones[(start + i) % len(zones)] for i in range(len(zones))]
        found = next((z for z in ordered if z.available and z.fits(request)), None)
        found = found or next((z for z in ordered if z.available), None)
        if found is not None:
            self._last = found.zone
        return found.zone if found else None


class MostFree:
    """The available zone with the most free vCPUs (ties: the first), to balance the clusters' load."""

    name = "MOSTFREE"

    def choose(self, request: ZoneRequest, zones: Sequence[ZoneView]) -> str | None:
        available = [z for z in zones if z.available]
        fitting = [z for z in available if z.fits(request)] or available
        return max(fitting, key=lambda z: z.vcpus_free).zone if fitting else None


_POLICIES: dict[str, type] = {"FIRST": First, "ROUNDROBIN": RoundRobinZones, "MOSTFREE": MostFree}


def register_zone_policy(cls: type) -> type:
    _POLICIES[cls.name.upper()] = cls
    return cls


def zone_policy_names() -> list[str]:
    return sorted(_POLICIES)


def load_zone_policy(spec: str) -> ZonePolicy:
    """A zone policy by registered name (``FIRST``) or import path (``package.module:Class``)."""
    if ":" in spec:
        module_name, _, class_name = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load zone policy {spec!r}: {exc}") from exc
    else:
        cls = _POLICIES.get(spec.upper())
        if cls is None:
            raise ValueError(f"unknown zone policy {spec!r}; choose one of {', '.join(zone_policy_names())}")
    policy = cls() if isinstance(cls, type) else None
    if not isinstance(policy, ZonePolicy):
        raise ValueError(f"{spec!r} is not a zone policy: it needs a name and choose(request, zones)")
    return policy


def slots(nodes: Sequence[Any], vcpus: int, memory_mb: int) -> int:
    """Instances of ``vcpus``/``memory_mb`` that fit on ``nodes`` (NodeSummary: alive or powered down)."""
    usable = [n for n in nodes if n.alive or n.power != "on"]
    return sum(min(n.vcpus_free // max(1, vcpus), n.memory_mb_free // max(1, memory_mb)) for n in usable)


def type_capacity(report: Any, vm_types: Sequence[Any]) -> list[tuple[Any, int, int]]:
    """(type, free, max) per VM type for one cluster's report, as Eucalyptus' ``verbose`` zones list them:
    how many more instances of the type fit now, and how many would fit on the empty cluster (its nodes
    that are alive or powered down, each counted on its own)."""
    nodes = [n for n in report.nodes if n.alive or n.power != "on"] if report is not None else []
    return [
        (
            t,
            slots(nodes, t.vcpus, t.memory_mb),
            sum(min(n.vcpus_total // max(1, t.vcpus), n.memory_mb_total // max(1, t.memory_mb)) for n in nodes),
        )
        for t in vm_types
    ]


class ZonePlacement:
    """The cloud's zone policy, with what it needs to know: the zones, their health and their last reports."""

    def __init__(
        self, policy: ZonePolicy, zones: Callable[[], list[dict[str, Any]]], health: Callable[[], dict[str, bool]],
        reports: Callable[[], dict[str, Any]],
    ) -> None:  # fmt: skip
        self.policy = policy
        self._zones = zones
        self._health = health
        self._reports = reports

    def views(self, request: ZoneRequest) -> list[ZoneView]:
        health, reports = self._health(), self._reports()
        views = []
        for z in self._zones():
            report = reports.get(z["cluster"])
            nodes = [n for n in report.nodes if n.alive or n.power != "on"] if report is not None else []
            views.append(
                ZoneView(
                    zone=z["zone"],
                    cluster=z["cluster"],
                    available=health.get(z["cluster"], True),
                    vcpus_free=sum(n.vcpus_free for n in nodes),
                    memory_mb_free=sum(n.memory_mb_free for n in nodes),
                    vcpus_total=sum(n.vcpus_total for n in nodes),
                    memory_mb_total=sum(n.memory_mb_total for n in nodes),
                    nodes=len(nodes),
                    slots=slots(nodes, request.vcpus, request.memory_mb) if report is not None else request.count,
                )
            )
        return views

    def choose(self, request: ZoneRequest, eligible: Callable[[str], bool]) -> str | None:
        """The zone for a request that names none (None: no zone is known to fit; the first is used)."""
        views = [v for v in self.views(request) if eligible(v.zone)]
        if not views:
            return None
        choice = self.policy.choose(request, views)
        if choice is not None and choice not in {v.zone for v in views}:
            raise CloudError("InternalError", f"zone policy {self.policy.name} chose {choice!r}, which is no zone")
        return choice

    def require_available(self, zone: str, cluster: str) -> None:
        """Refuse a launch into a zone whose cluster cannot take it now (InsufficientInstanceCapacity)."""
        health = self._health()
        if health.get(cluster, True):
            return
        others = [z["zone"] for z in self._zones() if z["zone"] != zone and health.get(z["cluster"], True)]
        hint = (
            f" You can currently get capacity by not specifying an Availability Zone in your request or choosing"
            f" {', '.join(others)}."
            if others
            else ""
        )
        raise CloudError(
            "InsufficientInstanceCapacity",
            f"We currently do not have sufficient capacity in the Availability Zone you requested ({zone}): its"
            f" cluster controller ({cluster}) does not answer, or has no node that is alive or powered down.{hint}",
        )
