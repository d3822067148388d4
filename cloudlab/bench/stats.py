"""Small statistics for repeated measurements: median and spread, never a single run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def summarise(values: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    q = statistics.quantiles(ordered, n=4) if len(ordered) >= 2 else [ordered[0]] * 3
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 4),
        "min": round(ordered[0], 4),
        "max": round(ordered[-1], 4),
        "p25": round(q[0], 4),
        "p75": round(q[2], 4),
        "stdev": round(statistics.stdev(ordered), 4) if len(ordered) > 1 else 0.0,
    }


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]
