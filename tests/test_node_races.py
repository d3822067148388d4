"""A domain that vanishes between the node controller's listing (or lookup) and its next libvirt call.

The node lists or looks a domain up, then asks it something (its state, its XML, to start). A terminate
(the CLC's, or a failed start's clean-up) may undefine it in between: libvirt then answers
``VIR_ERR_NO_DOMAIN``. Such a domain is gone, not an error: before these tests' fix, a terminate that
landed between a start's ``create()`` and its closing ``state()`` let the libvirtError out of
``run_instances`` and failed the *whole batch*, so the CLC recorded the batch's other instances
``terminated`` with ``Server.InternalError: libvirtError: Domain not found`` (seen as
``tests/test_terminated_visibility.py::test_through_boto3`` failing in long mixed runs).

Each test makes the race happen deterministically: the second party's undefine is run at the exact
point between the two calls, by wrapping the first call.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import libvirt
import pytest

from cloudlab import contract as c
from cloudlab.errors import CloudError
from cloudlab.nc.node import NodeController
from cloudlab.waiting import wait_until
from tests.clouds import LocalCloud
from tests.test_node import IID, IID2, body, names


def _in_another_thread(work: Any) -> None:
    """Run ``work`` on another thread and wait for it (the node's lock is re-entrant: a terminate from
    the starting thread itself would not contend for it as the CLC's concurrent terminate does)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and not errors, errors


def test_an_instance_terminated_while_it_starts_fails_neither_its_start_nor_its_batch(
    node: NodeController, monkeypatch: pytest.MonkeyPatch
) -> None:
    create = libvirt.virDomain.create
    terminated: list[c.InstanceRemoved] = []

    def create_then_terminated(dom: libvirt.virDomain) -> int:
        result = create(dom)
        if dom.name() == IID:  # the CLC's terminate reaches the node now, between create() and state()
            _in_another_thread(lambda: terminated.append(node.terminate_instance(IID)))
        return result

    monkeypatch.setattr(libvirt.virDomain, "create", create_then_terminated)
    outcomes = {o.instance_id: o for o in node.run_instances((body(IID), body(IID2))).outcomes}
    assert terminated == [c.InstanceRemoved(IID, previous="running", state="absent")]
    # the terminated one started and is gone (no error to record against it); its batch mate runs
    assert outcomes[IID].error_code is None and outcomes[IID].started is not None
    assert outcomes[IID].started.state == "absent"
    assert outcomes[IID2].error_code is None and outcomes[IID2].started is not None
    assert outcomes[IID2].started.state == "running"
    assert names(node.conn) == [IID2]
    assert [(i.instance_id, i.state) for i in node.describe_resource().instances] == [(IID2, "running")]
    assert node.describe_resource().vcpus_free == 3


def test_an_instance_terminated_before_its_qemu_starts_is_reported_gone_not_failed(
    node: NodeController, monkeypatch: pytest.MonkeyPatch
) -> None:
    create = libvirt.virDomain.create

    def terminated_then_create(dom: libvirt.virDomain) -> int:
        if dom.name() == IID:  # the terminate lands between the definition and the start
            _in_another_thread(lambda: node.terminate_instance(IID))
        return create(dom)

    monkeypatch.setattr(libvirt.virDomain, "create", terminated_then_create)
    started = node.run_instance(body(IID))
    assert started == c.InstanceStarted(IID, "absent", "node-01", "test")
    assert names(node.conn) == []
    assert node.describe_resource().vcpus_free == 4


def test_terminating_a_domain_undefined_after_the_listing_is_not_an_error(
    node: NodeController, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.run_instance(body(IID))
    listing = node._domains

    def listed_then_undefined() -> dict[str, Any]:
        found = listing()
        if IID in found:  # someone else undefines it right after the node listed it
            dom = node.conn.lookupByName(IID)
            dom.destroy()
            dom.undefine()
        return found

    monkeypatch.setattr(node, "_domains", listed_then_undefined)
    assert node.terminate_instance(IID) == c.InstanceRemoved(IID, previous="absent", state="absent")
    monkeypatch.undo()
    assert names(node.conn) == []
    assert node.describe_resource().vcpus_free == 4


def test_a_start_whose_lookup_finds_a_domain_that_then_vanishes_starts_it_afresh(
    node: NodeController, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.run_instance(body(IID))
    lookup = node.conn.lookupByName

    def found_then_undefined(name: str) -> libvirt.virDomain:
        dom = lookup(name)
        if name == IID:
            dom.destroy()
            dom.undefine()
        monkeypatch.setattr(node.conn, "lookupByName", lookup)  # once
        return dom

    monkeypatch.setattr(node.conn, "lookupByName", found_then_undefined)
    assert node.run_instance(body(IID)).state == "running"
    assert names(node.conn) == [IID]


@pytest.mark.parametrize("action", ["reboot_instance", "pause_instance", "resume_instance"])
def test_acting_on_a_domain_that_vanished_after_the_listing_says_not_found(
    node: NodeController, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    node.run_instance(body(IID))
    listing = node._domains

    def listed_then_undefined() -> dict[str, Any]:
        found = listing()
        if IID in found:
            dom = node.conn.lookupByName(IID)
            dom.destroy()
            dom.undefine()
        return found

    monkeypatch.setattr(node, "_domains", listed_then_undefined)
    with pytest.raises(CloudError) as excinfo:
        getattr(node, action)(IID)
    assert excinfo.value.code == "InvalidInstanceID.NotFound"


def test_through_the_cloud_a_terminate_during_the_start_leaves_the_batch_mate_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure as the API saw it: RunInstances of two on one node, one terminated at once."""
    monkeypatch.setenv("CLOUDLAB_CACHE", str(tmp_path / "no-cache"))
    cloud = LocalCloud(tmp_path, nodes=1)
    try:
        (node,) = cloud.service.local_nodes.values()
        create = libvirt.virDomain.create
        first: list[str] = []

        def create_then_terminated(dom: libvirt.virDomain) -> int:
            result = create(dom)
            if not first:  # the user's TerminateInstances of it arrives now, and its VM goes
                first.append(dom.name())
                cloud.clc.terminate_instances(cloud.admin, first)
                wait_until(lambda: first[0] not in names(node.conn), 15, what="the terminate to reach the node")
            return result

        monkeypatch.setattr(libvirt.virDomain, "create", create_then_terminated)
        ids = cloud.run(count=2)
        wait_until(lambda: bool(first), 15, what="the first start")
        (mate,) = [i for i in ids if i not in first]
        cloud.wait_state(first, "terminated")
        cloud.wait_state([mate], "running")
        cloud.passes()
        record = cloud.clc.instance(mate)
        assert (record["state"], record["state_reason"]) == ("running", None)
        assert names(node.conn) == [mate]
    finally:
        cloud.stop()
