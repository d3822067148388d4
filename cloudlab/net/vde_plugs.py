"""VDE plugs and cables: the supervised ``vde_plug`` processes that join a tap, a socket or another switch
to a ``vde_switch`` port (``cloudlab.net.vde`` has the switch itself).

Each one is a child process object with the switch's small supervision interface
(``start/alive/stop/restart/pid/describe``), so the cluster controller watches switches and cables alike
and ``cloudlab down`` stops them all. The vdeplug4 facts they rely on (URLs, ``--`` after ``vde_plug``)
are listed in ``cloudlab.net.vde``'s docstring.
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
from typing import Any

from cloudlab.net import NetError
from cloudlab.net import links as _links
from cloudlab.net import netns as _netns
from cloudlab.net.vde import plug_url, require_binaries, stop_process
from cloudlab.waiting import WaitTimeout, wait_until


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
        stop_process(proc)
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

    def __init__(
        self, switch_sock: Path | str, tap: str, netns: str | None, port: int | None = None, mtu: int | None = None
    ) -> None:
        super().__init__(netns)
        if netns is None:
            raise NetError(f"tap {tap} needs a namespace: cloudlab never creates taps in the host's network")
        self.switch_sock = Path(switch_sock)
        self.tap = tap
        self.port = port
        self.mtu = mtu  # None: the kernel's 1500 (a fast segment's jumbo frames need every link at its MTU)

    def _argv(self) -> list[str]:
        return ["vde_plug", "--", plug_url(self.switch_sock, self.port), f"tap://{self.tap}"]

    def _endpoints(self) -> list[str]:
        return [plug_url(self.switch_sock, self.port), f"{self.netns}:{self.tap}"]

    def start(self) -> None:
        """Create the tap (if missing, up) in the namespace and attach the plug to it."""
        assert self.netns is not None
        created = False
        if not _links.exists(self.netns, self.tap):
            _links.tap(self.netns, self.tap)
            created = True
        try:
            if self.mtu is not None:
                _links.set_mtu(self.netns, self.tap, self.mtu)
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


class SegmentSwitch(_PlugProcess):
    """One layer-2 segment's switch: vdeplug4's ``switch://`` held by ``vde_plug -- switch:///SOCK null://``.

    The fast VDE profile's switch (``cloudlab.cc.segments``). Unlike ``vde_switch`` it forwards frames up to
    vdeplug4's 9216-byte buffer, so the segment can run jumbo frames (the benchmark measured MTU 9000 roughly
    doubling VM-to-VM throughput: VDE's cost is per frame). It has no management socket, no VLANs (it
    forwards tagged frames as they are) and no port counters: a segment gets a switch of its own on each host,
    and the instance's byte counters come from its tap. Plugs join it with ``vde://SOCK``; when it ends, every
    plug on it ends too (checked against vdeplug 4.0.1), so their supervisors see them dead and plug in again.
    """

    kind = "segment-switch"

    def __init__(self, sock: Path | str, netns: str | None, vlan: int | None = None) -> None:
        super().__init__(netns)
        self.sock = Path(sock)
        self.vlan = vlan

    def _argv(self) -> list[str]:
        return ["vde_plug", "--", f"switch://{self.sock.absolute()}", "null://"]

    def _endpoints(self) -> list[str]:
        return [str(self.sock)] + ([f"segment {self.vlan}"] if self.vlan is not None else [])

    def start(self, timeout: float = 5.0) -> None:
        """Start the switch and wait, bounded, until its control socket exists (plugs can join from then on)."""
        if self.alive():
            return
        self.sock.parent.mkdir(parents=True, exist_ok=True)
        if self.sock.is_dir():  # a killed switch leaves its folder, and a new one cannot bind ctl in it
            shutil.rmtree(self.sock, ignore_errors=True)
        super().start()
        proc = self._proc
        try:
            wait_until(
                lambda: (self.sock / "ctl").exists() or (proc is not None and proc.poll() is not None),
                timeout,
                what=f"switch {self.sock}",
                interval_s=0.02,
            )
        except WaitTimeout:
            self.stop()
            raise NetError(f"the segment switch {self.sock} made no control socket within {timeout}s") from None
        if not self.alive():
            self.stop()
            raise NetError(f"the segment switch {self.sock} exited at start")

    def stop(self) -> None:
        """Stop the switch and remove its folder."""
        super().stop()
        shutil.rmtree(self.sock, ignore_errors=True)

    def url(self, port: int | None = None) -> str:
        """The vdeplug URL plugs join it with (``port`` is ignored: vdeplug4's switch numbers ports itself)."""
        return plug_url(self.sock)


class UnixCable(_PlugProcess):
    """Two local switches joined by one process: ``vde_plug vde://A vde://B``."""

    kind = "unix-cable"

    def __init__(
        self, sock_a: Path | str, sock_b: Path | str, port_a: int | None = None, port_b: int | None = None
    ) -> None:
        super().__init__(None)
        self.a, self.b = plug_url(sock_a, port_a), plug_url(sock_b, port_b)

    def _argv(self) -> list[str]:
        return ["vde_plug", "--", self.a, self.b]

    def _endpoints(self) -> list[str]:
        return [self.a, self.b]


class CommandCable(_PlugProcess):
    """A switch joined to whatever ``argv`` speaks the VDE stream on stdin/stdout: ``vde_plug vde://A = argv``."""

    kind = "command-cable"

    def __init__(self, switch_sock: Path | str, argv: list[str], netns: str | None, port: int | None = None) -> None:
        super().__init__(netns)
        self.a = plug_url(switch_sock, port)
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
    """A switch joined to a peer over UDP: ``vde_plug vde://A udp://LPORT->HOST:RPORT`` (unencrypted, no state).

    vde_plug's UDP socket is *connected* to the peer, so a frame sent before the peer's end is bound (or
    while it restarts) comes back as an ICMP port unreachable, kept as a pending ``ECONNREFUSED`` on the
    socket; the next frame *from* the peer then fails its ``recv`` with that error, and vde_plug ends
    (status 0, nothing said). A UDP cable has no connection to lose, so this one starts its plug again
    whenever it ends by itself (at most every :data:`RESPAWN_S`); one that cannot start stays dead, for
    its supervisor to see.
    """

    kind = "udp-cable"

    def __init__(
        self, sock: Path | str, local_port: int, remote_host: str, remote_port: int, netns: str | None
    ) -> None:
        super().__init__(netns)
        _check_port(local_port)
        _check_port(remote_port)
        self.a = plug_url(sock)
        self.b = f"udp://{int(local_port)}->{remote_host}:{int(remote_port)}"
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def _argv(self) -> list[str]:
        return ["vde_plug", "--", self.a, self.b]

    def _endpoints(self) -> list[str]:
        return [self.a, self.b]

    def start(self) -> None:
        with self._lock:
            if self.alive():
                return
            super().start()
            self._stopping.clear()
            proc = self._proc
        threading.Thread(target=self._keep, args=(proc,), name=f"udp-cable-{self.b}", daemon=True).start()

    def _keep(self, proc: subprocess.Popen | None) -> None:
        """Start the plug again each time it ends by itself, until :meth:`stop`."""
        while proc is not None:
            proc.wait()
            if self._stopping.wait(RESPAWN_S):
                return
            with self._lock:
                if self._stopping.is_set() or self._proc is not proc:
                    return  # stopped, or started again by someone else (who watches it now)
                if proc.stderr is not None:
                    proc.stderr.close()
                try:
                    fresh = self._spawn()
                except NetError:
                    return  # dead: alive() says so, and a supervisor restarts it
                try:
                    self._check_started(fresh)
                except NetError:
                    if fresh.stderr is not None:
                        fresh.stderr.close()
                    return
                self._proc = proc = fresh
                self.restarts += 1

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            super().stop()


#: How soon a UDP cable's plug that ended by itself is started again.
RESPAWN_S = 0.2


def _check_port(port: int) -> None:
    if not 0 < int(port) < 65536:
        raise NetError(f"port {port} out of range: use 1-65535")


def no_delay(sock: socket.socket) -> None:
    """Send each frame at once (``TCP_NODELAY``), as the benchmark's hand-built cables do.

    A cable carries one frame per ``vde_plug`` write; Nagle's algorithm holds a small one (the inner TCP's ACKs,
    say) back until the previous write is acknowledged, and the far kernel delays that acknowledgement. Measured
    between namespaces across the fabric's cable and a VPC router (tests/test_fabric_fast.py's path, iperf3 3 s,
    2 cores at load 8-9): median 0.83 against 0.48 Gbit/s on the fast profile, 0.26 against 0.19 on classic."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
        return ["vde_plug", "--", plug_url(self.switch_sock, self.port_on_switch)]

    def _endpoints(self) -> list[str]:
        return [plug_url(self.switch_sock, self.port_on_switch), f"tcp://{self.host}:{self.port}"]

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
                no_delay(conn)
                old, self._proc = self._proc, None
                stop_process(old)
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
        return ["vde_plug", "--", plug_url(self.switch_sock, self.port_on_switch)]

    def _endpoints(self) -> list[str]:
        return [plug_url(self.switch_sock, self.port_on_switch), f"tcp://{self.host}:{self.port}"]

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + self.connect_timeout

        def attempt() -> socket.socket:
            # a socket belongs to the namespace it is created in, so create it inside
            with _netns.entered(self.netns) if self.netns else contextlib.nullcontext():
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.settimeout(max(0.1, min(1.0, deadline - time.monotonic())))
                sock.connect((self.host, self.port))
            except OSError:
                sock.close()
                raise
            sock.settimeout(None)
            no_delay(sock)
            return sock

        try:
            return wait_until(attempt, self.connect_timeout, what="the peer", interval_s=0.2, ignore=(OSError,))
        except WaitTimeout as exc:
            last = exc.last
            reason = (last.strerror or str(last)) if isinstance(last, OSError) else "timeout"
            raise NetError(
                f"cannot reach peer {self.host}:{self.port} from {self.netns or 'the host'} within "
                f"{self.connect_timeout}s ({reason}): is the listener started and the address routed?"
            ) from None

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
