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
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Defaults for a controller or API endpoint.
MAX_THREADS = 64
IDLE_S = 30.0
REQUEST_S = 60.0
WATCHDOG_PERIOD_S = 0.5


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


def serve_in_thread(server: ThreadingHTTPServer, name: str) -> ThreadingHTTPServer:
    """Run ``server.serve_forever`` in a daemon thread named ``name``; return the server."""
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
