"""Workloads in running instances, over SSH from the cluster's outside namespace: iperf3 between two
instances, ping, a CPU burn. Results are pandas DataFrames (one row per run), with a progress bar.

The instances are reached as the cluster controller's host would reach them (``cloudlab exec``), with
the private key of the key pair they were launched with, which the cloud holds for pairs it created
(``cloudlab.reach.instance_remote``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from cloudlab.bench.measure import cpu_burn, iperf, ping
from cloudlab.reach import Unreachable, instance_remote


def _describe(cloud: Any, instance_id: str) -> dict[str, Any]:
    found = cloud.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    if not found or not found[0]["Instances"]:
        raise Unreachable(f"no instance {instance_id}")
    return found[0]["Instances"][0]


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="run", disable=not progress)


def iperf_between(
    cloud: Any,
    server_id: str,
    client_id: str,
    duration_s: float = 3,
    streams: int = 1,
    repeats: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """TCP throughput from ``client_id`` to ``server_id`` (iperf3), ``repeats`` times."""
    server, client = instance_remote(cloud, server_id), instance_remote(cloud, client_id)
    rows = []
    with _bar(repeats, f"iperf3 {client_id} -> {server_id}", progress) as bar:
        for repeat in range(repeats):
            result = iperf(server, client, server.address, duration_s=duration_s, streams=streams)
            rows.append({"server": server_id, "client": client_id, "repeat": repeat} | result)
            bar.update(1)
    return pd.DataFrame(rows)


def ping_between(cloud: Any, source_id: str, target_id: str, count: int = 5) -> pd.DataFrame:
    """Round-trip times from ``source_id`` to ``target_id``'s private address."""
    target = _describe(cloud, target_id).get("PrivateIpAddress")
    if not target:
        raise Unreachable(f"{target_id} has no private address")
    result = ping(instance_remote(cloud, source_id), target, count=count)
    return pd.DataFrame([{"source": source_id, "target": target_id} | result])


def cpu_burn_on(cloud: Any, instance_ids: list[str], seconds: float = 2, progress: bool = True) -> pd.DataFrame:
    """A bounded CPU burn in each instance in turn (loop iterations per second: the guest's CPU speed)."""
    rows = []
    with _bar(len(instance_ids), "cpu burn", progress) as bar:
        for instance_id in instance_ids:
            rows.append({"instance_id": instance_id} | cpu_burn(instance_remote(cloud, instance_id), seconds=seconds))
            bar.update(1)
    return pd.DataFrame(rows)
