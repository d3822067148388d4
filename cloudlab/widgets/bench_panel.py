"""The benchmark panel: two running instances of the connected cloud, or a fresh pair per network
flavour (a short-lived cloud each); duration, streams, repeats; live progress; a results table and a
chart of throughput (median with min–max error bars), RTT and CPU per path."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import pandas as pd

from cloudlab.bench.pairs import benchmark_fresh_pairs, benchmark_pair
from cloudlab.client import Cloud
from cloudlab.widgets._common import Panel, figure_png

TWO = "two instances"
FRESH = "fresh pair"


def results_figure(df: pd.DataFrame) -> Any:
    """Throughput, RTT and CPU per path: the median of the repeats, error bars from min to max."""
    from matplotlib.figure import Figure

    ok = df[df["error"].isna()] if "error" in df else df
    fig = Figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 3)
    panels = [
        ("gbit_s", "Gbit/s", "TCP throughput (iperf3)"),
        ("rtt_ms", "ms", "round-trip time (ping)"),
        ("host_cpu_pct", "% of the machine", "host CPU during iperf3"),
    ]
    for ax, (metric, unit, title) in zip(axes, panels, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
        data = ok.dropna(subset=[metric]) if metric in ok else ok.iloc[0:0]
        if data.empty:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        stats = data.astype({metric: float}).groupby("kind", sort=False)[metric].agg(["median", "min", "max"])
        errors = [stats["median"] - stats["min"], stats["max"] - stats["median"]]
        colours = ["#dd8452" if "vde" in kind else "#4c72b0" for kind in stats.index]
        ax.bar(range(len(stats)), stats["median"], yerr=errors, capsize=4, color=colours)
        ax.set_xticks(range(len(stats)))
        ax.set_xticklabels(stats.index, rotation=20, ha="right", fontsize=8)
        for x, value in enumerate(stats["median"]):
            ax.annotate(
                f"{value:.3g}",
                (x, value),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
    fig.tight_layout()
    return fig


class BenchmarkPanel(Panel):
    """``BenchmarkPanel(cloud)``: ``mode.value`` is "two instances" (``server``/``client`` drop-downs of
    running instances) or "fresh pair" (``flavours``); ``duration``, ``streams``, ``repeats``; then
    ``run_button.click()`` (background; ``join()`` waits) or ``run(wait=True)``. The runs end up in
    ``results`` (a DataFrame), the summary in ``table``, the chart in ``chart`` (PNG)."""

    def __init__(self, cloud: Cloud | None = None, state: str | None = None) -> None:
        super().__init__(cloud, state)
        style = {"description_width": "90px"}
        self.mode = widgets.ToggleButtons(options=[TWO, FRESH], value=TWO, description="Measure", style=style)
        self.server = widgets.Dropdown(description="Server", options=[], style=style)
        self.client = widgets.Dropdown(description="Client", options=[], style=style)
        self.flavours = widgets.SelectMultiple(
            options=["direct", "vde"], value=("direct", "vde"), description="Flavours", rows=2, style=style
        )
        self.duration = widgets.FloatText(description="Duration (s)", value=3.0, style=style)
        self.streams = widgets.IntText(description="Streams", value=1, style=style)
        self.repeats = widgets.IntText(description="Repeats", value=3, style=style)
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.reload_button = widgets.Button(description="Reload instances", icon="refresh")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="runs")
        self.progress_label = widgets.Label("")
        self.table = widgets.HTML(value="")
        self.chart = widgets.Image(format="png", value=b"")
        self.results = pd.DataFrame()
        self.run_button.on_click(lambda _: self.run())
        self.reload_button.on_click(lambda _: self.reload())
        self.mode.observe(lambda _: self._show_mode(), names="value")
        self._two = widgets.HBox([self.server, self.client, self.reload_button])
        self._fresh = widgets.HBox([self.flavours, widgets.Label("(each flavour: a new cloud, two instances)")])
        self.widget = widgets.VBox(
            [
                self.mode,
                self._two,
                self._fresh,
                widgets.HBox([self.duration, self.streams, self.repeats]),
                widgets.HBox([self.run_button, self.progress, self.progress_label]),
                self.message,
                self.table,
                self.chart,
            ]
        )
        self._show_mode()
        if cloud is not None or state is not None:
            self.reload()

    def _show_mode(self) -> None:
        self._two.layout.display = None if self.mode.value == TWO else "none"
        self._fresh.layout.display = None if self.mode.value == FRESH else "none"

    def reload(self) -> bool:
        """List the running instances of the connected cloud in the server and client drop-downs."""

        def act() -> bool:
            df = self.cloud.instances(include_terminated=False)
            df = df[df["state"] == "running"]
            options = [
                (
                    f"{r['instance_id']} {r['name'] or ''} {r['private_ip'] or '(no address)'}".replace("  ", " "),
                    r["instance_id"],
                )
                for r in df.to_dict("records")
            ]
            self.server.options = options
            self.client.options = options
            if len(options) >= 2:
                self.server.value, self.client.value = options[0][1], options[1][1]
            return True

        return bool(self.guard(act))

    def settings(self) -> dict[str, Any]:
        """The run's keywords from the widgets; ValueError says what is wrong."""
        duration, streams, repeats = self.duration.value, self.streams.value, self.repeats.value
        if duration is None or duration <= 0 or duration > 600:
            raise ValueError(f"duration must be between 0 and 600 s (it is {duration})")
        if streams is None or not 1 <= streams <= 128:
            raise ValueError(f"streams must be between 1 and 128 (it is {streams})")
        if repeats is None or not 1 <= repeats <= 100:
            raise ValueError(f"repeats must be between 1 and 100 (it is {repeats})")
        settings: dict[str, Any] = {"duration_s": float(duration), "streams": int(streams), "repeats": int(repeats)}
        if self.mode.value == TWO:
            if not self.server.value or not self.client.value:
                raise ValueError("pick two running instances (Reload instances lists them), or use a fresh pair")
            if self.server.value == self.client.value:
                raise ValueError("pick two different instances for server and client")
        elif not self.flavours.value:
            raise ValueError("pick at least one network flavour")
        return settings

    def run(self, wait: bool = False) -> pd.DataFrame | None:
        """Start the benchmark (in the background, or here with ``wait=True``, then returns the runs)."""
        if self.busy:
            self.say("a benchmark is running; wait for it to finish", "error")
            return None
        settings = self.guard(self.settings)
        if settings is None:
            return None
        total = settings["repeats"] * (1 if self.mode.value == TWO else len(self.flavours.value))
        self.progress.max, self.progress.value, self.progress.bar_style = total, 0, "info"
        self.progress_label.value = "starting" + (
            " (building the clouds takes a minute each)" if self.mode.value == FRESH else ""
        )
        self.say("")
        if wait:
            return self.guard(lambda: self._run(settings))
        self.in_background(lambda: self._run(settings), "cloudlab-benchmark")
        return None

    def _on_run(self, done: int, total: int, row: dict[str, Any]) -> None:
        self.progress.max, self.progress.value = total, done
        if row.get("error"):
            self.progress_label.value = f"{done}/{total}: {row.get('path')} failed"
        else:
            self.progress_label.value = f"{done}/{total}: {row.get('path')} {row.get('gbit_s') or 0:.3g} Gbit/s"

    def _run(self, settings: dict[str, Any]) -> pd.DataFrame:
        if self.mode.value == TWO:
            df = benchmark_pair(
                self.cloud, self.server.value, self.client.value, progress=False, on_run=self._on_run, **settings
            )
        else:
            df = benchmark_fresh_pairs(list(self.flavours.value), progress=False, on_run=self._on_run, **settings)
        self.show_results(df)
        return df

    def show_results(self, df: pd.DataFrame) -> None:
        """Put ``df`` (rows of ``run_paths``) in the table and the chart."""
        from cloudlab.bench.network import summarise

        self.results = df
        summary = summarise(df)
        failed = df[df["error"].notna()] if "error" in df else df.iloc[0:0]
        parts = []
        if not summary.empty:
            keep = [c for c in summary.columns if c in ("path", "n") or c.endswith(("_median", "_min", "_max"))]
            parts.append(summary[keep].to_html(index=False, float_format=lambda v: f"{v:.4g}"))
        if not failed.empty:
            parts.append("<b>failed runs</b>" + failed[["path", "repeat", "error"]].to_html(index=False))
        self.table.value = "".join(parts)
        self.chart.value = figure_png(results_figure(df))
        self.progress.bar_style = "danger" if summary.empty else ("warning" if not failed.empty else "success")
        if summary.empty:
            self.say("every run failed: " + str(failed["error"].iloc[0]) if not failed.empty else "no results", "error")
        else:
            self.say(
                f"{len(df) - len(failed)} run(s) measured" + (f", {len(failed)} failed" if len(failed) else ""),
                "ok" if failed.empty else "error",
            )
