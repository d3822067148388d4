"""The launcher: image, type, count, key pair, security group, network flavour, cluster (its zone) and a
subnet of that zone; a Launch button, then one progress bar per instance (pending, running, boot marker).

The subnet choices follow the zone: picking another cluster lists that zone's subnets (of every VPC the
user sees), so a subnet of another zone cannot be asked for by mistake; on a vde cloud of several clusters
two launches into two zones' subnets of one VPC are that VPC spanning clusters.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from cloudlab.client import Cloud, Instance
from cloudlab.phases import PHASES
from cloudlab.widgets._common import Panel

NONE = "(none)"
WAIT_CHOICES = [("the boot marker", "booted"), ("running", "running"), ("nothing (return at once)", "")]
NETWORKS = ["any", "none", "vde", "direct"]
DEFAULT_SUBNET = "(the zone's default subnet)"


class Launcher(Panel):
    """``Launcher(cloud)``; set ``count.value``, ``image.value`` ... then ``launch_button.click()`` (or
    ``launch(wait=True)``). The handles are in ``last_launch``, the bars in ``bars``; ``join()`` waits."""

    def __init__(self, cloud: Cloud | None = None, state: str | None = None, timeout: float = 180) -> None:
        super().__init__(cloud, state)
        style = {"description_width": "110px"}
        self.image = widgets.Dropdown(description="Image", options=[], style=style)
        self.instance_type = widgets.Dropdown(description="Type", options=["t2.micro"], value="t2.micro", style=style)
        self.count = widgets.IntText(description="Count", value=1, style=style)
        self.name = widgets.Text(description="Name", placeholder="Name tag (optional)", style=style)
        self.key_name = widgets.Dropdown(description="Key pair", options=[(NONE, "")], value="", style=style)
        self.security_group = widgets.Dropdown(
            description="Security group", options=[(NONE, "")], value="", style=style
        )
        self.network = widgets.Dropdown(description="Network", options=NETWORKS, value="any", style=style)
        self.cluster = widgets.Dropdown(description="Cluster", options=[], style=style)
        self.subnet = widgets.Dropdown(description="Subnet", options=[(DEFAULT_SUBNET, "")], value="", style=style)
        self._subnets: list[dict[str, Any]] = []
        self.cluster.observe(lambda _: self._show_subnets(), names="value")
        self.user_data = widgets.Textarea(description="User data", placeholder="#!/bin/sh ...", style=style)
        self.wait_for = widgets.Dropdown(description="Wait for", options=WAIT_CHOICES, value="booted", style=style)
        self.timeout = widgets.IntText(description="Timeout (s)", value=int(timeout), style=style)
        self.launch_button = widgets.Button(description="Launch", button_style="primary", icon="rocket")
        self.reload_button = widgets.Button(description="Reload choices", icon="refresh")
        self.bars = widgets.VBox([])
        self.last_launch: list[Instance] = []
        self.progress: dict[str, widgets.IntProgress] = {}
        self.phases: dict[str, str] = {}
        self.launch_button.on_click(lambda _: self.launch())
        self.reload_button.on_click(lambda _: self.reload())
        self.widget = widgets.VBox(
            [
                widgets.HBox(
                    [
                        widgets.VBox([self.image, self.instance_type, self.count, self.name, self.wait_for]),
                        widgets.VBox(
                            [self.key_name, self.security_group, self.network, self.cluster, self.subnet, self.timeout]
                        ),
                    ]
                ),
                self.user_data,
                widgets.HBox([self.launch_button, self.reload_button]),
                self.message,
                self.bars,
            ]
        )
        self.reload()

    # -- choices --------------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Fill the drop-downs from the cloud (images, types, key pairs, groups, clusters)."""
        return bool(self.guard(self._reload))

    def _reload(self) -> bool:
        cloud = self.cloud
        images = cloud.images()
        if not images.empty:  # machine images only (not the kernels and ramdisks they boot with)
            images = images[(images["state"] == "available") & images["image_id"].str.startswith("ami-")]
        options = [(f"{row.name or row.image_id} ({row.image_id})", row.image_id) for row in images.itertuples()]
        default = next((value for label, value in options if label.startswith("cloudlab-default ")), None)
        self.image.options = options
        self.image.value = default or (options[0][1] if options else None)
        types = cloud.instance_types()
        self.instance_type.options = types
        if types:
            self.instance_type.value = "t2.micro" if "t2.micro" in types else types[0]
        self.key_name.options = [(NONE, ""), *[(k, k) for k in cloud.key_pairs()]]
        groups = cloud.security_groups()
        self.security_group.options = [
            (NONE, ""),
            *[(f"{r.name} ({r.group_id})", r.group_id) for r in groups.itertuples()],
        ]
        clusters = cloud.clusters()
        self.cluster.options = [(f"{r.cluster} ({r.zone}, network {r.network})", r.zone) for r in clusters.itertuples()]
        self._cluster_networks = dict(zip(clusters["zone"], clusters["network"], strict=True))
        self._subnets = cloud.ec2.describe_subnets().get("Subnets", [])
        self.cluster.value = self.cluster.options[0][1] if self.cluster.options else None
        self._show_subnets()
        self.key_name.value = ""
        self.security_group.value = ""
        if not options:
            self.say("no image is registered: run cloudlab image build", "error")
        else:
            self.say("")
        return True

    def _show_subnets(self) -> None:
        """The subnets of the chosen zone (and the zone's default subnet, as EC2 picks without one)."""
        zone = self.cluster.value
        here = [s for s in self._subnets if s.get("AvailabilityZone") == zone]
        here.sort(key=lambda s: (not s.get("DefaultForAz"), s.get("VpcId", ""), s.get("CidrBlock", "")))
        self.subnet.options = [(DEFAULT_SUBNET, "")] + [
            (
                f"{s['SubnetId']} {s.get('CidrBlock', '')} ({s.get('VpcId', '')}"
                + (", default)" if s.get("DefaultForAz") else ")"),
                s["SubnetId"],
            )
            for s in here
        ]
        self.subnet.value = ""

    # -- launching -------------------------------------------------------------------------------------
    def request(self) -> dict[str, Any]:
        """The keywords for ``Cloud.run`` from the widgets' values; ValueError says what is wrong."""
        count = self.count.value
        if count is None or count < 1:
            raise ValueError(f"count must be at least 1 (it is {count})")
        if count > 64:
            raise ValueError(f"count {count} is more than one launch should start (64 at most)")
        if not self.image.value:
            raise ValueError("pick an image (none is registered? run cloudlab image build)")
        if not self.instance_type.value:
            raise ValueError("pick an instance type")
        if self.timeout.value is None or self.timeout.value <= 0:
            raise ValueError("the timeout must be a positive number of seconds")
        zone = self.cluster.value
        if self.network.value != "any":
            have = getattr(self, "_cluster_networks", {}).get(zone)
            if have is not None and have != self.network.value:
                raise ValueError(
                    f"the cluster in {zone} runs --network {have}, not {self.network.value}: pick another cluster"
                    f" or restart the cloud with cloudlab up --network {self.network.value}"
                )
        extra = {"SubnetId": self.subnet.value} if self.subnet.value else {}  # (only the zone's are listed)
        return {
            **extra,
            "count": int(count),
            "name": self.name.value.strip() or None,
            "image_id": self.image.value,
            "instance_type": self.instance_type.value,
            "key_name": self.key_name.value or None,
            "security_groups": [self.security_group.value] if self.security_group.value else None,
            "user_data": self.user_data.value or None,
            "zone": zone or None,
        }

    def launch(self, wait: bool = False) -> list[Instance] | None:
        """Launch as the widgets say; then follow each instance in its progress bar (in the background,
        or here with ``wait=True``). Returns the handles, or None with the problem in ``message``."""
        if self.busy:
            self.say("a launch is still being followed; wait for it to finish", "error")
            return None
        if not self.image.options and not self.reload():  # the cloud was unreachable: say so, again
            return None
        request = self.guard(self.request)
        if request is None:
            return None
        self.say(f"launching {request['count']} instance(s) ...")
        handles = self.guard(lambda: self.cloud.run(progress=False, **request))
        if handles is None:
            return None
        self.last_launch = handles
        self._show_bars(handles)
        until = self.wait_for.value
        if not until:
            self.say(f"launched {', '.join(handles)}", "ok")
            return handles
        if wait:
            self.guard(lambda: self._follow(handles, until))
        else:
            self.in_background(lambda: self._follow(handles, until), "cloudlab-launch")
        return handles

    def _show_bars(self, handles: list[Instance]) -> None:
        self.progress, self.phases, rows = {}, {}, []
        for handle in handles:
            bar = widgets.IntProgress(
                value=0,
                min=0,
                max=len(PHASES),
                description=handle.id,
                bar_style="info",
                style={"description_width": "initial"},
            )
            self.progress[handle.id] = bar
            self.phases[handle.id] = "requested"
            rows.append(widgets.HBox([bar, widgets.Label("requested")]))
        self.bars.children = rows

    def _phase(self, instance_id: str, phase: str, seconds: float) -> None:
        bar = self.progress.get(instance_id)
        if bar is None:
            return
        self.phases[instance_id] = phase
        if phase == "failed":
            bar.bar_style = "danger"
        else:
            bar.value = PHASES.index(phase) + 1
            if phase == self.wait_for.value or phase == "booted":
                bar.bar_style = "success"
        for row in self.bars.children:
            if row.children[0] is bar:
                row.children[1].value = f"{phase} after {seconds:.1f} s"

    def _follow(self, handles: list[Instance], until: str) -> None:
        try:
            self.cloud.watch(handles, until=until, timeout=float(self.timeout.value), on_change=self._phase)
        except TimeoutError:
            for instance_id, phase in self.phases.items():
                if phase != until:
                    self.progress[instance_id].bar_style = "warning"
            raise
        for handle in handles:
            handle.refresh()
        names = ", ".join(f"{h} ({h.private_ip})" if h.private_ip else h for h in handles)
        self.say(f"{len(handles)} instance(s) {until}: {names}", "ok")
