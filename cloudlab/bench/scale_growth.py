"""How the cloud's costs grow with its size: the scale benchmark at several sizes, a table and a chart.

Each size is a fresh in-process cloud on libvirt's test driver (:func:`cloudlab.bench.scale.run_scale_benchmark`)
with nodes in proportion to instances (200 nodes for 10,000, as the issue asks), so what grows is the
cloud, not only the load on a fixed set of nodes. For each cost the table gives the *growth exponent*
between consecutive sizes, ``log(cost2 / cost1) / log(size2 / size1)``: 1 is linear, above ~1.15 the
cost grows faster than the cloud, which is what the report points at.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from cloudlab.bench.scale import run_scale_benchmark

SIZES = (1000, 2000, 5000, 10000)
COSTS = {
    "all_running_s": "launch: RunInstances to all running (s)",
    "describe_ms": "DescribeInstances of all, server side (ms)",
    "message_kb_per_s": "controller messages with all running (KB/s)",
    "resident_mb": "resident memory with all running (MB)",
}
SUPERLINEAR = 1.15


def growth_rows(
    sizes: tuple[int, ...] = SIZES,
    instances_per_node: int = 50,
    clusters: int = 4,
    describe_repeats: int = 5,
    churn: int = 0,
    progress: Any = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per size with the four costs (and more of the scale report's figures beside them), and the
    whole scale report of the largest size, which alone is churned by ``churn`` launches and terminations."""
    rows = []
    report: dict[str, Any] = {}
    for size in sizes:
        nodes = max(clusters, size // instances_per_node)
        report = run_scale_benchmark(
            instances=size,
            nodes=nodes,
            clusters=clusters,
            describe_repeats=describe_repeats,
            churn=churn if size == max(sizes) else 0,
            progress=progress,
        )
        rows.append(
            {
                "instances": size,
                "nodes": report["nodes"],
                "clusters": clusters,
                "all_running_s": report["all_running_s"],
                "describe_ms": report["describe_server_ms"]["median"],
                "describe_filtered_ms": report["describe_filtered_ms"]["median"],
                "describe_paged_ms": report["describe_paged_ms"]["median"],
                "message_kb_per_s": report["message_bytes_per_s_all_running"] / 1000,
                "message_kb_per_s_idle": report["message_bytes_per_s_idle"] / 1000,
                "resident_mb": report["resident_mb_all_running"],
                "resident_mb_idle": report["resident_mb_idle_cloud"],
            }
        )
    return pd.DataFrame(rows), report


def growth_exponents(frame: pd.DataFrame) -> pd.DataFrame:
    """For each cost and each pair of consecutive sizes, the exponent of its growth (1 = linear)."""
    rows = []
    for (_, small), (_, large) in zip(frame.iterrows(), frame.iloc[1:].iterrows(), strict=False):
        row: dict[str, Any] = {"from": int(small["instances"]), "to": int(large["instances"])}
        size_ratio = math.log(large["instances"] / small["instances"])
        for cost in COSTS:
            a, b = float(small[cost]), float(large[cost])
            row[cost] = round(math.log(b / a) / size_ratio, 2) if a > 0 and b > 0 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def superlinear(exponents: pd.DataFrame) -> list[str]:
    """Plain sentences for the costs that grew faster than the cloud, for the report."""
    found = []
    for _, row in exponents.iterrows():
        for cost, label in COSTS.items():
            if row[cost] == row[cost] and row[cost] > SUPERLINEAR:
                found.append(f"{label}: exponent {row[cost]} from {int(row['from']):,} to {int(row['to']):,} instances")
    return found


def growth_chart(frame: pd.DataFrame, path_png: Path | str) -> Path:
    """Four log-log panels, one per cost, with a linear reference line through the first size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    sizes = frame["instances"].astype(float)
    for ax, (cost, label) in zip(axes.flat, COSTS.items(), strict=True):
        values = frame[cost].astype(float)
        ax.loglog(sizes, values, "o-", label="measured")
        ax.loglog(sizes, values.iloc[0] * sizes / sizes.iloc[0], "--", color="grey", label="linear")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("instances")
        ax.legend(fontsize=8)
    fig.suptitle("cloudlab on libvirt's test driver: how each cost grows")
    fig.tight_layout()
    path = Path(path_png)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
