"""The S3 benchmark's ``null server`` side: what the benchmark's own client reaches against a server that
does no work at all.

For small objects the client is not free: every request is signed (botocore's SigV4 signer) and goes
through ``http.client``, which together cost about as much CPU per request as Walrus's whole server
side, on the same two cores. So no server can be faster than this side for 4 KiB and 1 MiB objects, and a
target such as "10x moto" is out of reach of any server once moto's rate times ten exceeds it. The null
server, in a process of its own as a real server is, reads each request's line, headers and body and
answers at once with a canned reply: an empty 200 to a PUT, the object's size in bytes to a GET (from
memory, one send). Only small sizes are run here; for large ones the loopback socket and the plain copy
are the ceilings.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import threading
from collections.abc import Iterator

MIB = 1024**2
#: The largest object size the null server is measured with (it holds one object's bytes in memory).
NULL_MAX_SIZE = MIB


def _answer_connections(listener: socket.socket, size: int) -> None:
    """Serve until killed: a thread per connection, each answering request after request."""
    body = os.urandom(size)
    get_answer = b'HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: "null"\r\n\r\n' % size + body
    put_answer = b'HTTP/1.1 200 OK\r\nContent-Length: 0\r\nETag: "null"\r\n\r\n'

    def serve(conn: socket.socket) -> None:
        sink = memoryview(bytearray(MIB))
        with conn, conn.makefile("rb") as stream:
            while line := stream.readline():
                length = 0
                while (header := stream.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while length > 0:
                    got = stream.readinto(sink[: min(MIB, length)])
                    if not got:
                        return
                    length -= got
                conn.sendall(get_answer if line.startswith(b"GET") else put_answer)

    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


@contextlib.contextmanager
def null_server(size: int) -> Iterator[int]:
    """The null server for objects of ``size`` bytes in a forked process; yields its loopback port."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    process = multiprocessing.get_context("fork").Process(target=_answer_connections, args=(listener, size),
                                                          daemon=True)  # fmt: skip
    process.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        process.kill()
        process.join(timeout=10)
        listener.close()


__all__ = ["NULL_MAX_SIZE", "null_server"]
