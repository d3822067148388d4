"""The launch race at scale (issue 10, finding 4).

Before: 10,000 instances over 200 test-driver nodes, in requests of 1,000, ended with 1–6 instances
``Server.InstanceVanished`` in 2 runs of 3, although nothing removed them (reproduced here at 1,000 on
the code before the fix, too). The reconciler judged a node report by ``time of arrival - report age``:
the report of a busy cluster takes a while to serialise, sign and verify, so that time was later than
the moment the report was asked for, and a start confirmed in between looked like a VM that vanished.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cloudlab import contract
from cloudlab.clc.vpcs import Vpcs
from cloudlab.config import CloudConfig
from cloudlab.paths import StateLayout
from cloudlab.service import CloudService
from cloudlab.waiting import wait_until


def start_service(root: Path, nodes: int, vcpus: int, heartbeat_s: float = 1.0) -> CloudService:
    config = CloudConfig(
        hypervisor="test:///default", nodes=nodes, node_vcpus=vcpus, node_memory_mb=vcpus * 256, heartbeat_s=heartbeat_s
    )
    service = CloudService(StateLayout(root / "state"), config, reconcile_s=heartbeat_s)
    service.start(api=False)
    (root / "vmlinuz").write_bytes(b"k")
    (root / "initrd.img").write_bytes(b"r")
    return service


class SlowReports:
    """A CLC→CC channel whose cluster reports arrive late: the report is taken, then held until released
    (the seconds a report of 10,000 instances spends being encoded, signed, sent and verified)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.peer = inner.peer
        self.taken = threading.Event()
        self.release = threading.Event()

    def ask(self, action: contract.Action[Any, Any], request: Any, timeout: float | None = None) -> Any:
        answer = self.inner.ask(action, request, timeout)
        if action is contract.DESCRIBE_CLUSTER:
            self.taken.set()
            self.release.wait(10)
        return answer


def test_a_start_confirmed_while_a_report_is_on_its_way_is_not_vanished(tmp_path: Path) -> None:
    service = start_service(tmp_path, nodes=1, vcpus=4, heartbeat_s=0.2)
    clc = service.clc
    try:
        clc.reconciler.stop()  # passes are driven by hand below
        image, _ = clc.images.register_default(tmp_path / "vmlinuz", tmp_path / "initrd.img", "admin", "x")
        link = clc.clusters.get("cluster1")
        slow = SlowReports(link.channel)
        link.channel = slow
        passing = threading.Thread(target=clc.reconciler.reconcile_cluster, args=(link,))
        passing.start()
        assert slow.taken.wait(10)  # the report is taken: it cannot show an instance started after this
        (instance_id,) = [
            i["instance_id"] for i in clc.run_instances(clc.users.get("admin"), image.image_id)["instances"]
        ]
        wait_until(lambda: clc.instance(instance_id)["dispatched_at"] is not None, 10, what="the start confirmed")
        time.sleep(0.3)  # the report spends a while on its way (longer than any fudge would allow for)
        slow.release.set()
        passing.join(10)
        row = clc.instance(instance_id)
        assert row["state"] == "running", row["state_reason"]
    finally:
        service.clc.stop()
        service.cc.stop()
        for node in service.local_nodes.values():
            node.close()
        service.store.close()


@pytest.mark.slow
def test_ten_thousand_instances_over_200_nodes_all_run(tmp_path: Path) -> None:
    service = start_service(tmp_path, nodes=200, vcpus=64)
    clc = service.clc
    try:
        image, _ = clc.images.register_default(tmp_path / "vmlinuz", tmp_path / "initrd.img", "admin", "x")
        admin = clc.users.get("admin")
        # (a default subnet is a /20, as on EC2: 10,000 instances need a subnet of their own)
        vpcs = clc.service(Vpcs)
        subnet = vpcs.create_subnet(admin, vpcs.create_vpc(admin, "10.0.0.0/16").vpc_id, "10.0.0.0/16")
        for _ in range(10):
            clc.run_instances(admin, image.image_id, min_count=1000, max_count=1000, subnet_id=subnet.subnet_id)

        def states() -> Counter[str]:
            return Counter(r["state"] for r in service.store.query("SELECT state FROM instances"))

        wait_until(lambda: states()["pending"] == 0, 600, what="every instance to leave pending", interval_s=0.5)
        clc.reconciler.reconcile_once()  # and one more look at every node's report
        assert states() == Counter({"running": 10000})
        assert service.store.query("SELECT COUNT(*) AS n FROM instances WHERE state_reason IS NOT NULL")[0]["n"] == 0
        per_node = Counter(r["node"] for r in service.store.query("SELECT node FROM instances"))
        assert max(per_node.values()) <= 64 and sum(per_node.values()) == 10000
    finally:
        service.clc.stop()
        service.cc.stop()
        for node in service.local_nodes.values():
            node.close()
        service.store.close()
