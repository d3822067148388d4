"""The clusters the cloud controller knows: one per availability zone, each reached through a channel.

The CLC never imports the CC: it holds a :class:`~cloudlab.rpc.Channel` per cluster (in-process or
HTTP, both signed) and records each cluster in its database, so a restarted cloud knows which zones
its instances live in even before their cluster controllers answer.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from cloudlab.clc.store import Store
from cloudlab.errors import CloudError
from cloudlab.rpc import Channel


@dataclass
class ClusterLink:
    """How the CLC reaches one cluster, and what it knows of it."""

    name: str
    zone: str
    network: str
    channel: Channel
    subnet: str | None = None  # the private range its instances' ports come from (None: no network)
    vpc_network: bool = False  # its network plumbs VPC subnets (else Eucalyptus' managed mode)


class Clusters:
    """The cloud's clusters by name, in the order they were added."""

    def __init__(self, store: Store, region: str) -> None:
        self.store = store
        self.region = region
        self._links: dict[str, ClusterLink] = {}
        self._lock = threading.Lock()

    def add(
        self,
        name: str,
        zone: str,
        channel: Channel,
        *,
        network: str = "none",
        policy: str = "GREEDY",
        subnet: str | None = None,
        vpc_network: bool = False,
    ) -> ClusterLink:
        """Add (or re-add, after a restart) a cluster; one with a network gives its instances ports in ``subnet``
        (managed mode) or plumbs their VPC subnets (``vpc_network``)."""
        if network != "none" and subnet is None:
            raise ValueError(f"cluster {name} has network {network} but no subnet")
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO clusters (name, zone, network, policy, created) VALUES (?,?,?,?,?)"
                " ON CONFLICT(name) DO UPDATE SET zone=excluded.zone, network=excluded.network,"
                " policy=excluded.policy",
                (name, zone, network, policy, time.time()),
            )
        link = ClusterLink(name, zone, network, channel, subnet if network != "none" else None, vpc_network)
        with self._lock:
            self._links[name] = link
        return link

    def get(self, name: str) -> ClusterLink | None:
        return self._links.get(name)

    def all(self) -> list[ClusterLink]:
        with self._lock:
            return list(self._links.values())

    def with_network(self) -> list[ClusterLink]:
        return [link for link in self.all() if link.subnet is not None]

    def subnet_of(self, name: str) -> str | None:
        link = self._links.get(name)
        return link.subnet if link is not None else None

    def zones(self) -> list[dict[str, Any]]:
        return [
            {"zone": link.zone, "cluster": link.name, "network": link.network, "region": self.region}
            for link in self.all()
        ]

    def for_zone(self, zone: str | None) -> ClusterLink:
        """The cluster of ``zone`` (the first cluster when no zone is asked for)."""
        links = self.all()
        if not links:
            raise CloudError("InsufficientInstanceCapacity", "the cloud has no cluster yet")
        if not zone:
            return links[0]
        for link in links:
            if link.zone == zone:
                return link
        raise CloudError(
            "InvalidParameterValue",
            f"Invalid availability zone: [{zone}]; zones: " + ", ".join(link.zone for link in links),
        )

    def __contains__(self, name: object) -> bool:
        return name in self._links

    def __len__(self) -> int:
        return len(self._links)
