"""The instance table: a refreshing view of the instances with state colours, owner (for admins), node,
addresses and attached EBS volumes (``/dev/sdf=vol-...``, the device names given to AttachVolume); select
rows to terminate, reboot, show the console, or get the SSH command."""

from __future__ import annotations

import html
import threading

import ipywidgets as widgets
import pandas as pd

from cloudlab.client import Cloud
from cloudlab.widgets._common import Panel

STATE_COLOURS = {
    "pending": "#f9a825",
    "running": "#2e7d32",
    "stopping": "#ef6c00",
    "stopped": "#757575",
    "shutting-down": "#c62828",
    "terminated": "#9e9e9e",
}
SHOWN = ["instance_id", "name", "state", "type", "owner", "node", "private_ip", "public_ip", "volumes", "launched",
         "reason"]  # fmt: skip


def state_badge(state: str) -> str:
    colour = STATE_COLOURS.get(state, "#455a64")
    return (
        f'<span style="color:white;background:{colour};padding:1px 6px;border-radius:3px">{html.escape(state)}</span>'
    )


def table_html(df: pd.DataFrame, show_owner: bool = True) -> str:
    """The rows as an HTML table, the state as a coloured badge."""
    columns = [c for c in SHOWN if c in df.columns and (show_owner or c != "owner")]
    if df.empty:
        return "<i>no instances</i>"
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in df.to_dict("records"):
        cells = []
        for column in columns:
            value = row.get(column)
            if column == "state":
                text = state_badge(str(value))
            elif value is None or (isinstance(value, float) and value != value):
                text = ""
            elif column == "launched" and hasattr(value, "strftime"):
                text = value.strftime("%Y-%m-%d %H:%M:%S")
            else:
                text = html.escape(str(value))
            cells.append(f"<td style='padding:2px 8px'>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class InstanceTable(Panel):
    """``InstanceTable(cloud)``: ``refresh()`` reads the instances into ``rows`` (a DataFrame) and the HTML
    ``table``; select ids in ``selected`` (a SelectMultiple), then ``terminate_button.click()``,
    ``reboot_button``, ``console_button`` (text in ``output``) or ``ssh_button`` (the command line in
    ``output``). ``auto_refresh`` seconds (0: off) refresh it in the background while ``auto`` is ticked."""

    def __init__(
        self,
        cloud: Cloud | None = None,
        state: str | None = None,
        auto_refresh: float = 5.0,
        include_terminated: bool = False,
    ) -> None:
        super().__init__(cloud, state)
        self.rows = pd.DataFrame()
        self.table = widgets.HTML(value="")
        self.selected = widgets.SelectMultiple(options=[], description="Selected", rows=6)
        self.show_terminated = widgets.Checkbox(value=include_terminated, description="show terminated")
        self.auto = widgets.Checkbox(value=auto_refresh > 0, description=f"refresh every {auto_refresh or 5:g} s")
        self.interval = auto_refresh or 5.0
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh")
        self.terminate_button = widgets.Button(description="Terminate", button_style="danger", icon="trash")
        self.reboot_button = widgets.Button(description="Reboot", button_style="warning", icon="repeat")
        self.console_button = widgets.Button(description="Console", icon="terminal")
        self.ssh_button = widgets.Button(description="SSH command", icon="key")
        self.output = widgets.Textarea(value="", layout=widgets.Layout(width="100%", height="12em"))
        self.refresh_button.on_click(lambda _: self.refresh())
        self.terminate_button.on_click(lambda _: self.terminate())
        self.reboot_button.on_click(lambda _: self.reboot())
        self.console_button.on_click(lambda _: self.show_console())
        self.ssh_button.on_click(lambda _: self.show_ssh())
        self.show_terminated.observe(lambda _: self.refresh(), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.refresh_button, self.auto, self.show_terminated]),
                self.table,
                widgets.HBox(
                    [
                        self.selected,
                        widgets.VBox([self.terminate_button, self.reboot_button, self.console_button, self.ssh_button]),
                    ]
                ),
                self.message,
                self.output,
            ]
        )
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self.refresh()
        self.auto.observe(lambda change: self._auto(change["new"]), names="value")
        self._auto(self.auto.value)

    # -- the view -------------------------------------------------------------------------------------
    def refresh(self) -> pd.DataFrame | None:
        """Read the instances again; keeps the selection of ids that are still listed."""
        return self.guard(self._refresh)

    def _refresh(self) -> pd.DataFrame:
        df = self.cloud.instances(include_terminated=self.show_terminated.value)
        self.rows = df
        show_owner = self.cloud.user == "admin" or df["owner"].nunique() > 1
        self.table.value = table_html(df, show_owner=show_owner)
        keep = [i for i in self.selected.value if i in set(df["instance_id"])]
        self.selected.options = [(self._label(row), row["instance_id"]) for row in df.to_dict("records")]
        self.selected.value = tuple(keep)
        return df

    @staticmethod
    def _label(row: dict) -> str:
        name = f" {row['name']}" if isinstance(row.get("name"), str) and row["name"] else ""
        return f"{row['instance_id']}{name} [{row['state']}]"

    def select(self, *instance_ids: str) -> None:
        self.selected.value = tuple(instance_ids)

    def states(self) -> dict[str, str]:
        return dict(zip(self.rows["instance_id"], self.rows["state"], strict=True)) if not self.rows.empty else {}

    def _chosen(self) -> list[str]:
        if not self.selected.value:
            raise ValueError("select one or more instances first")
        return list(self.selected.value)

    # -- actions ---------------------------------------------------------------------------------------
    def terminate(self) -> list[str] | None:
        def act() -> list[str]:
            ids = self._chosen()
            self.cloud.terminate(ids)
            self.say(f"terminating {', '.join(ids)}", "ok")
            self._refresh()
            return ids

        return self.guard(act)

    def reboot(self) -> list[str] | None:
        def act() -> list[str]:
            ids = self._chosen()
            self.cloud.reboot(ids)
            self.say(f"rebooting {', '.join(ids)}", "ok")
            self._refresh()
            return ids

        return self.guard(act)

    def show_console(self) -> str | None:
        def act() -> str:
            ids = self._chosen()
            parts = []
            for instance_id in ids:
                text = self.cloud.console(instance_id)
                parts.append(f"===== {instance_id} =====\n{text or '(no console output yet)'}")
            self.output.value = "\n".join(parts)
            self.say(f"console of {', '.join(ids)}", "ok")
            return self.output.value

        return self.guard(act)

    def show_ssh(self) -> str | None:
        def act() -> str:
            ids = self._chosen()
            lines = [self.cloud.ssh_command(i) for i in ids]
            self.output.value = "\n".join(lines)
            self.say("run in a terminal (root on this machine): " + lines[0] + (" ..." if len(lines) > 1 else ""), "ok")
            return self.output.value

        return self.guard(act)

    # -- refreshing in the background -----------------------------------------------------------------
    def _auto(self, on: bool) -> None:
        self._stop.set()
        if not on:
            return
        self._stop = stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.interval):
                self.refresh()

        self._timer = threading.Thread(target=loop, name="cloudlab-table-refresh", daemon=True)
        self._timer.start()

    def close(self) -> None:
        """Stop refreshing and close the widgets."""
        self._stop.set()
        self.widget.close()
