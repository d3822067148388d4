"""VDE: the user-space "virtual VLAN" flavour: vde_switch, its management socket, and supervised plugs/cables.

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
import errno
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from cloudlab.net import NetError
from cloudlab.net import links as _links
from cloudlab.net import netns as _netns

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


def _url(sock: Path | str, port: int | None = None) -> str:
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


def _stop_process(proc: subprocess.Popen | None, grace: float = 2.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)


def _wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except NetError:
            pass
        if time.monotonic() > deadline:
            raise NetError(f"{what} within {timeout}s")
        time.sleep(0.05)


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
            _wait_for(ready, timeout, f"vde_switch {self.sock} did not answer on {self.mgmt}")
        except RuntimeError:
            self.stop()
            raise NetError(
                f"vde_switch {self.sock} exited at start (socket in use or bad path?): see {self.log or 'its log'}"
            ) from None
        except NetError:
            self.stop()
            raise

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
                _stop_process(proc)
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
        return _url(self.sock, port)

    def describe(self) -> dict[str, Any]:
        """A supervision record: kind, endpoints, pid, alive, restarts."""
        return {
            "kind": "switch",
            "endpoints": [str(self.sock), str(self.mgmt)],
            "pid": self.pid,
            "alive": self.alive(),
            "restarts": self.restarts,
        }


class _PlugProcess:
    """Common supervision of one ``vde_plug`` process: subclasses say how to build argv and where it runs."""

    kind = "plug"

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self.restarts = 0
        self._proc: subprocess.Popen | None = None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _endpoints(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """Pid of the plug process (None before start)."""
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        """Whether the plug process is running."""
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self, **kwargs: Any) -> subprocess.Popen:
        require_binaries(("vde_plug",))
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return _netns.popen(self.netns, self._argv(), **kwargs)

    def _check_started(self, proc: subprocess.Popen, settle: float = 0.2) -> None:
        """A plug that cannot connect exits at once: report that, with its own error text."""
        try:
            proc.wait(settle)
        except subprocess.TimeoutExpired:
            return
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        raise NetError(f"{self.kind} {' <-> '.join(self._endpoints())} exited at start: {err or proc.returncode}")

    def start(self) -> None:
        """Start the plug process (idempotent while alive)."""
        if self.alive():
            return
        proc = self._spawn()
        self._check_started(proc)
        self._proc = proc

    def stop(self) -> None:
        """Stop the plug process (SIGTERM, then SIGKILL)."""
        proc, self._proc = self._proc, None
        _stop_process(proc)
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop (if needed) and start again; counted in ``restarts``."""
        self.stop()
        self.start()
        self.restarts += 1

    def describe(self) -> dict[str, Any]:
        """A supervision record: kind, endpoints, pid, alive, restarts."""
        return {
            "kind": self.kind,
            "endpoints": self._endpoints(),
            "pid": self.pid,
            "alive": self.alive(),
            "restarts": self.restarts,
        }


class TapPlug(_PlugProcess):
    """A tap interface in ``netns`` plugged into a switch port: ``vde_plug vde://SOCK[port] tap://TAP``.

    The tap is created persistent (through netlink) before the plug attaches, so its addresses survive a plug
    restart; :meth:`stop` leaves it, :meth:`remove` deletes it.
    """

    kind = "tap"

    def __init__(self, switch_sock: Path | str, tap: str, netns: str | None, port: int | None = None) -> None:
        super().__init__(netns)
        if netns is None:
            raise NetError(f"tap {tap} needs a namespace: cloudlab never creates taps in the host's network")
        self.switch_sock = Path(switch_sock)
        self.tap = tap
        self.port = port

    def _argv(self) -> list[str]:
        return ["vde_plug", "--", _url(self.switch_sock, self.port), f"tap://{self.tap}"]

    def _endpoints(self) -> list[str]:
        return [_url(self.switch_sock, self.port), f"{self.netns}:{self.tap}"]

    def start(self) -> None:
        """Create the tap (if missing, up) in the namespace and attach the plug to it."""
        assert self.netns is not None
        created = False
        if not _links.exists(self.netns, self.tap):
            _links.tap(self.netns, self.tap)
            created = True
        try:
            super().start()
        except NetError:
            if created:
                _links.delete(self.netns, self.tap)
            raise

    def remove(self) -> None:
        """Stop the plug and delete the tap."""
        self.stop()
        assert self.netns is not None
        if _netns.exists(self.netns):
            _links.delete(self.netns, self.tap)


class UnixCable(_PlugProcess):
    """Two local switches joined by one process: ``vde_plug vde://A vde://B``."""

    kind = "unix-cable"

    def __init__(
        self, sock_a: Path | str, sock_b: Path | str, port_a: int | None = None, port_b: int | None = None
    ) -> None:
        super().__init__(None)
        self.a, self.b = _url(sock_a, port_a), _url(sock_b, port_b)

    def _argv(self) -> list[str]:
        return ["vde_plug", "--", self.a, self.b]

    def _endpoints(self) -> list[str]:
        return [self.a, self.b]


class CommandCable(_PlugProcess):
    """A switch joined to whatever ``argv`` speaks the VDE stream on stdin/stdout: ``vde_plug vde://A = argv``."""

    kind = "command-cable"

    def __init__(self, switch_sock: Path | str, argv: list[str], netns: str | None, port: int | None = None) -> None:
        super().__init__(netns)
        self.a = _url(switch_sock, port)
        self.command = list(argv)

    def _argv(self) -> list[str]:
        return ["vde_plug", "--", self.a, "=", *self.command]

    def _endpoints(self) -> list[str]:
        return [self.a, " ".join(self.command)]


class SshCable(CommandCable):
    """A switch joined to a remote switch over ssh: ``vde_plug vde://A = ssh ... vde_plug vde://B``.

    Crosses NATs and firewalls that let ssh through; the ssh argv must authenticate without a prompt
    (key, ``-o BatchMode=yes``).
    """

    kind = "ssh-cable"

    def __init__(
        self, switch_sock: Path | str, ssh_argv: list[str], remote_switch_sock: Path | str, netns: str | None
    ) -> None:
        super().__init__(switch_sock, [*ssh_argv, "vde_plug", f"vde://{remote_switch_sock}"], netns)


class UdpCable(_PlugProcess):
    """A switch joined to a peer over UDP: ``vde_plug vde://A udp://LPORT->HOST:RPORT`` (unencrypted, no state)."""

    kind = "udp-cable"

    def __init__(
        self, sock: Path | str, local_port: int, remote_host: str, remote_port: int, netns: str | None
    ) -> None:
        super().__init__(netns)
        _check_port(local_port)
        _check_port(remote_port)
        self.a = _url(sock)
        self.b = f"udp://{int(local_port)}->{remote_host}:{int(remote_port)}"

    def _argv(self) -> list[str]:
        return ["vde_plug", "--", self.a, self.b]

    def _endpoints(self) -> list[str]:
        return [self.a, self.b]


def _check_port(port: int) -> None:
    if not 0 < int(port) < 65536:
        raise NetError(f"port {port} out of range: use 1-65535")


class TcpCableListener(_PlugProcess):
    """The listening end of a TCP cable: each accepted connection becomes ``vde_plug vde://SOCK`` on that socket.

    The accepted socket is the plug's stdin and stdout, so bytes never pass through Python. A new connection
    replaces the previous one (a dialer that reconnects after a failure takes over its port on the switch).
    """

    kind = "tcp-listener"

    def __init__(
        self, switch_sock: Path | str, host: str, port: int, netns: str | None, port_on_switch: int | None = None
    ) -> None:
        super().__init__(netns)
        _check_port(port)
        self.switch_sock = Path(switch_sock)
        self.host, self.port, self.port_on_switch = host, int(port), port_on_switch
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self.connections = 0

    def _argv(self) -> list[str]:
        return ["vde_plug", "--", _url(self.switch_sock, self.port_on_switch)]

    def _endpoints(self) -> list[str]:
        return [_url(self.switch_sock, self.port_on_switch), f"tcp://{self.host}:{self.port}"]

    def listening(self) -> bool:
        """Whether the accept thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def alive(self) -> bool:
        """Whether the listener runs (a connection's plug may come and go with its peer)."""
        return self.listening()

    def connected(self) -> bool:
        """Whether a peer is connected and its plug process runs."""
        return super().alive()

    def start(self) -> None:
        """Bind and listen inside the namespace, then accept in a background thread."""
        if self.listening():
            return
        require_binaries(("vde_plug",))
        # a socket belongs to the namespace it is created in, so create it inside
        with _netns.entered(self.netns) if self.netns else contextlib.nullcontext():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(4)
            sock.settimeout(0.2)
        except OSError as exc:
            sock.close()
            where = f"{self.host}:{self.port} in {self.netns or 'the host'}"
            if exc.errno == errno.EADDRINUSE:
                hint = f"port {self.port} is already taken there: choose another port or stop what holds it"
            elif exc.errno == errno.EADDRNOTAVAIL:
                hint = f"{self.host} is not an address of that namespace: listen on one of its addresses"
            else:
                hint = exc.strerror or str(exc)
            raise NetError(f"cannot listen on {where}: {hint}") from exc
        self._listener = sock
        self._closing.clear()
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcp-cable-{self.port}", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.setblocking(True)
                old, self._proc = self._proc, None
                _stop_process(old)
                try:
                    self._proc = self._spawn(stdin=conn.fileno(), stdout=conn.fileno(), stderr=subprocess.DEVNULL)
                    self.connections += 1
                except NetError:
                    continue

    def stop(self) -> None:
        """Stop accepting, close the socket, stop the current connection's plug."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        super().stop()

    def describe(self) -> dict[str, Any]:
        """Supervision record, plus whether a peer is connected and how many connections were accepted."""
        return {**super().describe(), "connected": self.connected(), "connections": self.connections}


class TcpCableDialer(_PlugProcess):
    """The dialing end of a TCP cable: connects from inside ``netns`` and runs ``vde_plug vde://SOCK`` on it."""

    kind = "tcp-dialer"

    def __init__(
        self,
        switch_sock: Path | str,
        host: str,
        port: int,
        netns: str | None,
        port_on_switch: int | None = None,
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__(netns)
        _check_port(port)
        self.switch_sock = Path(switch_sock)
        self.host, self.port, self.port_on_switch = host, int(port), port_on_switch
        self.connect_timeout = connect_timeout

    def _argv(self) -> list[str]:
        return ["vde_plug", "--", _url(self.switch_sock, self.port_on_switch)]

    def _endpoints(self) -> list[str]:
        return [_url(self.switch_sock, self.port_on_switch), f"tcp://{self.host}:{self.port}"]

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + self.connect_timeout
        last: OSError | None = None
        while time.monotonic() < deadline:
            # a socket belongs to the namespace it is created in, so create it inside
            with _netns.entered(self.netns) if self.netns else contextlib.nullcontext():
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(0.1, min(1.0, deadline - time.monotonic())))
                sock.connect((self.host, self.port))
                sock.settimeout(None)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        reason = (last.strerror or str(last)) if last else "timeout"
        raise NetError(
            f"cannot reach peer {self.host}:{self.port} from {self.netns or 'the host'} within "
            f"{self.connect_timeout}s ({reason}): is the listener started and the address routed?"
        )

    def start(self) -> None:
        """Connect (retrying, bounded by ``connect_timeout``) and run the plug on the connected socket."""
        if self.alive():
            return
        require_binaries(("vde_plug",))
        sock = self._connect()
        with sock:
            proc = self._spawn(stdin=sock.fileno(), stdout=sock.fileno())
        self._check_started(proc)
        self._proc = proc


def describe_all(items: list[Any]) -> list[dict[str, Any]]:
    """Supervision records of many switches/plugs (for ``cloudlab status`` and teardown reports)."""
    return [item.describe() for item in items]
