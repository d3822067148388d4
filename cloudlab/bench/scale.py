"""Scheduling at scale on libvirt's test driver, measured in-process.

- 1,000 instances over 50 simulated nodes: RunInstances (10 requests of 100) until all are
  ``running``, against a baseline that defines and starts the same 1,000 domains on 50 test-driver
  hosts directly with libvirt, in the same process;
- DescribeInstances of 1,000 instances, timed server-side (the API pipeline called directly with a
  SigV4-signed request), against the raw SQL fetch of the same rows as the floor.
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


def run_scale_benchmark(
    instances: int = 1000, nodes: int = 50, describe_repeats: int = 20, progress: Any = None
) -> dict[str, Any]:
    per_node = instances // nodes
    with tempfile.TemporaryDirectory(prefix="cloudlab-scale-") as tmp:
        root = Path(tmp)
        baseline_s = baseline_define_start(nodes, per_node, root)
        layout = StateLayout(root / "state")
        config = CloudConfig(
            hypervisor="test:///default", nodes=nodes, node_vcpus=per_node, node_memory_mb=per_node * 256, api_port=0
        )
        service = CloudService(layout, config)
        service.build()
        service.cc.start()
        service.wait_for_nodes()
        service.clc.start()
        try:
            (root / "k").write_bytes(b"k")
            (root / "r").write_bytes(b"r")
            image, _ = service.clc.images.register_default(root / "k", root / "r", "admin", "bench")
            from cloudlab.api.server import Ec2Api

            api = Ec2Api(service.clc)
            admin, key = service.clc.users.ensure_admin()
            call = SignedCaller(api, key.access_key, key.secret_key, config.region)
            started = time.perf_counter()
            for _ in range(instances // 100):
                status, payload, _ = call(
                    {
                        "Action": "RunInstances",
                        "ImageId": image.image_id,
                        "MinCount": "100",
                        "MaxCount": "100",
                        "InstanceType": "t2.micro",
                    }
                )
                if status != 200:
                    raise RuntimeError(payload.decode()[:300])
            accepted_s = time.perf_counter() - started
            running = "SELECT COUNT(*) AS n FROM instances WHERE state='running'"
            wait_until(
                lambda: service.store.one(running)["n"] == instances, 120, what=f"{instances} running", interval_s=0.05
            )
            all_running_s = time.perf_counter() - started
            if progress:
                progress(f"scale: {instances} instances running in {all_running_s:.1f} s")
            describe, floor = [], []
            for _ in range(describe_repeats):
                status, payload, seconds = call({"Action": "DescribeInstances"})
                if status != 200 or payload.count(b"<instanceId>") != instances:
                    raise RuntimeError("DescribeInstances did not list every instance")
                describe.append(seconds)
                t = time.perf_counter()
                service.store.query("SELECT * FROM instances ORDER BY launch_time, launch_index")
                floor.append(time.perf_counter() - t)
        finally:
            service.clc.stop()
            service.cc.stop()
            for node in service.local_nodes.values():
                node.close()
            service.store.close()
    return {
        "instances": instances,
        "nodes": nodes,
        "run_requests_accepted_s": round(accepted_s, 3),
        "all_running_s": round(all_running_s, 3),
        "baseline_libvirt_define_start_s": round(baseline_s, 3),
        "ratio_cloud_to_baseline": round(all_running_s / baseline_s, 2),
        "describe_server_ms": summarise([s * 1000 for s in describe]),
        "describe_server_p95_ms": round(percentile(describe, 95) * 1000, 2),
        "describe_sql_floor_ms": summarise([s * 1000 for s in floor]),
        "ratio_describe_to_sql_floor": round(sorted(describe)[len(describe) // 2] / sorted(floor)[len(floor) // 2], 1),
    }
