"""HTTP servers that a hostile or broken client cannot exhaust: bounded threads, idle and whole-request limits.

Every endpoint cloudlab serves (the controllers' ``/message``, the EC2 API, later S3) faces clients
it does not trust. ``http.server``'s threading server starts one thread per connection without a
bound (300 idle sockets made 311 threads) and only knows a per-``recv`` timeout, so a client that
sends one byte per second keeps a thread forever. Here:

- at most ``max_threads`` connections are served at once; further connections wait in the listen
  backlog (accepted when a thread frees up) instead of each getting a thread;
- a connection that sends nothing for ``idle_s`` is closed (the socket timeout);
- a request must be complete within ``request_s`` of its connection turn starting, however slowly
  its bytes trickle in: a watchdog shuts the socket of any request over its deadline.

:class:`LeanRequestHandler` also reads the request line and headers itself, into :class:`Headers`:
``http.server`` hands the header block to the ``email`` package's feed parser, which costs about ten
times a plain split per request (~0.2 ms of a small S3 GET's ~0.7 ms of server CPU on this machine).
The limits stay the stdlib's (65,536-byte lines, 100 headers), and so do its answers to a bad request.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Defaults for a controller or API endpoint.
MAX_THREADS = 64
IDLE_S = 30.0
REQUEST_S = 60.0
WATCHDOG_PERIOD_S = 0.5
MAX_LINE = 65536  # as http.client's _MAXLINE
MAX_HEADERS = 100  # as http.client's _MAXHEADERS


class HardenedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server with a bound on threads and a deadline watchdog (see the module docstring)."""

    request_queue_size = 128  # socketserver's 5 makes a burst of calls stall on SYN retries
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        max_threads: int = MAX_THREADS,
        request_s: float = REQUEST_S,
    ) -> None:
        super().__init__(address, handler)
        self.max_threads = max_threads
        self.request_s = request_s
        self._slots = threading.BoundedSemaphore(max_threads)
        self._deadlines: dict[socket.socket, float] = {}
        self._deadlines_lock = threading.Lock()
        self._closing = threading.Event()
        self.dropped = 0  # requests cut off at their deadline
        threading.Thread(target=self._watch, name="http-watchdog", daemon=True).start()

    # -- bounded threads ---------------------------------------------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()  # blocks the accept loop while every slot is taken
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    # -- deadlines ----------------------------------------------------------------------------------------
    def start_deadline(self, sock: socket.socket) -> None:
        with self._deadlines_lock:
            self._deadlines[sock] = time.monotonic() + self.request_s

    def end_deadline(self, sock: socket.socket) -> None:
        with self._deadlines_lock:
            self._deadlines.pop(sock, None)

    def _watch(self) -> None:
        while not self._closing.wait(WATCHDOG_PERIOD_S):
            now = time.monotonic()
            with self._deadlines_lock:
                overdue = [s for s, deadline in self._deadlines.items() if deadline < now]
                for sock in overdue:
                    del self._deadlines[sock]
            for sock in overdue:
                self.dropped += 1
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def server_close(self) -> None:
        self._closing.set()
        super().server_close()


class HardenedRequestHandler(BaseHTTPRequestHandler):
    """A request handler whose every request runs under its server's deadline."""

    server: HardenedHTTPServer
    timeout = IDLE_S  # a connection that sends nothing for this long is closed

    def handle_one_request(self) -> None:
        self.server.start_deadline(self.connection)
        try:
            super().handle_one_request()
        except (TimeoutError, ConnectionError, OSError):
            self.close_connection = True
        finally:
            self.server.end_deadline(self.connection)


class Headers:
    """A request's headers: names case-insensitive, every value kept in the order sent (what handlers read
    of ``email.message.Message``: ``get`` and ``[]`` give the first value, ``items`` every pair)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs
        self._index: dict[str, list[str]] = {}
        for name, value in pairs:
            self._index.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default: Any = None) -> Any:
        values = self._index.get(name.lower())
        return values[0] if values else default

    def __getitem__(self, name: str) -> str | None:
        return self.get(name)

    def get_all(self, name: str, default: Any = None) -> Any:
        return list(self._index.get(name.lower(), ())) or default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs)

    def keys(self) -> list[str]:
        return [name for name, _ in self._pairs]

    def values(self) -> list[str]:
        return [value for _, value in self._pairs]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._pairs)


class LeanRequestHandler(HardenedRequestHandler):
    """A hardened handler that parses the request line and headers without the ``email`` package."""

    def parse_request(self) -> bool:
        """As ``BaseHTTPRequestHandler.parse_request`` (same checks, same errors), headers into :class:`Headers`."""
        self.command = None  # type: ignore[assignment]  # set in case of an error on the first line
        self.request_version = version = self.default_request_version
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if not words:
            return False
        if len(words) >= 3:
            version = words[-1]
            numbers = version[5:].split(".") if version.startswith("HTTP/") else []
            if len(numbers) != 2 or not all(n.isdigit() and len(n) <= 10 for n in numbers):
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
                return False
            number = int(numbers[0]), int(numbers[1])
            if number >= (1, 1) and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
            if number >= (2, 0):
                self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Invalid HTTP version ({version[5:]})")
                return False
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({self.requestline!r})")
            return False
        command, path = words[:2]
        if len(words) == 2:
            self.close_connection = True
            if command != "GET":
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({command!r})")
                return False
        self.command, self.path = command, "/" + path.lstrip("/") if path.startswith("//") else path
        pairs: list[tuple[str, str]] = []
        while True:
            line = self.rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long", "header line")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            if len(pairs) >= MAX_HEADERS:
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers",
                                f"got more than {MAX_HEADERS} headers")  # fmt: skip
                return False
            text = line.decode("iso-8859-1")
            if text[0] in " \t" and pairs:  # obsolete line folding (RFC 7230 3.2.4): one value, one space
                name, value = pairs[-1]
                pairs[-1] = (name, f"{value} {text.strip()}")
                continue
            name, colon, value = text.partition(":")
            if not colon or not name or name != name.strip():
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad header line ({text.rstrip()!r})")
                return False
            pairs.append((name, value.strip(" \t\r\n")))
        self.headers = Headers(pairs)  # type: ignore[assignment]
        connection = (self.headers.get("Connection") or "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
        expect = (self.headers.get("Expect") or "").lower()
        if expect == "100-continue" and self.protocol_version >= "HTTP/1.1" and self.request_version >= "HTTP/1.1":
            return bool(self.handle_expect_100())
        return True

    _date: tuple[int, str] = (0, "")

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header, formatted once a second (it has a resolution of one)."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = int(time.time())
        if LeanRequestHandler._date[0] != now:
            LeanRequestHandler._date = (now, super().date_time_string(now))
        return LeanRequestHandler._date[1]


def serve_in_thread(server: ThreadingHTTPServer, name: str) -> ThreadingHTTPServer:
    """Run ``server.serve_forever`` in a daemon thread named ``name``; return the server."""
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
