"""The cloud controller (CLC): the source of truth for instances, and the accounting ledger.

Rules that keep records and VMs in step, whatever crashes:
- an instance row (``pending``, with its node) is committed before any node is asked to start it;
- ``dispatched_at`` is set only after the node confirmed the start, so the reconciler treats the
  absence of a VM as "vanished" only for instances a node once held, and only in a node report
  asked for after that confirmation;
- starting and terminating are idempotent on the node, so after a restart the CLC simply re-sends
  what was pending (undispatched starts, unfinished terminations);
- every state change appends a ledger event in the same transaction.
A VM on a node that the CLC has no record of is reported (``unknown_vms``), never adopted or killed.

:class:`CloudController` is a façade: the work is done by the parts it wires together —

================================  ===============================================================
``clc/clusters.py``               the clusters (zones) and the channel to each CC
``clc/instances.py``              instance records: visibility, transitions with their ledger events
``clc/lifecycle.py``              RunInstances, Terminate/Stop/Start/Reboot, console output
``clc/dispatch.py``               sending starts and terminations to the nodes, retried until done
``clc/reconciler.py``             applying the nodes' reports to the records
``clc/network.py``                ports, segments and the router plan; keeping routers in sync
``clc/vpcs.py``, ``gateways.py``  VPCs, subnets, internet gateways, route tables
``clc/usage.py``                  accounting reports, and NIC byte counters into the ledger
``clc/node_hours.py``             each node's powered-on time (POWERSAVE), its own append-only ledger
``clc/placement.py``              which cluster a request goes to when it names no zone
``clc/volumes.py``, ``snapshots``  EBS volumes and snapshots: records and EC2's rules
``clc/volume_work.py``            carrying volumes forward on the storage controller and nodes
================================  ===============================================================
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, TypeVar

from cloudlab.clc.addresses import Addresses
from cloudlab.clc.clusters import ClusterLink, Clusters
from cloudlab.clc.dispatch import Dispatch
from cloudlab.clc.ebs_images import EbsImages
from cloudlab.clc.gateways import Gateways
from cloudlab.clc.groups import SecurityGroups
from cloudlab.clc.images import Images
from cloudlab.clc.instances import TERMINATED_VISIBLE_S, InstanceRecords
from cloudlab.clc.keypairs import KeyPairs
from cloudlab.clc.lifecycle import InstanceLifecycle
from cloudlab.clc.network import InstanceNetworks, NetworkSync
from cloudlab.clc.node_hours import NodeHours
from cloudlab.clc.objects import ObjectStore
from cloudlab.clc.placement import ZonePlacement, load_zone_policy
from cloudlab.clc.quotas import Quotas
from cloudlab.clc.reconciler import Reconciler
from cloudlab.clc.regions import DEFAULT_REGION, check_region
from cloudlab.clc.snapshots import Snapshots
from cloudlab.clc.store import Store
from cloudlab.clc.tags import Tags, kind_of, recorded_owner
from cloudlab.clc.usage import NetworkBytes
from cloudlab.clc.users import User, Users
from cloudlab.clc.vmtypes import seed_vm_types
from cloudlab.clc.volume_work import VolumeWork
from cloudlab.clc.volumes import Volumes
from cloudlab.clc.vpc_network import VpcNetworks
from cloudlab.clc.vpcs import Vpcs
from cloudlab.errors import CloudError
from cloudlab.rpc import Channel
from cloudlab.security.ca import CertificateAuthority

log = logging.getLogger(__name__)
T = TypeVar("T")


class CloudController:
    """Users, images and instances, with a reconciler that follows what the nodes report."""

    def __init__(
        self,
        store: Store,
        images: Images,
        ca: CertificateAuthority | None,
        region: str = DEFAULT_REGION,
        reconcile_s: float = 1.0,
        public_pool: str = "198.51.100.0/24",
        terminated_visible_s: float = TERMINATED_VISIBLE_S,
        zone_policy: str = "FIRST",
    ) -> None:
        self.store = store
        self.region = check_region(region)
        self.public_pool = public_pool
        self.users = Users(store, ca)
        self.images = images
        # Walrus, once the service runs it (cloudlab.clc.objects): images and snapshots from buckets
        self.objects: ObjectStore | None = None
        self.clusters = Clusters(store, region)
        self._services: dict[type, Any] = {}
        self._services_lock = threading.Lock()
        seed_vm_types(store)
        self.quotas = Quotas(store)  # per-user limits, checked inside the transactions that create
        # The resource services create their tables now, never inside a later transaction.
        services = (Tags, KeyPairs, Vpcs, Gateways, SecurityGroups, Addresses, VpcNetworks, InstanceNetworks)
        for service in (*services, Volumes, Snapshots, EbsImages):
            self.service(service)
        networks = self.service(InstanceNetworks)
        self.network_bytes = NetworkBytes(store)
        self.records = InstanceRecords(store, self.network_bytes, terminated_visible_s)
        self.network_sync = NetworkSync(networks)
        self.dispatch = Dispatch(
            self.records,
            self.clusters,
            images,
            self.network_bytes,
            nic_of=lambda instance_id: networks.port(instance_id) or self.service(VpcNetworks).nic(instance_id),
            before_start=self.network_sync.sync,
            disks_of=lambda instance_id: self.volume_work.disks_for_start(instance_id),
            objects_of=lambda: self.objects,
        )
        self.placement = ZonePlacement(
            load_zone_policy(zone_policy),
            self.clusters.zones,
            lambda: self.reconciler.cluster_health(),
            lambda: self.reconciler.cluster_reports(),
        )
        self.lifecycle = InstanceLifecycle(
            store, self.records, self.clusters, images, self.dispatch, self.service, self.placement
        )
        self.volume_work = VolumeWork(self)  # volumes and snapshots carried forward on the SC and nodes
        self.node_hours = NodeHours(store)  # each node's powered-on time (POWERSAVE's savings)
        self.reconciler = Reconciler(
            store, self.records, self.clusters, self.dispatch, self.network_bytes, reconcile_s, self.node_hours
        )

    def service(self, cls: type[T]) -> T:
        """The CLC's one instance of a domain service (key pairs, groups, tags, ...), built on first use.

        A service class takes the cloud controller as its only argument and creates its tables with
        ``clc.store.ensure_schema``; this keeps each resource type in a module of its own.
        """
        with self._services_lock:
            found = self._services.get(cls)
            if found is None:
                found = self._services[cls] = cls(self)
            return found

    # -- block storage: volumes reach snapshots and EBS images through here, so none imports another ----
    @property
    def snapshots(self) -> Snapshots:
        return self.service(Snapshots)

    @property
    def ebs_images(self) -> EbsImages:
        return self.service(EbsImages)

    # -- clusters ------------------------------------------------------------------------------------
    def add_cluster(
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
        return self.clusters.add(
            name, zone, channel, network=network, policy=policy, subnet=subnet, vpc_network=vpc_network
        )

    def zones(self) -> list[dict[str, Any]]:
        return self.clusters.zones()

    # -- resources ---------------------------------------------------------------------------------------
    def owner_of(self, resource_id: str) -> str | None:
        """Who owns the resource ``resource_id`` names (what a DryRun asks before anything is done): None
        for an id of no resource kind; EC2's NotFound error for a well-formed id that names nothing."""
        kind = kind_of(resource_id)
        if kind is None:
            return None
        owner = recorded_owner(self.store.one, kind, resource_id)
        if owner is None:
            raise CloudError(kind.not_found, f"The {kind.noun} ID '{resource_id}' does not exist")
        return owner

    # -- instances ---------------------------------------------------------------------------------------
    def describe_instances(
        self,
        user: User,
        instance_ids: list[str] | None = None,
        matching: Sequence[tuple[str, Sequence[str]]] = (),
        window: tuple[int, int | None] | None = None,
    ) -> list[dict[str, Any]]:
        """See :meth:`cloudlab.clc.instances.InstanceRecords.visible` for ``matching`` and ``window``."""
        return [dict(row) for row in self.records.visible(user, instance_ids, matching, window)]

    def instance(self, instance_id: str) -> dict[str, Any] | None:
        return self.records.get(instance_id)

    def reservation(self, reservation_id: str) -> dict[str, Any]:
        return self.records.reservation(reservation_id)

    def run_instances(self, user: User, image_id: str, **options: Any) -> dict[str, Any]:
        """See :meth:`cloudlab.clc.lifecycle.InstanceLifecycle.run_instances` for the options."""
        return self.lifecycle.run_instances(user, image_id, **options)

    def terminate_instances(self, user: User, instance_ids: list[str]) -> list[tuple[str, str, str]]:
        return self.lifecycle.terminate_instances(user, instance_ids)

    def stop_instances(self, user: User, instance_ids: list[str]) -> list[tuple[str, str, str]]:
        return self.lifecycle.stop_instances(user, instance_ids)

    def start_instances(self, user: User, instance_ids: list[str]) -> list[tuple[str, str, str]]:
        return self.lifecycle.start_instances(user, instance_ids)

    def reboot_instances(self, user: User, instance_ids: list[str]) -> None:
        self.lifecycle.reboot_instances(user, instance_ids)

    def console_output(self, user: User, instance_id: str) -> tuple[str, float]:
        return self.lifecycle.console_output(user, instance_id)

    def shutdown_all(self, reason: str) -> int:
        return self.lifecycle.shutdown_all(reason)

    # -- running -------------------------------------------------------------------------------------------
    @property
    def reconcile_s(self) -> float:
        """How long the reconciler waits for a change before it looks anyway."""
        return self.reconciler.reconcile_s

    @reconcile_s.setter
    def reconcile_s(self, value: float) -> None:
        self.reconciler.reconcile_s = value

    def start(self) -> None:
        self.reconciler.start()
        self.network_sync.start()
        self.volume_work.start()

    def stop(self) -> None:
        self.reconciler.stop()
        self.network_sync.stop()
        self.volume_work.stop()
        self.dispatch.stop()

    def reconcile_once(self) -> None:
        self.reconciler.reconcile_once()

    def sync_network(self, cluster: str, force: bool = False) -> bool:
        return self.network_sync.sync(cluster, force)

    def node_health(self) -> dict[str, bool]:
        return self.reconciler.node_health()

    def cluster_health(self) -> dict[str, bool]:
        return self.reconciler.cluster_health()

    def cluster_reports(self) -> dict[str, Any]:
        return self.reconciler.cluster_reports()

    def unknown_vms(self) -> list[dict[str, Any]]:
        return self.reconciler.unknown_vms()
