"""The cloud as one supervised background service: CLC + EC2 endpoint, a CC per cluster, their NCs.

The CLC and CCs run in this process and talk through the in-process transport (same signing and
checks as HTTP). Node controllers on a QEMU hypervisor run as child processes (one embedded libvirt
driver per process), registered with the CC over HTTP and restarted if they die; nodes on libvirt's
test driver run in-process, so that fifty simulated nodes cost threads, not processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudlab import processes
from cloudlab.cc.cluster import ClusterController
from cloudlab.cc.network import NC_PORT
from cloudlab.clc.cloud import CloudController
from cloudlab.clc.images import Images
from cloudlab.clc.offline import write_credentials
from cloudlab.clc.remote_clusters import RemoteClusters
from cloudlab.clc.store import Store
from cloudlab.clc.uploads import UploadPolicy, ensure_root
from cloudlab.config import CloudConfig
from cloudlab.files import write_atomic
from cloudlab.nc.hypervisor import driver_kind, test_driver_uri
from cloudlab.nc.node import NodeController
from cloudlab.paths import StateLayout, cache_dir
from cloudlab.rpc import Dispatcher, LocalChannel, serve_http
from cloudlab.security.ca import CertificateAuthority
from cloudlab.security.messages import MessageSigner, MessageVerifier, controller_keys
from cloudlab.service_clusters import (
    ClusterRuntime,
    build_network,
    cluster_status,
    join_clusters,
    remote_cluster_status,
    start_metadata_services,
)
from cloudlab.waiting import WaitTimeout, wait_until

log = logging.getLogger(__name__)

NODE_START_S = 60.0  # how long a node controller has to register at start (QEMU's first probe is slow under TCG)

SHUTDOWN_REASON = "Server.CloudShutdown: the cloud was stopped (cloudlab down)"


def node_uri(config: CloudConfig, layout: StateLayout, node: str, cluster_index: int = 0) -> str:
    """The libvirt URI of ``node``: embedded roots are per node, test nodes get private hosts (of their
    cluster's node size)."""
    uri = config.hypervisor
    if uri.startswith("qemu:///embed"):
        return f"qemu:///embed?root={layout.libvirt_root(node)}"
    if uri.startswith("test://"):
        vcpus = config.setting(cluster_index, "node_vcpus") or 16
        return test_driver_uri(layout.node_dir(node), vcpus, config.setting(cluster_index, "node_memory_mb") or 32768)
    return uri


@dataclass
class ChildNode:
    """A supervised controller process: a node controller, or the cluster's storage controller."""

    name: str
    argv: list[str]
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_start: float = 0.0
    last_exit: int | None = None
    history: list[str] = field(default_factory=list)


class CloudService:
    """Builds and runs one cloud from its state folder."""

    def __init__(self, layout: StateLayout, config: CloudConfig, *, reconcile_s: float = 1.0) -> None:
        self.layout = layout
        self.config = config
        self.reconcile_s = reconcile_s
        self.ca = CertificateAuthority.load_or_create(layout.pki)
        self._stop = threading.Event()
        self.children: dict[str, ChildNode] = {}
        self.local_nodes: dict[str, NodeController] = {}
        self.api_server: Any = None
        self.walrus: Any = None  # cloudlab.api.s3.service.WalrusService: the S3 endpoint
        self.clusters: list[ClusterRuntime] = []  # the first is also self.cc, self.network, self.cc_url
        self.node_cluster: dict[str, ClusterRuntime] = {}  # node name -> its cluster
        self._networks_built: list[Any] = []
        self.started = time.time()
        self.nodes_missing: list[str] = []
        self.clc_server: Any = None
        self.remote_clusters: Any = None  # cloudlab.clc.remote_clusters.RemoteClusters, once built

    def _signer_verifier(self, name: str, role: str) -> tuple[MessageSigner, MessageVerifier]:
        return controller_keys(self.ca.identity(name, role), self.ca.ca_certificate)

    # The first cluster's parts, by the names a one-cluster cloud has always had.
    @property
    def cc(self) -> ClusterController:
        return self.clusters[0].cc

    @property
    def cc_dispatcher(self) -> Dispatcher:
        return self.clusters[0].dispatcher

    @property
    def cc_url(self) -> str:
        return self.clusters[0].url

    @property
    def cc_server(self) -> Any:
        return self.clusters[0].server

    @property
    def network(self) -> Any:
        return self.clusters[0].network if self.clusters else None

    def build(self) -> None:
        config, layout = self.config, self.layout
        for index, name in enumerate(config.cluster_names()):
            self.clusters.append(self._build_cluster(index, name))
        self.fabric = join_clusters(layout, config, self.clusters)  # VDE cables between the clusters, if any
        self.store = Store(layout.database)
        self.clc = CloudController(
            self.store,
            Images(self.store, layout.images, self._upload_policy()),
            self.ca,
            region=config.region,
            public_pool=config.public_pool,
            reconcile_s=self.reconcile_s,
            terminated_visible_s=config.terminated_visible_s,
            zone_policy=config.zone_policy,
        )
        clc_signer, clc_verifier = self._signer_verifier("clc", "clc")
        for cluster in self.clusters:
            channel = LocalChannel(f"cc-{cluster.name}", "cc", clc_signer, clc_verifier, cluster.dispatcher)
            self.clc.add_cluster(
                cluster.name,
                cluster.zone,
                channel,
                network=config.network,
                policy=cluster.cc.policy.name,
                subnet=config.subnet if config.network != "none" else None,
                vpc_network=config.network_model == "vpc",
            )
            if cluster.network is not None:
                self._start_metadata_service(cluster)
        self._serve_clc(clc_signer, clc_verifier)
        admin, key = self.clc.users.ensure_admin()
        write_credentials(layout, admin.name, key.access_key, key.secret_key)
        self._register_default_image(admin.name)
        orphans = processes.node_controllers(layout) + processes.storage_controllers(layout)
        if orphans:  # a killed service's node controllers still hold their libvirt drivers: end them
            log.warning("ending %d node controller(s) left by an earlier run: %s", len(orphans), orphans)
            processes.end(orphans)
        for cluster in self.clusters:
            for name in cluster.nodes:
                self._start_node(name)
        # (one storage controller, the first cluster's: volumes live in its zone)
        self._start_storage(self.clusters[0].url.split("//", 1)[1].rsplit(":", 1)[0])

    def _serve_clc(self, signer: MessageSigner, verifier: MessageVerifier) -> None:
        """The CLC's own signed endpoint, where cluster controllers that run as processes of their own
        (``cloudlab cc --clc URL``) register (cloudlab/clc/remote_clusters.py)."""
        self.remote_clusters = RemoteClusters(self.clc, signer, verifier, local={c.name for c in self.clusters})
        self.remote_clusters.restore()
        dispatcher = Dispatcher("clc", signer, verifier)
        self.remote_clusters.register_routes(dispatcher)
        self.clc_server = serve_http(dispatcher, self.config.clc_host, self.config.clc_port)

    @property
    def clc_url(self) -> str:
        return f"http://{self.config.clc_host}:{self.clc_server.server_port}"

    def _build_cluster(self, index: int, name: str) -> ClusterRuntime:
        """The ``index``-th cluster's CC, its endpoint for node controllers and, if asked for, its network."""
        config = self.config
        cc_signer, cc_verifier = self._signer_verifier(f"cc-{name}", "cc")
        cc = ClusterController(
            name,
            policy=config.setting(index, "scheduler"),
            heartbeat_s=config.heartbeat_s,
            signer=cc_signer,
            verifier=cc_verifier,
            powersave_idle_s=config.setting(index, "powersave_idle_s"),
        )
        dispatcher = Dispatcher(f"cc-{name}", cc_signer, cc_verifier)
        cc.register_routes(dispatcher)
        cc_host = config.cc_host
        network = None
        if config.network != "none":
            network = self._build_network(index, name)
            cc.network = network
            cc_host = network.root_address  # NCs in their host namespaces reach the CC over the underlay
        server = serve_http(dispatcher, cc_host, 0)
        cluster = ClusterRuntime(
            index,
            name,
            config.zone_of(index),
            config.node_names(index),
            cc,
            dispatcher,
            server,
            f"http://{cc_host}:{server.server_port}",
            network,
        )
        for node in cluster.nodes:
            self.node_cluster[node] = cluster
        return cluster

    def storage_dir(self) -> Path:
        """The cluster's SC folder: its volumes, snapshots and export records."""
        return self.layout.root / "sc" / self.config.cluster

    def _start_storage(self, host: str) -> None:
        """The cluster's storage controller, a child process like the nodes, serving NBD on the CC's address
        (the underlay the nodes' namespaces reach), registered with the CC over HTTP."""
        argv = [
            sys.executable,
            "-m",
            "cloudlab.cli",
            "--state",
            str(self.layout.root),
            "sc",
            "--name",
            self.config.cluster,
            "--cc",
            self.cc_url,
            "--listen",
            host,
            "--dir",
            str(self.storage_dir()),
        ]
        child = ChildNode(f"sc-{self.config.cluster}", argv, self.storage_dir() / "sc.log")
        self.children[child.name] = child
        self._spawn(child)

    def _upload_policy(self) -> UploadPolicy:
        """Where ordinary users may register images from (``images_root`` in cloud.json)."""
        root = Path(self.config.images_root) if self.config.images_root else self.layout.root / "uploads"
        ensure_root(root)
        return UploadPolicy(root, self.config.image_max_mb * 1024 * 1024)

    def _build_network(self, index: int, name: str) -> Any:
        network = build_network(self.layout, self.config, index, name)
        self._networks_built.append(network)
        return network

    def _start_metadata_service(self, runtime: ClusterRuntime) -> None:
        start_metadata_services(self.clc, runtime)

    def _register_default_image(self, owner: str) -> None:
        """Register the cached default image if it was built (``cloudlab image build``)."""
        from cloudlab.images.cached import find_built_image

        built = find_built_image()
        if built is None:
            log.info("no default image built yet: run 'cloudlab image build'")
            return
        image, new = self.clc.images.register_default(
            built.kernel,
            built.ramdisk,
            owner,
            "cloudlab default image (Debian cloud kernel, busybox, iperf3, dropbear)",
        )
        if new:
            log.info("registered the default image as %s", image.image_id)
        self._register_debian_image(owner)

    def _register_debian_image(self, owner: str) -> None:
        """Register ``cloudlab-debian`` if it was built (``cloudlab image build debian``): its disk is
        the backing file of each instance's root volume."""
        from cloudlab.guest import DEBIAN_IMAGE_NAME
        from cloudlab.images.cached import find_built_image

        built = find_built_image(name="debian")
        if built is None or built.disk is None:
            return
        image, new = self.clc.images.register_default(
            built.kernel,
            built.ramdisk,
            owner,
            "cloudlab Debian 12 (systemd, cloud-init, python3) on a copy-on-write root volume",
            name=DEBIAN_IMAGE_NAME,
            disk=built.disk,
            digests=built.digests,
        )
        if new:
            log.info("registered %s as %s", DEBIAN_IMAGE_NAME, image.image_id)

    def _start_node(self, name: str) -> None:
        cluster = self.node_cluster[name]
        uri = node_uri(self.config, self.layout, name, cluster.index)
        node_dir = self.layout.node_dir(name)
        vcpus = self.config.setting(cluster.index, "node_vcpus")
        memory_mb = self.config.setting(cluster.index, "node_memory_mb")
        if driver_kind(uri) == "test":
            node = NodeController(
                name,
                uri,
                node_dir,
                vcpus=vcpus,
                memory_mb=memory_mb,
                accel="test",
                on_change=lambda: cluster.cc.registry.poll_soon(name),
                wake_s=self.config.powersave_wake_s,
            )
            signer, verifier = self._signer_verifier(name, "nc")
            dispatcher = Dispatcher(f"nc-{name}", signer, verifier)
            node.register_routes(dispatcher)
            cc_signer, cc_verifier = self._signer_verifier(f"cc-{cluster.name}", "cc")
            cluster.cc.add_node(name, LocalChannel(name, "nc", cc_signer, cc_verifier, dispatcher))
            self.local_nodes[name] = node
            return
        argv = [
            sys.executable,
            "-m",
            "cloudlab.cli",
            "--state",
            str(self.layout.root),
            "nc",
            "--name",
            name,
            "--cc",
            cluster.url,
            "--hypervisor",
            uri,
            "--accel",
            self.config.accel,
            "--launch",
            self.config.launch,
            "--wake-s",
            str(self.config.powersave_wake_s),
        ]
        if self.config.network != "none":
            argv.append("--template-nic")
            if self.config.network == "vde" and self.config.vde_profile_in_use == "fast":
                from cloudlab.cc.segments import MTU

                argv += ["--template-nic-mtu", str(MTU)]  # the NIC a fast segment's instance has
        if vcpus:
            argv += ["--vcpus", str(vcpus)]
        if memory_mb:
            argv += ["--memory", str(memory_mb)]
        if cluster.network is not None:
            from cloudlab.net import netns

            namespace, address, url = cluster.network.nc_endpoint(name)
            argv += ["--listen", address, "--port", str(NC_PORT), "--advertise", url]
            argv = netns.command(namespace, argv)  # libvirt makes its taps, and QEMU runs, in the host's namespace
        child = ChildNode(name, argv)
        self.children[name] = child
        self._spawn(child)

    def _spawn(self, child: ChildNode) -> None:
        log_path = child.log_path or self.layout.node_dir(child.name) / "nc.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            child.process = subprocess.Popen(
                child.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.layout.root,
                preexec_fn=processes.die_with_parent(),  # a killed service leaves no orphan node controller
            )
        child.last_start = time.time()
        log.info("started controller %s (pid %d)", child.name, child.process.pid)

    def missing_nodes(self) -> list[str]:
        """Configured nodes that have not registered and answered yet."""
        views = {v.name for cluster in self.clusters for v in cluster.cc.registry.views()}
        return [name for cluster in self.clusters for name in cluster.nodes if name not in views]

    def wait_for_nodes(self, timeout_s: float = NODE_START_S) -> list[str]:
        """Wait for every configured node to register; return the ones that did not.

        A node controller that exited before registering has failed: it is not waited for."""

        def settled() -> bool:
            return all(self._exited(name) for name in self.missing_nodes())

        with contextlib.suppress(WaitTimeout):
            wait_until(settled, timeout_s, what="the nodes to register", interval_s=0.2)
        storage = self.children.get(f"sc-{self.config.cluster}")
        if storage is not None:
            with contextlib.suppress(WaitTimeout):
                wait_until(
                    lambda: self.cc.storage is not None or self._exited(storage.name),
                    timeout_s,
                    what="the storage controller to register",
                    interval_s=0.1,
                )
            if self.cc.storage is None:
                log.error("the storage controller did not register: see %s", storage.log_path)
        return self.missing_nodes()

    def _exited(self, name: str) -> bool:
        child = self.children.get(name)
        return child is not None and child.process is not None and child.process.poll() is not None

    def supervise_once(self) -> None:
        """Restart node controllers that died (with a back-off), and note it for ``cloudlab status``."""
        for child in self.children.values():
            if child.process is None or child.process.poll() is None:
                continue
            child.last_exit = child.process.returncode
            if time.time() - child.last_start < min(30.0, 2.0 ** min(child.restarts, 5)):
                continue
            child.restarts += 1
            child.history.append(f"{time.strftime('%H:%M:%S')} exited {child.last_exit}, restarted")
            log.warning("controller %s exited with %s; restarting", child.name, child.last_exit)
            self._spawn(child)
        for cluster in self.clusters:
            if cluster.network is not None:
                cluster.network.supervise_once()

    def status(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for row in self.store.query("SELECT state, COUNT(*) AS n FROM instances GROUP BY state"):
            counts[row["state"]] = row["n"]
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "endpoint": self.endpoint_url,
            "region": self.config.region,
            "hypervisor": self.config.hypervisor,
            "clusters": [self._cluster_status(cluster) for cluster in self.clusters]
            + [remote_cluster_status(self, name, url) for name, url in self.remote_clusters.urls().items()],
            "clc_url": self.clc_url,
            "instances": counts,
            "unknown_vms": self.clc.unknown_vms(),
            "refused_messages": [m for cluster in self.clusters for m in cluster.dispatcher.refused[-10:]][-10:],
            "reconcile_passes": self.clc.reconciler.passes,  # so that a test waits for passes, not seconds
        }

    def _cluster_status(self, runtime: ClusterRuntime) -> dict[str, Any]:
        return cluster_status(self, runtime)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.config.api_host}:{self.api_server.server_port}/"

    def start(self, *, api: bool = True) -> None:
        """Build the cloud and start every controller; with ``api``, the EC2 endpoint and its endpoint file.

        This is the whole start sequence of ``cloudlab serve`` but the signal handling and the
        supervision loop, so tests start a cloud exactly as the service does.
        """
        try:
            self.build()
        except BaseException:
            for network in reversed(self._networks_built):
                network.teardown()
            raise
        if api:
            from cloudlab.api.server import serve_api  # the service composes the API; the core never imports it

            self.api_server = serve_api(self.clc, self.config.api_host, self.config.api_port, status=self.status)
            from cloudlab.api.s3.service import start_walrus

            self.walrus = start_walrus(self.layout, self.config, self.store, self.clc.users)
            for cluster in self.clusters:  # nodes in their hosts' namespaces fetch images over the underlay
                if cluster.network is not None:
                    self.walrus.serve_cluster(cluster.name, cluster.network.root_address)
            self.clc.objects = self.walrus.object_store()
        for cluster in self.clusters:
            cluster.cc.start()
        self.nodes_missing = self.wait_for_nodes()
        if self.nodes_missing:
            log.error("node(s) %s did not start: see their nc.log", ", ".join(self.nodes_missing))
        self.clc.reconcile_once()
        self.clc.start()
        if api:
            self._write_endpoint()

    def _write_endpoint(self) -> None:
        write_json(
            self.layout.endpoint_file,
            {
                "url": self.endpoint_url,
                "pid": os.getpid(),
                "cc_url": self.cc_url,
                "clc_url": self.clc_url,
                "region": self.config.region,
                "started": self.started,
                "nodes_missing": self.nodes_missing,
                "s3_url": self.walrus.url if self.walrus is not None else None,
            },
        )

    def run(self) -> int:
        """Start everything, write the endpoint file, and serve until SIGTERM."""
        self.start()
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        signal.signal(signal.SIGINT, lambda *_: self._stop.set())
        log.info("cloud is up: EC2 endpoint %s", self.endpoint_url)
        while not self._stop.wait(1.0):
            self.supervise_once()
        self.shutdown()
        return 0

    def shutdown(self) -> None:
        log.info("stopping the cloud")
        try:
            n = self.clc.shutdown_all(SHUTDOWN_REASON)
            log.info("terminated %d instance(s)", n)
        except Exception:
            log.exception("terminating instances on shutdown failed")
        self.clc.stop()
        self.clc.node_hours.all_off("the cloud stopped (cloudlab down)")
        for cluster in self.clusters:
            cluster.cc.stop()
        for child in self.children.values():
            if child.process is not None and child.process.poll() is None:
                child.process.terminate()
        for child in self.children.values():
            if child.process is not None:
                try:
                    child.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.process.kill()
        for node in self.local_nodes.values():
            node.close()
        # The SC's NBD servers outlive the SC on purpose (a restarted SC must not cut guests off);
        # the cloud going down is when they end.
        processes.end(processes.of_state(self.layout, (b"qemu-nbd",)))
        for cluster in reversed(self.clusters):
            cluster.stop_metadata()
            if cluster.network is not None:
                try:
                    cluster.network.teardown()
                except Exception:
                    log.exception("tearing the network of cluster %s down failed", cluster.name)
        if self.api_server is not None:
            self.api_server.shutdown()
        if self.walrus is not None:
            self.walrus.stop()
        for cluster in self.clusters:
            cluster.server.shutdown()
        if self.clc_server is not None:
            self.clc_server.shutdown()
        self.store.close()
        self.layout.endpoint_file.unlink(missing_ok=True)
        log.info("cloud stopped")


def write_json(path: Path, data: dict[str, Any], mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2) + "\n", mode)


def run_service(layout: StateLayout) -> int:
    """Entry point of ``cloudlab serve`` (the background process ``cloudlab up`` starts)."""
    config = CloudConfig.load(layout.config)
    service = CloudService(layout, config)
    return service.run()


def accel_cache_file() -> Path:
    return cache_dir() / "accel.json"
