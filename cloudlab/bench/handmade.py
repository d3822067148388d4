"""Network paths built BY HAND with the plain tools, as a researcher would type them: the baselines
cloudlab's own paths are compared with.

Each builder is a context manager yielding a ``PathUnderTest``: two ends (``Remote``), the server's
address, and what was built. Everything lives in a ``cloudlab.bench.lab.Lab``: network namespaces named
``clb<6 hex>-hand-<role>``, the root namespace gets nothing. On exit (also on error) every process
started is killed, every process left inside the namespaces is killed, and the namespaces are deleted.

- ``namespaces_bridge()``   two namespaces, veth into a third one holding a Linux bridge
- ``namespaces_vde()``      two namespaces, a tap each, joined to one vde_switch by ``vde_plug``
- ``vms_bridge(image)``     two TCG VMs on taps on a Linux bridge, measured VM-to-VM over SSH
- ``vms_vde(image)``        two TCG VMs on one vde_switch through QEMU's ``vde`` netdev

Knobs of the VDE builders (defaults = the plain path; each non-default one shows in ``kind``):
``switch`` (``vde_switch``; ``hub`` = ``vde_switch -x``; ``vdeplug-switch``/``vdeplug-hub`` = vdeplug4's
``switch://``/``hub://`` run as ``vde_plug URL null://``), ``dgram_qlen`` (``net.unix.max_dgram_qlen``,
default 10, set in every namespace the path creates before anything runs there: VDE's frames travel as
unix datagrams and a datagram socket's receive queue holds at most that many), ``mtu`` (of every
interface on the measured segment: the taps, and inside VMs their NIC; VDE's cost is per frame;
``vde_switch`` itself drops frames longer than 1514 bytes, so an MTU above 1500 needs vdeplug4's
``switch://``/``hub://`` or ``ptp``; those carry MTU 9000 but nothing at 16000).
``net.core.{r,w}mem_default`` are not a knob: in a namespace other than the root one they are read-only.
- ``cable_path(transport)`` two hosts, a vde_switch each, joined by a cable over unix/tcp/ssh/udp/vxvde
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudlab.bench.lab import SWITCHES, BuildError, Lab, open_lab, wait_for
from cloudlab.reach import NamespaceRemote, Remote, SshRemote, netns_argv

NET = "10.77.0"  # the measured L2 segment, only ever inside our namespaces
UNDERLAY = "10.78.0"  # the hosts' own link a cable runs over (tcp, ssh, udp, vxvde)
TRANSPORTS = ("unix", "tcp", "ssh", "udp", "vxvde")
GUEST_CMDLINE = "console=ttyS0 quiet panic=-1 tsc=reliable no_timer_check 8250.nr_uarts=1 cryptomgr.notests"


@dataclass
class PathUnderTest:
    """What every path builder yields (cloudlab's own in ``cloudpaths`` too): two ends and what was built."""

    kind: str
    label: str
    built_by: str
    server: Remote
    client: Remote
    server_address: str
    extra: dict[str, Any] = field(default_factory=dict)


def _endpoints(lab: Lab, client_ns: str, server_ns: str, dev: str, server_address: str) -> None:
    lab.check_route(client_ns, server_address, dev)
    wait_for(lambda: lab.ping_ok(client_ns, server_address), 15, f"{server_address} to answer from {client_ns}", 0.2)


# ------------------------------------------------------------------------------------- namespaces


@contextlib.contextmanager
def namespaces_bridge() -> Iterator[PathUnderTest]:
    """Two namespaces, each a veth into a third ("switch") namespace that holds a Linux bridge."""
    with open_lab() as lab:
        sw, a, b = lab.netns("sw"), lab.netns("a"), lab.netns("b")
        lab.ip(sw, "link", "add", "br0", "type", "bridge")
        lab.ip(sw, "link", "set", "br0", "up")
        for host, n in ((a, 1), (b, 2)):
            port = f"p{n}"
            lab.veth(host, "eth0", sw, port)
            lab.ip(sw, "link", "set", port, "master", "br0")
            lab.ip(host, "addr", "add", f"{NET}.{n}/24", "dev", "eth0")
        _endpoints(lab, a, b, "eth0", f"{NET}.2")
        yield PathUnderTest(
            "bridge",
            "namespaces, veth + Linux bridge",
            "hand",
            NamespaceRemote(b),
            NamespaceRemote(a),
            f"{NET}.2",
            {"ends": "namespaces", "namespaces": list(lab.namespaces)},
        )


def _tuning(
    dgram_qlen: int | None, mtu: int | None, switch: str = "vde_switch"
) -> tuple[dict[str, int], str, dict[str, Any]]:
    """The sysctls for our namespaces, the suffix the knobs add to ``kind`` and what goes in ``extra``."""
    if mtu is not None and int(mtu) > 1500 and switch in ("vde_switch", "hub"):
        raise ValueError(
            "vde_switch drops frames longer than 1514 bytes (measured: 0 Gbit/s at MTU 4000 and "
            "9000); use switch='vdeplug-switch' or 'vdeplug-hub' for a larger MTU"
        )
    sysctls: dict[str, int] = {}
    suffix = ""
    extra: dict[str, Any] = {}
    if dgram_qlen is not None:
        sysctls["net.unix.max_dgram_qlen"] = int(dgram_qlen)
        suffix += f"-qlen{int(dgram_qlen)}"
        extra["sysctls"] = dict(sysctls)
    if mtu is not None:
        suffix += f"-mtu{int(mtu)}"
        extra["mtu"] = int(mtu)
    return sysctls, suffix, extra


def _switch_label(switch: str) -> str:
    return {"hub": "vde_switch -x", "vdeplug-switch": "vdeplug4 switch://", "vdeplug-hub": "vdeplug4 hub://"}.get(
        switch, "vde_switch"
    )


@contextlib.contextmanager
def namespaces_vde(
    attach: str = "vde_plug", dgram_qlen: int | None = None, switch: str = "vde_switch", mtu: int | None = None
) -> Iterator[PathUnderTest]:
    """Two namespaces, each with a tap joined to one vde_switch by ``vde_plug vde://SOCK tap://TAP``.

    ``attach="vde_plug2tap"``: the older ``vde_plug2tap -s SOCK TAP``; ``attach="ptp"``: no switch,
    the two taps joined point to point by ``vde_plug ptp://SOCK tap://TAP`` at both ends.
    ``switch``, ``dgram_qlen``, ``mtu``: see the module's docstring."""
    if attach not in ("vde_plug", "vde_plug2tap", "ptp"):
        raise ValueError("attach must be vde_plug, vde_plug2tap or ptp")
    if switch not in SWITCHES or (attach == "ptp" and switch != "vde_switch"):
        raise ValueError(f"switch must be one of {SWITCHES} (and vde_switch with ptp, which has none)")
    sysctls, suffix, tuned = _tuning(dgram_qlen, mtu, "ptp" if attach == "ptp" else switch)
    with open_lab(sysctls) as lab:
        a, b = lab.netns("a"), lab.netns("b")
        sock = lab.vde_switch("sw", lab.netns("sw"), switch) if attach != "ptp" else lab.tmp / "ptp"
        for host, n in ((a, 1), (b, 2)):
            if attach == "ptp":
                lab.vde_tap(f"ptp://{sock}", host, "tap0", f"{NET}.{n}")
                if n == 1:
                    wait_for(sock.exists, 10, "the ptp socket")
            elif attach == "vde_plug2tap":
                lab.ip(host, "tuntap", "add", "tap0", "mode", "tap")
                proc = lab.spawn(f"plug2tap-{host}", ["vde_plug2tap", "-s", str(sock), "tap0"], host)
                time.sleep(0.3)
                lab.alive(f"plug2tap-{host}", proc)
                lab.ip(host, "link", "set", "tap0", "up")
                lab.ip(host, "addr", "add", f"{NET}.{n}/24", "dev", "tap0")
            else:
                lab.vde_tap(sock, host, "tap0", f"{NET}.{n}")
            if mtu is not None:
                lab.ip(host, "link", "set", "tap0", "mtu", str(int(mtu)))
        _endpoints(lab, a, b, "tap0", f"{NET}.2")
        kind = ("vde" if attach == "vde_plug" else f"vde-{attach}") + (f"-{switch}" if switch != "vde_switch" else "")
        label = (
            f"namespaces, taps on {_switch_label(switch)} ({attach})"
            if attach != "ptp"
            else "namespaces, taps joined by vde ptp"
        )
        yield PathUnderTest(
            kind + suffix,
            label + "".join(f" {k}={v}" for k, v in tuned.items()),
            "hand",
            NamespaceRemote(b),
            NamespaceRemote(a),
            f"{NET}.2",
            {"ends": "namespaces", "attach": attach, "switch": switch, **tuned, "namespaces": list(lab.namespaces)},
        )


# ------------------------------------------------------------------------------------- cables

_TCP_END = """
import os, socket, sys, time
mode, host, port, sock = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if mode == "listen":
    server = socket.create_server((host, port))
    server.settimeout(30)
    conn, _ = server.accept()
    server.close()
else:
    for _ in range(100):
        try:
            conn = socket.create_connection((host, port), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    else:
        sys.exit("no TCP connection")
conn.settimeout(None)
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
fd = conn.detach()
os.dup2(fd, 0)
os.dup2(fd, 1)
os.execvp("vde_plug", ["vde_plug", "vde://" + sock])
"""


@contextlib.contextmanager
def cable_path(transport: str = "unix") -> Iterator[PathUnderTest]:
    """Two hosts (namespaces), each with its own vde_switch and a tap on it; the switches joined by a
    cable over ``transport``: unix (``vde_plug vde://A vde://B``), tcp (``vde_plug`` on both ends of
    one TCP connection, like ``nc``), ssh (``vde_plug vde://A = ssh ... vde_plug vde://B`` to a
    dropbear in the peer host), udp (``udp://LPORT->RHOST:RPORT``), vxvde (multicast)."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}")
    with open_lab() as lab:
        ha, hb = lab.netns("ha"), lab.netns("hb")
        sock_a, sock_b = lab.vde_switch("swa", ha), lab.vde_switch("swb", hb)
        lab.vde_tap(sock_a, ha, "tap0", f"{NET}.1")
        lab.vde_tap(sock_b, hb, "tap0", f"{NET}.2")
        ua, ub = f"{UNDERLAY}.1", f"{UNDERLAY}.2"
        if transport != "unix":
            lab.veth(ha, "u0", hb, "u0")
            lab.ip(ha, "addr", "add", f"{ua}/24", "dev", "u0")
            lab.ip(hb, "addr", "add", f"{ub}/24", "dev", "u0")
            lab.check_route(ha, ub, "u0")
        extra: dict[str, Any] = {"ends": "namespaces", "transport": transport}
        cable: list[subprocess.Popen] = []
        if transport == "unix":
            cable.append(lab.spawn("cable", ["vde_plug", f"vde://{sock_a}", f"vde://{sock_b}"], ha))
        elif transport == "tcp":
            cable.append(lab.spawn("cable-b", [sys.executable, "-c", _TCP_END, "listen", ub, "5300", str(sock_b)], hb))
            cable.append(lab.spawn("cable-a", [sys.executable, "-c", _TCP_END, "connect", ub, "5300", str(sock_a)], ha))
        elif transport == "udp":
            cable.append(lab.spawn("cable-a", ["vde_plug", f"vde://{sock_a}", f"udp://5400->{ub}:5401"], ha))
            cable.append(lab.spawn("cable-b", ["vde_plug", f"vde://{sock_b}", f"udp://5401->{ua}:5400"], hb))
        elif transport == "vxvde":
            for host, sock in ((ha, sock_a), (hb, sock_b)):
                lab.ip(host, "route", "add", "239.0.0.0/8", "dev", "u0")
                cable.append(lab.spawn(f"cable-{host}", ["vde_plug", f"vde://{sock}", "vxvde://239.0.0.77"], host))
        elif transport == "ssh":
            argv = _dropbear(lab, hb, ub, 2222, extra)
            # vde_plug vde://A = ssh ... vde_plug vde://B : the ssh client's stdin/stdout carry the frames
            remote = ["vde_plug", f"vde://{sock_b}"]
            cable.append(lab.spawn("cable", ["vde_plug", "--", f"vde://{sock_a}", "=", *argv, *remote], ha))
        time.sleep(0.3)
        for proc in cable:
            lab.alive("cable", proc)
        _endpoints(lab, ha, hb, "tap0", f"{NET}.2")
        extra["namespaces"] = list(lab.namespaces)
        yield PathUnderTest(
            f"cable-{transport}",
            f"namespaces, vde_switch + {transport} cable + vde_switch",
            "hand",
            NamespaceRemote(hb),
            NamespaceRemote(ha),
            f"{NET}.2",
            extra,
        )


def _dropbear(lab: Lab, netns: str, address: str, port: int, extra: dict[str, Any]) -> list[str]:
    """A throwaway dropbear in ``netns`` that accepts a throwaway key; returns the ssh client's argv.

    Dropbear reads ``~root/.ssh/authorized_keys``; /root is never touched: dropbear runs in its own
    mount namespace where a scratch folder is bind-mounted over /root."""
    home = lab.tmp / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    os.chmod(home, 0o700)
    key = lab.tmp / "id_ed25519"
    lab.sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", lab.tag, "-f", str(key))
    (home / ".ssh" / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    os.chmod(home / ".ssh" / "authorized_keys", 0o600)
    hostkey = lab.tmp / "dropbear_ed25519"
    lab.sh("dropbearkey", "-t", "ed25519", "-f", str(hostkey))
    script = (
        f"mount --bind {home} /root && exec dropbear -F -E -s -r {hostkey} -p {address}:{port} "
        f"-P {lab.tmp / 'dropbear.pid'}"
    )
    proc = lab.spawn("dropbear", ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], netns)
    client = SshRemote(address, key, None)
    argv = client.argv("")[:-2]  # the options without user@host and command
    argv += ["-p", str(port), "-o", "Compression=no", f"root@{address}"]
    probe = [*netns_argv(lab.namespaces[0]), *argv, "true"]
    wait_for(
        lambda: (
            proc.poll() is not None
            or subprocess.run(probe, capture_output=True, timeout=15, stdin=subprocess.DEVNULL).returncode == 0
        ),
        20,
        "dropbear to accept the key",
        0.3,
    )
    lab.alive("dropbear", proc)
    extra["ssh"] = f"OpenSSH client -> dropbear {address}:{port}"
    return argv


# ------------------------------------------------------------------------------------- VMs


def _keypair(lab: Lab) -> tuple[Path, str]:
    key = lab.tmp / "vm_ed25519"
    lab.sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", lab.tag, "-f", str(key))
    return key, key.with_suffix(".pub").read_text().strip()


def _default_image(image: Any) -> Any:
    if image is None:
        from cloudlab.images.cached import find_built_image

        image = find_built_image()
        if image is None:
            raise BuildError("no default image built (cloudlab image build)")
    return image


def _qemu(lab: Lab, name: str, image: Any, address: str, pubkey: str, netdev: str, mac: str, netns: str) -> None:
    b64 = base64.b64encode(pubkey.encode()).decode()
    append = f"{GUEST_CMDLINE} cloudlab.hostname={name} cloudlab.ip={address}/24 cloudlab.sshkey={b64}"
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-smp",
        "1",
        "-m",
        "256",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        f"file:{lab.tmp / f'{name}.console'}",
        "-no-reboot",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.ramdisk),
        "-append",
        append,
        "-netdev",
        netdev,
        "-device",
        f"virtio-net-pci,netdev=n0,mac={mac}",
    ]
    lab.spawn(f"qemu-{name}", argv, netns)


def _wait_boot(lab: Lab, names: list[str], timeout: float) -> float:
    def booted() -> bool:
        for name in names:
            proc = next(p for w, p in lab.processes if w == f"qemu-{name}")
            lab.alive(f"qemu-{name}", proc)
        consoles = [lab.tmp / f"{name}.console" for name in names]
        return all(c.exists() and b"cloudlab-boot:" in c.read_bytes() for c in consoles)

    return wait_for(booted, timeout, f"{', '.join(names)} to boot", 0.25)


def console(lab: Lab, name: str) -> str:
    path = lab.tmp / f"{name}.console"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@contextlib.contextmanager
def _vms(
    image: Any,
    switch: str,
    boot_timeout: float,
    ssh_timeout: float,
    attach: str = "qemu",
    dgram_qlen: int | None = None,
    vde: str = "vde_switch",
    mtu: int | None = None,
) -> Iterator[PathUnderTest]:
    image = _default_image(image)
    sysctls, suffix, tuned = _tuning(dgram_qlen, mtu, vde)
    with open_lab(sysctls) as lab:
        key, pubkey = _keypair(lab)
        sw, m = lab.netns("sw"), lab.netns("m")
        started = time.monotonic()
        if switch == "bridge":
            lab.ip(sw, "link", "add", "br0", "type", "bridge")
            lab.ip(sw, "link", "set", "br0", "up")
            for n in (1, 2):
                lab.ip(sw, "tuntap", "add", f"t{n}", "mode", "tap")
                lab.ip(sw, "link", "set", f"t{n}", "master", "br0", "up")
            lab.veth(m, "eth0", sw, "pm")
            lab.ip(sw, "link", "set", "pm", "master", "br0")
            lab.ip(m, "addr", "add", f"{NET}.100/24", "dev", "eth0")
            mdev = "eth0"
            netdevs = {n: f"tap,id=n0,ifname=t{n},script=no,downscript=no" for n in (1, 2)}
        else:
            sock = lab.vde_switch("sw", sw, vde)
            lab.vde_tap(sock, m, "tap0", f"{NET}.100")
            mdev = "tap0"
            netdevs = {n: f"vde,id=n0,sock={sock}" for n in (1, 2)}
            if attach == "tap":
                # A tap has one queue: QEMU and vde_plug cannot both open the same one (EBUSY). Each
                # VM gets its own tap vN, vde_plug its own tap pN, and a per-VM Linux bridge joins them.
                for n in (1, 2):
                    lab.ip(sw, "tuntap", "add", f"v{n}", "mode", "tap")
                    lab.vde_tap(sock, sw, f"p{n}", None)
                    lab.ip(sw, "link", "add", f"b{n}", "type", "bridge")
                    lab.ip(sw, "link", "set", f"b{n}", "up")
                    lab.ip(sw, "link", "set", f"v{n}", "master", f"b{n}", "up")
                    lab.ip(sw, "link", "set", f"p{n}", "master", f"b{n}")
                    netdevs[n] = f"tap,id=n0,ifname=v{n},script=no,downscript=no,vhost=off"
        for n, name in ((1, "vma"), (2, "vmb")):
            _qemu(lab, name, image, f"{NET}.{n}", pubkey, netdevs[n], f"52:54:00:77:00:0{n}", sw)
        boot_s = _wait_boot(lab, ["vma", "vmb"], boot_timeout)
        lab.check_route(m, f"{NET}.1", mdev)
        lab.check_route(m, f"{NET}.2", mdev)
        vma, vmb = SshRemote(f"{NET}.1", key, m), SshRemote(f"{NET}.2", key, m)
        try:
            vma.wait_ready(ssh_timeout)
            vmb.wait_ready(ssh_timeout)
        except TimeoutError as exc:
            raise BuildError(f"{exc}\n--- console of vma ---\n{console(lab, 'vma')}") from exc
        ready_s = time.monotonic() - started
        if mtu is not None:
            for dev in [mdev] + [f"{p}{n}" for p in ("v", "p", "b") for n in (1, 2) if attach == "tap"]:
                lab.ip(sw if dev[0] in "vpb" else m, "link", "set", dev, "mtu", str(int(mtu)))
            for vm in (vma, vmb):  # the guest's NIC: the only interface besides lo
                done = vm.run(
                    f"for d in $(ls /sys/class/net); do [ $d = lo ] || ip link set $d mtu {int(mtu)}; done; "
                    "cat /sys/class/net/*/mtu",
                    timeout=20,
                )
                if done.returncode != 0 or str(int(mtu)) not in done.stdout:
                    raise BuildError(f"mtu {mtu} in the guest: {done.stdout} {done.stderr}")
        route = vma.run(f"ip route get {NET}.2", timeout=20)
        if route.returncode != 0 or "dev" not in route.stdout or " via " in route.stdout:
            raise BuildError(f"in vma, {NET}.2 is not on its own segment: {route.stdout} {route.stderr}")
        if switch == "bridge":
            kind, label = "vm-bridge", "TCG VMs, taps on a Linux bridge"
        else:
            kind = "vm-vde" + ("-tap" if attach == "tap" else "") + (f"-{vde}" if vde != "vde_switch" else "") + suffix
            how = "taps bridged to vde_plug taps" if attach == "tap" else "QEMU vde netdev"
            label = f"TCG VMs, {how} on {_switch_label(vde)}" + "".join(f" {k}={v}" for k, v in tuned.items())
        yield PathUnderTest(
            kind,
            label,
            "hand",
            vmb,
            vma,
            f"{NET}.2",
            {
                "ends": "vms",
                "accel": "tcg",
                "boot_s": round(boot_s, 2),
                "ready_s": round(ready_s, 2),
                **({} if switch == "bridge" else {"attach": attach, "switch": vde, **tuned}),
                "namespaces": list(lab.namespaces),
            },
        )


def vms_bridge(
    image: Any = None, boot_timeout: float = 60, ssh_timeout: float = 60
) -> contextlib.AbstractContextManager:
    """Two TCG VMs (QEMU started by hand) on taps in a Linux bridge; VM A is the client, VM B the server."""
    return _vms(image, "bridge", boot_timeout, ssh_timeout)


def vms_vde(
    image: Any = None,
    boot_timeout: float = 60,
    ssh_timeout: float = 60,
    attach: str = "qemu",
    dgram_qlen: int | None = None,
    switch: str = "vde_switch",
    mtu: int | None = None,
) -> contextlib.AbstractContextManager:
    """Two TCG VMs on one vde_switch through QEMU's ``-netdev vde,sock=...`` (``attach="tap"``: through
    a QEMU tap per VM, bridged to a tap that ``vde_plug vde://SOCK tap://TAP`` puts on the switch).
    ``switch``, ``dgram_qlen``, ``mtu``: see the module's docstring."""
    if attach not in ("qemu", "tap"):
        raise ValueError("attach must be qemu or tap")
    if switch not in SWITCHES:
        raise ValueError(f"switch must be one of {SWITCHES}")
    return _vms(image, "vde", boot_timeout, ssh_timeout, attach, dgram_qlen, switch, mtu)
