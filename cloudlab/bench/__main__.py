"""``python -m cloudlab.bench`` (``make bench``): the foundation's figures, written to a results file.

Boot times (1 and 4 concurrent instances, median of N) against a hand-started QEMU; the idle
cloud's memory; clouds of 1,000 to 10,000 instances on test-driver nodes in 4 zones (launch,
DescribeInstances, messages, memory; how each grows; :mod:`cloudlab.bench.scale_growth`) against
their baselines; the EC2 endpoint under load against moto's (part ``api``); fio, boots and snapshots
of ``cloudlab-debian`` against the same built by hand (part ``storage``, :mod:`cloudlab.bench.storage`).
Nothing here asserts a time: the figures are for people to read and compare.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cloudlab import servicectl
from cloudlab.bench.api_load import report_lines as api_report_lines
from cloudlab.bench.api_load import run_api_load_benchmark
from cloudlab.bench.boot import run_boot_benchmark
from cloudlab.bench.environment import describe_environment
from cloudlab.bench.footprint import controller_memory
from cloudlab.bench.launch import report_lines as launch_report_lines
from cloudlab.bench.launch import run_launch_benchmark
from cloudlab.bench.scale_growth import growth_chart, growth_exponents, growth_rows, superlinear
from cloudlab.config import CloudConfig
from cloudlab.paths import StateLayout
from cloudlab.processes import interrupt_on_sigterm
from cloudlab.waiting import WaitTimeout, wait_until

TARGETS = {
    "boot_marker_1_median_s": 5.0,
    "idle_rss_mb": 150.0,
    "scale_10000_all_running_s": 30.0,
    "describe_10000_median_ms": 300.0,
    "describe_filtered_or_paged_ms": 50.0,
    "idle_rss_200_nodes_mb": 300.0,
    "api_throughput_ratio_to_moto": 10.0,
    "api_p99_ms": 100.0,
    "api_errors": 0,
    "launch_restored_ssh_median_s": 1.0,
    "launch_ratio_boot_to_restore_ssh": 4.0,
}


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloudlab.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="results", help="folder for the results (default results/)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per boot measurement (default 5)")
    parser.add_argument(
        "--only", default="boot,footprint,launch,scale,api,network,s3,storage", help="comma-separated parts to run"
    )
    parser.add_argument("--launch-repeats", type=int, default=10, help="launches per mode in part launch (default 10)")
    parser.add_argument("--launch-burst", type=int, default=20, help="instances at once in part launch")
    parser.add_argument(
        "--launch-image",
        choices=("default", "debian"),
        default="default",
        help="the image part launch restores and boots: cloudlab-default (default) or cloudlab-debian",
    )
    parser.add_argument("--network-repeats", type=int, default=3, help="repeats per path in part network (default 3)")
    parser.add_argument("--storage-repeats", type=int, default=3, help="fio rounds per target in part storage")
    parser.add_argument("--api-seconds", type=float, default=10.0, help="load duration per side in part api")
    parser.add_argument(
        "--scale-sizes", default="1000,2000,5000,10000", help="instances per cloud in part scale (50 per node)"
    )
    parser.add_argument("--scale-clusters", type=int, default=4, help="clusters (zones) in part scale (default 4)")
    parser.add_argument(
        "--scale-churn",
        type=int,
        default=100_000,
        help="launches and terminations before the largest cloud's describes are timed again (default 100000)",
    )
    args = parser.parse_args(argv)
    interrupt_on_sigterm()  # a killed run still tears down its clouds and guests
    parts = set(args.only.split(","))
    results: dict[str, Any] = {}
    accel = None
    with tempfile.TemporaryDirectory(prefix="cloudlab-bench-") as tmp:
        if parts & {"boot", "footprint"}:
            from cloudlab.client import connect

            layout = StateLayout(Path(tmp) / "state")
            # cold boots against QEMU by hand (part launch measures restored launches against cold boots)
            info = servicectl.up(layout, CloudConfig(api_port=0, launch="boot"), timeout_s=120)
            try:
                cloud = connect(str(layout.root))

                def probed() -> str | None:  # the node is still probing QEMU and the accelerator
                    return next(iter(cloud.nodes()["accel"]), None)

                try:
                    accel: str | None = wait_until(probed, 60, what="the node's accelerator", interval_s=0.5)
                except WaitTimeout:
                    accel = None
                if "footprint" in parts:
                    time.sleep(3)
                    results["idle_memory"] = controller_memory(info["pid"])
                    say(f"idle cloud: {results['idle_memory']['total_rss_mb']} MB resident")
                if "boot" in parts:
                    results["boot"] = run_boot_benchmark(cloud, accel or "tcg", args.repeats, progress=say)
            finally:
                servicectl.down(layout)
        if "launch" in parts:
            say("launch: restored from a booted template against cold boot, interleaved")
            results["launch"] = run_launch_benchmark(
                Path(tmp), args.launch_repeats, progress=say, burst=args.launch_burst, image=args.launch_image
            )
        if "scale" in parts:
            sizes = tuple(int(n) for n in args.scale_sizes.split(","))
            frame, results["scale"] = growth_rows(
                sizes, clusters=args.scale_clusters, churn=args.scale_churn, progress=say
            )
            exponents = growth_exponents(frame)
            results["scale_growth"] = {
                "rows": frame.to_dict("records"),
                "exponents": exponents.to_dict("records"),
                "superlinear": superlinear(exponents),
            }
        if "api" in parts:
            results["api"] = run_api_load_benchmark(seconds=args.api_seconds, progress=say)
    results["environment"] = describe_environment(accel)
    results["targets"] = TARGETS
    out = Path(args.output)
    if "s3" in parts:
        from cloudlab.bench.s3 import main as s3_main

        say("S3: Walrus beside moto's S3 server and a plain copy of the same bytes on the same disk")
        s3_main(["--output", str(out)])
        parts.discard("s3")
        if not parts:
            return 0
    if "storage" in parts:
        from cloudlab.bench.storage import main as storage_main

        say("storage: fio on a cloudlab volume, the root disk and a volume attached by hand; boots; snapshots")
        storage_main(["--output", str(out), "--repeats", str(args.storage_repeats)])
        parts.discard("storage")
        if not parts:
            return 0
    if "network" in parts:
        from cloudlab.bench.network import main as network_main

        say("network paths: cloudlab direct and vde against the same paths built by hand, VDE cables")
        network_main(
            [
                "--output",
                str(out),
                "--repeats",
                str(args.network_repeats),
                "--chart",
                "--variants",
                "--transports",
                "unix,tcp,ssh,udp,vxvde",
            ]
        )
        parts.discard("network")
        if not parts:
            return 0
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out / f"bench-foundation-{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if "boot" in results:
        import pandas as pd

        pd.DataFrame(results["boot"].pop("rows")).to_csv(out / f"bench-boot-{stamp}.csv", index=False)
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if "launch" in results:
        import pandas as pd

        pd.DataFrame(results["launch"].pop("rows")).to_csv(out / f"bench-launch-{stamp}.csv", index=False)
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if "scale_growth" in results:
        import pandas as pd

        frame = pd.DataFrame(results["scale_growth"]["rows"])
        frame.to_csv(out / f"bench-scale-growth-{stamp}.csv", index=False)
        results["scale_growth"]["chart"] = str(growth_chart(frame, out / f"bench-scale-growth-{stamp}.png"))
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report(results))
    print(f"\nresults written to {path}")
    return 0


def report(results: dict[str, Any]) -> str:
    lines = ["figure                                         measured        baseline        ratio    target"]
    if "boot" in results:
        for count in (1, 4):
            b = results["boot"][f"concurrent_{count}"]
            lines.append(f"RunInstances→running, {count} concurrent (median)   {b['cloud_running_s']['median']:7.2f} s")
            lines.append(
                f"RunInstances→boot marker, {count} concurrent        {b['cloud_marker_s']['median']:7.2f} s "
                f"  {b['by_hand_marker_s']['median']:7.2f} s (QEMU by hand) "
                f"x{b['ratio_cloud_to_hand_marker']:<6} {'< 5 s' if count == 1 else ''}"
            )
    if "idle_memory" in results:
        lines.append(
            f"idle cloud resident memory                     {results['idle_memory']['total_rss_mb']:7.1f} MB"
            f"{'':33}< 150 MB"
        )
    if "scale" in results:
        lines += scale_report_lines(results["scale"], results.get("scale_growth"))
    if "launch" in results:
        lines += launch_report_lines(results["launch"])
    if "api" in results:
        lines += api_report_lines(results["api"])
    return "\n".join(lines)


def scale_report_lines(s: dict[str, Any], growth: dict[str, Any] | None) -> list[str]:
    n, nodes, zones = f"{s['instances']:,}", s["nodes"], s["clusters"]
    lines = [
        f"{n} instances, {nodes} test nodes, {zones} zones, running {s['all_running_s']:7.2f} s "
        f"  {s['baseline_libvirt_define_start_s']:7.2f} s (libvirt)    x{s['ratio_cloud_to_baseline']:<6} < 30 s",
        f"DescribeInstances of {n} (server, median)   {s['describe_server_ms']['median']:7.1f} ms"
        f"  {s['describe_sql_floor_ms']['median']:7.1f} ms (SQL)       x{s['ratio_describe_to_sql_floor']:<6} < 300 ms",
        f"  filtered to one instance id                  {s['describe_filtered_ms']['median']:7.1f} ms{'':33}< 50 ms",
        f"  first page of 100                            {s['describe_paged_ms']['median']:7.1f} ms{'':33}< 50 ms",
        f"idle cloud of {nodes} nodes, resident           {s['resident_mb_idle_cloud']:7.1f} MB"
        f"  {s['resident_mb_before_cloud']:7.1f} MB (before)    {'':7}< 300 MB",
        f"controller messages, idle / all running        {s['message_bytes_per_s_idle'] / 1000:7.1f} KB/s"
        f"  {s['message_bytes_per_s_all_running'] / 1000:7.1f} KB/s",
    ]
    if "after_churn" in s:
        lines.append(
            f"  after {s['churn_launches']:,} launches and terminations    "
            f"{s['after_churn']['describe_server_ms']['median']:7.1f} ms{'':33}x{s['ratio_describe_after_churn']}"
        )
    if growth:
        lines += [f"  grows faster than linearly: {sentence}" for sentence in growth["superlinear"]]
    return lines


if __name__ == "__main__":
    sys.exit(main())
