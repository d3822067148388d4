"""The hand-built baseline of a VPC across clusters: two switches, one cable dialled through a NAT, by hand.

What ``cloudlab up --network vde --network-model vpc --clusters 2 --nat-cluster cluster2`` builds between
its clusters (``cloudlab.cc.fabric``), typed with the plain tools as a researcher would, so that the cloud's
cross-cluster pair has a baseline of the same shape:

- ``vms_vde_nat_cable(image)``: two TCG VMs, each on the ``vde_switch`` of its own host namespace; host B
  sits behind a NAT namespace that masquerades (nftables) and forwards nothing in, and dials a TCP cable
  (``vde_plug`` on each end of one TCP connection) to host A's switch. Measured VM to VM over SSH from a
  namespace with a tap on switch A, like every VM pair of ``cloudlab.bench.handmade``. Each VM's NIC is
  attached as cloudlab attaches it (``cloudlab.nc.vde_nics``): QEMU's tap and a ``vde_plug`` tap on one
  Linux bridge per VM (``attach="qemu"``: QEMU's own ``vde`` netdev instead, kind ``...-qemu``).
- ``vms_vde_nat_cable(image, switch="vdeplug-switch", mtu=9000)``: the same with vdeplug4's ``switch://`` on
  each host and MTU 9000 on every link of the segment, guests included: the fast profile's shape
  (``cloudlab.cc.fabric_cables``), kind ``vm-vde-nat-cable-vdeplug-switch-mtu9000``.

Everything lives in a ``cloudlab.bench.lab.Lab`` (namespaces ``clb<hex>-hand-<role>``), removed on exit.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from cloudlab.bench.handmade import (
    _TCP_END,
    NET,
    UNDERLAY,
    PathUnderTest,
    _default_image,
    _keypair,
    _qemu,
    _wait_boot,
    console,
)
from cloudlab.bench.lab import BuildError, open_lab
from cloudlab.reach import SshRemote, netns_argv

INSIDE = "192.168.77"  # host B's side of its NAT
CABLE_PORT = 5310

NAT_RULES = """table ip hand_nat {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "i0" oifname "w0" accept
  }
  chain postrouting {
    type nat hook postrouting priority srcnat;
    oifname "w0" masquerade
  }
}
"""


@contextlib.contextmanager
def vms_vde_nat_cable(
    image: Any = None,
    boot_timeout: float = 60,
    ssh_timeout: float = 60,
    attach: str = "tap",
    switch: str = "vde_switch",
    mtu: int | None = None,
) -> Iterator[PathUnderTest]:
    """Two TCG VMs on two switches (``vde_switch``, or vdeplug4's ``vdeplug-switch``) joined by a TCP cable that
    host B dials through a masquerading NAT; ``mtu`` on every link of the segment and in the guests."""
    if attach not in ("tap", "qemu"):
        raise ValueError("attach must be tap or qemu")
    if switch not in ("vde_switch", "vdeplug-switch"):
        raise ValueError("switch must be vde_switch or vdeplug-switch")
    if mtu is not None and (switch == "vde_switch" or attach != "tap"):
        raise ValueError("jumbo frames need vdeplug-switch and tap attachment (vde_switch drops them)")
    image = _default_image(image)
    with open_lab() as lab:
        key, pubkey = _keypair(lab)
        ha, hb, nat, m = lab.netns("ha"), lab.netns("hb"), lab.netns("nat"), lab.netns("m")
        started = time.monotonic()
        sock_a, sock_b = lab.vde_switch("swa", ha, switch), lab.vde_switch("swb", hb, switch)
        lab.vde_tap(sock_a, m, "tap0", f"{NET}.100")
        # the WAN: host A's u0 and the NAT's w0; behind the NAT: its i0 and host B's u0
        lab.veth(ha, "u0", nat, "w0")
        lab.ip(ha, "addr", "add", f"{UNDERLAY}.1/24", "dev", "u0")
        lab.ip(nat, "addr", "add", f"{UNDERLAY}.2/24", "dev", "w0")
        lab.veth(nat, "i0", hb, "u0")
        lab.ip(nat, "addr", "add", f"{INSIDE}.1/24", "dev", "i0")
        lab.ip(hb, "addr", "add", f"{INSIDE}.2/24", "dev", "u0")
        lab.ip(hb, "route", "add", "default", "via", f"{INSIDE}.1")
        lab.sh(*netns_argv(nat), "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
        rules = lab.tmp / "nat.nft"
        rules.write_text(NAT_RULES)
        lab.sh(*netns_argv(nat), "nft", "-f", str(rules))
        server = [sys.executable, "-c", _TCP_END, "listen", f"{UNDERLAY}.1", str(CABLE_PORT), str(sock_a)]
        cable = [lab.spawn("cable-a", server, ha)]
        dialer = [sys.executable, "-c", _TCP_END, "connect", f"{UNDERLAY}.1", str(CABLE_PORT), str(sock_b)]
        cable.append(lab.spawn("cable-b", dialer, hb))
        time.sleep(0.3)
        for proc in cable:
            lab.alive("cable", proc)
        peers = lab.sh(*netns_argv(ha), "ss", "-Htn", "state", "established")
        if f"{UNDERLAY}.2:" not in peers:
            raise BuildError(f"the cable does not arrive from the NAT's address {UNDERLAY}.2: {peers.strip()}")
        for n, (name, host, sock) in enumerate((("vma", ha, sock_a), ("vmb", hb, sock_b)), start=1):
            netdev = f"vde,id=n0,sock={sock}"
            if attach == "tap":  # QEMU's tap vN and vde_plug's tap pN on a bridge bN, as cloudlab's NICs
                lab.ip(host, "tuntap", "add", f"v{n}", "mode", "tap")
                lab.vde_tap(sock, host, f"p{n}", None)
                lab.ip(host, "link", "add", f"b{n}", "type", "bridge")
                lab.ip(host, "link", "set", f"b{n}", "up")
                lab.ip(host, "link", "set", f"v{n}", "master", f"b{n}", "up")
                lab.ip(host, "link", "set", f"p{n}", "master", f"b{n}")
                netdev = f"tap,id=n0,ifname=v{n},script=no,downscript=no,vhost=off"
            _qemu(lab, name, image, f"{NET}.{n}", pubkey, netdev, f"52:54:00:77:01:0{n}", host)
        boot_s = _wait_boot(lab, ["vma", "vmb"], boot_timeout)
        lab.check_route(m, f"{NET}.2", "tap0")
        vma, vmb = SshRemote(f"{NET}.1", key, m), SshRemote(f"{NET}.2", key, m)
        try:
            vma.wait_ready(ssh_timeout)
            vmb.wait_ready(ssh_timeout)
        except TimeoutError as exc:
            raise BuildError(f"{exc}\n--- console of vmb ---\n{console(lab, 'vmb')}") from exc
        route = vma.run(f"ip route get {NET}.2", timeout=20)
        if route.returncode != 0 or " via " in route.stdout:
            raise BuildError(f"in vma, {NET}.2 is not on its own segment: {route.stdout} {route.stderr}")
        if mtu is not None:
            _jumbo(lab, m, ((1, ha), (2, hb)), (vma, vmb), int(mtu))
        suffix = ("-qemu" if attach == "qemu" else "") + ("-vdeplug-switch" if switch != "vde_switch" else "")
        suffix += f"-mtu{int(mtu)}" if mtu is not None else ""
        yield PathUnderTest(
            "vm-vde-nat-cable" + suffix,
            f"TCG VMs ({'QEMU vde netdev' if attach == 'qemu' else 'taps bridged to vde_plug taps'}) on two"
            f" {'vde_switches' if switch == 'vde_switch' else 'vdeplug4 switches'}, a TCP cable dialled through a"
            " masquerading NAT" + (f", MTU {int(mtu)}" if mtu is not None else ""),
            "hand",
            vmb,
            vma,
            f"{NET}.2",
            {
                "ends": "vms",
                "attach": attach,
                "switch": switch,
                "mtu": mtu,
                "accel": "tcg",
                "boot_s": round(boot_s, 2),
                "ready_s": round(time.monotonic() - started, 2),
                "namespaces": list(lab.namespaces),
            },
        )


def _jumbo(lab: Any, m: str, hosts: tuple[tuple[int, str], ...], vms: tuple[SshRemote, SshRemote], mtu: int) -> None:
    """``mtu`` on every link of the segment: the measuring tap, each VM's tap, plug tap and bridge, the guests' NICs."""
    lab.ip(m, "link", "set", "tap0", "mtu", str(mtu))
    for n, host in hosts:
        for dev in (f"v{n}", f"p{n}", f"b{n}"):
            lab.ip(host, "link", "set", dev, "mtu", str(mtu))
    for vm in vms:  # the guest's NIC: the only interface besides lo
        done = vm.run(
            f"for d in $(ls /sys/class/net); do [ $d = lo ] || ip link set $d mtu {mtu}; done;"
            " cat /sys/class/net/*/mtu",
            timeout=20,
        )
        if done.returncode != 0 or str(mtu) not in done.stdout:
            raise BuildError(f"mtu {mtu} in the guest: {done.stdout} {done.stderr}")
