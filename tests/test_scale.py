"""Scheduling at scale on libvirt's test driver: 500 instances over 50 simulated nodes, through the API."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud


def all_instances(ec2: Any) -> list[dict[str, Any]]:
    found = []
    for page in ec2.get_paginator("describe_instances").paginate():
        found += [i for r in page["Reservations"] for i in r["Instances"]]
    return found


@pytest.mark.slow
@pytest.mark.parametrize(("scheduler", "expect_nodes"), [("GREEDY", 25), ("ROUNDROBIN", 50)])
def test_500_instances_on_50_nodes(cloud_factory: Any, scheduler: str, expect_nodes: int) -> None:
    # 50 nodes of 20 vCPUs: GREEDY fills 25 of them with 500 one-vCPU instances, ROUNDROBIN spreads over all.
    cloud: RunningCloud = cloud_factory(
        scheduler.lower(),
        hypervisor="test:///default",
        nodes=50,
        node_vcpus=20,
        node_memory_mb=20 * 256,
        scheduler=scheduler,
    )
    ec2 = cloud.ec2()
    image = ec2.describe_images(Filters=[{"Name": "name", "Values": ["cloudlab-default"]}])["Images"][0]["ImageId"]
    for _ in range(5):
        ec2.run_instances(ImageId=image, MinCount=100, MaxCount=100, InstanceType="t2.micro")

    def all_running() -> list[dict[str, Any]] | None:
        found = all_instances(ec2)
        return found if Counter(i["State"]["Name"] for i in found) == {"running": 500} else None

    instances = wait_until(all_running, 60, what="500 instances running", interval_s=0.5)
    per_node = Counter(i["Placement"]["HostId"] for i in instances)
    assert len(per_node) == expect_nodes
    assert max(per_node.values()) <= 20, "no node is overcommitted"
    if scheduler == "ROUNDROBIN":
        assert set(per_node.values()) == {10}
    # 500 of the 1,000 vCPU slots are taken: a request for 501 more cannot fit and creates nothing
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as excinfo:
        ec2.run_instances(ImageId=image, MinCount=501, MaxCount=501, InstanceType="t2.micro")
    assert excinfo.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
    wait_until(  # node reports follow within a heartbeat or two
        lambda: sum(n["instances"] for n in cloud.status()["clusters"][0]["nodes"]) == 500,
        10,
        what="the node reports to count 500 instances",
        interval_s=0.3,
    )
