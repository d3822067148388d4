"""A zone whose cluster controller dies: the other zone keeps serving, a launch into the dead zone is refused
with EC2's InsufficientInstanceCapacity, a launch that names no zone goes elsewhere, the dead zone's instances
are still described, and when its CC comes back their records reconcile with what its node holds. Also the
admin's ``verbose`` DescribeAvailabilityZones, and the zone policies.

The cloud runs in this process (as ``cloudlab serve`` runs it) on libvirt's test driver, with the cloud
controller reaching the first zone's CC over signed HTTP, as it reaches a CC on another host; the CC's
death is its endpoint going away and its registry stopping (what a killed CC process leaves), its return a
new CC (an empty registry) on the same address that the node registers with again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from cloudlab.cc.cluster import ClusterController
from cloudlab.clc.placement import First, MostFree, RoundRobinZones, ZoneRequest, ZoneView, load_zone_policy
from cloudlab.config import CloudConfig
from cloudlab.paths import StateLayout
from cloudlab.rpc import Dispatcher, HttpChannel, LocalChannel, serve_http
from cloudlab.service import CloudService
from cloudlab.waiting import wait_until
from tests.clouds import default_image, error_code, wait_states


def zone(name: str, available: bool = True, slots: int = 4, vcpus_free: int = 4) -> ZoneView:
    return ZoneView(name, f"c-{name}", available, vcpus_free, 1024, 8, 2048, 2, slots)


def test_zone_policies() -> None:
    request = ZoneRequest(vcpus=1, memory_mb=256, min_count=2, count=2)
    zones = [zone("a", available=False), zone("b", slots=1), zone("c", vcpus_free=2), zone("d", vcpus_free=6)]
    assert First().choose(request, zones) == "c"  # the first available zone with room for two
    assert MostFree().choose(request, zones) == "d"
    spread = RoundRobinZones()
    assert [spread.choose(request, zones) for _ in range(3)] == ["c", "d", "c"]
    assert First().choose(request, [zone("a", available=False)]) is None
    assert load_zone_policy("mostfree").name == "MOSTFREE"
    with pytest.raises(ValueError, match="unknown zone policy"):
        load_zone_policy("NEAREST")


@pytest.fixture
def service(tmp_path: Path) -> Iterator[CloudService]:
    layout = StateLayout(tmp_path / "state")
    config = CloudConfig(
        hypervisor="test:///default", clusters=2, nodes=1, node_vcpus=4, node_memory_mb=4096, api_port=0,
        heartbeat_s=0.1,
    )  # fmt: skip
    cloud = CloudService(layout, config, reconcile_s=0.2)
    cloud.start(api=True)
    try:
        yield cloud
    finally:
        cloud.shutdown()


def ec2_of(cloud: CloudService) -> Any:
    creds = json.loads((cloud.layout.credentials / "admin.json").read_text())
    return boto3.client(
        "ec2",
        endpoint_url=cloud.endpoint_url,
        region_name=cloud.config.region,
        aws_access_key_id=creds["access_key"],
        aws_secret_access_key=creds["secret_key"],
        config=Config(retries={"max_attempts": 1}),
    )


def zone_states(ec2: Any) -> dict[str, str]:
    return {z["ZoneName"]: z["State"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}


def test_a_dead_cluster_controller_makes_its_zone_unavailable_and_reconciles_when_it_returns(
    service: CloudService,
) -> None:
    ec2 = ec2_of(service)
    image = default_image(ec2)
    region = service.config.region
    first = service.clusters[0]
    link = service.clc.clusters.get(first.name)
    link.channel = HttpChannel(f"cc-{first.name}", "cc", *service._signer_verifier("clc", "clc"), first.url)
    [kept, lost] = [
        i["InstanceId"]
        for i in ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2, Placement={"AvailabilityZone": f"{region}a"})[
            "Instances"
        ]
    ]
    wait_states(ec2, [kept, lost], "running")

    # the CC of zone a dies: its endpoint goes, its registry stops
    host, port = first.url.split("//", 1)[1].rsplit(":", 1)
    first.cc.stop()
    first.server.shutdown()
    first.server.server_close()
    wait_until(
        lambda: zone_states(ec2) == {f"{region}a": "unavailable", f"{region}b": "available"},
        20,
        what="zone a to be unavailable",
        interval_s=0.2,
    )
    assert [c["state"] for c in service.status()["clusters"]] == ["unavailable", "available"]  # cloudlab status
    with pytest.raises(ClientError) as excinfo:
        ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": f"{region}a"})
    assert error_code(excinfo) == "InsufficientInstanceCapacity"
    message = excinfo.value.response["Error"]["Message"]
    assert f"({region}a)" in message and f"choosing {region}b" in message
    [elsewhere] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"]  # FIRST skips zone a
    assert elsewhere["Placement"]["AvailabilityZone"] == f"{region}b"
    wait_states(ec2, [elsewhere["InstanceId"]], "running")
    # the dead zone's instances are still described as they were; meanwhile one VM goes away on its node
    shown = wait_states(ec2, [kept, lost], "running")
    assert {shown[i]["Placement"]["AvailabilityZone"] for i in (kept, lost)} == {f"{region}a"}
    node_name = shown[lost]["Placement"]["HostId"]
    node = service.local_nodes[node_name]
    node.terminate_instance(lost)
    assert wait_states(ec2, [kept, lost], "running")  # the CLC cannot know yet: its CC does not answer

    # the CC comes back (a new one, with an empty registry) on the same address; the node registers again
    signer, verifier = service._signer_verifier(f"cc-{first.name}", "cc")
    cc = ClusterController(first.name, heartbeat_s=0.1, signer=signer, verifier=verifier)
    dispatcher = Dispatcher(f"cc-{first.name}", signer, verifier)
    cc.register_routes(dispatcher)
    first.cc, first.dispatcher, first.server = cc, dispatcher, serve_http(dispatcher, host, int(port))
    node_dispatcher = Dispatcher(f"nc-{node_name}", *service._signer_verifier(node_name, "nc"))
    node.register_routes(node_dispatcher)
    cc.add_node(node_name, LocalChannel(node_name, "nc", signer, verifier, node_dispatcher))
    cc.start()
    wait_until(lambda: zone_states(ec2)[f"{region}a"] == "available", 20, what="zone a back", interval_s=0.2)
    gone = wait_states(ec2, [lost], "terminated")[lost]
    assert "no longer on node" in gone["StateReason"]["Message"]
    assert wait_states(ec2, [kept], "running")[kept]["Placement"]["HostId"] == node_name
    [again] = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": f"{region}a"})[
        "Instances"
    ]
    wait_states(ec2, [again["InstanceId"]], "running")


def test_verbose_zones_show_free_and_max_per_type_to_the_admin_only(service: CloudService) -> None:
    ec2 = ec2_of(service)
    region = service.config.region
    wait_until(lambda: len(service.clc.cluster_reports()) == 2, 10, what="both clusters reported", interval_s=0.1)
    [small] = ec2.run_instances(
        ImageId=default_image(ec2), MinCount=1, MaxCount=1, InstanceType="m1.small",
        Placement={"AvailabilityZone": f"{region}b"},
    )["Instances"]  # fmt: skip
    wait_states(ec2, [small["InstanceId"]], "running")

    def listing() -> list[tuple[str, str, str]]:
        found = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
        return [(z["ZoneName"], z["State"], (z.get("Messages") or [{}])[0].get("Message", "")) for z in found]

    # one node of 4 vCPUs and 4096 MiB per zone: 4 m1.small (1 vCPU, 256 MiB) fit an empty zone; b holds one
    wait_until(lambda: ("|- m1.small", "information", "|- m1.small  0003 / 0004   1    256     0") in listing(),
               10, what="zone b's free m1.small slots to count the instance", interval_s=0.2)  # fmt: skip
    lines = listing()
    names = [name for name, _, _ in lines]
    assert names[0] == f"{region}a" and names[1] == "|- vm types" and f"{region}b" in names
    a_part, b_part = lines[: names.index(f"{region}b")], lines[names.index(f"{region}b") :]
    assert ("|- vm types", "information", "|- vm types  free / max   cpu   ram  disk") in a_part
    assert ("|- m1.small", "information", "|- m1.small  0004 / 0004   1    256     0") in a_part
    assert ("|- m1.small", "information", "|- m1.small  0003 / 0004   1    256     0") in b_part
    assert ("|- m1.xlarge", "information", "|- m1.xlarge  0001 / 0001   4   4096     0") in a_part
    from cloudlab.clc.offline import open_state

    with open_state(service.layout) as admin:
        _, key = admin.add_user("someone")
    user = boto3.client(
        "ec2", endpoint_url=service.endpoint_url, region_name=region, aws_access_key_id=key.access_key,
        aws_secret_access_key=key.secret_key, config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip
    with pytest.raises(ClientError) as excinfo:
        user.describe_availability_zones(ZoneNames=["verbose"])
    assert error_code(excinfo) == "InvalidParameterValue" and "administrators" in str(excinfo.value)
    assert [z["ZoneName"] for z in user.describe_availability_zones()["AvailabilityZones"]] == [
        f"{region}a",
        f"{region}b",
    ]
