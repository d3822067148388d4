"""Per-user quotas (issue 10, item 13): instances, vCPUs and elastic addresses, with EC2's codes.

At the core (a CloudService on libvirt's test driver, as in test_clc) for the rules and for the
race between two launches, and through boto3 against the session's simulated cloud.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudlab import contract
from cloudlab.clc.store import Store
from cloudlab.errors import CloudError
from tests.clouds import RunningCloud, default_image, error_code
from tests.test_clc import Cloud


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    monkeypatch.setenv("CLOUDLAB_CACHE", str(tmp_path / "no-cache"))
    made = Cloud(tmp_path, nodes=8)  # 32 vCPUs of capacity: more than the quotas below
    yield made
    made.stop()


def _set_quota(store: Store, user: str, **values: int) -> None:
    from cloudlab.clc.quotas import Quotas

    Quotas(store).set(user, values)


def _refused(cloud: Cloud, user: Any, **kwargs: Any) -> str:
    with pytest.raises(CloudError) as excinfo:
        cloud.run(user, **kwargs)
    return excinfo.value.code


def test_default_quotas_keep_one_user_from_filling_the_cloud(cloud: Cloud) -> None:
    alice = cloud.clc.users.create("alice")
    assert _refused(cloud, alice, min_count=21, max_count=21, instance_type="t2.nano") == "InstanceLimitExceeded"
    ids = cloud.run(alice, min_count=1, max_count=25, instance_type="t2.nano")
    assert len(ids) == 20  # MaxCount beyond the quota: as many as the quota allows, as EC2 launches
    assert _refused(cloud, alice, count=1, instance_type="t2.nano") == "InstanceLimitExceeded"
    cloud.clc.terminate_instances(alice, ids[:2])
    assert len(cloud.run(alice, count=2, instance_type="t2.nano")) == 2  # terminating gives room back
    # the admin has no quota of its own unless one is set
    assert len(cloud.run(cloud.admin, count=5, instance_type="t2.nano")) == 5


def test_vcpu_quota_and_stopped_instances(cloud: Cloud) -> None:
    bob = cloud.clc.users.create("bob")
    _set_quota(cloud.service.store, "bob", vcpus=4)
    assert _refused(cloud, bob, count=3, instance_type="t2.medium") == "VcpuLimitExceeded"
    assert cloud.clc.describe_instances(bob) == []  # nothing recorded by the refused request
    two = cloud.run(bob, count=2, instance_type="t2.medium")
    cloud.wait_state(two, "running")
    cloud.clc.stop_instances(bob, two[:1])
    cloud.wait_state(two[:1], "stopped")
    assert _refused(cloud, bob, count=1, instance_type="t2.nano") == "VcpuLimitExceeded"  # stopped ones count
    cloud.clc.terminate_instances(bob, two[:1])
    assert len(cloud.run(bob, count=1, instance_type="t2.medium")) == 1


def test_two_concurrent_launches_never_exceed_a_quota(cloud: Cloud) -> None:
    """Both requests pass the early check (held apart inside scheduling), then race to record."""
    carol = cloud.clc.users.create("carol")
    _set_quota(cloud.service.store, "carol", instances=5)
    link = cloud.clc.clusters.get(cloud.config.cluster)
    channel = link.channel
    both_scheduling = threading.Barrier(2, timeout=10)
    real_ask = channel.ask

    def ask(action: Any, request: Any) -> Any:
        if action is contract.SCHEDULE:
            both_scheduling.wait()  # neither records anything before both were scheduled
        return real_ask(action, request)

    channel.ask = ask  # type: ignore[method-assign]
    results: list[Any] = []

    def launch() -> None:
        try:
            results.append(cloud.run(carol, min_count=3, max_count=4, instance_type="t2.nano"))
        except CloudError as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    channel.ask = real_ask  # type: ignore[method-assign]
    launched = [r for r in results if isinstance(r, list)]
    # the first to record takes 4 of the 5; the second, needing at least 3, is refused
    assert [len(r) for r in launched] == [4]
    assert [r for r in results if not isinstance(r, list)] == ["InstanceLimitExceeded"]
    assert len(cloud.clc.describe_instances(carol)) == sum(len(r) for r in launched)
    # the places the losing request had been given on the nodes are released again
    cloud.passes()
    free = sum(v.vcpus_free for v in cloud.service.cc.registry.views())
    total = sum(v.vcpus_total for v in cloud.service.cc.registry.views())
    assert total - free == sum(len(r) for r in launched)


def test_address_quota(cloud: Cloud) -> None:
    from cloudlab.clc.addresses import Addresses

    dave = cloud.clc.users.create("dave")
    _set_quota(cloud.service.store, "dave", addresses=2)
    addresses = cloud.clc.service(Addresses)
    addresses.allocate(dave)
    addresses.allocate(dave)
    with pytest.raises(CloudError) as excinfo:
        addresses.allocate(dave)
    assert excinfo.value.code == "AddressLimitExceeded"
    assert len(addresses.describe(dave)) == 2


def test_quotas_are_validated_and_reported(cloud: Cloud) -> None:
    from cloudlab.clc.quotas import Quotas

    cloud.clc.users.create("erin")
    quotas = Quotas(cloud.service.store)
    assert quotas.of("erin") == {
        "instances": 20,
        "vcpus": 32,
        "addresses": 5,
        "volumes": 20,
        "volume_gib": 200,
        "snapshots": 50,
    }
    assert set(quotas.of("admin").values()) == {None}
    assert quotas.set("erin", {"instances": 3})["instances"] == 3
    assert quotas.set("erin", {"instances": None})["instances"] == 20  # back to the default
    for bad in ({"instances": -1}, {"disks": 3}):
        with pytest.raises(CloudError) as excinfo:
            quotas.set("erin", bad)
        assert excinfo.value.code == "InvalidParameterValue"
    with pytest.raises(CloudError):
        quotas.set("nobody", {"instances": 1})


# -- through boto3 ---------------------------------------------------------------------------------------------


def test_quotas_through_boto3(sim_cloud: RunningCloud) -> None:
    user, ec2 = sim_cloud.create_user("quota")
    store = Store(sim_cloud.layout.database)
    try:
        _set_quota(store, user.name, instances=2, vcpus=2, addresses=1)
    finally:
        store.close()
    image = default_image(ec2)
    with pytest.raises(ClientError) as excinfo:
        ec2.run_instances(ImageId=image, MinCount=3, MaxCount=3, InstanceType="t2.nano")
    assert error_code(excinfo) == "InstanceLimitExceeded"
    with pytest.raises(ClientError) as excinfo:
        ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2, InstanceType="t2.medium")
    assert error_code(excinfo) == "VcpuLimitExceeded"
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=image, MinCount=1, MaxCount=5)["Instances"]]
    assert len(ids) == 2
    ec2.allocate_address()
    with pytest.raises(ClientError) as excinfo:
        ec2.allocate_address()
    assert error_code(excinfo) == "AddressLimitExceeded"
    ec2.terminate_instances(InstanceIds=ids)
    for address in ec2.describe_addresses()["Addresses"]:
        ec2.release_address(AllocationId=address["AllocationId"])


# -- the administrator's commands ------------------------------------------------------------------------------


def _cli(state: Path, *args: str) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "cloudlab.cli", "--state", str(state), *args], capture_output=True, text=True, timeout=60
    )


def test_cloudlab_user_quota_and_user_list(sim_cloud: RunningCloud) -> None:
    import json

    state = sim_cloud.layout.root
    user, ec2 = sim_cloud.create_user("cli-quota")
    done = _cli(state, "user", "quota", user.name, "--instances", "1", "--vcpus", "4", "--addresses", "0")
    assert done.returncode == 0, done.stderr
    assert f"user {user.name}: instances 0/1, vcpus 0/4, addresses 0/0" in done.stdout
    with pytest.raises(ClientError) as excinfo:  # the running cloud applies it at once
        ec2.run_instances(ImageId=default_image(ec2), MinCount=2, MaxCount=2)
    assert error_code(excinfo) == "InstanceLimitExceeded"
    with pytest.raises(ClientError) as excinfo:
        ec2.allocate_address()
    assert error_code(excinfo) == "AddressLimitExceeded"
    [inst] = ec2.run_instances(ImageId=default_image(ec2), MinCount=1, MaxCount=1)["Instances"]
    listed = {row["name"]: row for row in json.loads(_cli(state, "user", "list", "--json").stdout)}
    assert listed[user.name]["instances"] == {"used": 1, "quota": 1}
    assert listed["admin"]["vcpus"]["quota"] is None
    table = _cli(state, "user", "list").stdout
    assert any(user.name in line and "1/1" in line and "0/0" in line for line in table.splitlines()), table
    reset = _cli(state, "user", "quota", user.name, "--instances", "-1")
    assert "instances 1/20" in reset.stdout
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
    missing = _cli(state, "user", "quota", "nobody-at-all", "--instances", "3")
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0
    assert "no user 'nobody-at-all'" in missing.stderr
