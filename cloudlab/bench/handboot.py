"""``cloudlab-debian`` booted BY HAND, as a researcher would: the baseline for the cloud's own boots.

Everything is built with the plain tools in one network namespace of our own
(``clb<6 hex>-hand-boot``, removed afterwards, see ``cloudlab.bench.lab.Lab``): a Linux bridge holding the
gateway address, a tap for the guest, and cloudlab's metadata server bound to 169.254.169.254:80
with a *fixed* lookup (no cloud, no controller). QEMU is started directly (TCG by default) on a
qcow2 overlay of the image's disk (``qemu-img create -f qcow2 -b disk.qcow2 -F qcow2``), with the
kernel, initrd and command line from the image's manifest plus the identity a node would add
(``cloudlab.hostname=``, ``cloudlab.ip=``). So this is exactly what a node controller has to
reproduce, and what the storage benchmark's "same image booted by hand" compares against.

:func:`debian_by_hand` yields a :class:`HandBoot` once the guest answers SSH (and, by default,
once cloud-init has finished), with the seconds from starting QEMU to each milestone:

* ``launch_s``     -- ``cloudlab-launch: cold boot`` on the console (cloudlab-identity ran);
* ``marker_s``     -- the boot marker ``cloudlab-boot: ...`` (sshd up with the launch key);
* ``ssh_s``        -- the first ``ssh ... true`` that succeeded from the namespace;
* ``cloud_init_s`` -- cloud-init's final stage (``cloudlab-cloud-init: done`` on the console).

:func:`boot_times` repeats it and summarises (median and spread) for reports and benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudlab.bench.lab import BuildError, Lab, wait_for
from cloudlab.bench.stats import summarise
from cloudlab.guest import BOOT_MARKER, CLOUD_INIT_DONE_MARKER, LAUNCH_MARKER
from cloudlab.images.cached import BuiltImage, find_built_image
from cloudlab.net import netns
from cloudlab.net.metadata import InstanceMetadata, MetadataServer, listen_socket
from cloudlab.reach import SshRemote, netns_argv
from cloudlab.waiting import WaitTimeout, wait_until

NET = "10.79.0"  # the guest's segment, only ever inside our namespace
GUEST_IP = f"{NET}.10"
GATEWAY = f"{NET}.1"
SERVER = f"{NET}.2"  # the hand-made storage server across a link (export_across_a_link)
GUEST_MAC = "52:54:00:79:00:10"
INSTANCE_ID = "i-0000000000000a001"
POLL_S = 0.25
NBD_PORT = 10809  # the first hand-made export's port, on the gateway's address inside the namespace


@dataclass
class HandBoot:
    """One hand-booted guest: how to reach it, where its console is, and when things happened."""

    instance_id: str
    address: str
    ssh: SshRemote
    key: Path
    public_key: str
    console_path: Path
    overlay: Path
    namespace: str
    argv: list[str]
    qmp_path: Path
    times: dict[str, float] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except OSError:
            return ""

    def powerdown(self, timeout_s: float = 180) -> int:
        """Press the ACPI power button (QMP ``system_powerdown``, what libvirt's shutdown does) and
        wait for QEMU to exit; its exit status. systemd in the guest shuts down cleanly first."""
        assert self.process is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as qmp:
            qmp.settimeout(10)
            qmp.connect(str(self.qmp_path))
            reader = qmp.makefile("rb")
            reader.readline()  # the greeting
            for command in ("qmp_capabilities", "system_powerdown"):
                qmp.sendall(json.dumps({"execute": command}).encode() + b"\n")
                while b'"return"' not in (line := reader.readline()):
                    if not line:
                        raise BuildError(f"QMP closed before answering {command}")
        return self.process.wait(timeout=timeout_s)


def debian_image() -> BuiltImage:
    """The built ``cloudlab-debian`` (``cloudlab image build debian``), or a BuildError saying so."""
    image = find_built_image(name="debian")
    if image is None or image.disk is None:
        raise BuildError("cloudlab-debian is not built: run 'cloudlab image build debian'")
    return image


def guest_metadata(public_key: str, user_data: bytes | None, instance_id: str = INSTANCE_ID) -> InstanceMetadata:
    """The fixed answer the hand-built metadata server gives the guest."""
    return InstanceMetadata(
        instance_id=instance_id,
        local_ipv4=GUEST_IP,
        public_ipv4=None,
        instance_type="t2.small",
        ami_id="ami-00000000000000a01",
        availability_zone="hand-1a",
        hostname=instance_id,
        security_groups=("default",),
        public_keys=(("hand", public_key),),
        user_data=user_data,
        mac=GUEST_MAC,
        reservation_id="r-0000000000000a001",
        subnet_cidr=f"{NET}.0/24",
        account_id="000000000000",
        launch_time=time.time(),
        block_devices=(("ami", "/dev/vda"), ("root", "/dev/vda")),
    )


@contextlib.contextmanager
def debian_by_hand(
    image: BuiltImage | None = None,
    *,
    user_data: bytes | None = None,
    memory_mb: int = 512,
    vcpus: int = 1,
    accel: str = "tcg",
    disk_size_mb: int | None = None,
    wait_cloud_init: bool = True,
    timeout_s: float = 900,
    instance_id: str = INSTANCE_ID,
    nbd_volumes: Sequence[Path] = (),
    root_over_nbd: bool = False,
    linked_volumes: Sequence[Path] = (),
) -> Iterator[HandBoot]:
    """Boot ``cloudlab-debian`` by hand and yield it once SSH answers (and cloud-init is done).

    ``disk_size_mb`` makes the overlay larger than the image (cloud-init grows the file system);
    ``nbd_volumes`` (qcow2 files) are exported by hand as the SC exports a volume and attached as
    ``/dev/vdb``, ... (see :func:`export_by_hand`); ``root_over_nbd`` serves the root overlay the same
    way, as the cloud serves an instance's root volume from its SC (so a root-disk benchmark compares
    like with like); ``linked_volumes`` come next (``/dev/vd...`` after those) and are served from a second
    namespace joined to the guest's bridge by a veth, as an SC serves a node across the cloud's underlay
    (:func:`export_across_a_link`). Everything is torn down on exit, also on error (the console is in the
    error message).
    """
    image = image or debian_image()
    if image.disk is None:
        raise BuildError(f"{image.directory} is not a disk image")
    lab = Lab()
    server: MetadataServer | None = None
    try:
        ns = lab.netns("boot")
        lab.ip(ns, "link", "add", "br0", "type", "bridge")
        lab.ip(ns, "addr", "add", f"{GATEWAY}/24", "dev", "br0")
        lab.ip(ns, "link", "set", "br0", "up")
        lab.ip(ns, "addr", "add", "169.254.169.254/32", "dev", "lo")
        lab.ip(ns, "tuntap", "add", "tap0", "mode", "tap")
        lab.ip(ns, "link", "set", "tap0", "master", "br0", "up")

        key = lab.tmp / "id_ed25519"
        lab.sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", lab.tag, "-f", str(key))
        public_key = key.with_suffix(".pub").read_text().strip()
        metadata = guest_metadata(public_key, user_data, instance_id)
        with netns.entered(ns):
            sock = listen_socket()
        server = MetadataServer(lambda ip: metadata if ip == GUEST_IP else None, sock)
        server.start()

        overlay = lab.tmp / "root.qcow2"
        size = [f"{disk_size_mb}M"] if disk_size_mb else []
        lab.sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk), "-F", "qcow2", str(overlay), *size)
        console_path, qmp_path = lab.tmp / "console.log", lab.tmp / "qmp.sock"
        root_drive = export_by_hand(lab, ns, overlay, len(nbd_volumes), drive_id="root") if root_over_nbd else None
        argv = qemu_argv(image, overlay, console_path, instance_id, memory_mb, vcpus, accel, root_drive)
        argv += ["-qmp", f"unix:{qmp_path},server=on,wait=off"]
        for index, volume in enumerate(nbd_volumes):
            argv += export_by_hand(lab, ns, volume, index)
        for index, volume in enumerate(linked_volumes, start=len(nbd_volumes) + 1):
            argv += export_across_a_link(lab, ns, volume, index)
        ssh = SshRemote(GUEST_IP, key, ns)
        boot = HandBoot(instance_id, GUEST_IP, ssh, key, public_key, console_path, overlay, ns, argv, qmp_path)
        started = time.monotonic()
        boot.process = proc = lab.spawn("qemu", argv, ns)
        _wait_milestones(boot, proc, lab, started, wait_cloud_init, timeout_s)
        yield boot
    finally:
        if server is not None:
            server.stop()
        lab.close()


def qemu_argv(
    image: BuiltImage,
    overlay: Path,
    console: Path,
    instance_id: str,
    memory_mb: int,
    vcpus: int,
    accel: str,
    root_drive: list[str] | None = None,
) -> list[str]:
    """QEMU as a node would run it: direct kernel boot, the overlay as the first virtio disk (vda),
    one virtio NIC on the tap, a virtio RNG, the serial console to a file, nothing else.
    ``root_drive`` replaces the local overlay's drive (the root served over NBD)."""
    local_root = ["-drive", f"file={overlay},if=none,id=root,format=qcow2,discard=unmap",
                  "-device", "virtio-blk-pci,drive=root"]  # fmt: skip
    cmdline = f"{image.kernel_cmdline} cloudlab.hostname={instance_id} cloudlab.ip={GUEST_IP}/24,{GATEWAY}"
    return [
        "qemu-system-x86_64",
        "-accel",
        accel,
        "-smp",
        str(vcpus),
        "-m",
        str(memory_mb),
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        f"file:{console}",
        "-no-reboot",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.ramdisk),
        "-append",
        cmdline,
        *(root_drive or local_root),
        "-netdev",
        "tap,id=n0,ifname=tap0,script=no,downscript=no",
        "-device",
        f"virtio-net-pci,netdev=n0,mac={GUEST_MAC}",
        "-device",
        "virtio-rng-pci",
    ]


def export_across_a_link(lab: Lab, ns: str, volume: Path, index: int) -> list[str]:
    """:func:`export_by_hand` from a namespace of its own (``<NET>.2``) joined to the guest's bridge by a
    veth: the hop a cloud volume takes from its node to the SC over the underlay (a veth and a bridge,
    each end in its own namespace), without any of cloudlab's orchestration."""
    server = lab.netns("sc")
    lab.ip(server, "link", "set", "lo", "up")
    lab.sh("ip", "link", "add", "sc0", "netns", ns, "type", "veth", "peer", "name", "eth0", "netns", server)
    lab.ip(ns, "link", "set", "sc0", "master", "br0", "up")
    lab.ip(server, "addr", "add", f"{SERVER}/24", "dev", "eth0")
    lab.ip(server, "link", "set", "eth0", "up")
    return export_by_hand(lab, server, volume, index, address=SERVER)


def export_by_hand(
    lab: Lab, ns: str, volume: Path, index: int, drive_id: str | None = None, address: str = GATEWAY
) -> list[str]:
    """Serve ``volume`` with ``qemu-nbd`` in the namespace, with the flags the SC uses
    (``cloudlab/sc/exports.py``: qcow2 on the server's side, writeback cache, discard), on the gateway's
    address, and QEMU's arguments that attach it as the domain XML does (raw over NBD, ``cache=none``,
    virtio-blk, the volume's file name as its serial; ``drive_id`` names the drive, ``vol<index>`` else)."""
    port = NBD_PORT + index
    drive_id = drive_id or f"vol{index}"
    export = volume.stem
    argv = ["qemu-nbd", "--persistent", "--shared=2", f"--bind={address}", f"--port={port}", f"--export-name={export}",
            "--format=qcow2", "--cache=writeback", "--discard=unmap", str(volume)]  # fmt: skip
    proc = lab.spawn(f"nbd-{index}", argv, ns)

    def listening() -> bool:
        lab.alive(f"nbd-{index}", proc)
        probe = f"exec 3<>/dev/tcp/{address}/{port}"
        return subprocess.run([*netns_argv(ns), "bash", "-c", probe], capture_output=True, timeout=10).returncode == 0

    wait_for(listening, 30, f"qemu-nbd serving {volume.name}", interval=0.2)
    drive = (f"driver=raw,if=none,id={drive_id},cache=none,file.driver=nbd,file.server.type=inet,"
             f"file.server.host={address},file.server.port={port},file.export={export}")  # fmt: skip
    return ["-drive", drive, "-device", f"virtio-blk-pci,drive={drive_id},serial={export.replace('-', '')[:20]}"]


def _wait_milestones(
    boot: HandBoot, proc: subprocess.Popen, lab: Lab, started: float, wait_cloud_init: bool, timeout_s: float
) -> None:
    """Watch the console until every milestone is reached, bounded by ``timeout_s``. SSH is tried
    from a thread of its own, so a slow connection attempt never delays reading the console."""
    markers = {"launch_s": LAUNCH_MARKER, "marker_s": BOOT_MARKER, "cloud_init_s": CLOUD_INIT_DONE_MARKER}
    wanted = {"launch_s", "marker_s", "ssh_s"} | ({"cloud_init_s"} if wait_cloud_init else set())
    stop = threading.Event()

    def left() -> float:
        return max(0.0, timeout_s - (time.monotonic() - started))

    def ssh_answers() -> bool:
        if stop.is_set():
            return True
        if boot.ssh.run("true", timeout=15).returncode != 0:
            return False
        boot.times["ssh_s"] = round(time.monotonic() - started, 2)
        return True

    def probe_ssh() -> None:
        with contextlib.suppress(WaitTimeout):
            wait_until(ssh_answers, left(), what="SSH", interval_s=0.5, sleep=stop.wait)

    def all_reached() -> bool:
        if proc.poll() is not None:
            raise BuildError(
                f"QEMU exited ({proc.returncode}): {lab.log('qemu')}\n--- console ---\n{boot.console()[-3000:]}"
            )
        now = round(time.monotonic() - started, 2)
        text = boot.console()
        for name, marker in markers.items():
            if name not in boot.times and marker in text:
                boot.times[name] = now
        return wanted <= boot.times.keys()

    prober = threading.Thread(target=probe_ssh, name="ssh-probe", daemon=True)
    prober.start()
    try:
        wait_until(all_reached, left(), what="the milestones", interval_s=POLL_S)
        return
    except WaitTimeout:
        pass
    finally:
        stop.set()
        prober.join(timeout=20)
    missing = sorted(wanted - boot.times.keys())
    raise BuildError(f"{missing} not reached within {timeout_s:.0f} s; console:\n{boot.console()[-3000:]}")


def boot_times(repeats: int = 3, image: BuiltImage | None = None, **options: Any) -> dict[str, Any]:
    """Boot by hand ``repeats`` times; per run and summarised (median, spread) seconds per milestone."""
    image = image or debian_image()
    runs = []
    for _ in range(repeats):
        with debian_by_hand(image, **options) as boot:
            runs.append(dict(boot.times))
    names = ("launch_s", "marker_s", "ssh_s", "cloud_init_s")
    return {
        "image": str(image.directory),
        "runs": runs,
        **{name: summarise([r[name] for r in runs if name in r]) for name in names},
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m cloudlab.bench.handboot [--repeats N] [--memory MB]``: the boot times as JSON."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cloudlab.bench.handboot", description=main.__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="boots to summarise (default 3)")
    parser.add_argument("--memory", type=int, default=512, help="guest memory in MiB (default 512)")
    parser.add_argument("--accel", default="tcg", help="QEMU accelerator (default tcg)")
    args = parser.parse_args(argv)
    try:
        result = boot_times(args.repeats, memory_mb=args.memory, accel=args.accel)
    except BuildError as exc:
        print(f"error: {exc}")
        return 1
    with open("/proc/loadavg") as loadavg:
        result["host_loadavg_after"] = loadavg.read().split()[:3]
    result["memory_mb"] = args.memory
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
