"""The placement side of vde-vs-direct: one VPC within one cluster or across two, on each flavour.

The trade-off as the seed states it, shown end to end: a ``direct`` cloud keeps a VPC in one cluster, so a
subnet of it in a second zone is refused (:func:`direct_refusal` asks a real direct cloud of two clusters and
returns EC2's error), while a ``vde`` cloud carries it over a cable between the clusters, at a cost
:func:`measure_placements` measures: one VPC's pair within a cluster and across clusters, the second cluster
behind a NAT (``cloudlab.bench.cloudpaths.cloud_vpc_pair``), side by side in one run.

Results use the network notebooks' columns (``cloudlab.bench.notebooks.RESULT_COLUMNS``); their ``flavour``
column names the series (``vde same-cluster``, ``vde cross-cluster``), so the notebook's summary and charts
work on them unchanged.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

PLACEMENTS = ("same-cluster", "cross-cluster")


def check_placement(placement: str) -> str:
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, not {placement!r}")
    return placement


def series_of(flavours: list[str], placement: str) -> list[str]:
    """What a run measures, in order: the flavours (same-cluster), or VDE's pair within and across clusters."""
    if check_placement(placement) == "same-cluster":
        return list(flavours)
    return ["vde same-cluster", "vde cross-cluster"] if "vde" in flavours else []


def direct_refusal() -> dict[str, str]:
    """Ask a real ``direct`` cloud of two clusters (VPC model) for a VPC with a subnet in each zone: the
    second is refused. Returns EC2's error (``code``, ``message``) and the request that was refused."""
    from botocore.exceptions import ClientError

    from cloudlab import servicectl
    from cloudlab.client import connect
    from cloudlab.config import CloudConfig
    from cloudlab.paths import StateLayout

    with tempfile.TemporaryDirectory(prefix="cloudlab-placement-") as tmp:
        layout = StateLayout(Path(tmp) / "state")
        config = CloudConfig(api_port=0, network="direct", network_model="vpc", clusters=2, nodes=1)
        servicectl.up(layout, config, timeout_s=180)
        try:
            ec2 = connect(str(layout.root)).ec2
            zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
            vpc = ec2.create_vpc(CidrBlock="10.92.0.0/16")["Vpc"]["VpcId"]
            ec2.create_subnet(VpcId=vpc, CidrBlock="10.92.1.0/24", AvailabilityZone=zones[0])
            request = f"CreateSubnet VpcId={vpc} CidrBlock=10.92.2.0/24 AvailabilityZone={zones[1]}"
            try:
                ec2.create_subnet(VpcId=vpc, CidrBlock="10.92.2.0/24", AvailabilityZone=zones[1])
            except ClientError as exc:
                error = exc.response["Error"]
                return {"code": error["Code"], "message": error["Message"], "request": request}
            raise AssertionError(f"the direct cloud accepted {request}: a VPC across its clusters")
        finally:
            servicectl.down(layout)


def measure_placements(
    repeats: int = 2, duration_s: float = 2, streams: int = 1, instance_type: str = "t2.micro", progress: bool = True
) -> pd.DataFrame:
    """VDE's VPC pair within one cluster, then across two (through the NAT): one row per run, the notebooks'
    columns first, ``flavour`` naming the series, ``placement`` and ``kind`` too."""
    from cloudlab.bench.cloudpaths import KIND_OF_PLACEMENT, cloud_vpc_pair
    from cloudlab.bench.network import run_paths
    from cloudlab.bench.notebooks import RESULT_COLUMNS, off_loop

    frames = []
    for placement in PLACEMENTS:
        source = functools.partial(cloud_vpc_pair, placement, instance_type=instance_type)
        runs = off_loop(run_paths, [source], repeats=repeats, duration_s=duration_s, streams=streams, progress=progress)
        runs = runs.assign(flavour=f"vde {placement}", placement=placement)
        runs["kind"] = runs["kind"].fillna(KIND_OF_PLACEMENT[placement])
        frames.append(runs)
    df = pd.concat(frames, ignore_index=True)
    return df[RESULT_COLUMNS + [c for c in df.columns if c not in RESULT_COLUMNS]]


def placement_cost(results: pd.DataFrame) -> dict[str, Any] | None:
    """Cross-cluster against same-cluster on VDE: throughput and RTT ratios of medians, with the spread."""
    from cloudlab.bench.notebooks import _ratio

    ok = results[results["error"].isna()] if "error" in results else results
    throughput = _ratio(ok, "gbit_s", "vde cross-cluster", "vde same-cluster")
    if throughput is None:
        return None
    return {
        "throughput_cross_over_same": throughput,
        "rtt_cross_over_same": _ratio(ok, "rtt_ms", "vde cross-cluster", "vde same-cluster"),
    }


def placement_conclusion(results: pd.DataFrame, refusal: dict[str, str] | None) -> str:
    """A few sentences from the runs and the refusal: what direct said, what VDE's cross-cluster pair cost."""
    lines = []
    if refusal is not None:
        lines.append(
            f"**direct** refuses a VPC across clusters: `{refusal['request']}` gave `{refusal['code']}`:"
            f" {refusal['message']}"
        )
    cost = placement_cost(results)
    if cost is None:
        lines.append("VDE's pairs produced no measurement to compare (see the errors above).")
        return " ".join(lines)
    tp, rtt = cost["throughput_cross_over_same"], cost["rtt_cross_over_same"]
    lines.append(
        f"**vde** carries it: across clusters (through the NAT, over the cable) one VPC's pair moves {tp['ratio']:.2f}×"
        f" the throughput of the same pair within one cluster (between {tp['low']:.2f}× and {tp['high']:.2f}× over"
        f" the repeats, n={tp['n']})."
    )
    if rtt is not None:
        lines.append(f"Its round trips take {rtt['ratio']:.2f}× as long ({rtt['low']:.2f}–{rtt['high']:.2f}×).")
    if tp["low"] <= 1 <= tp["high"]:
        lines.append("The spread includes 1: with these repeats the cable's cost is not resolved from the noise.")
    return " ".join(lines)
