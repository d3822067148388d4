"""A lab: the namespaces, processes and scratch folder of one hand-built experiment, all removed on close.

The hand-built baselines (``cloudlab.bench.handmade``) and the hand-booted VMs (``cloudlab.bench.handboot``)
are typed as a researcher would type them (``ip``, ``vde_switch``, ``qemu-system-x86_64``), inside
namespaces named ``clb<6 hex>-hand-<role>`` that only a :class:`Lab` creates; the root namespace gets
nothing. :meth:`Lab.close` kills every process started and every process left inside the namespaces,
then deletes the namespaces and the scratch folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cloudlab.reach import netns_argv
from cloudlab.waiting import WaitTimeout, wait_until

PREFIX = "clb"
MARK = "hand"  # clb<hex>-hand-<role>: cloudlab's own namespaces share the clb<hex>- prefix, never this mark
SWITCHES = ("vde_switch", "hub", "vdeplug-switch", "vdeplug-hub")


class BuildError(RuntimeError):
    """A hand-built path (or a hand-booted VM) could not be built; the message says which step failed."""


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> float:
    """``wait_until`` for a build step: the seconds it took, or a BuildError naming the step."""
    started = time.monotonic()
    try:
        wait_until(predicate, timeout, what=what, interval_s=interval)
    except WaitTimeout:
        raise BuildError(f"timed out after {timeout} s waiting for {what}") from None
    return time.monotonic() - started


class Lab:
    """Namespaces, processes and a scratch folder for one hand-built path; ``close()`` removes them all."""

    def __init__(self, sysctls: dict[str, int] | None = None) -> None:
        self.tag = PREFIX + secrets.token_hex(3)
        self.sysctls = dict(sysctls or {})  # set in each namespace we create, never in the root one
        self.namespaces: list[str] = []
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))

    # -- plain tools -------------------------------------------------------------------------------
    def sh(self, *argv: str, timeout: float = 20) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise BuildError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
        return done.stdout

    def ip(self, netns: str, *args: str) -> str:
        return self.sh("ip", "-n", netns, *args)

    def netns(self, role: str) -> str:
        name = f"{self.tag}-{MARK}-{role}"
        self.sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.ip(name, "link", "set", "lo", "up")
        for key, value in self.sysctls.items():
            path = "/proc/sys/" + key.replace(".", "/")
            self.sh(*netns_argv(name), "sh", "-c", f"echo {int(value)} > {path} && cat {path}")
        return name

    def spawn(self, what: str, argv: list[str], netns: str | None = None, **kwargs: Any) -> subprocess.Popen:
        log = open(self.tmp / f"{what}.log", "ab")  # noqa: SIM115 - the child owns it
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", log)
        proc = subprocess.Popen([*netns_argv(netns), *argv], stderr=log, start_new_session=True, **kwargs)
        log.close()
        self.processes.append((what, proc))
        return proc

    def log(self, what: str) -> str:
        path = self.tmp / f"{what}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def alive(self, what: str, proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            raise BuildError(f"{what} exited ({proc.returncode}): {self.log(what).strip()}")

    def check_route(self, netns: str, address: str, dev: str) -> dict[str, Any]:
        """Refuse to send unless ``address`` is reached directly through our own ``dev`` in ``netns``."""
        routes = json.loads(self.sh("ip", "-n", netns, "-j", "route", "get", address) or "[]")
        route = routes[0] if routes else {}
        if route.get("dev") != dev or route.get("gateway"):
            raise BuildError(f"in {netns}, {address} is routed {route}, not directly via {dev}")
        return route

    def ping_ok(self, netns: str, address: str) -> bool:
        done = subprocess.run(
            [*netns_argv(netns), "busybox", "ping", "-c", "1", "-W", "1", "-w", "2", address],
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0

    # -- VDE ---------------------------------------------------------------------------------------
    def vde_switch(self, name: str, netns: str, switch: str = "vde_switch") -> Path:
        """A switch at ``tmp/name`` that plugs join with ``vde://``: ``vde_switch`` (``hub``: its ``-x``
        hub mode) or vdeplug4's in-process ``switch://``/``hub://`` held open by ``vde_plug URL null://``."""
        if switch not in SWITCHES:
            raise ValueError(f"switch must be one of {SWITCHES}")
        sock = self.tmp / name
        if switch in ("vde_switch", "hub"):
            argv = ["vde_switch", "-s", str(sock), *(["-x"] if switch == "hub" else [])]
            # vde_switch's console reads stdin; a pipe we hold keeps it from seeing EOF and quitting.
            proc = self.spawn(f"switch-{name}", argv, netns, stdin=subprocess.PIPE)
        else:
            url = f"{switch.removeprefix('vdeplug-')}://{sock}"
            proc = self.spawn(f"switch-{name}", ["vde_plug", url, "null://"], netns)
        wait_for(lambda: (sock / "ctl").exists() or proc.poll() is not None, 10, f"vde_switch {name}")
        self.alive(f"switch-{name}", proc)
        return sock

    def vde_tap(self, sock: Path | str, netns: str, tap: str, address: str | None) -> None:
        """``vde_plug vde://SOCK tap://TAP`` run inside ``netns``, so the tap is made there (``sock`` may
        also be a whole vdeplug URL, e.g. ``ptp:///path``)."""
        url = sock if isinstance(sock, str) and "://" in sock else f"vde://{sock}"
        proc = self.spawn(f"plug-{tap}-{netns}", ["vde_plug", url, f"tap://{tap}"], netns)
        wait_for(lambda: self._has_link(netns, tap) or proc.poll() is not None, 10, f"tap {tap} in {netns}")
        self.alive(f"plug-{tap}-{netns}", proc)
        self.ip(netns, "link", "set", tap, "up")
        if address:
            self.ip(netns, "addr", "add", f"{address}/24", "dev", tap)

    def _has_link(self, netns: str, dev: str) -> bool:
        done = subprocess.run(["ip", "-n", netns, "link", "show", dev], capture_output=True, timeout=10)
        return done.returncode == 0

    def veth(self, ns1: str, dev1: str, ns2: str, dev2: str) -> None:
        self.ip(ns1, "link", "add", dev1, "type", "veth", "peer", "name", dev2, "netns", ns2)
        self.ip(ns1, "link", "set", dev1, "up")
        self.ip(ns2, "link", "set", dev2, "up")

    # -- teardown ----------------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Kill everything, delete the namespaces and the scratch folder; returns what went wrong."""
        problems: list[str] = []
        for _what, proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for what, proc in self.processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    problems.append(f"{what} (pid {proc.pid}) would not die")
            if proc.stdin:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        for name in reversed(self.namespaces):
            for _ in range(3):  # whatever else still runs in the namespace (daemons like iperf3 -D)
                pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10)
                alive = [int(p) for p in pids.stdout.split()]
                if not alive:
                    break
                for pid in alive:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
            done = subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True, timeout=10)
            if done.returncode != 0:
                problems.append(f"ip netns delete {name}: {done.stderr.strip()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        return problems


@contextlib.contextmanager
def open_lab(sysctls: dict[str, int] | None = None) -> Iterator[Lab]:
    """A :class:`Lab` that is closed on the way out, also on error (problems are reported, not raised)."""
    lab = Lab(sysctls)
    try:
        yield lab
    finally:
        problems = lab.close()
        if problems:
            print(f"[bench] teardown of {lab.tag}: {'; '.join(problems)}", file=sys.stderr)


def leftover_namespaces() -> list[str]:
    """Hand-built namespaces (``clb<6 hex>-hand-<role>``) still present; cloudlab's own are not listed."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if re.fullmatch(rf"{PREFIX}[0-9a-f]{{6}}-{MARK}-[a-z0-9]+", n)]
