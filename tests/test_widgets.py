"""The notebook widgets driven as a user would (``.value``, ``.click()``) against real clouds: the
launcher and instance table on simulated nodes, the usage dashboard, and the benchmark panel on two
real QEMU instances. Bad input and a stopped cloud give a message in the widget, never a traceback."""

from __future__ import annotations

from pathlib import Path

import boto3
import pandas as pd
import pytest
from botocore.config import Config

from cloudlab import servicectl
from cloudlab.client import Cloud, connect
from cloudlab.waiting import wait_until
from cloudlab.widgets import BenchmarkPanel, InstanceTable, Launcher, UsageDashboard
from tests.clouds import RunningCloud, start_cloud


@pytest.fixture
def cloud(sim_cloud: RunningCloud) -> Cloud:
    return connect(str(sim_cloud.layout.root))


@pytest.fixture(scope="module")
def stopped_cloud(tmp_path_factory: pytest.TempPathFactory) -> Cloud:
    """A client of a cloud that has been stopped (``cloudlab down``) since it connected."""
    running = start_cloud(tmp_path_factory.mktemp("stopped") / "state", hypervisor="test:///default", nodes=1)
    try:
        cloud = connect(str(running.layout.root))
        cloud.ec2 = boto3.client("ec2", config=Config(retries={"max_attempts": 1}), **cloud.boto3_kwargs())
    finally:
        servicectl.down(running.layout)
    return cloud


def text(widget) -> str:
    return widget.value if isinstance(widget.value, str) else ""


def test_launcher_launches_and_follows_each_instance(cloud: Cloud) -> None:
    launcher = Launcher(cloud)
    assert launcher.image.value and launcher.image.value.startswith("ami-")
    assert "t2.micro" in launcher.instance_type.options and launcher.cluster.value
    assert "application/vnd.jupyter.widget-view+json" in launcher._repr_mimebundle_()  # display(launcher)
    launcher.count.value = 2
    launcher.name.value = "widget-launch"
    launcher.wait_for.value = "running"  # simulated nodes never print the boot marker
    launcher.launch_button.click()
    assert launcher.join(30), "the launch was not followed to the end"
    handles = launcher.last_launch
    try:
        assert len(handles) == 2 and launcher.error is None, text(launcher.message)
        assert [bar.value for bar in launcher.progress.values()] == [2, 2]
        assert {bar.bar_style for bar in launcher.progress.values()} == {"success"}
        assert set(launcher.phases.values()) == {"running"}
        assert "2 instance(s) running" in launcher.message.value
        assert {h.id for h in cloud.find("widget-launch")} == {h.id for h in handles}
    finally:
        cloud.terminate(handles)


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("count", 0, "count must be at least 1"),
        ("count", -3, "count must be at least 1"),
        ("image", None, "pick an image"),
        ("timeout", 0, "timeout must be a positive"),
        ("network", "vde", "runs --network none, not vde"),
    ],
)
def test_launcher_bad_input_is_a_message(cloud: Cloud, setting: str, value, expected: str) -> None:
    launcher = Launcher(cloud)
    before = len(cloud.instances())
    getattr(launcher, setting).value = value
    launcher.launch_button.click()
    assert expected in launcher.message.value
    assert launcher.last_launch == [] and len(cloud.instances()) == before


def test_launcher_picks_a_zone_and_a_subnet_of_it(cloud_factory) -> None:
    running = cloud_factory("zones", hypervisor="test:///default", clusters=2, nodes=1)
    cloud = connect(str(running.layout.root))
    region = running.info["region"]
    vpc = cloud.ec2.create_vpc(CidrBlock="10.93.0.0/16")["Vpc"]["VpcId"]
    made = cloud.ec2.create_subnet(VpcId=vpc, CidrBlock="10.93.2.0/24", AvailabilityZone=f"{region}b")
    in_b = made["Subnet"]["SubnetId"]
    launcher = Launcher(cloud)
    assert launcher.error is None, launcher.message.value
    subnets = {s["SubnetId"]: s for s in cloud.ec2.describe_subnets()["Subnets"]}

    def listed() -> list[str]:
        return [value for _, value in launcher.subnet.options if value]

    assert launcher.cluster.value == f"{region}a" and launcher.subnet.value == ""
    assert listed() and {subnets[s]["AvailabilityZone"] for s in listed()} == {f"{region}a"}
    launcher.cluster.value = f"{region}b"  # the subnets follow the zone
    assert in_b in listed() and {subnets[s]["AvailabilityZone"] for s in listed()} == {f"{region}b"}
    launcher.subnet.value = in_b
    launcher.wait_for.value = "running"
    launcher.launch_button.click()
    assert launcher.join(30) and launcher.error is None, launcher.message.value
    [handle] = launcher.last_launch
    try:
        found = cloud.ec2.describe_instances(InstanceIds=[handle.id])["Reservations"][0]["Instances"][0]
        assert (found["SubnetId"], found["VpcId"]) == (in_b, vpc)
        assert found["Placement"]["AvailabilityZone"] == f"{region}b"
        assert found["Placement"]["HostId"].startswith("cluster2-")
    finally:
        cloud.terminate([handle])


def test_launcher_on_a_stopped_cloud_is_a_message(stopped_cloud: Cloud, tmp_path: Path) -> None:
    launcher = Launcher(stopped_cloud)
    assert "cannot reach the cloud" in launcher.message.value
    launcher.launch_button.click()
    assert "cannot reach the cloud" in launcher.message.value and "cloudlab up" in launcher.message.value
    nowhere = Launcher(state=str(tmp_path / "state"))  # no cloud was ever started here
    assert "cloud is not running" in nowhere.message.value and "cloudlab up" in nowhere.message.value
    nowhere.launch_button.click()
    assert "cloud is not running" in nowhere.message.value and launcher.last_launch == []


def test_table_selects_terminates_and_shows(cloud: Cloud) -> None:
    handles = cloud.run(2, "widget-table", wait="running", timeout=30, progress=False)
    try:
        table = InstanceTable(cloud, auto_refresh=0, include_terminated=True)
        listed = set(table.rows["instance_id"])
        assert {h.id for h in handles} <= listed
        assert "widget-table" in table.table.value and "running" in table.table.value
        assert "background:#2e7d32" in table.table.value  # running is green
        table.terminate_button.click()
        assert "select one or more instances" in table.message.value
        table.select(handles[0].id)
        table.ssh_button.click()
        assert table.output.value == f"cloudlab --state {cloud.layout.root} ssh {handles[0].id}"
        table.console_button.click()
        assert f"===== {handles[0].id} =====" in table.output.value
        table.reboot_button.click()
        assert "rebooting" in table.message.value
        table.terminate_button.click()
        assert "terminating" in table.message.value

        def shown_terminated() -> bool:
            table.refresh_button.click()
            return table.states()[handles[0].id] == "terminated"

        wait_until(shown_terminated, 30, what="the table to show the termination", interval_s=0.3)
        assert table.states()[handles[1].id] == "running"
        table.show_terminated.value = False
        assert handles[0].id not in set(table.rows["instance_id"])
    finally:
        cloud.terminate(handles)


def test_table_shows_each_instances_volumes(cloud: Cloud) -> None:
    """An attached volume appears in its instance's row (device given and volume id), and leaves it on detach."""
    (handle,) = cloud.run(1, "widget-volumes", wait="running", timeout=30, progress=False)
    first, second = cloud.create_volume(1), cloud.create_volume(1)
    try:
        first.attach(handle, "/dev/sdf")
        second.attach(handle, "/dev/sdg")
        table = InstanceTable(cloud, auto_refresh=0)
        row = table.rows.set_index("instance_id").loc[handle.id]
        assert row["volumes"] == f"/dev/sdf={first}, /dev/sdg={second}"
        assert "<th style='text-align:left;padding:2px 8px'>volumes</th>" in table.table.value
        assert f"/dev/sdg={second}" in table.table.value
        first.detach()
        table.refresh_button.click()
        assert table.rows.set_index("instance_id").loc[handle.id, "volumes"] == f"/dev/sdg={second}"
        assert str(first) not in table.table.value
    finally:
        cloud.terminate([handle])
        cloud.wait_state([handle], "terminated", timeout=30)
        for volume in (first, second):
            volume.wait("available", timeout=30).delete()


def test_table_refreshes_in_the_background(cloud: Cloud) -> None:
    table = InstanceTable(cloud, auto_refresh=0.2)
    try:
        (handle,) = cloud.run(1, "widget-auto", progress=False)
        # nobody clicks refresh: the table's own timer brings the new instance in
        wait_until(lambda: handle.id in set(table.rows["instance_id"]), 10, what="the instance in the table")
    finally:
        table.close()
        cloud.terminate([handle])


def test_table_on_a_stopped_cloud_is_a_message(stopped_cloud: Cloud) -> None:
    table = InstanceTable(stopped_cloud, auto_refresh=0)
    assert "cannot reach the cloud" in table.message.value
    table.refresh_button.click()
    assert "cannot reach the cloud" in table.message.value


def test_benchmark_panel_bad_input_is_a_message(cloud: Cloud) -> None:
    panel = BenchmarkPanel(cloud)
    # The shared cloud may hold running instances from earlier tests: empty the drop-downs so that
    # "Run" has nothing to measure, whatever ran before.
    panel.server.options, panel.client.options = [], []
    panel.run_button.click()
    assert "pick two running instances" in panel.message.value
    panel.mode.value = "fresh pair"
    panel.flavours.value = ()
    panel.run_button.click()
    assert "pick at least one network flavour" in panel.message.value
    panel.flavours.value = ("direct",)
    panel.repeats.value = 0
    panel.run_button.click()
    assert "repeats must be between 1 and 100" in panel.message.value


def test_benchmark_panel_on_a_cloud_without_network_is_a_message(cloud: Cloud) -> None:
    handles = cloud.run(2, "widget-bench", wait="running", timeout=30, progress=False)
    try:
        panel = BenchmarkPanel(cloud)
        panel.server.value, panel.client.value = handles[0].id, handles[1].id
        panel.duration.value = 1
        panel.repeats.value = 1
        assert panel.run(wait=True) is None
        assert "no network (--network none)" in panel.message.value
    finally:
        cloud.terminate(handles)


def test_usage_dashboard_filters_charts_and_exports(cloud: Cloud, tmp_path: Path) -> None:
    (handle,) = cloud.run(1, "widget-usage", wait="running", timeout=30, progress=False)
    cloud.terminate([handle])
    dashboard = UsageDashboard(cloud, export_path=str(tmp_path / "out" / "usage.csv"))
    assert dashboard.error is None, dashboard.message.value
    assert isinstance(dashboard.data, pd.DataFrame) and "user" in dashboard.data.columns
    assert bytes(dashboard.chart.value).startswith(b"\x89PNG")
    users = [u for u in dashboard.user.options if u != "(all users)"]
    assert users, "the admin's usage should be listed"
    dashboard.by.value = "type"
    assert "type" in dashboard.data.columns and "t2.micro" in set(dashboard.data["type"])
    with dashboard.hold():  # one refresh for both
        dashboard.user.value = users[0]
        dashboard.period.value = "all"
    assert dashboard.query() == {"user": users[0], "since": None, "by": "type"}
    assert dashboard.error is None, dashboard.message.value
    assert dashboard.data["instance_hours"].sum() > 0
    dashboard.export_button.click()
    written = tmp_path / "out" / "usage.csv"
    assert written.exists() and str(written) in dashboard.message.value
    assert pd.read_csv(written).columns.tolist() == dashboard.data.columns.tolist()
    dashboard.export_path.value = str(tmp_path)
    dashboard.export_button.click()
    assert "is a folder" in dashboard.message.value


def test_usage_dashboard_on_a_stopped_cloud_is_a_message(stopped_cloud: Cloud) -> None:
    dashboard = UsageDashboard(stopped_cloud)
    assert "cannot reach the cloud" in dashboard.message.value


@pytest.mark.vm
def test_real_instances_from_launcher_to_benchmark(cloud_factory) -> None:
    """Two QEMU instances on a direct network: launched from the launcher (its bars follow them to the boot
    marker), waited for through their handles, reached over SSH, and measured from the benchmark panel."""
    from tests.clouds import vm_requirements

    reason = vm_requirements()
    if reason:
        pytest.skip(reason)
    running = cloud_factory("bench", network="direct", node_vcpus=2, node_memory_mb=1024)
    cloud = connect(str(running.layout.root))
    cloud.ec2.create_key_pair(KeyName="panel", KeyType="ed25519")
    group = cloud.ec2.create_security_group(GroupName="panel", Description="ssh")["GroupId"]
    cloud.ec2.authorize_security_group_ingress(
        GroupId=group, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="0.0.0.0/0"
    )
    # the benchmark between the pair (iperf3, ping): a VPC group lets its members in only by a rule, as on EC2
    cloud.ec2.authorize_security_group_ingress(
        GroupId=group, IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]}]
    )
    launcher = Launcher(cloud, timeout=240)
    assert launcher.error is None, launcher.message.value
    launcher.count.value = 2
    launcher.name.value = "pair"
    launcher.key_name.value = "panel"
    launcher.security_group.value = group
    launcher.network.value = "direct"
    launcher.launch_button.click()  # the launcher follows them in the background ...
    handles = launcher.last_launch
    assert len(handles) == 2, launcher.message.value
    first = cloud.instance(handles[0].id).wait(timeout=240, progress=False)  # ... while we wait on a handle
    assert first.state == "running" and first.private_ip and first.name == "pair"
    done = first.ssh("hostname", timeout=90)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    assert launcher.join(240) and launcher.error is None, launcher.message.value
    assert set(launcher.phases.values()) == {"booted"}
    assert [bar.value for bar in launcher.progress.values()] == [3, 3]

    panel = BenchmarkPanel(cloud)
    assert {h.id for h in handles} <= {value for _, value in panel.server.options}
    panel.server.value, panel.client.value = handles[0].id, handles[1].id
    panel.duration.value = 1
    panel.streams.value = 1
    panel.repeats.value = 1
    panel.run_button.click()
    assert panel.join(180)
    df = panel.results
    assert panel.error is None, panel.message.value
    assert len(df) == 1 and df["error"].isna().all(), df.get("error")
    assert df["gbit_s"].iloc[0] > 0 and df["rtt_ms"].iloc[0] > 0
    assert df["path"].iloc[0] == "cloudlab:vm-bridge"
    assert panel.progress.value == panel.progress.max == 1
    assert "gbit_s_median" in panel.table.value and bytes(panel.chart.value).startswith(b"\x89PNG")
