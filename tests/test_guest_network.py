"""The default image's guest network: static address, metadata, user data and SSH, in a real TCG VM.

Everything happens inside a throw-away network namespace ``clt<random>``: a bridge holding the
gateway (10.77.0.1/24) and the metadata address (169.254.169.254/32), persistent taps for QEMU, and
a :class:`MetadataServer` whose socket is bound inside the namespace. QEMU and ssh run in it
through ``nsenter``, so no packet touches the host's own network.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudlab.guest import BOOT_MARKER, DEFAULT_KERNEL_CMDLINE
from cloudlab.images.build import BuiltImage, ImageBuildError
from cloudlab.net.metadata import InstanceMetadata, MetadataServer, listen_socket
from cloudlab.waiting import WaitTimeout, wait_until

pytestmark = pytest.mark.vm

GATEWAY = "10.77.0.1"
BOOT_TIMEOUT_S = 60
TAPS = ("tap0", "tap1")

USER_DATA = b"""#!/bin/sh
echo "user-data: uid=$(id -u) cwd=$(pwd)"
echo "user-data: hello from the metadata service"
"""


def _image() -> BuiltImage:
    """The default image, rebuilt first if init.sh changed (fast when it is current)."""
    from cloudlab.images.build import build_default_image
    from cloudlab.images.cached import find_built_image

    try:
        return build_default_image()
    except ImageBuildError as exc:
        found = find_built_image()
        if found is None:
            pytest.skip(f"the default image is not built and cannot be built here: {exc}")
        return found


@pytest.fixture(scope="module")
def image() -> BuiltImage:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and taps need root (CI runs as root)")
    for tool in ("qemu-system-x86_64", "nsenter", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    return _image()


@dataclass
class Namespace:
    name: str
    metadata: dict[str, InstanceMetadata]

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.name}", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _bind_in_namespace(name: str) -> object:
    """listen_socket() on 169.254.169.254:80 from a thread that has entered the namespace."""
    from pyroute2 import netns

    result: dict[str, object] = {}

    def bind() -> None:
        netns.pushns(name)
        try:
            result["sock"] = listen_socket()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            result["error"] = exc
        finally:
            netns.popns()

    thread = threading.Thread(target=bind, daemon=True)
    thread.start()
    thread.join(10)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["sock"]


@pytest.fixture(scope="module")
def namespace(image: BuiltImage) -> Iterator[Namespace]:
    from pyroute2 import NetNS, netns

    name = f"clt{secrets.token_hex(4)}"
    netns.create(name)
    server = None
    try:
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            ns.link("add", ifname="br0", kind="bridge")
            bridge = ns.link_lookup(ifname="br0")[0]
            ns.addr("add", index=bridge, address=GATEWAY, prefixlen=24)
            ns.addr("add", index=bridge, address="169.254.169.254", prefixlen=32)
            ns.link("set", index=bridge, state="up")
            for tap in TAPS:
                ns.link("add", ifname=tap, kind="tuntap", mode="tap")
                index = ns.link_lookup(ifname=tap)[0]
                ns.link("set", index=index, master=bridge, state="up")
        known: dict[str, InstanceMetadata] = {}
        server = MetadataServer(known.get, _bind_in_namespace(name))  # type: ignore[arg-type]
        server.start()
        assert server.address == ("169.254.169.254", 80)
        yield Namespace(name, known)
    finally:
        if server is not None:
            server.stop()
        netns.remove(name)


@pytest.fixture
def keypair(tmp_path: Path):
    def make(kind: str) -> tuple[Path, str]:
        key = tmp_path / f"id_{kind}"
        args = ["-t", "ed25519"] if kind == "ed25519" else ["-t", "rsa", "-b", "2048", "-m", "PEM"]
        subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-C", f"test-{kind}", "-f", str(key)], check=True)
        if kind == "rsa":
            assert key.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")  # as EC2's CreateKeyPair
        return key, (tmp_path / f"id_{kind}.pub").read_text().strip()

    return make


class Guest:
    """One QEMU/TCG guest on a tap of the namespace's bridge; the serial console goes to a file."""

    def __init__(self, ns: Namespace, image: BuiltImage, tap: str, cmdline: str, console: Path) -> None:
        self.console = console
        mac = f"52:54:00:77:00:{TAPS.index(tap):02x}"
        argv = [
            "nsenter",
            f"--net=/run/netns/{ns.name}",
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-serial",
            f"file:{console}",
            "-kernel",
            str(image.kernel),
            "-initrd",
            str(image.ramdisk),
            "-append",
            f"{DEFAULT_KERNEL_CMDLINE} {cmdline}",
            "-netdev",
            f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev=n0,mac={mac}",
        ]
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def lines(self) -> list[str]:
        try:
            text = self.console.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line.strip("\r") for line in text.split("\n")]

    def wait_line(self, prefix: str, timeout: float) -> str:
        def seen() -> str | None:
            found = [line for line in self.lines() if prefix in line]
            if found:
                return found[0][found[0].index(prefix) :]
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode(errors="replace") if self.process.stdout else ""
                pytest.fail(f"QEMU exited ({self.process.returncode}) before {prefix!r}: {output}\n{self.lines()}")
            return None

        try:
            return wait_until(seen, timeout, what=repr(prefix))
        except WaitTimeout:
            pytest.fail(f"no {prefix!r} on the console after {timeout} s:\n" + "\n".join(self.lines()[-30:]))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout:
            self.process.stdout.close()


@pytest.fixture
def boot(namespace: Namespace, image: BuiltImage, tmp_path: Path):
    guests: list[Guest] = []

    def start(tap: str, cmdline: str) -> Guest:
        guest = Guest(namespace, image, tap, cmdline, tmp_path / f"console-{tap}.log")
        guests.append(guest)
        return guest

    yield start
    for guest in guests:
        guest.stop()


def ssh(ns: Namespace, key: Path, address: str, command: str, timeout: float = 60) -> str:
    done = ns.run(
        [
            "ssh",
            "-i",
            str(key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
            f"root@{address}",
            command,
        ],
        timeout,
    )
    assert done.returncode == 0, f"ssh {command!r} failed ({done.returncode}): {done.stderr.strip()}"
    return done.stdout


def test_metadata_key_and_user_data_then_ssh(namespace: Namespace, boot, keypair) -> None:
    """key and user data come from the metadata service; an RSA PEM key (EC2's format) logs in."""
    key, public = keypair("rsa")
    address = "10.77.0.5"
    namespace.metadata[address] = InstanceMetadata(
        instance_id="i-0000000000000abcd",
        local_ipv4=address,
        public_ipv4=None,
        instance_type="m1.small",
        ami_id="ami-00000001",
        availability_zone="cloudlab-1a",
        hostname="ip-10-77-0-5",
        security_groups=("default",),
        public_keys=(("test-rsa", public),),
        user_data=USER_DATA,
    )
    guest = boot("tap0", f"cloudlab.hostname=guest5 cloudlab.ip={address}/24,{GATEWAY}")
    marker = guest.wait_line(BOOT_MARKER, BOOT_TIMEOUT_S)
    lines = guest.lines()
    metadata = [line for line in lines if line.startswith("cloudlab-metadata:")]
    assert metadata == ["cloudlab-metadata: instance-id=i-0000000000000abcd key=yes user-data=yes"], lines
    assert lines.index(metadata[0]) < next(i for i, line in enumerate(lines) if BOOT_MARKER in line)
    print(f"\n{marker} (wall {time.monotonic() - guest.started:.1f} s)")
    assert guest.wait_line("cloudlab-user-data:", 30) == "cloudlab-user-data: exit=0"

    log = ssh(namespace, key, address, "cat /var/log/user-data.log")
    assert log.splitlines() == ["user-data: uid=0 cwd=/root", "user-data: hello from the metadata service"]
    assert ssh(namespace, key, address, "head -c 2 /run/cloudlab/user-data; stat -c %a /root/.ssh/authorized_keys") == (
        "#!600\n"
    )
    # What benchmarks run: ping through the bridge, an iperf3 daemon and a JSON client (uses /tmp).
    assert " 0% packet loss" in ssh(namespace, key, address, f"ping -c 3 -i 0.2 {GATEWAY}")
    report = ssh(namespace, key, address, "iperf3 -s -D -1 && sleep 0.5 && iperf3 -c 127.0.0.1 -J -t 1")
    assert '"bits_per_second"' in report
    assert ssh(namespace, key, address, "timeout 1 sh -c 'while :; do :; done'; echo burn=$?") == "burn=143\n"


def test_sshkey_option_without_metadata(namespace: Namespace, boot, keypair) -> None:
    """cloudlab.sshkey= (base64 of an ed25519 public key) logs in; no metadata for this address."""
    key, public = keypair("ed25519")
    address = "10.77.0.6"
    encoded = base64.b64encode(public.encode()).decode()
    guest = boot("tap1", f"cloudlab.ip={address}/24,{GATEWAY} cloudlab.sshkey={encoded}")
    guest.wait_line(BOOT_MARKER, BOOT_TIMEOUT_S)
    lines = guest.lines()
    assert [line for line in lines if line.startswith("cloudlab-metadata:")] == ["cloudlab-metadata: unreachable"]
    assert ssh(namespace, key, address, "cat /root/.ssh/authorized_keys") == public + "\n"
    assert ssh(namespace, key, address, "which iperf3 ping; hostname") == "/usr/bin/iperf3\n/bin/ping\ncloudlab\n"
