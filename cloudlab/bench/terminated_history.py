"""DescribeInstances as terminated instances pile up in a cloud's history (issue 10, item 14).

One cloud on libvirt's test driver (started as ``cloudlab up`` starts one), 100 live instances, and
the load of :mod:`cloudlab.bench.api_load` (DescribeInstances of everything, SigV4, keep-alive
connections, ``threads`` threads) measured three times:

1. ``fresh``: only the 100 live instances exist;
2. ``recent_history``: ``history`` more instances were launched and terminated just now (EC2 shows
   them for an hour, so the answer lists them too);
3. ``old_history``: the same terminations moved an hour and more into the past in the database (as
   time would have left them): EC2 no longer lists them, and neither should the cost of a describe
   grow with them.

Run it with ``python -m cloudlab.bench.terminated_history [--history 660] [--seconds 10]``; it prints
one JSON document. Ratios against ``fresh`` in the same run are the figures to compare.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cloudlab.bench.api_load import cloudlab_cloud, cloudlab_image, drive, listed_instances, populate


def _terminate_history(endpoint: Any, image_id: str, total: int, batch: int) -> None:
    ec2 = endpoint.client()
    made = 0
    while made < total:
        count = min(batch, total - made)
        ids = [
            i["InstanceId"] for i in ec2.run_instances(ImageId=image_id, MinCount=count, MaxCount=count)["Instances"]
        ]
        ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig={"Delay": 0.5, "MaxAttempts": 240})
        ec2.terminate_instances(InstanceIds=ids)
        ec2.get_waiter("instance_terminated").wait(InstanceIds=ids, WaiterConfig={"Delay": 0.5, "MaxAttempts": 240})
        made += count


def _age_terminations(database: Path, seconds: float) -> int:
    with sqlite3.connect(database, timeout=30) as db:
        cursor = db.execute(
            "UPDATE instances SET terminated_at = terminated_at - ? WHERE state='terminated'", (seconds,)
        )
        return cursor.rowcount


def run(history: int = 660, live: int = 100, seconds: float = 10.0, threads: int = 4) -> dict[str, Any]:
    results: dict[str, Any] = {"live": live, "history": history, "threads": threads, "seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="cloudlab-terminated-") as tmp:
        root = Path(tmp)
        with cloudlab_cloud(root / "state") as cloud:
            image = cloudlab_image(cloud.client(), root / "stand-in-image")
            populate(cloud, image, live)
            results["fresh"] = drive(cloud, seconds, threads) | {"listed": len(listed_instances(cloud))}
            began = time.monotonic()
            _terminate_history(cloud, image, history, batch=90)
            results["history_build_s"] = round(time.monotonic() - began, 1)
            results["recent_history"] = drive(cloud, seconds, threads) | {"listed": len(listed_instances(cloud))}
            results["aged_rows"] = _age_terminations(root / "state" / "clc.db", 2 * 3600)
            results["old_history"] = drive(cloud, seconds, threads) | {"listed": len(listed_instances(cloud))}
    fresh = results["fresh"]["requests_per_s"] or float("nan")
    for case in ("recent_history", "old_history"):
        results[f"{case}_throughput_vs_fresh"] = round(results[case]["requests_per_s"] / fresh, 2)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=660, help="terminated instances to make (default 660)")
    parser.add_argument("--live", type=int, default=100, help="live instances (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    json.dump(run(args.history, args.live, args.seconds, args.threads), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
