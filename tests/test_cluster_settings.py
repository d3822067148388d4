"""Per-cluster settings in cloud.json (``cluster_settings``): nodes, node sizes, scheduler, POWERSAVE's threshold
and the ``nat`` flag, each over the cloud-wide setting; a bad one is refused with the file and the field named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cloudlab.config import CloudConfig, ConfigError
from tests.clouds import default_image, wait_states


def saved(tmp_path: Path, **fields: Any) -> Path:
    path = tmp_path / "cloud.json"
    path.write_text(json.dumps(fields))
    return path


def test_a_cluster_setting_overrides_the_cloud_wide_one(tmp_path: Path) -> None:
    config = CloudConfig.load(
        saved(
            tmp_path,
            clusters=2,
            nodes=2,
            node_vcpus=4,
            cluster_settings={"cluster2": {"nodes": 3, "node_vcpus": 2, "nat": True, "scheduler": "POWERSAVE"}},
        )
    )
    assert config.node_names(0) == ["node-01", "node-02"]
    assert config.node_names(1) == ["cluster2-node-01", "cluster2-node-02", "cluster2-node-03"]
    assert [config.setting(i, "node_vcpus") for i in (0, 1)] == [4, 2]
    assert [config.setting(i, "nat") for i in (0, 1)] == [False, True]
    assert config.nat_clusters == ["cluster2"]  # the same as --nat-cluster cluster2 (the fabric builds that list)
    assert [config.setting(i, "scheduler") for i in (0, 1)] == ["GREEDY", "POWERSAVE"]


def test_nat_false_contradicting_nat_clusters_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'nat' is false, but nat_clusters"):
        CloudConfig.load(
            saved(tmp_path, clusters=2, nat_clusters=["cluster2"], cluster_settings={"cluster2": {"nat": False}})
        )


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"cluster3": {"nodes": 1}}, "'cluster3', which is not a cluster of this cloud"),
        ({"cluster2": {"disks": 1}}, "'disks' is not a per-cluster setting"),
        ({"cluster2": {"nodes": 0}}, "'nodes' must be at least 1"),
        ({"cluster2": {"nodes": "3"}}, "'nodes' must be a whole number"),
        ({"cluster2": {"nat": "yes"}}, "'nat' must be true or false"),
        ({"cluster2": 3}, "of cluster2 must be an object"),
    ],
    ids=["unknown-cluster", "unknown-setting", "too-few-nodes", "nodes-as-text", "nat-as-text", "not-an-object"],
)
def test_a_bad_cluster_setting_is_refused_with_its_name(tmp_path: Path, settings: Any, says: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        CloudConfig.load(saved(tmp_path, clusters=2, cluster_settings=settings))
    assert "cluster_settings" in str(excinfo.value) and says in str(excinfo.value)


@pytest.mark.slow
def test_a_cloud_runs_each_cluster_with_its_own_settings(cloud_factory: Any) -> None:
    cloud = cloud_factory(
        hypervisor="test:///default",
        clusters=2,
        nodes=1,
        node_vcpus=4,
        node_memory_mb=2048,
        cluster_settings={"cluster2": {"nodes": 2, "node_vcpus": 2, "scheduler": "ROUNDROBIN"}},
        zone_policy="ROUNDROBIN",
    )
    first, second = cloud.status()["clusters"]
    assert [(n["name"], n["vcpus_total"]) for n in first["nodes"]] == [("node-01", 4)]
    assert [(n["name"], n["vcpus_total"]) for n in second["nodes"]] == [
        ("cluster2-node-01", 2),
        ("cluster2-node-02", 2),
    ]
    assert (first["scheduler"], first["nat"]) == ("GREEDY", False)
    assert (second["scheduler"], second["nat"]) == ("ROUNDROBIN", False)  # (a NATed cluster needs a vde fabric)
    # the cloud-level policy spreads requests that name no zone over the zones
    ec2 = cloud.ec2()
    image = default_image(ec2)
    launched = [ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0] for _ in range(4)]
    region = cloud.info["region"]
    assert [i["Placement"]["AvailabilityZone"] for i in launched] == [f"{region}{z}" for z in "abab"]
    assert {i["Placement"]["HostId"] for i in launched[1::2]} == {"cluster2-node-01", "cluster2-node-02"}
    ids = [i["InstanceId"] for i in launched]
    ec2.terminate_instances(InstanceIds=ids)
    wait_states(ec2, ids, "terminated")
