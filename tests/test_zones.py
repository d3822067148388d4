"""Several clusters, each its own availability zone: placement by zone and by subnet, zones' health, and the
direct flavour's rule that a VPC lives in one cluster. (libvirt's test driver: no VMs are booted here.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudlab import servicectl
from cloudlab.net import netns
from tests.clouds import RunningCloud, default_image, error_code, start_cloud


@pytest.fixture(scope="module")
def two_zones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCloud]:
    cloud = start_cloud(
        tmp_path_factory.mktemp("zones") / "state",
        hypervisor="test:///default",
        clusters=2,
        nodes=2,
        node_vcpus=4,
        node_memory_mb=4096,
    )
    yield cloud
    servicectl.down(cloud.layout)


def test_each_cluster_is_a_zone(two_zones: RunningCloud) -> None:
    ec2 = two_zones.ec2()
    zones = ec2.describe_availability_zones()["AvailabilityZones"]
    region = two_zones.info["region"]
    assert [(z["ZoneName"], z["State"]) for z in zones] == [(f"{region}a", "available"), (f"{region}b", "available")]
    status = two_zones.status()
    assert [(c["name"], c["zone"]) for c in status["clusters"]] == [
        ("cluster1", f"{region}a"),
        ("cluster2", f"{region}b"),
    ]
    assert [n["name"] for n in status["clusters"][1]["nodes"]] == ["cluster2-node-01", "cluster2-node-02"]
    # the default VPC has a default subnet in each zone (a cloud without a network, like vde, spans zones)
    subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    assert sorted((s["AvailabilityZone"], s["CidrBlock"]) for s in subnets) == [
        (f"{region}a", "172.31.0.0/20"),
        (f"{region}b", "172.31.16.0/20"),
    ]


def test_placement_by_zone_and_by_subnet(two_zones: RunningCloud) -> None:
    ec2 = two_zones.ec2()
    region = two_zones.info["region"]
    image = default_image(ec2)
    vpc = ec2.create_vpc(CidrBlock="10.90.0.0/16")["Vpc"]["VpcId"]
    in_b = ec2.create_subnet(VpcId=vpc, CidrBlock="10.90.2.0/24", AvailabilityZone=f"{region}b")["Subnet"]["SubnetId"]
    launched = []
    try:
        [by_zone] = ec2.run_instances(
            ImageId=image, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": f"{region}b"}
        )["Instances"]
        [by_subnet] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, SubnetId=in_b)["Instances"]
        [first] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"]
        launched = [by_zone, by_subnet, first]
        assert by_zone["Placement"]["AvailabilityZone"] == f"{region}b"
        assert by_zone["Placement"]["HostId"].startswith("cluster2-node-")
        assert by_zone["PrivateIpAddress"].startswith("172.31.16.")  # the default subnet of zone b
        assert by_subnet["Placement"]["AvailabilityZone"] == f"{region}b" and by_subnet["SubnetId"] == in_b
        assert by_subnet["Placement"]["HostId"].startswith("cluster2-node-")
        assert first["Placement"]["AvailabilityZone"] == f"{region}a" and first["Placement"]["HostId"].startswith(
            "node-"
        )
        with pytest.raises(ClientError) as excinfo:  # a zone that contradicts the subnet's
            ec2.run_instances(
                ImageId=image, MinCount=1, MaxCount=1, SubnetId=in_b, Placement={"AvailabilityZone": f"{region}a"}
            )
        assert error_code(excinfo) == "InvalidParameterValue" and in_b in excinfo.value.response["Error"]["Message"]
    finally:
        if launched:
            ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in launched])
            ec2.get_waiter("instance_terminated").wait(
                InstanceIds=[i["InstanceId"] for i in launched], WaiterConfig={"Delay": 1, "MaxAttempts": 60}
            )
    ec2.delete_subnet(SubnetId=in_b)
    ec2.delete_vpc(VpcId=vpc)


def test_a_direct_cloud_keeps_a_vpc_in_one_cluster(cloud_factory: Any) -> None:
    cloud = cloud_factory(
        hypervisor="test:///default",
        network="direct",
        network_model="vpc",
        clusters=2,
        nodes=1,
        node_vcpus=2,
        node_memory_mb=2048,
    )
    ec2 = cloud.ec2()
    region = cloud.info["region"]
    # two clusters, two networks, each in namespaces of its own
    outsides = [c["network_detail"]["namespaces"]["outside"] for c in cloud.status()["clusters"]]
    assert len(set(outsides)) == 2 and all(netns.exists(ns) for ns in outsides)
    subnets = ec2.describe_subnets()["Subnets"]
    assert [s["AvailabilityZone"] for s in subnets] == [f"{region}a"]  # the default VPC: the first zone only
    vpc = ec2.create_vpc(CidrBlock="10.91.0.0/16")["Vpc"]["VpcId"]
    ec2.create_subnet(VpcId=vpc, CidrBlock="10.91.1.0/24", AvailabilityZone=f"{region}b")
    with pytest.raises(ClientError) as excinfo:
        ec2.create_subnet(VpcId=vpc, CidrBlock="10.91.2.0/24", AvailabilityZone=f"{region}a")
    assert error_code(excinfo) == "InvalidParameterValue"
    assert "direct networking keeps a VPC in one cluster" in excinfo.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as excinfo:  # nor does the default VPC reach the second zone
        ec2.run_instances(
            ImageId=default_image(ec2), MinCount=1, MaxCount=1, Placement={"AvailabilityZone": f"{region}b"}
        )
    assert "direct networking" in excinfo.value.response["Error"]["Message"]


class _DeadChannel:
    """A channel to a cluster controller that does not answer (as a killed CC's)."""

    def ask(self, *_args: Any, **_kwargs: Any) -> Any:
        raise ConnectionRefusedError("cluster controller unreachable")


def test_a_zone_whose_cluster_does_not_answer_is_unavailable(tmp_path: Any) -> None:
    from cloudlab.api.actions import Context
    from cloudlab.api.actions.zones import describe_availability_zones
    from cloudlab.clc.cloud import CloudController
    from cloudlab.clc.images import Images
    from cloudlab.clc.store import Store

    store = Store(tmp_path / "clc.db")
    clc = CloudController(store, Images(store, tmp_path / "images"), None, region="us-east-1")
    clc.add_cluster("cluster1", "us-east-1a", _DeadChannel())  # type: ignore[arg-type]
    admin, _ = clc.users.ensure_admin()
    ctx = Context(clc, admin, "r-1", "127.0.0.1")
    assert [z["State"] for z in describe_availability_zones(ctx, {})["AvailabilityZones"]] == ["available"]
    clc.reconcile_once()  # the CC is asked for its report and does not answer
    [zone] = describe_availability_zones(ctx, {})["AvailabilityZones"]
    assert zone["State"] == "unavailable" and "cluster1" in zone["Messages"][0]["Message"]
    store.close()
