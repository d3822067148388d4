"""Charts of the network benchmark: median per path with min–max error bars (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

COLOURS = {"hand": "#4c72b0", "cloudlab": "#dd8452"}


def _bars(df: pd.DataFrame, metric: str, ylabel: str, title: str, path_png: Path, log: bool = False) -> Path:
    ok = df[df["error"].isna()] if "error" in df else df
    ok = ok.dropna(subset=[metric])
    stats = ok.groupby(["kind", "built_by"], sort=False)[metric].agg(["median", "min", "max"]).reset_index()
    kinds = list(dict.fromkeys(stats["kind"]))
    builders = [b for b in ("hand", "cloudlab") if b in set(stats["built_by"])] or sorted(set(stats["built_by"]))
    width = 0.8 / max(1, len(builders))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(kinds) + 2), 4.5))
    for i, builder in enumerate(builders):
        part = stats[stats["built_by"] == builder].set_index("kind").reindex(kinds)
        xs = [k + (i - (len(builders) - 1) / 2) * width for k in range(len(kinds))]
        errors = [(part["median"] - part["min"]).fillna(0), (part["max"] - part["median"]).fillna(0)]
        bars = ax.bar(
            xs, part["median"], width, yerr=errors, capsize=3, label=f"built by {builder}", color=COLOURS.get(builder)
        )
        for bar, value in zip(bars, part["median"], strict=True):
            if value == value:  # not NaN
                ax.annotate(
                    f"{value:.3g}",
                    (bar.get_x() + bar.get_width() / 2, value),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    ax.set_xticks(range(len(kinds)))
    ax.set_xticklabels(kinds, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path_png = Path(path_png)
    path_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path_png, dpi=120)
    plt.close(fig)
    return path_png


def throughput_chart(df: pd.DataFrame, path_png: Path | str, log: bool = True) -> Path:
    """Median iperf3 throughput per path (Gbit/s, log scale by default), error bars min–max."""
    return _bars(df, "gbit_s", "Gbit/s (median, min–max)", "TCP throughput per path (iperf3)", Path(path_png), log)


def rtt_chart(df: pd.DataFrame, path_png: Path | str, log: bool = True) -> Path:
    """Median ping RTT per path (ms), error bars min–max of the per-repeat averages."""
    return _bars(df, "rtt_ms", "RTT ms (median, min–max)", "Round-trip time per path (ping)", Path(path_png), log)
