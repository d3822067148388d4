"""EC2's limits as EC2 has them (issue 10, item 12): UserData, tags, and the API's Version.

Through unmodified boto3 against the session's simulated cloud; every refused request leaves the
cloud as it was (no instance, no tag).
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.clouds import RunningCloud, default_image, error_code, raw_call


@pytest.fixture(scope="module")
def user(sim_cloud: RunningCloud) -> Any:
    return sim_cloud.new_user("limits")


def _instance_ids(ec2: Any) -> set[str]:
    return {i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}


def test_user_data_of_16_kb_is_accepted_and_one_byte_more_refused(user: Any) -> None:
    image = default_image(user)
    before = _instance_ids(user)
    with pytest.raises(ClientError) as excinfo:
        user.run_instances(ImageId=image, MinCount=1, MaxCount=1, UserData=b"x" * (16 * 1024 + 1))
    assert error_code(excinfo) == "InvalidParameterValue"
    assert "16384" in excinfo.value.response["Error"]["Message"]
    assert _instance_ids(user) == before
    [inst] = user.run_instances(ImageId=image, MinCount=1, MaxCount=1, UserData=b"y" * (16 * 1024))["Instances"]
    attr = user.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
    assert base64.b64decode(attr["UserData"]["Value"]) == b"y" * (16 * 1024)
    user.terminate_instances(InstanceIds=[inst["InstanceId"]])


def test_user_data_that_is_not_base64_is_refused(sim_cloud: RunningCloud, user: Any) -> None:
    # boto3 base64-encodes UserData itself; a client that does not (or sends garbage) is caught here.
    image = default_image(user)
    before = _instance_ids(user)
    for garbage in ("not base64!", "abc", "YWJj=ZGVm"):
        with pytest.raises(ClientError) as excinfo:
            raw_call(sim_cloud, user, {"Action": "RunInstances", "ImageId": image, "MinCount": "1",
                                         "MaxCount": "1", "UserData": garbage})  # fmt: skip
        assert error_code(excinfo) == "InvalidUserData.Malformed", garbage
    assert _instance_ids(user) == before


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ({"Key": "nul", "Value": "a\x00b"}, "U+0000"),
        ({"Key": "k\x00", "Value": "v"}, "U+0000"),
        ({"Key": "bell", "Value": "ring\x07"}, "U+0007"),
        ({"Key": "newline", "Value": "two\nlines"}, "U+000A"),
        ({"Key": "del", "Value": "x\x7f"}, "U+007F"),
    ],
)
def test_control_characters_in_tags_are_refused(user: Any, tag: dict[str, str], fragment: str) -> None:
    image = default_image(user)
    [inst] = user.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"]
    try:
        with pytest.raises(ClientError) as excinfo:
            user.create_tags(Resources=[inst["InstanceId"]], Tags=[tag])
        assert error_code(excinfo) == "InvalidParameterValue"
        assert fragment in excinfo.value.response["Error"]["Message"]
        assert user.describe_tags(Filters=[{"Name": "resource-id", "Values": [inst["InstanceId"]]}])["Tags"] == []
        before = _instance_ids(user)
        with pytest.raises(ClientError) as excinfo:
            user.run_instances(
                ImageId=image,
                MinCount=1,
                MaxCount=1,
                TagSpecifications=[{"ResourceType": "instance", "Tags": [tag]}],
            )
        assert error_code(excinfo) == "InvalidParameterValue"
        assert _instance_ids(user) == before
    finally:
        user.terminate_instances(InstanceIds=[inst["InstanceId"]])


def test_tag_lengths_and_count_at_the_edges(user: Any) -> None:
    [inst] = user.run_instances(ImageId=default_image(user), MinCount=1, MaxCount=1)["Instances"]
    resource = inst["InstanceId"]
    try:
        user.create_tags(Resources=[resource], Tags=[{"Key": "k" * 128, "Value": "é" * 256}])
        for tag in ({"Key": "k" * 129, "Value": ""}, {"Key": "v", "Value": "é" * 257}):
            with pytest.raises(ClientError) as excinfo:
                user.create_tags(Resources=[resource], Tags=[tag])
            assert error_code(excinfo) == "InvalidParameterValue"
        user.create_tags(Resources=[resource], Tags=[{"Key": f"t{n}", "Value": ""} for n in range(49)])
        with pytest.raises(ClientError) as excinfo:
            user.create_tags(Resources=[resource], Tags=[{"Key": "one-too-many", "Value": ""}])
        assert error_code(excinfo) == "TagLimitExceeded"
        described = user.describe_tags(Filters=[{"Name": "resource-id", "Values": [resource]}])["Tags"]
        assert len(described) == 50
        assert {"Key": "k" * 128, "Value": "é" * 256} in [{"Key": t["Key"], "Value": t["Value"]} for t in described]
    finally:
        user.terminate_instances(InstanceIds=[resource])


@pytest.mark.parametrize("version", ["garbage", "2016-11-16", "2099-01-01", "2016-13-01", "", "2016-11-15x"])
def test_a_malformed_or_unknown_version_is_refused(sim_cloud: RunningCloud, user: Any, version: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        raw_call(sim_cloud, user, {"Action": "DescribeRegions"}, version=version)
    assert error_code(excinfo) == "NoSuchVersion"
    assert f"({version})" in excinfo.value.response["Error"]["Message"]


@pytest.mark.parametrize("version", ["2016-11-15", "2014-06-15", None])
def test_the_model_version_and_older_ones_are_accepted(sim_cloud: RunningCloud, user: Any, version: str) -> None:
    answer = raw_call(sim_cloud, user, {"Action": "DescribeRegions"}, version=version)
    assert b"<regionName>" in answer.content
