"""VDE: the user-space "virtual VLAN" flavour: the supervised vde_switch and its management socket.

The plugs and cables that join taps and switches (``vde_plug`` processes) are in ``cloudlab.net.vde_plugs``.
Every switch and cable is one child process object with the same small supervision interface
(``start/alive/stop/restart/pid/describe``) so the cluster controller can watch them all alike and
``cloudlab down`` can stop them all. Nothing is daemonised: a daemon could not be supervised.

Facts about vde2 2.3.2 / vdeplug4 this module relies on (checked against the real binaries):

- ``vde_switch`` without ``-d`` runs a console on stdin and EXITS on EOF there, so it is started with a pipe
  as stdin that stays open; closing that pipe is a clean shutdown.
- The management socket greets with a banner ending in the prompt ``"vde$ "``; each command is answered by
  optional data (``0000 DATA END WITH '.'`` ... ``.``) then one status line ``NNNN text`` (1000 = Success),
  a blank line and the prompt again.
- ``port/setvlan`` and ``vlan/addport`` need the port to exist (error 1006 otherwise); ``port/create N``
  pre-allocates it, a plug that connects to ``vde://SOCK[N]`` then uses it, and port settings survive
  disconnection of the plug.
- Plug URLs: ``vde:///abs/path[N]`` picks switch port N; ``tap://NAME``; ``udp://LPORT->HOST:RPORT``;
  ``vde_plug URL`` alone speaks the VDE stream on stdin/stdout (what the TCP cables use).
- vde_plug parses options with GNU getopt, which permutes argv: in ``vde_plug URL = sh -c CMD`` the ``-c``
  is taken as vde_plug's own option (login-shell mode, "only vde_plug can be executed"); so every argv here
  puts ``--`` right after ``vde_plug``.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from cloudlab.net import NetError
from cloudlab.net import netns as _netns
from cloudlab.waiting import WaitTimeout, wait_until

BINARIES = ("vde_switch", "vde_plug")
PROMPT = b"vde$ "


class VdeError(NetError):
    """The vde_switch management socket answered a command with an error code."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


def require_binaries(names: tuple[str, ...] = BINARIES) -> None:
    """NetError naming the first missing VDE binary, so a missing package fails early and explains itself."""
    for name in names:
        if shutil.which(name) is None:
            raise NetError(f"{name} not found on PATH: install it (apt-get install vde2 vdeplug) or run `make setup`")


def plug_url(sock: Path | str, port: int | None = None) -> str:
    """The vdeplug4 URL of switch ``sock`` (a directory), optionally pinned to switch port ``port``."""
    url = f"vde://{Path(sock).absolute()}"
    return f"{url}[{int(port)}]" if port is not None else url


class VdeManagement:
    """A client of a vde_switch management socket (AF_UNIX stream), speaking its text protocol directly."""

    def __init__(self, path: Path | str, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        try:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.settimeout(timeout)
            self._sock.connect(str(self.path))
            self.banner = self._read_until_prompt().decode(errors="replace")
        except OSError as exc:
            self._sock.close()
            raise NetError(
                f"cannot talk to vde_switch management socket {self.path}: {exc} (is the switch running?)"
            ) from exc

    def _read_until_prompt(self) -> bytes:
        buf = b""
        deadline = time.monotonic() + self.timeout
        while not buf.endswith(PROMPT):
            if time.monotonic() > deadline:
                raise NetError(f"vde_switch at {self.path} did not answer within {self.timeout}s")
            chunk = self._sock.recv(65536)
            if not chunk:
                raise NetError(f"vde_switch at {self.path} closed the management connection (did it exit?)")
            buf += chunk
        return buf[: -len(PROMPT)]

    def command(self, line: str) -> str:
        """Send one command; return its data lines (may be empty); VdeError when the status is not 1000."""
        if "\n" in line:
            raise NetError("one management command per call (no newlines)")
        with self._lock:
            try:
                self._sock.sendall(line.encode() + b"\n")
                reply = self._read_until_prompt().decode(errors="replace")
            except OSError as exc:
                raise NetError(f"vde_switch at {self.path} failed during {line!r}: {exc}") from exc
        lines = [x for x in reply.splitlines()]
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            raise NetError(f"vde_switch at {self.path} sent no status for {line!r}")
        status = lines[-1]
        code_text, _, text = status.partition(" ")
        if not code_text.isdigit():
            raise NetError(f"vde_switch at {self.path} sent an unexpected reply to {line!r}: {status!r}")
        if int(code_text) != 1000:
            raise VdeError(f"vde_switch command {line!r} failed: {code_text} {text}", int(code_text))
        body = lines[:-1]
        if body and body[0].startswith("0000 DATA END WITH"):
            body = body[1:]
            if body and body[-1] == ".":
                body = body[:-1]
        return "\n".join(body)

    def create_vlan(self, vid: int) -> None:
        """Create VLAN ``vid`` on the switch (idempotent)."""
        try:
            self.command(f"vlan/create {int(vid)}")
        except VdeError as exc:
            if exc.code != 1017:  # File exists
                raise

    def _ensure_port(self, port: int) -> None:
        try:
            self.command(f"port/create {int(port)}")
        except VdeError as exc:
            if exc.code != 1017:
                raise

    def set_port_vlan(self, port: int, vid: int) -> None:
        """Make ``port`` an untagged member of ``vid`` (``port/setvlan``); pre-creates the port if needed."""
        try:
            self.command(f"port/setvlan {int(port)} {int(vid)}")
        except VdeError as exc:
            if exc.code != 1006:
                raise
            self._ensure_port(port)
            self.command(f"port/setvlan {int(port)} {int(vid)}")

    def add_tagged(self, vid: int, port: int) -> None:
        """Make ``port`` a tagged member of ``vid`` (``vlan/addport``); pre-creates the port if needed."""
        try:
            self.command(f"vlan/addport {int(vid)} {int(port)}")
        except VdeError as exc:
            if exc.code == 1017:
                return
            if exc.code != 1006:
                raise
            self._ensure_port(port)
            self.command(f"vlan/addport {int(vid)} {int(port)}")

    def print_ports(self) -> str:
        """The switch's ``port/print`` text (active ports, their VLAN, counters and endpoints)."""
        return self.command("port/print")

    def port_numbers(self) -> list[int]:
        """Numbers of the ports that currently have a plug connected."""
        out = []
        for line in self.print_ports().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[0] == "Port" and parts[1].isdigit() and "ACTIVE" in parts:
                out.append(int(parts[1]))
        return out

    def vlans(self) -> list[int]:
        """VLAN ids defined on the switch (0 is the default, always present)."""
        return [int(x.split()[1]) for x in self.command("vlan/print").splitlines() if x.startswith("VLAN ")]

    def close(self) -> None:
        """Close the management connection (the switch keeps running)."""
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> VdeManagement:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_process(proc: subprocess.Popen | None, grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (a switch or plug process; None or finished: nothing)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


class VdeSwitch:
    """A supervised ``vde_switch`` that remembers the VLAN/port settings given through it, to re-apply on restart."""

    def __init__(
        self,
        sock: Path,
        mgmt: Path,
        numports: int = 64,
        log: Path | None = None,
        netns: str | None = None,
    ) -> None:
        self.sock = Path(sock)
        self.mgmt = Path(mgmt)
        self.numports = numports
        self.log = log
        self.netns = netns
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._log_file: BinaryIO | None = None
        self._vlans: list[int] = []
        self._untagged: dict[int, int] = {}
        self._tagged: list[tuple[int, int]] = []

    @property
    def pid(self) -> int | None:
        """Pid of the running switch process (None before start)."""
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        """Whether the switch process is running."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        """Start the switch (not daemonised) and wait, bounded, until its management socket answers."""
        require_binaries(("vde_switch",))
        if self.alive():
            return
        self._cleanup_files()
        self.sock.parent.mkdir(parents=True, exist_ok=True)
        self.mgmt.parent.mkdir(parents=True, exist_ok=True)
        argv = ["vde_switch", "-s", str(self.sock), "-M", str(self.mgmt), "-n", str(self.numports)]
        out: Any = subprocess.DEVNULL
        if self.log is not None:
            self._log_file = open(self.log, "ab")  # noqa: SIM115 - lives as long as the switch
            out = self._log_file
        # stdin is a pipe kept open: vde_switch exits on EOF of its console
        self._proc = _netns.popen(self.netns, argv, stdin=subprocess.PIPE, stdout=out, stderr=out)

        def ready() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError
            with VdeManagement(self.mgmt, timeout=1.0):
                return True

        try:
            wait_until(ready, timeout, what=f"vde_switch {self.sock} answering", interval_s=0.05, ignore=(NetError,))
        except RuntimeError:
            self.stop()
            raise NetError(
                f"vde_switch {self.sock} exited at start (socket in use or bad path?): see {self.log or 'its log'}"
            ) from None
        except WaitTimeout:
            self.stop()
            raise NetError(f"vde_switch {self.sock} did not answer on {self.mgmt} within {timeout}s") from None

    def stop(self) -> None:
        """Stop the switch (EOF on its console, then SIGTERM/SIGKILL) and remove its socket dir and mgmt socket."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(1.0)
            except subprocess.TimeoutExpired:
                stop_process(proc)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._cleanup_files()

    def _cleanup_files(self) -> None:
        if self.sock.is_dir():
            shutil.rmtree(self.sock, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.mgmt.unlink()

    def restart(self) -> None:
        """Stop, start again, and re-apply every VLAN/port setting made through this object."""
        self.stop()
        self.start()
        self.restarts += 1
        with self.management() as m:
            for vid in self._vlans:
                m.create_vlan(vid)
            for port, vid in self._untagged.items():
                m.set_port_vlan(port, vid)
            for vid, port in self._tagged:
                m.add_tagged(vid, port)

    def management(self) -> VdeManagement:
        """A new management connection (close it, or use it as a context manager)."""
        return VdeManagement(self.mgmt)

    def create_vlan(self, vid: int) -> None:
        """Create VLAN ``vid`` and remember it for restarts."""
        with self.management() as m:
            m.create_vlan(vid)
        if vid not in self._vlans:
            self._vlans.append(vid)

    def set_port_vlan(self, port: int, vid: int) -> None:
        """Make ``port`` an untagged (access) member of ``vid`` and remember it for restarts."""
        with self.management() as m:
            m.set_port_vlan(port, vid)
        self._untagged[port] = vid

    def add_tagged(self, vid: int, port: int) -> None:
        """Make ``port`` a tagged (trunk) member of ``vid`` and remember it for restarts."""
        with self.management() as m:
            m.add_tagged(vid, port)
        if (vid, port) not in self._tagged:
            self._tagged.append((vid, port))

    def url(self, port: int | None = None) -> str:
        """The vdeplug URL of this switch (optionally a given port)."""
        return plug_url(self.sock, port)

    def describe(self) -> dict[str, Any]:
        """A supervision record: kind, endpoints, pid, alive, restarts."""
        return {
            "kind": "switch",
            "endpoints": [str(self.sock), str(self.mgmt)],
            "pid": self.pid,
            "alive": self.alive(),
            "restarts": self.restarts,
        }
