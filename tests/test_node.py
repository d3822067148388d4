"""The node controller (cloudlab.nc.node) on libvirt's test driver, its domain XML, and who may command it."""

from __future__ import annotations

import http.client
import json
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import libvirt
import pytest

from cloudlab import contract as c
from cloudlab.errors import CloudError
from cloudlab.nc.domain_xml import METADATA_NS, DomainSpec, build_domain_xml, read_metadata
from cloudlab.nc.hypervisor import test_driver_uri as private_host_uri
from cloudlab.nc.node import NodeController
from cloudlab.rpc import Dispatcher, HttpChannel, LocalChannel, serve_http
from cloudlab.security.ca import CertificateAuthority
from cloudlab.security.messages import MessageSigner, MessageVerifier
from cloudlab.waiting import wait_until

IID = "i-0123456789abcdef0"
IID2 = "i-0fedcba9876543210"


def body(instance_id: str = IID, vcpus: int = 1, memory_mb: int = 256) -> c.StartInstance:
    return c.StartInstance(
        instance_id=instance_id,
        vcpus=vcpus,
        memory_mb=memory_mb,
        kernel="/images/vmlinuz",
        ramdisk="/images/initrd.img",
        owner="alice",
        image_id="ami-0123456789abcdef0",
        instance_type="t2.micro",
    )


def names(conn: libvirt.virConnect) -> list[str]:
    return sorted(d.name() for d in conn.listAllDomains())


def foreign_domain_xml(name: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>512</memory><vcpu>2</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )


# -- running, idempotence, capacity -------------------------------------------------------------------------


def test_run_instance_defines_and_starts_a_domain_with_cloudlab_metadata(node: NodeController) -> None:
    result = node.run_instance(body())
    assert result.instance_id == IID and result.state == "running" and result.node == "node-01"
    dom = node.conn.lookupByName(IID)
    assert dom.isActive() and dom.isPersistent()
    meta = read_metadata(dom.XMLDesc(0))
    assert meta == {
        "owner": "alice",
        "image_id": "ami-0123456789abcdef0",
        "instance_type": "t2.micro",
        "vcpus": "1",
        "memory_mb": "256",
        "node": "node-01",
    }
    info = dom.info()
    assert info[3] == 1 and info[1] == 256 * 1024  # vCPUs, KiB
    assert "cloudlab.hostname=" + IID in dom.XMLDesc(0)
    assert (node.node_dir / "instances" / IID / "console.log").is_file()


def test_run_instance_is_idempotent(node: NodeController) -> None:
    first = node.run_instance(body())
    uuid = node.conn.lookupByName(IID).UUIDString()
    second = node.run_instance(body())
    assert second.instance_id == first.instance_id == IID
    assert second.state == "running"
    assert names(node.conn) == [IID]
    assert node.conn.lookupByName(IID).UUIDString() == uuid
    assert node.describe_resource().vcpus_free == 3  # counted once


def test_run_instance_refuses_when_full_and_defines_nothing(node: NodeController) -> None:
    node.run_instance(body(IID, vcpus=3, memory_mb=512))
    with pytest.raises(CloudError) as excinfo:
        node.run_instance(body(IID2, vcpus=2, memory_mb=256))
    assert excinfo.value.code == "InsufficientInstanceCapacity"
    with pytest.raises(CloudError) as excinfo:
        node.run_instance(body(IID2, vcpus=1, memory_mb=2048))  # vCPUs fit, memory does not
    assert excinfo.value.code == "InsufficientInstanceCapacity"
    assert names(node.conn) == [IID]
    node.run_instance(body(IID2, vcpus=1, memory_mb=1536))  # exactly what is left
    assert node.describe_resource().vcpus_free == 0
    assert node.describe_resource().memory_mb_free == 0


def test_a_shut_off_domain_still_holds_its_room(node: NodeController) -> None:
    node.run_instance(body(IID, vcpus=4))
    node.conn.lookupByName(IID).destroy()  # the guest powered off; the definition stays
    assert node.describe_resource().vcpus_free == 0
    with pytest.raises(CloudError) as excinfo:
        node.run_instance(body(IID2))
    assert excinfo.value.code == "InsufficientInstanceCapacity"


def test_concurrent_starts_never_overcommit(node: NodeController) -> None:
    ids = [f"i-{i:017x}" for i in range(8)]
    outcomes: dict[str, str] = {}

    def start(instance_id: str) -> None:
        try:
            node.run_instance(body(instance_id, vcpus=1, memory_mb=256))
            outcomes[instance_id] = "ok"
        except CloudError as exc:
            outcomes[instance_id] = exc.code

    threads = [threading.Thread(target=start, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(outcomes.values()) == ["InsufficientInstanceCapacity"] * 4 + ["ok"] * 4
    assert len(node.conn.listAllDomains()) == 4


# -- terminate, reboot, console -------------------------------------------------------------------------


def test_terminate_destroys_and_undefines(node: NodeController) -> None:
    node.run_instance(body())
    assert node.terminate_instance(IID) == c.InstanceRemoved(IID, previous="running", state="absent")
    assert node.conn.listAllDomains() == []
    assert node.describe_resource().vcpus_free == 4


def test_terminating_a_shut_off_or_absent_instance_is_not_an_error(node: NodeController) -> None:
    node.run_instance(body())
    node.conn.lookupByName(IID).destroy()
    assert node.terminate_instance(IID).previous == "shutoff"
    assert node.conn.listAllDomains() == []
    assert node.terminate_instance(IID) == c.InstanceRemoved(IID, previous="absent", state="absent")
    assert node.terminate_instance(IID2).previous == "absent"


def test_reboot(node: NodeController) -> None:
    node.run_instance(body())
    assert node.reboot_instance(IID) == c.InstanceState(IID, "running")
    assert node.conn.lookupByName(IID).isActive()
    with pytest.raises(CloudError) as excinfo:
        node.reboot_instance(IID2)
    assert excinfo.value.code == "InvalidInstanceID.NotFound"
    node.conn.lookupByName(IID).destroy()
    with pytest.raises(CloudError) as excinfo:
        node.reboot_instance(IID)
    assert excinfo.value.code == "IncorrectInstanceState"


def test_console_output_is_the_tail_of_the_log(node: NodeController) -> None:
    node.run_instance(body())
    assert node.get_console_output(IID).output == ""
    log = node.node_dir / "instances" / IID / "console.log"
    log.write_bytes(b"x" * 70_000 + b"cloudlab: booted\n")
    output = node.get_console_output(IID).output
    assert output.endswith("cloudlab: booted\n") and len(output) == 64 * 1024
    with pytest.raises(CloudError) as excinfo:
        node.get_console_output(IID2)
    assert excinfo.value.code == "InvalidInstanceID.NotFound"


# -- reports ----------------------------------------------------------------------------------------------------


def test_a_volume_served_elsewhere_is_plugged_in_again_and_once(node: NodeController) -> None:
    """Attaching is idempotent; a volume whose export moved (the SC restored it on another port) is
    plugged in again from there, and its disk stops the guest on an I/O error (the node resumes it)."""
    node.run_instance(body())
    first = c.DiskPlan("vol-0123456789abcdef0", "vdb", c.NbdExport("127.0.0.1", 10809, "vol-0123456789abcdef0"))
    for _ in range(2):
        node.attach_volume(c.AttachDisk(IID, first))
    moved = c.DiskPlan(first.volume_id, "vdb", c.NbdExport("127.0.0.1", 10811, first.volume_id))
    node.attach_volume(c.AttachDisk(IID, moved))
    inactive = node.conn.lookupByName(IID).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)  # where the test driver keeps them
    disks = ET.fromstring(inactive).findall("devices/disk[@type='network']")
    assert [d.find("source/host").get("port") for d in disks] == ["10811"]
    assert disks[0].find("driver").get("error_policy") == "stop"
    assert node.resume_io_paused() == []  # nothing paused by an I/O error here


def test_describe_resource_accounting(node: NodeController) -> None:
    empty = node.describe_resource()
    assert (empty.vcpus_total, empty.vcpus_free, empty.memory_mb_total, empty.memory_mb_free) == (
        4,
        4,
        2048,
        2048,
    )
    assert empty.instances == () and empty.node == "node-01" and empty.hypervisor == "test"
    node.run_instance(body(IID, vcpus=1, memory_mb=256))
    node.run_instance(body(IID2, vcpus=2, memory_mb=1024))
    report = node.describe_resource()
    assert report.vcpus_free == 4 - 3 and report.memory_mb_free == 2048 - 1280
    assert sorted(report.instances, key=lambda i: i.instance_id) == [
        c.InstanceReport(IID, "running", 1, 256),
        c.InstanceReport(IID2, "running", 2, 1024),
    ]
    node.conn.lookupByName(IID2).destroy()
    states = {i.instance_id: i.state for i in node.describe_resource().instances}
    assert states == {IID: "running", IID2: "shutoff"}


def test_a_heartbeat_names_what_it_holds_and_gets_only_the_digest_while_nothing_changed(node: NodeController) -> None:
    first = node.report_if_changed(None)
    assert first.report is not None and first.report.instances == ()
    again = node.report_if_changed(first.digest)
    assert again.digest == first.digest and again.report is None  # same holdings: a few bytes, not the report
    node.run_instance(body(IID, vcpus=1, memory_mb=256))
    changed = node.report_if_changed(first.digest)
    assert changed.digest != first.digest and changed.report is not None
    assert [i.instance_id for i in changed.report.instances] == [IID]
    assert node.report_if_changed("0" * 32).report is not None  # a digest it never gave: the whole report
    node.conn.lookupByName(IID).destroy()  # a state change is a change
    assert node.report_if_changed(changed.digest).report.instances[0].state == "shutoff"


def test_domains_without_cloudlab_metadata_are_ignored(node: NodeController) -> None:
    node.run_instance(body())
    for name in ("webserver", "i-0aaaaaaaaaaaaaaaa"):  # the second even looks like an instance id
        node.conn.defineXML(foreign_domain_xml(name)).create()
    assert len(node.conn.listAllDomains()) == 3
    report = node.describe_resource()
    assert [i.instance_id for i in report.instances] == [IID]
    assert report.vcpus_free == 3 and report.memory_mb_free == 2048 - 256
    # and they are not touched by a terminate of the node's own instance
    node.terminate_instance(IID)
    assert names(node.conn) == ["i-0aaaaaaaaaaaaaaaa", "webserver"]


@pytest.mark.parametrize("name", ["webserver", "i-0aaaaaaaaaaaaaaaa"])
def test_a_foreign_domain_cannot_be_terminated_or_rebooted_through_the_node(node: NodeController, name: str) -> None:
    """The node ignores domains it did not create (no cloudlab metadata) in its reports; it must not
    destroy one either when asked by name (on a shared qemu:///system host that is someone else's VM)."""
    node.conn.defineXML(foreign_domain_xml(name)).create()
    assert node.terminate_instance(name).previous == "absent"
    assert names(node.conn) == [name] and node.conn.lookupByName(name).isActive()
    with pytest.raises(CloudError) as excinfo:
        node.reboot_instance(name)
    assert excinfo.value.code == "InvalidInstanceID.NotFound"


def test_lifecycle_events_reach_the_report_and_the_change_hook(tmp_path: Path) -> None:
    changes = threading.Semaphore(0)
    node = NodeController(
        "node-01",
        private_host_uri(tmp_path / "node-01", 4, 2048),
        tmp_path / "node-01",
        accel="test",
        on_change=changes.release,
    )
    try:
        node.run_instance(body())
        node.conn.lookupByName(IID).destroy()

        def seen() -> set[str]:
            return {e.event for e in node.describe_resource().events if e.instance_id == IID}

        wait_until(lambda: {"started", "stopped"} <= seen(), 5, what="started and stopped events in the report")
        seqs = [e.seq for e in node.describe_resource().events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert changes.acquire(timeout=5)  # the hook heard of them too
    finally:
        node.close()


# -- domain XML -----------------------------------------------------------------------------------------------


def spec(accel: str = "tcg", **overrides: Any) -> DomainSpec:
    values: dict[str, Any] = {
        "instance_id": IID,
        "vcpus": 2,
        "memory_mb": 384,
        "kernel": Path("/var/images/vmlinuz"),
        "ramdisk": Path("/var/images/initrd.img"),
        "console_log": Path("/var/nodes/n1/console.log"),
        "accel": accel,
        "metadata": {"owner": "alice", "image_id": "ami-0123456789abcdef0"},
    }
    return DomainSpec(**(values | overrides))


def test_tcg_domain_xml() -> None:
    root = ET.fromstring(build_domain_xml(spec("tcg")))
    assert root.tag == "domain" and root.get("type") == "qemu"
    assert root.findtext("name") == IID
    assert root.find("memory").get("unit") == "MiB" and root.findtext("memory") == "384"
    assert root.findtext("vcpu") == "2"
    assert root.findtext("os/kernel") == "/var/images/vmlinuz"
    assert root.findtext("os/initrd") == "/var/images/initrd.img"
    cmdline = root.findtext("os/cmdline")
    assert "console=ttyS0" in cmdline and cmdline.endswith(f"cloudlab.hostname={IID}")
    for device in ("serial", "console"):
        el = root.find(f"devices/{device}")
        assert el is not None and el.get("type") == "file"
        assert el.find("source").get("path") == "/var/nodes/n1/console.log"
    assert root.find("cpu") is None  # no host-passthrough under TCG
    assert root.findtext("on_poweroff") == "destroy"


def test_kvm_domain_xml() -> None:
    root = ET.fromstring(build_domain_xml(spec("kvm")))
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert root.findtext("os/kernel") == "/var/images/vmlinuz"


def test_domain_xml_without_ramdisk_and_with_a_custom_cmdline() -> None:
    root = ET.fromstring(build_domain_xml(spec(ramdisk=None, cmdline="console=ttyS0 init=/bin/sh")))
    assert root.find("os/initrd") is None
    assert root.findtext("os/cmdline") == f"console=ttyS0 init=/bin/sh cloudlab.hostname={IID}"


def test_metadata_round_trips_even_with_markup_characters() -> None:
    metadata = {"owner": "o'brien & <co>", "image_id": 'ami-"quoted"', "note": "ünïcode"}
    xml = build_domain_xml(spec(metadata=metadata))
    assert read_metadata(xml) == metadata
    assert METADATA_NS in xml


def test_metadata_survives_libvirt(node: NodeController) -> None:
    metadata = {"owner": "o'brien & <co>", "vcpus": "1", "memory_mb": "128"}
    xml = build_domain_xml(spec("test", vcpus=1, memory_mb=128, metadata=metadata))
    dom = node.conn.defineXML(xml)
    assert read_metadata(dom.XMLDesc(0)) == metadata


@pytest.mark.parametrize(
    "xml",
    [
        foreign_domain_xml("webserver"),
        "<domain type='kvm'><name>x</name><metadata><other xmlns='urn:x' owner='a'/></metadata></domain>",
        "<domain><name>x</name><metadata><instance owner='no namespace'/></metadata></domain>",
        "not xml at all <",
        "",
    ],
)
def test_read_metadata_is_none_for_foreign_xml(xml: str) -> None:
    assert read_metadata(xml) is None


# -- who may command a node ------------------------------------------------------------------------------------


class NodeUnderAttack:
    """One NC behind its dispatcher, reachable in-process and over HTTP, and the parties that talk to it."""

    def __init__(self, tmp_path: Path) -> None:
        self.ca = CertificateAuthority.load_or_create(tmp_path / "pki")
        self.node = NodeController(
            "node-01", private_host_uri(tmp_path / "node-01", 4, 2048), tmp_path / "node-01", accel="test"
        )
        self.dispatcher = Dispatcher(
            "nc-node-01", MessageSigner(self.ca.identity("node-01", "nc")), MessageVerifier(self.ca.ca_certificate)
        )
        self.node.register_routes(self.dispatcher)
        self.httpd: ThreadingHTTPServer = serve_http(self.dispatcher)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def signer(self, name: str, role: str, ca: CertificateAuthority | None = None) -> MessageSigner:
        return MessageSigner((ca or self.ca).identity(name, role))

    def reply_verifier(self) -> MessageVerifier:
        return MessageVerifier(self.ca.ca_certificate)

    def close(self) -> None:
        # shutdown() waits for the serve loop's 0.5 s poll; do it in the background
        def stop() -> None:
            self.httpd.shutdown()
            self.httpd.server_close()

        threading.Thread(target=stop, daemon=True).start()
        self.node.close()


@pytest.fixture
def target(tmp_path: Path) -> Iterator[NodeUnderAttack]:
    t = NodeUnderAttack(tmp_path)
    try:
        yield t
    finally:
        t.close()


def _post(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("POST", "/message", body=data, headers={"Content-Type": "application/json"})
        return conn.getresponse().read()
    finally:
        conn.close()


@pytest.fixture(params=["local", "http"])
def transport(request: pytest.FixtureRequest, target: NodeUnderAttack) -> dict[str, Callable[..., Any]]:
    """``channel(signer)`` and ``send(raw bytes) -> reply bytes`` for the transport under test."""
    if request.param == "local":
        return {
            "channel": lambda signer: LocalChannel("node-01", "nc", signer, target.reply_verifier(), target.dispatcher),
            "send": target.dispatcher.handle,
        }
    return {
        "channel": lambda signer: HttpChannel("node-01", "nc", signer, target.reply_verifier(), target.url, timeout=5),
        "send": lambda data: _post(target.url, data),
    }


def refusal(target: NodeUnderAttack, reply: bytes, nonce: str) -> dict[str, Any]:
    """The error in the node's signed reply to the request with ``nonce``."""
    answer = target.reply_verifier().verify(reply, {"nc"}, in_reply_to=nonce).body
    assert answer["ok"] is False, answer
    return answer["error"]


def test_a_cluster_controller_may_run_an_instance(
    target: NodeUnderAttack, transport: dict[str, Callable[..., Any]]
) -> None:
    channel = transport["channel"](target.signer("cc-cluster1", "cc"))
    assert channel.ask(c.NODE_RUN_INSTANCE, body()).state == "running"
    assert names(target.node.conn) == [IID]
    assert channel.ask(c.DESCRIBE_RESOURCE, c.Empty()).vcpus_free == 3
    assert channel.ask(c.NODE_TERMINATE_INSTANCE, c.InstanceRef(IID)).previous == "running"
    assert target.node.conn.listAllDomains() == []


@pytest.mark.parametrize(("name", "role"), [("clc", "clc"), ("node-02", "nc"), ("alice", "user")])
def test_only_a_cluster_controller_may_run_an_instance(
    target: NodeUnderAttack, transport: dict[str, Callable[..., Any]], name: str, role: str
) -> None:
    with pytest.raises(CloudError) as excinfo:
        transport["channel"](target.signer(name, role)).ask(c.NODE_RUN_INSTANCE, body())
    assert excinfo.value.code == "MessageRejected"
    assert "role-not-allowed" in excinfo.value.message
    assert target.node.conn.listAllDomains() == []
    assert any("role-not-allowed" in r for r in target.dispatcher.refused)


def test_a_cc_of_a_foreign_ca_is_refused(
    tmp_path: Path, target: NodeUnderAttack, transport: dict[str, Callable[..., Any]]
) -> None:
    foreign = CertificateAuthority.load_or_create(tmp_path / "foreign-pki")
    with pytest.raises(CloudError) as excinfo:
        transport["channel"](target.signer("cc-cluster1", "cc", foreign)).ask(c.NODE_RUN_INSTANCE, body())
    assert excinfo.value.code == "MessageRejected"
    assert "untrusted-certificate" in excinfo.value.message
    assert target.node.conn.listAllDomains() == []


@pytest.mark.parametrize("tamper", ["vcpus", "instance_id", "action"])
def test_a_tampered_message_is_refused(
    target: NodeUnderAttack, transport: dict[str, Callable[..., Any]], tamper: str
) -> None:
    signer = target.signer("cc-cluster1", "cc")
    sent = signer.seal("describe_resource" if tamper == "action" else "run_instance", c.encode(body()))
    envelope = json.loads(sent.data)
    if tamper == "action":
        envelope["action"] = "run_instance"  # a harmless signed request turned into a start
    else:
        envelope["body"][tamper] = 2 if tamper == "vcpus" else IID2
    error = refusal(target, transport["send"](json.dumps(envelope).encode()), sent.nonce)
    assert error["code"] == "MessageRejected"
    assert ("digest-mismatch" if tamper != "action" else "bad-signature") in error["message"]
    assert target.node.conn.listAllDomains() == []


@pytest.mark.parametrize("strip", ["signature", "sender_cert", "both"])
def test_an_unsigned_message_is_refused(
    target: NodeUnderAttack, transport: dict[str, Callable[..., Any]], strip: str
) -> None:
    sent = target.signer("cc-cluster1", "cc").seal("run_instance", c.encode(body()))
    envelope = json.loads(sent.data)
    for field in ["signature", "sender_cert"] if strip == "both" else [strip]:
        del envelope[field]
    error = refusal(target, transport["send"](json.dumps(envelope).encode()), sent.nonce)
    assert error["code"] == "MessageRejected" and "unsigned" in error["message"]
    bare = json.dumps({"action": "run_instance", "body": c.encode(body())}).encode()
    assert json.loads(transport["send"](bare))["body"]["ok"] is False
    assert target.node.conn.listAllDomains() == []


def test_a_replayed_message_is_refused(target: NodeUnderAttack, transport: dict[str, Callable[..., Any]]) -> None:
    sent = target.signer("cc-cluster1", "cc").seal("run_instance", c.encode(body()))
    first = target.reply_verifier().verify(transport["send"](sent.data), {"nc"}, in_reply_to=sent.nonce).body
    assert first["ok"] is True and names(target.node.conn) == [IID]
    # the instance is terminated; whoever recorded the start must not be able to bring it back
    dom = target.node.conn.lookupByName(IID)
    dom.destroy()
    dom.undefine()
    error = refusal(target, transport["send"](sent.data), sent.nonce)
    assert error["code"] == "MessageRejected" and "replayed" in error["message"]
    assert target.node.conn.listAllDomains() == []


def test_a_refused_message_does_not_burn_the_real_senders_nonce(
    target: NodeUnderAttack, transport: dict[str, Callable[..., Any]]
) -> None:
    sent = target.signer("cc-cluster1", "cc").seal("run_instance", c.encode(body()))
    envelope = json.loads(sent.data)
    envelope["body"]["vcpus"] = 4
    refusal(target, transport["send"](json.dumps(envelope).encode()), sent.nonce)
    ok = target.reply_verifier().verify(transport["send"](sent.data), {"nc"}, in_reply_to=sent.nonce).body
    assert ok["ok"] is True and names(target.node.conn) == [IID]


@pytest.mark.parametrize("skew_s", [-3600.0, 3600.0])
def test_an_expired_message_is_refused(
    target: NodeUnderAttack, transport: dict[str, Callable[..., Any]], skew_s: float
) -> None:
    """A message stamped an hour in the past (or the future) is outside the time window."""
    identity = target.ca.identity("cc-cluster1", "cc")
    stale = MessageSigner(identity, clock=lambda: time.time() + skew_s)
    sent = stale.seal("run_instance", c.encode(body()))
    error = refusal(target, transport["send"](sent.data), sent.nonce)
    assert error["code"] == "MessageRejected" and "expired" in error["message"]
    assert target.node.conn.listAllDomains() == []
