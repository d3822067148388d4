"""The processes of one cloud, found by what their command lines point at, and how they are ended.

A cloud's helpers (node controllers, QEMU, switches, cables) name its state folder, or its short
link under /run, on their command lines. That is how a restarted service finds what a killed one
left behind, and how ``cloudlab down`` makes sure nothing of the cloud outlives it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Callable
from pathlib import Path

from cloudlab.paths import StateLayout
from cloudlab.waiting import WaitTimeout, wait_until

_PR_SET_PDEATHSIG = 1


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False


def command_lines() -> list[tuple[int, list[bytes]]]:
    """Every process's pid and command line (its words as bytes; kernel threads have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            found.append((int(entry.name), (entry / "cmdline").read_bytes().split(b"\0")))
        except OSError:
            continue
    return found


def of_state(layout: StateLayout, programs: tuple[bytes, ...]) -> list[int]:
    """Processes running one of ``programs`` whose command line points into ``layout``'s state folder."""
    markers = (str(layout.root.resolve()).encode(), layout.short_prefix.encode())
    joined = [(pid, args) for pid, args in command_lines() if args and args[0]]
    return [
        pid
        for pid, args in joined
        if any(p in args[0] for p in programs) and any(m in b"\0".join(args) for m in markers)
    ]


def node_controllers(layout: StateLayout) -> list[int]:
    """The ``cloudlab nc`` processes of this state folder (``python -m cloudlab.cli --state ROOT nc ...``)."""
    root = str(layout.root.resolve()).encode()
    found = []
    for pid, args in command_lines():
        if b"cloudlab.cli" in args and b"nc" in args and root in args and pid != os.getpid():
            found.append(pid)
    return found


def storage_controllers(layout: StateLayout) -> list[int]:
    """The ``cloudlab sc`` processes of this state folder (``python -m cloudlab.cli --state ROOT sc ...``)."""
    root = str(layout.root.resolve()).encode()
    found = []
    for pid, args in command_lines():
        if b"cloudlab.cli" in args and b"sc" in args and root in args and pid != os.getpid():
            found.append(pid)
    return found


def end(pids: list[int], timeout_s: float = 15.0) -> list[int]:
    """SIGTERM ``pids``, then SIGKILL what is still there after ``timeout_s``; return the pids ended."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not any(pid_alive(p) for p in pids), timeout_s, what="processes to exit", interval_s=0.05)
    except WaitTimeout:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return pids


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get ``sig`` when the thread that started it dies.

    The service starts its node controllers from its main thread, so a ``kill -9`` of the service
    ends them too, instead of leaving orphans that hold the embedded libvirt driver's lock.
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return preexec


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise ``KeyboardInterrupt`` in the main thread, as Ctrl-C does.

    A foreground run (a benchmark) holds clouds, hand-booted guests, ``qemu-nbd`` exports and
    namespaces in context managers; SIGTERM's default action ends the process at once and leaves all
    of them running, while an exception unwinds them. Call it from the main thread only.

    Only the process that installed it unwinds. A child forked from it (pyroute2's namespace helpers,
    multiprocessing) inherits the handler; if it raised there, the child would run its parent's
    ``finally`` blocks, a test run's session teardown included, and stop the parent's clouds. Such a
    child dies of the signal as it would have without the handler.
    """
    owner = os.getpid()

    def interrupt(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
