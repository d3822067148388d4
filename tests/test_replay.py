"""Replays and misaddressed messages between controllers (issue 10, finding 8).

Each test captures a genuine signed message off the wire (the bytes a channel sends), then replays it
the way an attacker on the loopback would: to a restarted receiver, or to a receiver it was not meant
for. Receivers are built as the service builds them (``controller_keys``: addressed to their own
certificate name, nothing stamped before their start).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cloudlab import contract as c
from cloudlab.cc.cluster import ClusterController
from cloudlab.nc.hypervisor import test_driver_uri as private_host_uri
from cloudlab.nc.node import NodeController
from cloudlab.rpc import Dispatcher, LocalChannel
from cloudlab.security.ca import CertificateAuthority
from cloudlab.security.messages import MessageVerifier, controller_keys

IID = "i-0123456789abcdef0"


class Recording(LocalChannel):
    """A LocalChannel that keeps every request's bytes, as a sniffer on the loopback would."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.sent: list[bytes] = []

    def _send(self, data: bytes, timeout: float | None) -> bytes:
        self.sent.append(data)
        return super()._send(data, timeout)


def start_request() -> c.StartInstance:
    return c.StartInstance(instance_id=IID, vcpus=1, memory_mb=256, kernel="/k", owner="alice")


class Node:
    """One NC (test driver) behind its dispatcher; ``restart()`` builds a new process's worth of both."""

    def __init__(self, ca: CertificateAuthority, name: str, root: Path) -> None:
        self.ca, self.name, self.root = ca, name, root
        self.start()

    def start(self) -> None:
        uri = private_host_uri(self.root, 4, 4096)
        self.controller = NodeController(self.name, uri, self.root, accel="test")
        self.dispatcher = Dispatcher(
            f"nc-{self.name}", *controller_keys(self.ca.identity(self.name, "nc"), self.ca.ca_certificate)
        )
        self.controller.register_routes(self.dispatcher)

    def restart(self) -> None:
        self.controller.close()
        self.start()

    def domains(self) -> list[str]:
        return [d.name() for d in self.controller.conn.listAllDomains()]


def answer(ca: CertificateAuthority, to: str, reply: bytes) -> dict[str, Any]:
    """The body of a reply as its addressee reads it (the error a replay earns)."""
    return MessageVerifier(ca.ca_certificate, receiver=to).verify(reply, {"cc", "nc"}).body


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "pki")


def cc_to(ca: CertificateAuthority, node: Node) -> Recording:
    signer, verifier = controller_keys(ca.identity("cc-cluster1", "cc"), ca.ca_certificate)
    return Recording(node.name, "nc", signer, verifier, node.dispatcher)


def test_a_start_replayed_to_a_restarted_node_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    node = Node(ca, "node-01", tmp_path / "node-01")
    channel = cc_to(ca, node)
    assert channel.ask(c.NODE_RUN_INSTANCE, start_request()).state == "running"
    captured = channel.sent[-1]
    channel.ask(c.NODE_TERMINATE_INSTANCE, c.InstanceRef(IID))
    node.restart()  # a new process: its nonce memory is empty
    reply = answer(ca, "cc-cluster1", node.dispatcher.handle(captured))
    assert reply["ok"] is False and "before-restart" in reply["error"]["message"]
    assert node.domains() == []
    # while a fresh, genuine start is taken
    assert cc_to(ca, node).ask(c.NODE_RUN_INSTANCE, start_request()).state == "running"


def test_a_heartbeat_for_one_node_is_refused_by_another_and_after_a_restart(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    node1, node2 = Node(ca, "node-01", tmp_path / "n1"), Node(ca, "node-02", tmp_path / "n2")
    channel = cc_to(ca, node1)
    channel.ask(c.DESCRIBE_RESOURCE, c.Empty())
    heartbeat = channel.sent[-1]
    reply = answer(ca, "cc-cluster1", node2.dispatcher.handle(heartbeat))
    assert reply["ok"] is False and "wrong-receiver" in reply["error"]["message"]
    node1.restart()
    reply = answer(ca, "cc-cluster1", node1.dispatcher.handle(heartbeat))
    assert reply["ok"] is False and "before-restart" in reply["error"]["message"]


def make_cc(ca: CertificateAuthority, name: str) -> tuple[ClusterController, Dispatcher]:
    keys = controller_keys(ca.identity(f"cc-{name}", "cc"), ca.ca_certificate)
    cc = ClusterController(name, signer=keys[0], verifier=keys[1])
    dispatcher = Dispatcher(f"cc-{name}", *keys)
    cc.register_routes(dispatcher)
    return cc, dispatcher


def clc_to(ca: CertificateAuthority, cluster: str, dispatcher: Dispatcher) -> Recording:
    signer, verifier = controller_keys(ca.identity("clc", "clc"), ca.ca_certificate)
    return Recording(f"cc-{cluster}", "cc", signer, verifier, dispatcher)


def test_a_release_replayed_after_a_cc_restart_is_refused(ca: CertificateAuthority) -> None:
    cc, dispatcher = make_cc(ca, "cluster1")
    channel = clc_to(ca, "cluster1", dispatcher)
    channel.ask(c.RELEASE, c.OnNode(node="node-01", instance_id=IID))
    captured = channel.sent[-1]
    cc.stop()
    _, restarted = make_cc(ca, "cluster1")
    reply = answer(ca, "clc", restarted.handle(captured))
    assert reply["ok"] is False and "before-restart" in reply["error"]["message"]


def test_a_message_for_one_cc_is_refused_by_another(ca: CertificateAuthority) -> None:
    cc_a, to_a = make_cc(ca, "a")
    cc_b, to_b = make_cc(ca, "b")
    channel = clc_to(ca, "a", to_a)
    channel.ask(c.DESCRIBE_CLUSTER, c.DescribeCluster())
    reply = answer(ca, "clc", to_b.handle(channel.sent[-1]))
    assert reply["ok"] is False and "wrong-receiver" in reply["error"]["message"]
    cc_a.stop()
    cc_b.stop()


def test_an_unaddressed_message_is_refused_except_hello(ca: CertificateAuthority) -> None:
    cc, dispatcher = make_cc(ca, "cluster1")
    signer, _ = controller_keys(ca.identity("clc", "clc"), ca.ca_certificate)
    unaddressed = signer.seal("schedule", {"instances": []})
    reply = answer(ca, "clc", dispatcher.handle(unaddressed.data))
    assert reply["ok"] is False and "wrong-receiver" in reply["error"]["message"]
    hello = signer.seal("hello", {})
    verified = MessageVerifier(ca.ca_certificate, receiver="clc").verify(dispatcher.handle(hello.data), {"cc"})
    assert verified.body == {"ok": True, "result": {}} and verified.sender == "cc-cluster1"
    cc.stop()


def test_a_channel_without_a_peer_name_learns_it_and_addresses_every_message(ca: CertificateAuthority) -> None:
    cc, dispatcher = make_cc(ca, "cluster1")
    signer, verifier = controller_keys(ca.identity("node-01", "nc"), ca.ca_certificate)
    channel = Recording(None, "cc", signer, verifier, dispatcher)
    channel.ask(c.NODE_CHANGED, c.Empty())
    assert channel.peer == "cc-cluster1"
    assert [json.loads(m)["to"] for m in channel.sent] == [None, "cc-cluster1"]
    cc.stop()
