"""Volumes and snapshots from a notebook's client: DataFrames and volume handles (simulated cloud)."""

from __future__ import annotations

import pickle

from cloudlab.client import connect
from cloudlab.storage import SNAPSHOT_COLUMNS, VOLUME_COLUMNS, Volume
from cloudlab.waiting import wait_until
from tests.clouds import RunningCloud


def test_volume_handles_and_tables(sim_cloud: RunningCloud) -> None:
    cloud = connect(str(sim_cloud.layout.root))
    vol = cloud.create_volume(2, name="dataset")
    assert isinstance(vol, Volume) and vol.startswith("vol-") and vol.state == "available"
    assert pickle.loads(pickle.dumps(vol)) == str(vol)
    [instance] = cloud.run(count=1, progress=False)
    wait_until(lambda: cloud.states([instance])[instance] == "running", 30, what="the instance to run")
    vol.attach(instance, "/dev/sdg")
    table = cloud.volumes().set_index("volume_id")
    assert list(cloud.volumes().columns) == VOLUME_COLUMNS
    row = table.loc[str(vol)]
    assert (row["name"], row["size_gib"], row["state"]) == ("dataset", 2, "in-use")
    assert (row["instance_id"], row["device"], row["attachment"]) == (instance, "/dev/sdg", "attached")
    snapshot_id = vol.snapshot("for the table")
    snapshots = cloud.snapshots().set_index("snapshot_id")
    assert list(cloud.snapshots().columns) == SNAPSHOT_COLUMNS
    assert snapshots.loc[snapshot_id, "state"] == "completed" and snapshots.loc[snapshot_id, "volume_id"] == vol
    vol.detach()
    assert cloud.volumes().set_index("volume_id").loc[str(vol), "state"] == "available"
    copy = cloud.create_volume(3, snapshot_id=snapshot_id)
    assert copy.describe()["SnapshotId"] == snapshot_id and copy.describe()["Size"] == 3
    for handle in (vol, copy):
        handle.delete()
    cloud.ec2.delete_snapshot(SnapshotId=snapshot_id)
    cloud.terminate([instance])
