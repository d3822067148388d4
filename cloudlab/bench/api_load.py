"""The EC2 endpoint under load: cloudlab against moto, side by side, with the same client and workload.

Method (the issue "EC2 API that real clients use"):

- moto's server (``python -m moto.server``, its own process on 127.0.0.1) and a cloudlab cloud on libvirt's
  test driver (``cloudlab up`` in a temporary state folder: 10 nodes of 20 vCPUs) run side by side;
- each gets 100 instances (moto: an AMI from its own DescribeImages; cloudlab: the default image);
- each is then driven alone by the same load: DescribeInstances for ``seconds`` from ``threads`` threads,
  every request SigV4-signed by botocore (``SigV4Auth`` on an ``AWSRequest``) and sent as raw HTTP on a
  keep-alive ``http.client`` connection per thread, answers read in full but not parsed (one answer of
  each side is parsed with botocore to check that it lists all the instances);
- reported per side: requests/s, latency percentiles, errors, answer size; and cloudlab/moto throughput.

The load generator runs in this process (threads share one GIL), the servers in their own processes:
on a small machine the client's own CPU use is part of what limits both sides equally.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.parsers import create_parser

from cloudlab import phases
from cloudlab.bench.stats import percentile
from cloudlab.waiting import WaitTimeout, wait_until

API_VERSION = "2016-11-15"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
TARGETS = {"throughput_ratio_min": 10.0, "p99_ms_max": 100.0, "errors_max": 0}

Progress = Callable[[str], None]


@dataclass
class Endpoint:
    """One EC2 endpoint under test and the keys to sign for it."""

    name: str
    url: str
    region: str
    access_key: str
    secret_key: str
    instance_ids: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc

    def client(self) -> Any:
        return boto3.client(
            "ec2",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(retries={"max_attempts": 1}, read_timeout=120),
        )


class Signer:
    """Builds a DescribeInstances request signed exactly as boto3 signs it (fresh time, fresh signature)."""

    def __init__(self, endpoint: Endpoint, params: dict[str, str]) -> None:
        self.auth = SigV4Auth(Credentials(endpoint.access_key, endpoint.secret_key), "ec2", endpoint.region)
        self.url = f"http://{endpoint.host}/"
        self.body = urllib.parse.urlencode({"Version": API_VERSION, **params}).encode()

    def __call__(self) -> dict[str, str]:
        request = AWSRequest("POST", self.url, data=self.body, headers={"Content-Type": FORM})
        self.auth.add_auth(request)
        return dict(request.headers.items())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"moto's server exited with status {process.returncode}")
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    try:
        wait_until(listening, timeout_s, what=f"moto on port {port}", ignore=(OSError,))
    except WaitTimeout:
        raise TimeoutError(f"moto's server did not listen on port {port} within {timeout_s:.0f} s") from None


@contextlib.contextmanager
def moto_server(log_path: Path) -> Iterator[Endpoint]:
    """moto's EC2 in its own process on 127.0.0.1 (as ``python -m moto.server``)."""
    import importlib.util

    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise RuntimeError("moto's server is not installed: pip install 'moto[server]' (in the dev extra)")
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_for_port(port, process)
        yield Endpoint("moto", f"http://127.0.0.1:{port}/", "us-east-1", "AKIAMOTOBENCHMARK000", "moto-secret")
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def cloudlab_cloud(root: Path, nodes: int = 10, node_vcpus: int = 20) -> Iterator[Endpoint]:
    """A cloudlab cloud on libvirt's test driver, started as ``cloudlab up`` starts one."""
    from cloudlab import servicectl
    from cloudlab.config import CloudConfig
    from cloudlab.paths import StateLayout

    layout = StateLayout(root)
    config = CloudConfig(
        hypervisor="test:///default", nodes=nodes, node_vcpus=node_vcpus, node_memory_mb=node_vcpus * 256, api_port=0
    )
    info = servicectl.up(layout, config, timeout_s=120)
    try:
        creds = json.loads((layout.credentials / "admin.json").read_text())
        yield Endpoint("cloudlab", info["url"], info["region"], creds["access_key"], creds["secret_key"])
    finally:
        servicectl.down(layout)


def moto_image(ec2: Any) -> str:
    """An AMI id that moto accepts: the first of its own (it ships a catalogue of public AMIs)."""
    images = ec2.describe_images()["Images"]
    if not images:
        raise RuntimeError("moto lists no images")
    return str(sorted(i["ImageId"] for i in images)[0])


def cloudlab_image(ec2: Any, scratch: Path) -> str:
    """The default image, or (if it was never built here) a stand-in registered from dummy files:
    on the test driver no guest boots, so the kernel is never read."""
    found = ec2.describe_images(Filters=[{"Name": "name", "Values": ["cloudlab-default"]}])["Images"]
    if found:
        return str(found[0]["ImageId"])
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "vmlinuz").write_bytes(b"not a kernel")
    (scratch / "initrd.img").write_bytes(b"not a ramdisk")
    return str(ec2.register_image(Name="bench-stand-in", ImageLocation=str(scratch))["ImageId"])


def populate(endpoint: Endpoint, image_id: str, count: int, timeout_s: float = 120.0) -> None:
    """Start ``count`` instances in one request and wait until every one is running."""
    ec2 = endpoint.client()
    reservation = ec2.run_instances(ImageId=image_id, MinCount=count, MaxCount=count, InstanceType="t2.micro")
    endpoint.instance_ids = [i["InstanceId"] for i in reservation["Instances"]]
    phases.watch(ec2, endpoint.instance_ids, "running", timeout_s, poll=0.2)


def listed_instances(endpoint: Endpoint) -> set[str]:
    """Send one signed DescribeInstances as the load does, and parse its answer with botocore."""
    op = endpoint.client().meta.service_model.operation_model("DescribeInstances")
    sign = Signer(endpoint, {"Action": "DescribeInstances"})
    host, port = endpoint.host.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request("POST", "/", body=sign.body, headers=sign())
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    parsed = create_parser("ec2").parse(
        {"status_code": response.status, "headers": dict(response.getheaders()), "body": body}, op.output_shape
    )
    if response.status != 200:
        raise RuntimeError(f"{endpoint.name}: DescribeInstances answered {response.status}: {body[:300]!r}")
    return {i["InstanceId"] for r in parsed.get("Reservations", []) for i in r["Instances"]}


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    answer_bytes: int = 0


def _worker(
    endpoint: Endpoint, stop_at: float, start: threading.Barrier, result: LoadResult, lock: threading.Lock
) -> None:
    sign = Signer(endpoint, {"Action": "DescribeInstances"})
    host, port = endpoint.host.split(":")
    latencies: list[float] = []
    errors, samples, size = 0, [], 0
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    start.wait()
    while time.perf_counter() < stop_at:
        headers = sign()
        began = time.perf_counter()
        try:
            connection.request("POST", "/", body=sign.body, headers=headers)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            errors += 1
            if len(samples) < 3:
                samples.append(f"{type(exc).__name__}: {exc}")
            connection.close()
            connection = http.client.HTTPConnection(host, int(port), timeout=60)
            continue
        latencies.append(time.perf_counter() - began)
        size = len(body)
        if response.status != 200:
            errors += 1
            if len(samples) < 3:
                samples.append(f"HTTP {response.status}: {body[:200]!r}")
    connection.close()
    with lock:
        result.latencies += latencies
        result.errors += errors
        result.error_samples += samples
        result.answer_bytes = max(result.answer_bytes, size)


def drive(endpoint: Endpoint, seconds: float, threads: int, warmup_s: float = 1.0) -> dict[str, Any]:
    """DescribeInstances from ``threads`` threads for ``seconds`` (after ``warmup_s`` not counted)."""
    if warmup_s > 0:
        _run_load(endpoint, warmup_s, threads)
    result, elapsed = _run_load(endpoint, seconds, threads)
    count = len(result.latencies)
    ms = [s * 1000 for s in result.latencies]
    return {
        "threads": threads,
        "seconds": round(elapsed, 2),
        "requests": count,
        "requests_per_s": round(count / elapsed, 1),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else None,
        "errors": result.errors,
        "error_samples": result.error_samples,
        "answer_bytes": result.answer_bytes,
    }


def _run_load(endpoint: Endpoint, seconds: float, threads: int) -> tuple[LoadResult, float]:
    result, lock = LoadResult(), threading.Lock()
    start = threading.Barrier(threads + 1)
    began = time.perf_counter()
    stop_at = began + seconds + 0.05  # workers start together at the barrier, right after this
    workers = [
        threading.Thread(target=_worker, args=(endpoint, stop_at, start, result, lock), daemon=True)
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    for worker in workers:
        worker.join()
    return result, max(time.perf_counter() - began, 1e-9)


def run_api_load_benchmark(
    instances: int = 100, seconds: float = 10.0, threads: int = 4, progress: Progress | None = None
) -> dict[str, Any]:
    say = progress or (lambda message: None)
    results: dict[str, Any] = {"instances": instances, "workload": "DescribeInstances (all), SigV4, keep-alive"}
    with tempfile.TemporaryDirectory(prefix="cloudlab-api-load-") as tmp:
        root = Path(tmp)
        with moto_server(root / "moto.log") as moto, cloudlab_cloud(root / "state") as cloud:
            say(f"api: moto at {moto.url}, cloudlab at {cloud.url}; {instances} instances in each")
            populate(moto, moto_image(moto.client()), instances)
            populate(cloud, cloudlab_image(cloud.client(), root / "stand-in-image"), instances)
            for side in (moto, cloud):
                listed = listed_instances(side)
                if not set(side.instance_ids) <= listed or len(listed) != instances:
                    raise RuntimeError(f"{side.name}: DescribeInstances lists {len(listed)}, expected {instances}")
            for side in (moto, cloud):
                say(f"api: {side.name}: DescribeInstances for {seconds:.0f} s from {threads} threads")
                results[side.name] = drive(side, seconds, threads)
                figures = results[side.name]
                say(
                    f"api: {side.name}: {figures['requests_per_s']} req/s, p50 {figures['p50_ms']} ms, "
                    f"p99 {figures['p99_ms']} ms, {figures['errors']} errors"
                )
    moto_rps = results["moto"]["requests_per_s"] or float("nan")
    ratio = results["cloudlab"]["requests_per_s"] / moto_rps
    results["ratio_throughput_cloudlab_to_moto"] = round(ratio, 2)
    results["targets"] = TARGETS
    results["met"] = {
        "throughput_ratio": ratio >= TARGETS["throughput_ratio_min"],
        "p99": results["cloudlab"]["p99_ms"] < TARGETS["p99_ms_max"],
        "errors": results["cloudlab"]["errors"] <= TARGETS["errors_max"],
    }
    return results


def report_lines(api: dict[str, Any]) -> list[str]:
    """Lines for the benchmark's table: both sides, the ratio, and the targets beside them."""
    lines = []
    for name in ("cloudlab", "moto"):
        side = api[name]
        lines.append(
            f"DescribeInstances of {api['instances']}, {side['threads']} threads: {name:<8} "
            f"{side['requests_per_s']:8.1f} req/s  p50 {side['p50_ms']:6.1f} ms  p95 {side['p95_ms']:6.1f} ms  "
            f"p99 {side['p99_ms']:6.1f} ms  errors {side['errors']}"
        )
    met = api["met"]
    lines.append(
        f"cloudlab/moto throughput x{api['ratio_throughput_cloudlab_to_moto']} (target >= "
        f"{TARGETS['throughput_ratio_min']:g}: {'met' if met['throughput_ratio'] else 'MISSED'}); "
        f"p99 < {TARGETS['p99_ms_max']:g} ms: {'met' if met['p99'] else 'MISSED'}; "
        f"no errors: {'met' if met['errors'] else 'MISSED'}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloudlab.bench.api_load", description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100, help="instances in each cloud (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per side (default 10)")
    parser.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = run_api_load_benchmark(
        args.instances, args.seconds, args.threads, progress=lambda m: print(f"[bench] {m}", file=sys.stderr)
    )
    print(json.dumps(results, indent=2) if args.json else "\n".join(report_lines(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
