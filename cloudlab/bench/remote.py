"""Where a benchmark command runs: inside a network namespace, or on a guest reached by SSH.

A ``Remote`` runs one shell command and returns the finished process; every call has a timeout.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class Remote(Protocol):
    name: str

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]: ...


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(argv, 124, out, err + f"\n[timed out after {timeout} s]")


def netns_argv(netns: str | None) -> list[str]:
    """The prefix that runs a program inside ``netns`` (nothing for the current namespace)."""
    return ["nsenter", f"--net=/run/netns/{netns}", "--"] if netns else []


class NamespaceRemote:
    """Runs commands with ``nsenter --net=/run/netns/NS -- sh -c COMMAND``."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.name = netns

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return _run([*netns_argv(self.netns), "sh", "-c", command], timeout)

    def __repr__(self) -> str:
        return f"NamespaceRemote({self.netns!r})"


class SshRemote:
    """Runs commands on ``user@address`` with the OpenSSH client, started inside ``netns`` if given."""

    def __init__(
        self, address: str, key: Path, netns: str | None = None, user: str = "root", connect_timeout: int = 5
    ) -> None:
        self.address = address
        self.key = Path(key)
        self.netns = netns
        self.user = user
        self.connect_timeout = connect_timeout
        self.name = f"{user}@{address}" + (f" via {netns}" if netns else "")

    def argv(self, command: str | None) -> list[str]:
        """The OpenSSH command line (``command`` None: an interactive login shell)."""
        return [
            *netns_argv(self.netns),
            "ssh",
            "-i",
            str(self.key),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"ConnectTimeout={self.connect_timeout}",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=3",
            f"{self.user}@{self.address}",
            *([] if command is None else [command]),
        ]

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return _run(self.argv(command), timeout)

    def wait_ready(self, timeout: float = 60, interval: float = 1.0) -> float:
        """Retry ``true`` until SSH answers; seconds waited. Raises TimeoutError with the last error."""
        started = time.monotonic()
        last = ""
        for _ in range(int(timeout / max(interval, 0.1)) + 1):
            remaining = timeout - (time.monotonic() - started)
            if remaining <= 0:
                break
            done = self.run("true", timeout=min(remaining, self.connect_timeout + 5))
            if done.returncode == 0:
                return time.monotonic() - started
            last = (done.stderr or done.stdout).strip()
            time.sleep(interval)
        raise TimeoutError(f"SSH to {self.name} did not answer within {timeout} s: {last}")

    def __repr__(self) -> str:
        return f"SshRemote({self.address!r}, netns={self.netns!r})"
