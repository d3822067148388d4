"""The usage dashboard: instance-hours, vCPU-hours, GB-hours and network bytes per user or per instance
type, and per day over the period, filtered by user and period; charts (matplotlib) and an export to CSV.

The figures come from ``Cloud.usage`` (``cloudlab.usage.fetch_usage``, admins only); the dashboard
only asks, draws and saves them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd

from cloudlab.client import Cloud
from cloudlab.widgets._common import Panel, figure_png

ALL = "(all users)"
#: (label, ``since`` for fetch_usage: a duration ago, or None for everything)
PERIODS = [("last hour", "1h"), ("last day", "1d"), ("last week", "7d"), ("last 30 days", "30d"), ("all time", "all")]
#: Chart label -> the column(s) it sums.
METRICS = {
    "instance-hours": ("instance_hours",),
    "vCPU-hours": ("vcpu_hours",),
    "GB-hours": ("gb_hours",),
    "network bytes (rx+tx)": ("net_rx_bytes", "net_tx_bytes"),
    "S3 storage GB-hours": ("storage_gb_hours",),
    "S3 bytes (in+out)": ("s3_bytes_in", "s3_bytes_out"),
    "EBS GB-hours (volumes+snapshots)": ("ebs_gb_hours",),
}


def _metric(df: pd.DataFrame, columns: tuple[str, ...]) -> pd.Series:
    present = [c for c in columns if c in df.columns]
    if not present:
        return pd.Series(0.0, index=df.index)
    return df[present].astype(float).sum(axis=1)


def usage_figure(grouped: pd.DataFrame, by: str, daily: pd.DataFrame | None = None) -> Any:
    """Top row: each metric per ``by`` group (bars); bottom row: each metric per UTC day (lines)."""
    from matplotlib.figure import Figure

    rows = 2 if daily is not None else 1
    fig = Figure(figsize=(13, 3 * rows))
    axes = fig.subplots(rows, len(METRICS), squeeze=False)
    for ax, (label, columns) in zip(axes[0], METRICS.items(), strict=True):
        ax.set_title(f"{label} per {by}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if grouped.empty or by not in grouped.columns:
            ax.text(0.5, 0.5, "no usage", ha="center", va="center", transform=ax.transAxes)
            continue
        values = _metric(grouped, columns)
        ax.bar([str(k) for k in grouped[by]], values.values, color="#4c72b0")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    if daily is not None:
        for ax, (label, columns) in zip(axes[1], METRICS.items(), strict=True):
            ax.set_title(f"{label} per day", fontsize=9)
            ax.grid(alpha=0.3)
            if daily.empty or "day" not in daily.columns:
                ax.text(0.5, 0.5, "no usage", ha="center", va="center", transform=ax.transAxes)
                continue
            days = pd.to_datetime(daily["day"], errors="coerce")
            series = pd.Series(_metric(daily, columns).values, index=days).sort_index()
            ax.plot(series.index, series.values, marker="o", ms=3, color="#dd8452")
            ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    return fig


class UsageDashboard(Panel):
    """``UsageDashboard(cloud)``: ``user`` (drop-down), ``period``, ``by`` ("user" or "type"); ``refresh()``
    reads ``data`` (the grouped DataFrame) and ``daily`` (per UTC day), draws ``chart`` (PNG) and fills
    ``table``; ``export_path.value`` then ``export_button.click()`` writes ``data`` as CSV and says where."""

    def __init__(self, cloud: Cloud | None = None, state: str | None = None, export_path: str = "usage.csv") -> None:
        super().__init__(cloud, state)
        style = {"description_width": "60px"}
        self.user = widgets.Dropdown(description="User", options=[ALL], value=ALL, style=style)
        self.period = widgets.Dropdown(description="Period", options=PERIODS, value="1d", style=style)
        self.by = widgets.ToggleButtons(description="Per", options=["user", "type"], value="user", style=style)
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.export_path = widgets.Text(description="CSV", value=export_path, style=style)
        self.export_button = widgets.Button(description="Export CSV", icon="download")
        self.table = widgets.HTML(value="")
        self.chart = widgets.Image(format="png", value=b"")
        self.data = pd.DataFrame()
        self.daily = pd.DataFrame()
        self.exported: Path | None = None
        self.refresh_button.on_click(lambda _: self.refresh())
        self.export_button.on_click(lambda _: self.export())
        self._refreshing = False
        for control in (self.user, self.period, self.by):
            control.observe(lambda _: self.refresh(), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.user, self.period, self.by, self.refresh_button]),
                widgets.HBox([self.export_path, self.export_button]),
                self.message,
                self.chart,
                self.table,
            ]
        )
        self.refresh()

    def query(self) -> dict[str, Any]:
        """The keywords for ``Cloud.usage`` from the widgets."""
        since = None if self.period.value == "all" else self.period.value
        return {"user": None if self.user.value == ALL else self.user.value, "since": since, "by": self.by.value}

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Change several filters with one refresh at the end: ``with dashboard.hold(): ...``."""
        self._refreshing = True
        try:
            yield
        finally:
            self._refreshing = False
        self.refresh()

    def refresh(self) -> pd.DataFrame | None:
        if self._refreshing:  # changing the user list below fires the observers again
            return None
        self._refreshing = True
        try:
            return self.guard(self._refresh)
        finally:
            self._refreshing = False

    def _refresh(self) -> pd.DataFrame:
        query = self.query()
        grouped = self.cloud.usage(**query)
        daily = self.cloud.usage(**(query | {"by": "day"}))
        self.data, self.daily = grouped, daily
        if query["by"] == "user" and query["user"] is None and "user" in grouped.columns:
            users = sorted({str(u) for u in grouped["user"].dropna()})
            self.user.options = [ALL, *users]
            self.user.value = ALL
        self.chart.value = figure_png(usage_figure(grouped, query["by"], daily))
        self.table.value = (
            grouped.to_html(index=False, max_rows=200) if not grouped.empty else "<i>no usage in this period</i>"
        )
        total = grouped.attrs.get("total") or {}
        hours = total.get("instance_hours", grouped["instance_hours"].sum() if "instance_hours" in grouped else 0)
        self.say(f"{len(grouped)} {query['by']}(s), {float(hours or 0):.2f} instance-hours", "ok")
        return grouped

    def export(self, path: str | Path | None = None) -> Path | None:
        """Write the shown usage (``data``) to CSV at ``path`` or ``export_path``; the message says where."""

        def act() -> Path:
            target = Path(path or self.export_path.value or "usage.csv").expanduser()
            if target.is_dir():
                raise ValueError(f"{target} is a folder: give a file name ending in .csv")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.data.to_csv(target, index=False)
            self.exported = target.resolve()
            self.say(f"wrote {len(self.data)} row(s) to {self.exported}", "ok")
            return self.exported

        return self.guard(act)
