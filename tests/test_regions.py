"""A region name of the user's choosing, with zones named as EC2 names them (issue 10, item 20)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.clouds import RunningCloud, default_image


@pytest.mark.parametrize(
    ("region", "zone", "zone_id"),
    [
        ("us-east-1", "us-east-1a", "use1-az1"),
        ("eu-west-2", "eu-west-2a", "euw2-az1"),
        ("ap-southeast-1", "ap-southeast-1a", "apse1-az1"),
        ("ap-northeast-3", "ap-northeast-3a", "apne3-az1"),
        ("ca-central-1", "ca-central-1a", "cac1-az1"),
        ("us-gov-west-1", "us-gov-west-1a", "usgw1-az1"),
        ("cloudlab-1", "cloudlab-1a", "cloudlab-1-az1"),
    ],
)
def test_zone_names_and_ids_follow_ec2(region: str, zone: str, zone_id: str) -> None:
    from cloudlab.clc import regions

    assert regions.zone_name(region) == zone
    assert regions.zone_id(region, zone) == zone_id
    assert regions.zone_id(region, regions.zone_name(region, 1)) == zone_id[:-1] + "2"


@pytest.mark.parametrize("bad", ["", "US-EAST-1", "us east 1", "us-east-1/", "a" * 51, "-us", "us--east-1"])
def test_region_names_are_checked(bad: str) -> None:
    from cloudlab.clc import regions
    from cloudlab.errors import CloudError

    with pytest.raises(CloudError) as excinfo:
        regions.check_region(bad)
    assert excinfo.value.code == "InvalidParameterValue"


def test_a_cloud_in_us_east_1(cloud_factory: Callable[..., RunningCloud]) -> None:
    cloud = cloud_factory(region="us-east-1", hypervisor="test:///default", nodes=1, node_vcpus=4)
    assert cloud.info["region"] == "us-east-1"
    assert json.loads(cloud.layout.config.read_text())["region"] == "us-east-1"  # saved like the other options
    ec2 = cloud.ec2()
    assert ec2.meta.region_name == "us-east-1"
    regions = ec2.describe_regions()["Regions"]
    assert [r["RegionName"] for r in regions] == ["us-east-1"]
    [zone] = ec2.describe_availability_zones()["AvailabilityZones"]
    assert (zone["ZoneName"], zone["ZoneId"], zone["RegionName"]) == ("us-east-1a", "use1-az1", "us-east-1")
    by_id = ec2.describe_availability_zones(Filters=[{"Name": "zone-id", "Values": ["use1-az1"]}])
    assert [z["ZoneName"] for z in by_id["AvailabilityZones"]] == ["us-east-1a"]
    [inst] = ec2.run_instances(
        ImageId=default_image(ec2), MinCount=1, MaxCount=1, Placement={"AvailabilityZone": "us-east-1a"}
    )["Instances"]
    assert inst["Placement"]["AvailabilityZone"] == "us-east-1a"
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    env = _cli(cloud.layout.root, "env")
    assert "AWS_DEFAULT_REGION=us-east-1" in env.stdout


def _cli(state: Path, *args: str) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "cloudlab.cli", "--state", str(state), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_bad_region_in_cloud_json_fails_the_start_in_one_line(tmp_path: Path) -> None:
    from cloudlab import servicectl
    from cloudlab.config import CloudConfig
    from cloudlab.paths import StateLayout

    layout = StateLayout(tmp_path / "state")
    try:
        with pytest.raises(servicectl.ControlError) as excinfo:
            servicectl.up(layout, CloudConfig(region="Not A Region", hypervisor="test:///default", api_port=0), 60)
        assert "region 'Not A Region' must be" in str(excinfo.value)
    finally:
        servicectl.down(layout)


def test_cloudlab_up_region(tmp_path: Path) -> None:
    state = tmp_path / "state"
    bad = _cli(state, "up", "--region", "Not/A/Region")
    assert bad.returncode == 2 and "must be lower-case letters" in bad.stderr
    up = _cli(state, "up", "--region", "eu-west-2", "--hypervisor", "test:///default", "--nodes", "1", "--port", "0")
    try:
        assert up.returncode == 0, up.stderr
        assert json.loads((state / "cloud.json").read_text())["region"] == "eu-west-2"
        status = json.loads(_cli(state, "status", "--json").stdout)
        assert status["region"] == "eu-west-2" and status["clusters"][0]["zone"] == "eu-west-2a"
    finally:
        _cli(state, "down")
    again = _cli(state, "up", "--hypervisor", "test:///default", "--port", "0")  # saved like the other options
    try:
        assert json.loads(_cli(state, "status", "--json").stdout)["region"] == "eu-west-2", again.stderr
    finally:
        _cli(state, "down")
