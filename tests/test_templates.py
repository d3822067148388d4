"""Booted templates without a VM: the domain XML of a template and of a restore, template keys, the store,
the identity line and its hand-off over a socket (the real-VM side is in test_instant_launch.py)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from cloudlab.clc.vmtypes import BUILTIN_TYPES, DEFAULT_TYPE
from cloudlab.guest import IDENTITY_ACK, IDENTITY_PORT
from cloudlab.nc.domain_xml import QEMU_NS, DomainSpec, Nic, build_domain_xml
from cloudlab.nc.hypervisor import open_connection
from cloudlab.nc.templates import (
    DEFAULT_TEMPLATE_SIZE,
    INFO_FILE,
    RAM_FILE,
    STATE_FILE,
    Launcher,
    Template,
    TemplateKey,
    TemplateStore,
    hand_identity,
    identity_line,
)
from cloudlab.waiting import WaitTimeout, wait_until


@pytest.fixture
def spec(tmp_path: Path) -> DomainSpec:
    kernel, ramdisk = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel-1")
    ramdisk.write_bytes(b"ramdisk-1")
    return DomainSpec(
        instance_id="i-0123456789abcdef0",
        vcpus=1,
        memory_mb=256,
        kernel=kernel,
        ramdisk=ramdisk,
        console_log=tmp_path / "console.log",
        nic=Nic("d0:0d:12:34:56:78", "10.211.0.5/24", "10.211.0.1", "br-x"),
    )


@pytest.fixture
def launcher(tmp_path: Path) -> Launcher:
    return Launcher(open_connection("test:///default"), "node-t", TemplateStore(tmp_path / "templates"))


def test_a_restored_domain_waits_for_a_migration_stream_and_has_the_identity_port(spec: DomainSpec) -> None:
    restored = dataclasses.replace(spec, identity_socket=Path("/run/x/identity.sock"), incoming=True, uuid="u-1")
    root = ET.fromstring(build_domain_xml(restored))
    args = [a.get("value") for a in root.iterfind(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
    assert args == ["-incoming", "defer"]
    # restored with the template's RAM: mapped privately (copy-on-write), ahead of -incoming
    mapped = dataclasses.replace(restored, memory_file=Path("/cache/tpl-1/ram"))
    root_mapped = ET.fromstring(build_domain_xml(mapped))
    args = [a.get("value") for a in root_mapped.iterfind(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
    assert args == [
        "-object",
        f"memory-backend-file,id=cloudlab.ram,size={256 << 20},mem-path=/cache/tpl-1/ram,share=off",
        "-machine",
        "memory-backend=cloudlab.ram",
        "-incoming",
        "defer",
    ]
    # a template writes its RAM into its file; a comma in a path is doubled (QEMU's option syntax)
    template = dataclasses.replace(spec, memory_file=Path("/c,d/ram"), memory_shared=True)
    arg = ET.fromstring(build_domain_xml(template)).find(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg[2]").get("value")
    assert arg.endswith("mem-path=/c,,d/ram,share=on"), arg
    channel = root.find("devices/channel")
    assert channel is not None and channel.get("type") == "unix"
    assert channel.find("source").get("path") == "/run/x/identity.sock"
    assert channel.find("target").get("name") == IDENTITY_PORT
    assert root.findtext("uuid") == "u-1"
    # its own identity stays on its command line: a reboot of the restored guest boots cold as itself
    assert "cloudlab.hostname=i-0123456789abcdef0 cloudlab.ip=10.211.0.5/24,10.211.0.1" in root.findtext("os/cmdline")
    assert root.find("devices/interface/mac").get("address") == "d0:0d:12:34:56:78"
    # a cold boot has neither
    cold = ET.fromstring(build_domain_xml(spec))
    assert cold.find("devices/channel") is None and cold.find(f"{{{QEMU_NS}}}commandline") is None


def test_a_template_nic_is_the_same_device_on_no_bridge(spec: DomainSpec) -> None:
    template = dataclasses.replace(spec, nic=Nic("52:54:00:ff:ff:fe", "", "", ""))
    root = ET.fromstring(build_domain_xml(template))
    iface = root.find("devices/interface")
    assert iface.get("type") == "ethernet" and iface.find("source") is None
    assert iface.find("model").get("type") == "virtio"
    assert "cloudlab.ip=" not in root.findtext("os/cmdline")


def test_template_keys_follow_the_image_the_command_line_and_the_size(launcher: Launcher, spec: DomainSpec) -> None:
    key = launcher.key_for(spec)
    assert key is not None and key == launcher.key_for(spec)
    assert key.name.startswith("tpl-") and key.qemu_version == launcher.qemu_version
    others = {
        launcher.key_for(dataclasses.replace(spec, cmdline=spec.cmdline + " cloudlab.metadata=0")),
        launcher.key_for(dataclasses.replace(spec, memory_mb=512)),
        launcher.key_for(dataclasses.replace(spec, nic=None)),
        launcher.key_for(dataclasses.replace(spec, accel="kvm")),
    }
    spec.ramdisk.write_bytes(b"ramdisk-2")  # the image changed: another template
    others.add(launcher.key_for(spec))
    assert len({k.name for k in others if k} | {key.name}) == 6
    # a NIC's address and MAC are the instance's, not the template's: they do not change the key
    assert launcher.key_for(dataclasses.replace(spec, nic=Nic("d0:0d:00:00:00:01", "10.211.0.9/24", "g", "b"))) == (
        launcher.key_for(spec)
    )


def test_no_template_for_disk_images_or_in_boot_mode(tmp_path: Path, launcher: Launcher, spec: DomainSpec) -> None:
    assert launcher.key_for(dataclasses.replace(spec, disk=tmp_path / "disk.raw")) is None
    assert launcher.key_for(dataclasses.replace(spec, ramdisk=None)) is None
    booting = Launcher(launcher.conn, "node-b", launcher.store, "boot")
    assert booting.template_for(spec) is None and not booting._wanted
    with pytest.raises(ValueError, match="restore or boot"):
        Launcher(launcher.conn, "node-x", launcher.store, "fast")


def test_the_store_finds_only_whole_templates_of_the_same_key(launcher: Launcher, spec: DomainSpec) -> None:
    store = launcher.store
    key = launcher.key_for(spec)
    folder = store.root / key.name
    folder.mkdir(parents=True)
    assert store.ready(key) is None  # nothing in it yet
    (folder / INFO_FILE).write_text(json.dumps({"key": dataclasses.asdict(key)}))
    assert store.ready(key) is None  # no state
    (folder / STATE_FILE).write_bytes(b"QEVM")
    assert store.ready(key) is None  # no RAM
    (folder / RAM_FILE).write_bytes(bytes(4096))
    assert store.ready(key) == Template(key, folder / STATE_FILE)
    assert store.ready(key).ram == folder / RAM_FILE
    other = dataclasses.replace(key, memory_mb=128)
    assert store.ready(other) is None
    # another QEMU's templates are removed when a node starts; this QEMU's stay
    old = dataclasses.replace(key, qemu_version=key.qemu_version + 1)
    (store.root / old.name).mkdir()
    (store.root / old.name / INFO_FILE).write_text(json.dumps({"key": dataclasses.asdict(old)}))
    store.remove_stale(key.qemu_version, key.libvirt_version)
    assert not (store.root / old.name).exists() and store.ready(key) is not None


def test_a_template_that_cannot_be_built_is_not_retried_at_once(launcher: Launcher, spec: DomainSpec) -> None:
    key = launcher.key_for(spec)
    launcher.store.root.mkdir(parents=True)
    launcher.store._failed(key, "no waiting line")
    assert launcher.store.failed_recently(key)
    launcher.want(key, spec)
    assert not launcher._wanted  # nothing queued


def test_a_closing_node_abandons_a_build_that_waits_for_another_builders_lock(
    launcher: Launcher, spec: DomainSpec
) -> None:
    """Another process builds the same template (it holds the cache's lock): the node told to stop gives
    up waiting at once, records no failure (the template can be built) and its builder thread ends."""
    key = launcher.key_for(spec)
    store = launcher.store
    store.root.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_LOCK, str(store.root / f".{key.name}.lock")], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        launcher.want(key, spec)
        wait_until(lambda: launcher._thread is not None and launcher._thread.is_alive(), 5, what="the builder")
        started = time.monotonic()
        launcher.close(timeout_s=20)
        assert not launcher._thread.is_alive() and time.monotonic() - started < 10
        assert not launcher.building and not store.failed_recently(key) and store.ready(key) is None
    finally:
        holder.kill()
        holder.wait()


HOLD_A_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_a_template_build_tells_a_waiting_guest_from_one_that_booted_through() -> None:
    from cloudlab.nc.templates import _template_progress

    assert _template_progress(b"") is None
    assert _template_progress(b"cloudlab-template: waiting for identity\r\n") == "waiting"
    assert _template_progress(b"cloudlab-boot: ok host=x uptime=2.5\r\n") == "booted"  # an init of before


def test_the_identity_line_is_the_instances_own_and_fresh_each_time(spec: DomainSpec) -> None:
    template = Template(TemplateKey("k", "r", "", 1, 256, True, "tcg", 7002000, 9000000), Path("state"))
    one, two = identity_line(spec, template, now=1700000000.25), identity_line(spec, template, now=1700000000.25)
    words = dict(w.split("=", 1) for w in one.split())
    assert words["cloudlab.hostname"] == "i-0123456789abcdef0"
    assert words["cloudlab.mac"] == "d0:0d:12:34:56:78"
    assert words["cloudlab.ip"] == "10.211.0.5/24,10.211.0.1"
    assert words["cloudlab.time"] == "1700000000.250"
    assert words["cloudlab.launch"] == template.name
    assert len(words["cloudlab.seed"]) == 64
    assert dict(w.split("=", 1) for w in two.split())["cloudlab.seed"] != words["cloudlab.seed"]
    assert "\n" not in one


def _guest(path: Path, drop_first: bool, answer: bool) -> tuple[threading.Thread, list[bytes]]:
    """A stand-in for the guest's end of the port (a unix socket server as QEMU's chardev is)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    lines: list[bytes] = []

    def run() -> None:
        conn, _ = server.accept()
        with conn, server:
            conn.settimeout(3)
            data = b""
            try:
                while data.count(b"\n") < (2 if drop_first else 1):
                    data += conn.recv(4096)
            except TimeoutError:
                return
            lines.extend(data.splitlines())
            if answer:
                conn.sendall(IDENTITY_ACK.encode() + b"\n")
                conn.recv(4096)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, lines


def test_the_identity_is_written_again_until_the_guest_confirms(tmp_path: Path) -> None:
    path = tmp_path / "id.sock"
    thread, lines = _guest(path, drop_first=True, answer=True)
    hand_identity(path, "cloudlab.hostname=i-1", timeout_s=5)
    thread.join(5)
    assert lines[:2] == [b"cloudlab.hostname=i-1", b"cloudlab.hostname=i-1"]


def test_a_guest_that_never_confirms_is_a_timeout(tmp_path: Path) -> None:
    path = tmp_path / "id.sock"
    _guest(path, drop_first=False, answer=False)
    with pytest.raises(WaitTimeout, match="confirming its identity"):
        hand_identity(path, "cloudlab.hostname=i-2", timeout_s=0.6)


def test_the_start_up_template_is_the_default_instance_types_size() -> None:
    from cloudlab.clc.dispatch import SCRATCH_GIB
    from cloudlab.nc.templates import DEFAULT_TEMPLATE_SCRATCH_GIB

    assert BUILTIN_TYPES[DEFAULT_TYPE] == DEFAULT_TEMPLATE_SIZE
    assert SCRATCH_GIB == DEFAULT_TEMPLATE_SCRATCH_GIB


def test_a_scratch_disks_size_is_part_of_the_key_and_volumes_mean_no_template(
    tmp_path: Path, launcher: Launcher, spec: DomainSpec
) -> None:
    from cloudlab.nc.domain_xml import Volume
    from cloudlab.nc.templates import qcow2_size
    from cloudlab.sc.files import qemu_img

    small, big = tmp_path / "s.qcow2", tmp_path / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(small), "1G")
    qemu_img("create", "-q", "-f", "qcow2", str(big), "2G")
    assert qcow2_size(small) == 1 << 30
    one, two = (launcher.key_for(dataclasses.replace(spec, scratch=d)) for d in (small, big))
    assert one.scratch_gib == 1 and two.scratch_gib == 2 and one.name != two.name
    assert one.name != launcher.key_for(spec).name
    with_volume = dataclasses.replace(spec, scratch=small, volumes=(Volume("vol-1", "vdb", "h", 1, "e"),))
    assert launcher.key_for(with_volume) is None
    with pytest.raises(ValueError, match="not a qcow2"):
        qcow2_size(spec.kernel)


def test_up_takes_a_launch_mode_and_the_config_keeps_it(tmp_path: Path) -> None:
    from cloudlab.cli import build_parser
    from cloudlab.config import CloudConfig

    parser = build_parser()
    assert parser.parse_args(["up", "--launch", "boot"]).launch == "boot"
    assert parser.parse_args(["up"]).launch is None  # the saved config (default restore) decides
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["up", "--launch", "instant"])
    assert exc.value.code == 2
    assert CloudConfig().launch == "restore"
    CloudConfig(launch="boot").save(tmp_path / "cloud.json")
    assert CloudConfig.load(tmp_path / "cloud.json").launch == "boot"


def test_the_test_driver_reports_versions(launcher: Launcher) -> None:
    assert launcher.qemu_version > 0 and launcher.libvirt_version >= 9000000
    assert isinstance(launcher.conn, libvirt.virConnect)


def test_the_launch_benchmark_reads_an_instances_memory_from_its_process() -> None:
    import subprocess

    from cloudlab.bench.launch import qemu_memory_kib

    proc = subprocess.Popen(["sh", "-c", "sleep 30", "guest=i-0bench0000000000,debug-threads=on"])
    try:
        found = wait_until(lambda: qemu_memory_kib("i-0bench0000000000"), 5, what="the process listed")
        assert found["rss_kib"] > 0 and 0 < found["pss_kib"] <= found["rss_kib"]
        assert qemu_memory_kib("i-0nosuch00000000") == {}
    finally:
        proc.kill()
        proc.wait()


def test_a_scratch_disk_is_a_fresh_copy_of_one_blank_qcow2_per_size(tmp_path: Path) -> None:
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img is not installed")
    from cloudlab.nc.disks import NodeDisks
    from cloudlab.nc.templates import qcow2_size

    first, second = tmp_path / "instances" / "i-1", tmp_path / "instances" / "i-2"
    for folder in (first, second):
        folder.mkdir(parents=True)
    disk = NodeDisks._scratch_disk(first, 1)
    assert qcow2_size(disk) == 1 << 30 and qcow2_size(NodeDisks._scratch_disk(second, 2)) == 2 << 30
    assert sorted(p.name for p in tmp_path.glob("blank-*")) == ["blank-1G.qcow2", "blank-2G.qcow2"]
    with disk.open("ab") as handle:
        handle.write(b"written by the guest")
    assert NodeDisks._scratch_disk(first, 1).read_bytes() == (tmp_path / "blank-1G.qcow2").read_bytes()


def test_a_fresh_root_volume_of_an_image_disk_keys_a_template_by_the_disks_digest(
    tmp_path: Path, launcher: Launcher, spec: DomainSpec
) -> None:
    import hashlib

    from cloudlab.nc.domain_xml import Volume

    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"disk-1")
    root = Volume("vol-1", "vda", "h", 1, "vol-1")
    fresh = dataclasses.replace(spec, volumes=(root,), root_backing=disk, root_gib=2)
    key = launcher.key_for(fresh)
    assert key is not None and key.disk_sha256 == hashlib.sha256(b"disk-1").hexdigest() and key.root_gib == 2
    assert key.scratch_gib == 0 and key.name != launcher.key_for(spec).name
    assert launcher.key_for(dataclasses.replace(fresh, root_gib=4)).name != key.name  # the guest saw its size
    # a root volume the cloud did not vouch for (ever attached before), or more volumes: booted cold
    assert launcher.key_for(dataclasses.replace(fresh, root_backing=None)) is None
    assert launcher.key_for(dataclasses.replace(fresh, volumes=(root, Volume("vol-2", "vdb", "h", 2, "e")))) is None
    assert launcher.key_for(dataclasses.replace(fresh, root_backing=tmp_path / "gone.qcow2")) is None
    disk.write_bytes(b"disk-2")  # the image's disk changed: another template
    assert launcher.key_for(fresh).name != key.name
    # keys without a disk are named as before the disk fields existed (their templates stay valid)
    plain = launcher.key_for(spec)
    fields = {k: v for k, v in dataclasses.asdict(plain).items() if k not in ("nic_mtu", "disk_sha256", "root_gib")}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    assert plain.name == f"tpl-{digest}"


def test_a_disk_templates_root_is_read_only_until_its_identity_comes() -> None:
    from cloudlab.nc.templates import template_cmdline

    cmdline = "console=ttyS0 quiet root=/dev/vda rw"
    assert template_cmdline(cmdline, disk=True) == (
        "console=ttyS0 quiet root=/dev/vda ro fsck.mode=skip cloudlab.identity=channel init_on_free=1"
    )
    assert template_cmdline("console=ttyS0", disk=False) == "console=ttyS0 cloudlab.identity=channel init_on_free=1"


def test_a_template_root_overlay_written_before_the_save_is_seen(tmp_path: Path) -> None:
    from cloudlab.nc.templates import written_clusters
    from cloudlab.sc.files import qemu_img

    base, overlay = tmp_path / "base.qcow2", tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "16M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 1M", str(base)], check=True, capture_output=True)
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay), "32M")
    assert written_clusters(overlay) == 0  # the backing's data is not the overlay's
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write 4M 64k", str(overlay)], check=True, capture_output=True)
    assert written_clusters(overlay) == 64 << 10


def test_a_node_takes_a_root_volume_as_fresh_only_when_the_cloud_says_so(tmp_path: Path) -> None:
    from cloudlab import contract as c
    from cloudlab.nc.node_launch import fresh_root

    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(b"disk")
    export = c.NbdExport("10.0.0.1", 10809, "vol-1")
    assert fresh_root((c.DiskPlan("vol-1", "vda", export, str(disk), 8),)) == {"root_backing": disk, "root_gib": 8}
    assert fresh_root((c.DiskPlan("vol-1", "vda", export),)) == {}  # attached before: boots cold
    assert fresh_root((c.DiskPlan("vol-1", "vdb", export, str(disk), 8),)) == {}
    assert fresh_root((c.DiskPlan("vol-1", "vda", export, str(tmp_path / "elsewhere"), 8),)) == {}


def test_the_launch_benchmark_reports_which_image_against_its_target() -> None:
    from cloudlab.bench.__main__ import main
    from cloudlab.bench.launch import IMAGES, report_lines

    figures = {"median": 1.5}
    side = {"ssh_s": figures, "marker_s": figures, "started_as_asked": 3, "idle_rss_mib": {}, "idle_pss_mib": {}}
    result = {"repeats": 3, "restore": side, "boot": side, "image": "cloudlab-debian", "target_restored_ssh_s": 2.0}
    result |= {"ratio_boot_to_restore_ssh": 1.0, "ratio_boot_to_restore_marker": 1.0}
    assert (
        report_lines(result)[0].startswith("cloudlab-debian: RunInstances→SSH answering")
        and "< 2 s" in report_lines(result)[0]
    )
    assert IMAGES["debian"][1] == "cloudlab-debian" and IMAGES["default"][2] == 1.0
    with pytest.raises(SystemExit):
        main(["--only", "launch", "--launch-image", "windows"])
