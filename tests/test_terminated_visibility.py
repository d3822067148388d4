"""Terminated instances stay visible for an hour, as on EC2, then leave DescribeInstances (issue 10, item 14).

Their records and ledger events stay. The hour is made to pass by moving ``terminated_at`` back in
the database, as an hour-old termination would have left it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from cloudlab.clc.store import Store
from cloudlab.errors import CloudError
from tests.clouds import LocalCloud, RunningCloud, default_image, error_code


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCloud]:
    monkeypatch.setenv("CLOUDLAB_CACHE", str(tmp_path / "no-cache"))
    made = LocalCloud(tmp_path)
    yield made
    made.stop()


def _age_termination(store: Store, instance_id: str, seconds: float) -> None:
    with store.transaction() as db:
        db.execute("UPDATE instances SET terminated_at=? WHERE instance_id=?", (time.time() - seconds, instance_id))


def test_a_terminated_instance_is_described_for_an_hour_and_then_not(cloud: LocalCloud) -> None:
    kept, ended = cloud.run(count=2)
    cloud.wait_state([kept, ended], "running")
    cloud.clc.terminate_instances(cloud.admin, [ended])
    cloud.wait_state([ended], "terminated")
    store = cloud.service.store
    _age_termination(store, ended, 3500)  # still within the hour
    assert {r["instance_id"] for r in cloud.clc.describe_instances(cloud.admin)} == {kept, ended}
    assert cloud.clc.describe_instances(cloud.admin, [ended])[0]["state"] == "terminated"
    _age_termination(store, ended, 3601)
    assert [r["instance_id"] for r in cloud.clc.describe_instances(cloud.admin)] == [kept]
    with pytest.raises(CloudError) as excinfo:
        cloud.clc.describe_instances(cloud.admin, [ended])
    assert excinfo.value.code == "InvalidInstanceID.NotFound"
    with pytest.raises(CloudError) as excinfo:
        cloud.clc.terminate_instances(cloud.admin, [ended])
    assert excinfo.value.code == "InvalidInstanceID.NotFound"
    # the record and the ledger stay, for accounting
    assert cloud.clc.instance(ended)["state"] == "terminated"
    assert cloud.events(ended)[-1] == "terminated" and cloud.events(ended)[0] == "pending"


def test_listing_instances_uses_the_indexes_not_a_scan(cloud: LocalCloud) -> None:
    store = cloud.service.store
    for user in (cloud.clc.users.create("alice"), cloud.admin):
        sql, params = cloud.clc.records.visible_query(user)
        plan = " ".join(str(tuple(r)) for r in store.query("EXPLAIN QUERY PLAN " + sql, params))
        assert "SCAN instances" not in plan, plan
        assert "SEARCH instances USING INDEX" in plan, plan


def test_through_boto3(sim_cloud: RunningCloud) -> None:
    ec2 = sim_cloud.new_user("terminated")
    image = default_image(ec2)
    ids = [i["InstanceId"] for i in ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2)["Instances"]]
    ec2.terminate_instances(InstanceIds=ids[:1])
    ec2.get_waiter("instance_terminated").wait(InstanceIds=ids[:1], WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    store = Store(sim_cloud.layout.database)
    try:
        _age_termination(store, ids[0], 7200)
    finally:
        store.close()
    listed = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
    assert listed == ids[1:]
    filtered = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["terminated"]}])
    assert filtered["Reservations"] == []
    with pytest.raises(ClientError) as excinfo:
        ec2.describe_instances(InstanceIds=ids[:1])
    assert error_code(excinfo) == "InvalidInstanceID.NotFound"
    ec2.terminate_instances(InstanceIds=ids[1:])
