"""Network namespaces: every network object cloudlab builds lives in one, so teardown is a namespace deletion.

Namespaces are named bind mounts under ``/run/netns`` (the ``ip netns`` convention), so ``ip netns exec``,
``nsenter --net=/run/netns/NAME`` and pyroute2's ``NetNS`` all see the same ones.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as _pr_netns

from cloudlab.net import NetError
from cloudlab.waiting import WaitTimeout, wait_until

RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def path(name: str) -> Path:
    """The bind-mount path of namespace ``name`` (what nsenter and setns open)."""
    if not name or "/" in name or name in (".", ".."):
        raise NetError(f"invalid namespace name {name!r}: use a plain name such as 'clhost1'")
    return RUN_DIR / name


def _is_mounted(p: Path) -> bool:
    """True when ``p`` is an nsfs bind mount (a leftover empty file is not a namespace)."""
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == str(p) for line in f)
    except OSError:
        return False


def exists(name: str) -> bool:
    """Whether namespace ``name`` exists (its mount point is an actual namespace, not a stale file)."""
    p = path(name)
    return p.exists() and _is_mounted(p)


def create(name: str) -> None:
    """Create namespace ``name`` (idempotent) and bring its loopback up, since local services need ``lo``."""
    p = path(name)
    if not exists(name):
        if p.exists():  # stale mount point left by a crashed run: not a namespace, safe to drop
            p.unlink()
        try:
            _pr_netns.create(name)
        except Exception as exc:
            _silent_remove(name)
            raise NetError(f"cannot create network namespace {name}: {exc} (needs root / CAP_SYS_ADMIN)") from exc
    try:
        _loopback_up(name)
    except Exception as exc:
        _silent_remove(name)
        raise NetError(f"namespace {name} created but lo could not be brought up: {exc}") from exc


def _loopback_up(name: str) -> None:
    """Bring ``lo`` up inside ``name`` (netlink directly: ``links`` builds on this module, not the reverse)."""
    with IPRoute(netns=name, flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def _silent_remove(name: str) -> None:
    with contextlib.suppress(Exception):  # cleanup path: the original error is what matters
        remove(name)


def remove(name: str) -> None:
    """Remove namespace ``name`` (idempotent).

    Only the name is removed: processes still inside keep the namespace (and its links) alive, which is why
    teardown code calls :func:`kill_all` first.
    """
    p = path(name)
    if not p.exists():
        return
    try:
        _pr_netns.remove(name)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise NetError(f"cannot remove network namespace {name}: {exc} (is it busy? kill_all({name!r}) first)") from exc


def names(prefix: str = "") -> list[str]:
    """Namespaces whose name starts with ``prefix`` (e.g. one cloud's or one test's prefix), sorted."""
    try:
        return sorted(n for n in os.listdir(RUN_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetError(f"setns failed: {os.strerror(err)} (needs root)")


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the block with the CALLING THREAD inside namespace ``name``, then switch back.

    setns(2) is per thread, so threads already running are unaffected (but threads STARTED inside the block
    inherit the namespace); sockets created in the block stay bound to the namespace after leaving it (that is
    the point: a listener inside a simulated host).
    """
    if not exists(name):
        raise NetError(f"network namespace {name} does not exist: create it first (netns.create)")
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path(name), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def command(name: str | None, argv: list[str]) -> list[str]:
    """``argv`` prefixed so it runs inside namespace ``name`` (None: the caller's own namespace)."""
    if name is None:
        return list(argv)
    return ["nsenter", f"--net={path(name)}", "--", *argv]


def run(
    name: str | None, argv: list[str], timeout: float = 30, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside namespace ``name`` and wait (bounded by ``timeout``); NetError on failure if ``check``."""
    if name is not None and not exists(name):
        raise NetError(f"network namespace {name} does not exist: create it first (netns.create)")
    try:
        proc = subprocess.run(command(name, argv), capture_output=True, text=True, timeout=timeout, input=input)
    except FileNotFoundError as exc:
        raise NetError(f"{argv[0]} not found: install it (apt-get install ...) or run `make setup`") from exc
    except subprocess.TimeoutExpired as exc:
        raise NetError(f"{' '.join(argv)} in namespace {name} timed out after {timeout}s") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise NetError(
            f"{' '.join(argv)} in namespace {name} failed (exit {proc.returncode}): {detail[-1] if detail else ''}"
        )
    return proc


def popen(name: str | None, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Start ``argv`` inside namespace ``name`` without waiting (servers, plugs); the caller supervises it."""
    if name is not None and not exists(name):
        raise NetError(f"network namespace {name} does not exist: create it first (netns.create)")
    try:
        return subprocess.Popen(command(name, argv), **popen_kwargs)
    except FileNotFoundError as exc:
        raise NetError(f"{argv[0]} not found: install it or run `make setup`") from exc


def _inode(p: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(p)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def processes_in(name: str) -> list[int]:
    """Pids whose network namespace is ``name`` (any thread of them counts), so teardown can find stragglers."""
    target = _inode(path(name))
    if target is None:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _inode(f"/proc/{entry}/ns/net") == target:
            pids.append(int(entry))
    return sorted(pids)


def kill_all(name: str, grace: float = 2.0) -> None:
    """Terminate every process inside namespace ``name`` (SIGTERM, then SIGKILL after ``grace`` seconds)."""
    me = os.getpid()
    pids = [p for p in processes_in(name) if p != me]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(WaitTimeout):  # then SIGKILL for the ones still there
        wait_until(lambda: not any(_alive(p) for p in pids), grace, what=f"{name}'s processes to end", interval_s=0.05)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
