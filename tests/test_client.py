"""The Python client on a real (simulated-node) cloud: DataFrames, instance handles, get-by-name that
survives a reconnect (a kernel restart), waits with timeouts, starting a stopped cloud, clear errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from botocore.exceptions import ClientError

import cloudlab
from cloudlab import servicectl
from cloudlab.client import CloudNotRunning, Instance, InstanceNotFound, connect, error_message
from cloudlab.config import CloudConfig
from cloudlab.paths import StateLayout
from tests.clouds import RunningCloud


@pytest.fixture
def cloud(sim_cloud: RunningCloud) -> cloudlab.client.Cloud:
    return connect(str(sim_cloud.layout.root))


def test_connect_is_exported_from_the_package() -> None:
    if not hasattr(cloudlab, "connect"):
        pytest.skip("cloudlab/__init__.py does not export connect yet")
    assert cloudlab.connect is connect


def test_instances_frame_has_names_and_addresses(cloud) -> None:
    handles = cloud.run(1, "frame-test", wait="running", timeout=30, progress=False)
    try:
        df = cloud.instances()
        for column in ("instance_id", "state", "node", "owner", "name", "private_ip", "public_ip"):
            assert column in df.columns
        row = df.set_index("instance_id").loc[handles[0].id]
        assert row["name"] == "frame-test" and row["state"] == "running"
        assert list(cloud.instances(name="frame-test")["instance_id"]) == [handles[0].id]
        assert isinstance(cloud.images(), pd.DataFrame) and not cloud.nodes().empty
    finally:
        cloud.terminate(handles)


def test_run_returns_handles_that_are_ids(cloud) -> None:
    handles = cloud.run(2, "handles-test", instance_type="t2.nano", progress=False)
    try:
        assert len(handles) == 2 and all(isinstance(h, Instance) and isinstance(h, str) for h in handles)
        assert all(h.startswith("i-") and h == h.id for h in handles)
        assert set(cloud.states(handles)) == {h.id for h in handles}  # handles go where ids go
        reached = cloud.wait(handles, until="running", timeout=30, progress=False)
        assert all("running" in phases for phases in reached.values())
        first = handles[0].refresh()
        assert first.state == "running" and first.name == "handles-test" and first.node
        assert first.instance_type == "t2.nano"
        assert "Instance('i-" in repr(first) and "handles-test" in repr(first)
        assert isinstance(first.console(), str)
        assert first.reboot().state in ("running", "pending")
        assert first.terminate(wait=True).state == "terminated"
    finally:
        cloud.terminate(handles)


def test_get_by_name_survives_a_reconnect(sim_cloud: RunningCloud, cloud) -> None:
    made = cloud.get_or_run("survivor", count=2, progress=False)
    try:
        again = connect(str(sim_cloud.layout.root)).get_or_run("survivor", count=2, progress=False)
        assert sorted(again) == sorted(made)  # a kernel restart finds them instead of launching more
        with pytest.raises(InstanceNotFound, match="2 live instances are called 'survivor'"):
            cloud.instance("survivor")
        cloud.terminate([made[0]])
        cloud.wait_state([made[0]], "terminated", timeout=30)
        assert cloud.instance("survivor") == made[1]
        assert cloud.instance(made[1].id).name == "survivor"
        topped_up = cloud.get_or_run("survivor", count=2, progress=False)
        assert made[1] in topped_up and len(topped_up) == 2
        cloud.terminate(topped_up)
    finally:
        cloud.terminate(made)
    with pytest.raises(InstanceNotFound, match="no live instance has id or Name 'nobody'"):
        cloud.instance("nobody")


def test_waits_time_out_with_the_laggards_named(cloud) -> None:
    (handle,) = cloud.run(1, "never-boots", progress=False)  # the test driver prints no boot marker
    try:
        with pytest.raises(TimeoutError, match=handle.id):
            handle.wait(timeout=1.5, progress=False)
    finally:
        cloud.terminate([handle])


def test_bad_requests_are_clear(cloud) -> None:
    with pytest.raises(ValueError, match="count must be"):
        cloud.run(0)
    with pytest.raises(ClientError) as excinfo:
        cloud.run(1, image_id="ami-00000000000000000", progress=False)
    assert error_message(excinfo.value).startswith("RunInstances refused: InvalidAMIID")
    (handle,) = cloud.run(1, "no-network", wait="running", timeout=30, progress=False)
    try:
        with pytest.raises(RuntimeError, match="has no private address: start the cloud with --network"):
            handle.ssh("true")
    finally:
        cloud.terminate([handle])


def test_usage_is_a_dataframe(cloud) -> None:
    df = cloud.usage(by="type")
    assert isinstance(df, pd.DataFrame) and "instance_hours" in df.columns


def test_not_running_says_how_to_start(tmp_path: Path) -> None:
    with pytest.raises(CloudNotRunning, match=r"cloudlab up.*cloudlab.connect\(start=True\)"):
        connect(str(tmp_path / "state"))


def test_connect_can_start_the_cloud(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path / "state")
    CloudConfig(hypervisor="test:///default", api_port=0, node_vcpus=2, node_memory_mb=1024).save(layout.config)
    try:
        cloud = connect(str(layout.root), start=True, progress=False)
        assert cloud.network_flavour() == "none" and cloud.clusters()["network"].tolist() == ["none"]
        assert cloud.ssh_command("i-1") == f"cloudlab --state {layout.root} ssh i-1"
        assert connect(str(layout.root), start=True, progress=False).endpoint_url == cloud.endpoint_url
    finally:
        servicectl.down(layout)
