"""Scheduling at scale on libvirt's test driver, measured in-process.

- N instances over M simulated nodes in C clusters (zones): RunInstances (requests of 100, spread over
  the zones) until all are ``running``, against a baseline that defines and starts the same domains on
  M test-driver hosts directly with libvirt, in the same process;
- DescribeInstances of all of them, timed server-side (the API pipeline called directly with a
  SigV4-signed request), against the raw SQL fetch of the same rows as the floor; a filtered describe
  (one instance id) and a paged one (the first 100);
- the idle cloud's resident memory and the controllers' message traffic (heartbeats) per second,
  idle and with every instance running;
- with ``churn``, that many further launches and terminations, then the same describes again, so
  "as fast after 100,000 launches as at the start" is a ratio.
"""

from __future__ import annotations

import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import libvirt
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cloudlab.bench.stats import percentile, summarise
from cloudlab.config import CloudConfig
from cloudlab.nc.domain_xml import DomainSpec, build_domain_xml
from cloudlab.nc.hypervisor import ensure_event_loop, test_driver_uri
from cloudlab.paths import StateLayout
from cloudlab.service import CloudService
from cloudlab.waiting import wait_until


class SignedCaller:
    """Calls the in-process EC2 pipeline with requests signed exactly as boto3 signs them."""

    def __init__(self, api: Any, access_key: str, secret_key: str, region: str) -> None:
        self.api = api
        self.credentials = Credentials(access_key, secret_key)
        self.region = region

    def __call__(self, params: dict[str, str]) -> tuple[int, bytes, float]:
        body = urllib.parse.urlencode({"Version": "2016-11-15", **params})
        request = AWSRequest(
            "POST",
            "http://127.0.0.1:8773/",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
        )
        SigV4Auth(self.credentials, "ec2", self.region).add_auth(request)
        headers = {k.lower(): v for k, v in request.headers.items()} | {"host": "127.0.0.1:8773"}
        started = time.perf_counter()
        status, payload = self.api.handle("POST", "/", headers, body.encode())
        return status, payload, time.perf_counter() - started


def baseline_define_start(nodes: int, per_node: int, root: Path) -> float:
    """Seconds to define and start ``nodes * per_node`` domains directly with libvirt."""
    ensure_event_loop()
    conns = [libvirt.open(test_driver_uri(root / f"hand-{n}", per_node, per_node * 256)) for n in range(nodes)]
    started = time.perf_counter()
    for n, conn in enumerate(conns):
        for i in range(per_node):
            name = f"i-{n:08x}{i:09x}"
            spec = DomainSpec(name, 1, 256, Path("/k"), Path("/r"), root / "c.log", accel="test")
            conn.defineXML(build_domain_xml(spec)).create()
    elapsed = time.perf_counter() - started
    for conn in conns:
        conn.close()
    return elapsed


def resident_mb() -> float:
    """This process's resident memory (VmRSS), in MB: the in-process cloud with its test-driver nodes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def message_bytes(service: CloudService) -> int:
    """Bytes of every message (request and reply) the cluster controllers have exchanged with their nodes."""
    return sum(
        counted[1]
        for cluster in service.clusters
        for name in cluster.cc.registry.names()
        if (entry := cluster.cc.registry.entry(name)) is not None
        for counted in getattr(entry.channel, "traffic", {}).values()
    )


def traffic_rate(service: CloudService, seconds: float) -> float:
    """Controller message bytes per second over ``seconds`` of the cloud doing whatever it does."""
    before, started = message_bytes(service), time.perf_counter()
    time.sleep(seconds)
    return (message_bytes(service) - before) / (time.perf_counter() - started)


def all_room_free(service: CloudService) -> bool:
    """Whether every node's last report (as its CC schedules with it) shows all its vCPUs free."""
    views = [view for cluster in service.clusters for view in cluster.cc.registry.views()]
    return all(view.vcpus_free == view.vcpus_total for view in views)


class _Launcher:
    """RunInstances in requests of at most 100, the same number into each zone."""

    def __init__(self, call: SignedCaller, image_id: str, zones: list[str]) -> None:
        self.call, self.image_id, self.zones = call, image_id, zones

    def launch(self, count: int) -> list[str]:
        """``count`` instances, an equal share per zone (the first zones take the remainder)."""
        shares = [count // len(self.zones) + (1 if z < count % len(self.zones) else 0) for z in range(len(self.zones))]
        requests = [(zone, min(100, share - done)) for zone, share in zip(self.zones, shares, strict=True)
                    for done in range(0, share, 100)]  # fmt: skip
        ids: list[str] = []
        for zone, size in requests:
            status, payload, _ = self.call(
                {
                    "Action": "RunInstances",
                    "ImageId": self.image_id,
                    "MinCount": str(size),
                    "MaxCount": str(size),
                    "InstanceType": "t2.micro",
                    "Placement.AvailabilityZone": zone,
                }
            )
            if status != 200:
                raise RuntimeError(payload.decode()[:300])
            ids += [part.split(b"<", 1)[0].decode() for part in payload.split(b"<instanceId>")[1:]]
        return ids

    def terminate(self, ids: list[str]) -> None:
        for start in range(0, len(ids), 1000):
            params = {"Action": "TerminateInstances"}
            params |= {f"InstanceId.{i + 1}": iid for i, iid in enumerate(ids[start : start + 1000])}
            status, payload, _ = self.call(params)
            if status != 200:
                raise RuntimeError(payload.decode()[:300])


def _describes(call: SignedCaller, service: CloudService, expect: int, one_id: str, repeats: int) -> dict[str, Any]:
    """Server-side times of the full, filtered and paged DescribeInstances, with the SQL floor."""
    full, floor, filtered, paged = [], [], [], []
    for _ in range(repeats):
        status, payload, seconds = call({"Action": "DescribeInstances"})
        if status != 200 or payload.count(b"<instanceId>") != expect:
            raise RuntimeError("DescribeInstances did not list every instance")
        full.append(seconds)
        t = time.perf_counter()
        service.store.query("SELECT * FROM instances ORDER BY launch_time, launch_index")
        floor.append(time.perf_counter() - t)
        status, payload, seconds = call(
            {"Action": "DescribeInstances", "Filter.1.Name": "instance-id", "Filter.1.Value.1": one_id}
        )
        if status != 200 or payload.count(b"<instanceId>") != 1:
            raise RuntimeError("a filtered DescribeInstances did not find its instance")
        filtered.append(seconds)
        status, payload, seconds = call({"Action": "DescribeInstances", "MaxResults": "100"})
        if status != 200 or payload.count(b"<instanceId>") != min(100, expect):
            raise RuntimeError("a paged DescribeInstances did not give a page of 100")
        paged.append(seconds)
    median = sorted(full)[len(full) // 2] / sorted(floor)[len(floor) // 2]
    return {
        "describe_server_ms": summarise([s * 1000 for s in full]),
        "describe_server_p95_ms": round(percentile(full, 95) * 1000, 2),
        "describe_sql_floor_ms": summarise([s * 1000 for s in floor]),
        "ratio_describe_to_sql_floor": round(median, 1),
        "describe_filtered_ms": summarise([s * 1000 for s in filtered]),
        "describe_paged_ms": summarise([s * 1000 for s in paged]),
    }


def run_scale_benchmark(
    instances: int = 1000,
    nodes: int = 50,
    clusters: int = 1,
    describe_repeats: int = 20,
    churn: int = 0,
    progress: Any = None,
) -> dict[str, Any]:
    """One cloud of ``nodes`` test-driver nodes in ``clusters`` zones, filled with ``instances``.

    ``nodes`` counts every node of the cloud (``nodes // clusters`` per cluster); each node is sized
    to hold its share exactly, so the run also checks that the schedulers fill every slot.
    """
    per_cluster = max(1, nodes // clusters)
    nodes = per_cluster * clusters
    per_node = -(-instances // nodes)
    say = progress or (lambda _message: None)
    with tempfile.TemporaryDirectory(prefix="cloudlab-scale-") as tmp:
        root = Path(tmp)
        baseline_s = baseline_define_start(nodes, instances // nodes, root)
        rss_before = resident_mb()
        layout = StateLayout(root / "state")
        config = CloudConfig(
            hypervisor="test:///default",
            clusters=clusters,
            nodes=per_cluster,
            node_vcpus=per_node,
            node_memory_mb=per_node * 256,
            api_port=0,
            # terminated instances leave DescribeInstances at once, so that after the churn the same number of
            # instances is described, over a table that now holds every terminated one
            terminated_visible_s=0,
        )
        service = CloudService(layout, config)
        service.start(api=False)
        try:
            idle_rss = resident_mb()
            idle_traffic = traffic_rate(service, 3.0)
            (root / "k").write_bytes(b"k")
            (root / "r").write_bytes(b"r")
            image, _ = service.clc.images.register_default(root / "k", root / "r", "admin", "bench")
            from cloudlab.api.server import Ec2Api

            api = Ec2Api(service.clc)
            admin, key = service.clc.users.ensure_admin()
            call = SignedCaller(api, key.access_key, key.secret_key, config.region)
            zones = [cluster.zone for cluster in service.clusters]
            launcher = _Launcher(call, image.image_id, zones)
            running = "SELECT COUNT(*) AS n FROM instances WHERE state='running'"
            live = "SELECT COUNT(*) AS n FROM instances WHERE state!='terminated'"
            started = time.perf_counter()
            ids = launcher.launch(instances)
            accepted_s = time.perf_counter() - started
            wait_until(
                lambda: service.store.one(running)["n"] == instances, 300, what=f"{instances} running", interval_s=0.05
            )
            all_running_s = time.perf_counter() - started
            say(f"scale: {instances:,} instances, {nodes} nodes, {clusters} zone(s): running in {all_running_s:.1f} s")
            loaded_traffic = traffic_rate(service, 3.0)
            loaded_rss = resident_mb()
            first = _describes(call, service, instances, ids[0], describe_repeats)
            churned = None
            if churn:
                done = 0
                while done < churn:
                    launcher.terminate(ids)
                    wait_until(  # recorded terminated, then their room is free once their nodes report them gone
                        lambda: service.store.one(live)["n"] == 0 and all_room_free(service),
                        300,
                        what="the terminations",
                        interval_s=0.05,
                    )
                    ids = launcher.launch(instances)
                    wait_until(
                        lambda: service.store.one(running)["n"] == instances, 300, what="the relaunch", interval_s=0.05
                    )
                    done += instances
                    say(f"scale: churn {done:,} of {churn:,} launches and terminations")
                churned = _describes(call, service, instances, ids[0], describe_repeats)
        finally:
            service.shutdown()
    report: dict[str, Any] = {
        "instances": instances,
        "nodes": nodes,
        "clusters": clusters,
        "run_requests_accepted_s": round(accepted_s, 3),
        "all_running_s": round(all_running_s, 3),
        "baseline_libvirt_define_start_s": round(baseline_s, 3),
        "ratio_cloud_to_baseline": round(all_running_s / baseline_s, 2),
        "resident_mb_before_cloud": round(rss_before, 1),
        "resident_mb_idle_cloud": round(idle_rss, 1),
        "resident_mb_all_running": round(loaded_rss, 1),
        "message_bytes_per_s_idle": round(idle_traffic),
        "message_bytes_per_s_all_running": round(loaded_traffic),
        **first,
    }
    if churned is not None:
        report["churn_launches"] = churn
        report["after_churn"] = churned
        report["ratio_describe_after_churn"] = round(
            churned["describe_server_ms"]["median"] / first["describe_server_ms"]["median"], 2
        )
    return report
