"""``cloudlab bench s3``: Walrus's throughput beside moto's S3 server and a plain copy of the same bytes.

PUT and GET of 4 KiB, 1 MiB, 64 MiB and 1 GiB objects and LIST of 10,000 and 100,000 keys, with 1 and
8 concurrent clients, all in one run: Walrus (``python -m cloudlab.api.s3`` over a state folder on the
results' disk), moto's S3 server (``moto.server``, in memory) and the limit, a plain copy of the same
bytes to and from files on the same disk (write + fsync, as Walrus's durability needs; read back).
Every side is driven by the same lean client (``http.client``, SigV4 by botocore's signer with
``UNSIGNED-PAYLOAD``, bodies streamed from one buffer and read into one buffer), so the client's cost is
the same on every side and small: what differs is the server. A fourth side, ``loopback socket``, moves
the same bytes over a bare loopback TCP connection with no protocol (into a file with fsync for PUT,
``sendfile`` out of it for GET): the ceiling any HTTP server has on this machine, below the plain copy
(which never crosses a socket). A fifth, ``null server`` (small objects only,
:mod:`cloudlab.bench.s3_null`), answers every request at once with a canned reply: the client's own
ceiling, which bounds every server's small-object rate (``null/moto`` is the best ratio to moto that any
server could show in that run). Nothing here asserts a time; the figures and ratios are for people to read
(targets: >= 10x moto, large objects >= 50% of the plain copy).

Which limit: for PUT the plain copy is already the durable one a store has to beat (every file written and
fsynced before the next, as Walrus must before it answers 200; it skips the folder fsync a new file's name
needs, so it is if anything a little generous to the copy). For GET it reads the same files back, which
the page cache serves at memory speed, while every HTTP server has to push the bytes through a socket: a
large GET's share of the plain copy is capped by the socket's share (``loopback socket``, measured in the
same run), so read both. The definitions are unchanged since the first figures, so old and new runs compare.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudlab.bench.api_load import free_port, wait_for_port
from cloudlab.bench.s3_null import NULL_MAX_SIZE, null_server
from cloudlab.waiting import WaitTimeout, wait_until

KIB, MIB, GIB = 1024, 1024**2, 1024**3
SIZES = {"4KiB": 4 * KIB, "1MiB": MIB, "64MiB": 64 * MIB, "1GiB": GIB}
#: Bytes each client moves per size and direction (bounded in count and time, and in moto's memory).
VOLUME = {"4KiB": MIB, "1MiB": 128 * MIB, "64MiB": 256 * MIB, "1GiB": GIB}
LIST_SIZES = (10_000, 100_000)
CLIENTS = (1, 8)
MOTO_MEMORY_CAP = 2 * GIB  # moto keeps objects in memory: no run of it stores more than this at once
#: moto sorts a bucket's every key for each page (about 2 s a page of 100,000 keys here): listings beyond
#: this many keys in all (keys x clients) are skipped for moto, or one run would take half an hour.
MOTO_LIST_CAP = 200_000


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    region: str
    access_key: str
    secret_key: str


def _sign(target: Target, method: str, path: str, length: int) -> dict[str, str]:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    class Unsigned(S3SigV4Auth):
        def payload(self, request: Any) -> str:
            return "UNSIGNED-PAYLOAD"

    request = AWSRequest(method=method, url=f"http://{target.host}:{target.port}{path}")
    request.headers["Content-Length"] = str(length)
    Unsigned(Credentials(target.access_key, target.secret_key), "s3", target.region).add_auth(request)
    return dict(request.headers)


class LeanClient:
    """One keep-alive connection; PUT streams from a buffer, GET reads into a buffer."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.connection = http.client.HTTPConnection(target.host, target.port, timeout=300)
        self.sink = bytearray(MIB)

    def request(self, method: str, path: str, body: memoryview | None = None) -> tuple[int, int, bytes]:
        length = len(body) if body is not None else 0
        self.connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in _sign(self.target, method, path, length).items():
            self.connection.putheader(name, value)
        self.connection.endheaders()
        if body is not None:
            for start in range(0, length, MIB):
                self.connection.send(body[start : start + MIB])
        answer = self.connection.getresponse()
        if method == "GET" and "list-type" not in path:
            view, received = memoryview(self.sink), 0
            while (got := answer.readinto(view)) > 0:
                received += got
            return answer.status, received, b""
        data = answer.read()
        return answer.status, len(data), data

    def close(self) -> None:
        self.connection.close()


def _in_threads(clients: int, work: Callable[[int], int]) -> tuple[float, int]:
    """Run ``work(client_index)`` in ``clients`` threads at once; (seconds, sum of what they return)."""
    results = [0] * clients
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed: {errors[0]!r}")
    return elapsed, sum(results)


def _transfer(target: Target, bucket: str, label: str, size: int, clients: int, count: int) -> list[dict[str, Any]]:
    payload = memoryview(os.urandom(min(size, 64 * MIB)) * max(1, size // (64 * MIB)))[:size]
    rows = []
    for op in ("PUT", "GET"):

        def work(index: int, op: str = op) -> int:
            client = LeanClient(target)
            moved = 0
            try:
                for n in range(count):
                    path = f"/{bucket}/{label}/c{index}-{n}"
                    status, received, _ = client.request(op, path, payload if op == "PUT" else None)
                    if status != 200:
                        raise RuntimeError(f"{target.name} {op} {path}: HTTP {status}")
                    moved += size if op == "PUT" else received
            finally:
                client.close()
            return moved

        seconds, moved = _in_threads(clients, work)
        rows.append(_row(target.name, op, label, clients, count * clients, moved, seconds))
    return rows


def _row(side: str, op: str, label: str, clients: int, ops: int, moved: int, seconds: float) -> dict[str, Any]:
    return {"side": side, "op": op, "size": label, "clients": clients, "ops": ops, "bytes": moved,
            "seconds": round(seconds, 4), "MBps": round(moved / MIB / seconds, 1) if seconds else None,
            "ops_per_s": round(ops / seconds, 1) if seconds else None}  # fmt: skip


def _plain(folder: Path, label: str, size: int, clients: int, count: int) -> list[dict[str, Any]]:
    """The limit: the same bytes written to files (fsync each, as a durable store must) and read back."""
    payload = memoryview(os.urandom(min(size, 64 * MIB)) * max(1, size // (64 * MIB)))[:size]
    folder.mkdir(parents=True, exist_ok=True)

    def write(index: int) -> int:
        for n in range(count):
            fd = os.open(folder / f"{label}-{index}-{n}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for start in range(0, size, MIB):
                    os.write(fd, payload[start : start + MIB])
                os.fsync(fd)
            finally:
                os.close(fd)
        return size * count

    def read(index: int) -> int:
        sink, moved = bytearray(MIB), 0
        for n in range(count):
            with open(folder / f"{label}-{index}-{n}", "rb", buffering=0) as handle:
                while (got := handle.readinto(sink)) > 0:
                    moved += got
        return moved

    rows = []
    for op, work in (("PUT", write), ("GET", read)):
        seconds, moved = _in_threads(clients, work)
        rows.append(_row("plain copy", op, label, clients, count * clients, moved, seconds))
    for path in folder.iterdir():
        path.unlink()
    return rows


def _socket(folder: Path, label: str, size: int, clients: int, count: int) -> list[dict[str, Any]]:
    """What any HTTP server could reach here: the same bytes over a loopback TCP connection and no protocol
    at all (PUT: received into a file, fsync each; GET: ``sendfile`` from the file, received into a buffer),
    the receiving or sending end in a process of its own (forked before the clock starts), as a server is."""
    import multiprocessing
    import socket

    payload = memoryview(os.urandom(min(size, 64 * MIB)) * max(1, size // (64 * MIB)))[:size]
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for op in ("PUT", "GET"):

        def serve(listener: socket.socket, path: Path, op: str = op) -> None:
            conn, _ = listener.accept()
            with conn:
                for _ in range(count):
                    if op == "PUT":
                        fd, left, sink = (
                            os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                            size,
                            bytearray(MIB),
                        )
                        while left > 0 and (got := conn.recv_into(sink, min(MIB, left))) > 0:
                            os.write(fd, memoryview(sink)[:got])
                            left -= got
                        os.fsync(fd)
                        os.close(fd)
                        conn.sendall(b"k")
                    else:
                        conn.recv(1)
                        with open(path, "rb") as handle:
                            conn.sendfile(handle, 0, size)

        ends = []
        for index in range(clients):
            path = folder / f"{label}-{index}"
            if op == "GET" and not path.exists():
                path.write_bytes(payload)
            listener = socket.create_server(("127.0.0.1", 0))
            server = multiprocessing.get_context("fork").Process(target=serve, args=(listener, path), daemon=True)
            server.start()
            ends.append((listener, server, socket.create_connection(listener.getsockname())))

        def work(index: int, op: str = op, ends: list[Any] = ends) -> int:
            client, moved, sink = ends[index][2], 0, memoryview(bytearray(MIB))
            for _ in range(count):
                if op == "PUT":
                    for start in range(0, size, MIB):
                        client.sendall(payload[start : start + MIB])
                    client.recv(1)
                    moved += size
                else:
                    client.sendall(b"g")
                    got = 0
                    while got < size:
                        got += client.recv_into(sink, min(MIB, size - got))
                    moved += got
            return moved

        try:
            seconds, moved = _in_threads(clients, work)
        finally:
            for listener, server, client in ends:
                client.close()
                server.join(timeout=60)
                if server.is_alive():
                    server.kill()
                listener.close()
        rows.append(_row("loopback socket", op, label, clients, count * clients, moved, seconds))
    for path in folder.iterdir():
        path.unlink()
    return rows


def _list(target: Target, bucket: str, keys: int, clients: int) -> dict[str, Any]:
    def work(_: int) -> int:
        client, token, seen = LeanClient(target), "", 0
        try:
            while True:
                query = "list-type=2&max-keys=1000" + (f"&continuation-token={_quote(token)}" if token else "")
                status, _, body = client.request("GET", f"/{bucket}?{query}")
                if status != 200:
                    raise RuntimeError(f"{target.name} LIST: HTTP {status}")
                seen += body.count(b"<Key>")
                found = re.search(rb"<NextContinuationToken>([^<]+)</NextContinuationToken>", body)
                if found is None:
                    return seen
                token = found.group(1).decode()
        finally:
            client.close()

    seconds, seen = _in_threads(clients, work)
    if seen != keys * clients:
        raise RuntimeError(f"{target.name} listed {seen} keys, expected {keys * clients}")
    return {
        "side": target.name,
        "op": "LIST",
        "size": f"{keys} keys",
        "clients": clients,
        "ops": clients,
        "bytes": 0,
        "seconds": round(seconds, 4),
        "MBps": None,
        "ops_per_s": round(seen / seconds, 1),
    }  # fmt: skip  (ops_per_s of a LIST row: keys listed per s)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


@contextlib.contextmanager
def walrus_server(root: Path, list_buckets: dict[str, int]) -> Iterator[Target]:
    """Walrus's S3 endpoint in its own process; the listing buckets filled through the engine first."""
    from cloudlab.clc.store import Store
    from cloudlab.clc.users import Users
    from cloudlab.walrus import Principal, Walrus, WriteSpec

    store = Store(root / "clc.db")
    admin, _ = Users(store, None).ensure_admin()
    walrus = Walrus(root / "walrus", "cloudlab-1")
    owner = Principal(admin.name, admin.user_id, True)
    walrus.create_bucket(owner, "bench", None, WriteSpec())
    for bucket, count in list_buckets.items():
        walrus.create_bucket(owner, bucket, None, WriteSpec())
        for start in range(0, count, 20_000):
            walrus.put_empty_objects(owner, bucket, [f"keys/{i:07d}" for i in range(start, min(count, start + 20_000))])
    walrus.close()
    store.close()
    ready = root / "ready.json"
    process = subprocess.Popen([sys.executable, "-m", "cloudlab.api.s3", "--state", str(root), "--ready-file",
                                str(ready)], stdout=subprocess.DEVNULL, stderr=open(root / "s3.log", "ab"))  # noqa: SIM115  # fmt: skip
    try:
        with contextlib.suppress(WaitTimeout):  # a timeout, or Walrus exited: said just below
            wait_until(lambda: ready.exists() or process.poll() is not None, 60, what="Walrus", interval_s=0.05)
        if not ready.exists():
            raise RuntimeError(f"Walrus did not start: {(root / 's3.log').read_text()[-500:]}")
        info = json.loads(ready.read_text())
        yield Target("walrus", "127.0.0.1", info["port"], "cloudlab-1", info["access_key"], info["secret_key"])
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        if process.poll() is None:
            process.kill()


@contextlib.contextmanager
def moto_server(root: Path, list_buckets: dict[str, int]) -> Iterator[Target]:
    port = free_port()
    specs = [f"{bucket}={count}" for bucket, count in list_buckets.items()]
    with (root / "moto.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "cloudlab.bench.s3_moto", str(port), *specs], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port, process, timeout_s=600)
        target = Target("moto", "127.0.0.1", port, "us-east-1", "AKIAMOTOBENCHMARK000", "moto-secret")
        client = LeanClient(target)
        client.request("PUT", "/bench", memoryview(b""))
        client.close()
        yield target
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        if process.poll() is None:
            process.kill()


def _delete_all(target: Target, bucket: str, label: str, clients: int, count: int) -> None:
    client = LeanClient(target)
    try:
        for index in range(clients):
            for n in range(count):
                client.request("DELETE", f"/{bucket}/{label}/c{index}-{n}")
    finally:
        client.close()


def run_s3_benchmark(
    work_dir: Path, sizes: dict[str, int] = SIZES, list_sizes: tuple[int, ...] = LIST_SIZES,
    clients: tuple[int, ...] = CLIENTS, volume: dict[str, int] = VOLUME, progress: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """All three sides, every size and concurrency; returns ``rows`` (one per measurement) and ``summary``."""
    rows: list[dict[str, Any]] = []
    lists = {f"list-{n}": n for n in list_sizes}
    skipped: list[str] = []
    for side in ("walrus", "moto", "plain copy", "loopback socket", "null server"):
        for label, size in sizes.items():
            for n_clients in clients:
                count = max(1, volume[label] // size)
                if side == "moto" and size * count * n_clients > MOTO_MEMORY_CAP:
                    skipped.append(f"moto {label} x{n_clients}: {size * count * n_clients / GIB:.0f} GiB in memory")
                    continue
                if side == "plain copy":
                    progress(f"plain copy: {label} x {n_clients} clients")
                    rows += _plain(work_dir / "plain", label, size, n_clients, count)
                if side == "loopback socket":
                    progress(f"loopback socket: {label} x {n_clients} clients")
                    rows += _socket(work_dir / "socket", label, size, n_clients, count)
                if side == "null server" and size <= NULL_MAX_SIZE:
                    progress(f"null server: {label} x {n_clients} clients")
                    with null_server(size) as port:
                        target = Target("null server", "127.0.0.1", port, "cloudlab-1", "AKIANULL", "null")
                        rows += _transfer(target, "null", label, size, n_clients, count)
    with tempfile.TemporaryDirectory(dir=work_dir) as walrus_root, walrus_server(Path(walrus_root), lists) as target:
        rows += _side(target, sizes, clients, volume, lists, progress, skip=())
    with tempfile.TemporaryDirectory(dir=work_dir) as moto_root, moto_server(Path(moto_root), lists) as target:
        rows += _side(target, sizes, clients, volume, lists, progress, skip=tuple(skipped))
    skipped += [f"moto LIST {k} keys x{c}: over {MOTO_LIST_CAP} keys in all" for k in list_sizes for c in clients
                if k * c > MOTO_LIST_CAP]  # fmt: skip
    return {"rows": rows, "summary": summarise(rows), "skipped": skipped}


def _side(
    target: Target, sizes: dict[str, int], clients: tuple[int, ...], volume: dict[str, int], lists: dict[str, int],
    progress: Callable[[str], None], skip: tuple[str, ...],
) -> list[dict[str, Any]]:  # fmt: skip
    rows: list[dict[str, Any]] = []
    for label, size in sizes.items():
        for n_clients in clients:
            if any(s.startswith(f"{target.name} {label} x{n_clients}:") for s in skip):
                continue
            count = max(1, volume[label] // size)
            progress(f"{target.name}: {label} x {n_clients} clients ({count} objects each)")
            rows += _transfer(target, "bench", label, size, n_clients, count)
            _delete_all(target, "bench", label, n_clients, count)
    for bucket, keys in lists.items():
        for n_clients in clients:
            if target.name == "moto" and keys * n_clients > MOTO_LIST_CAP:
                progress(f"moto: LIST {keys} keys x {n_clients} clients skipped (over {MOTO_LIST_CAP} keys in all)")
                continue
            progress(f"{target.name}: LIST {keys} keys x {n_clients} clients")
            rows.append(_list(target, bucket, keys, n_clients))
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Walrus against moto and against the plain copy, per (op, size, clients)."""
    index = {(r["side"], r["op"], r["size"], r["clients"]): r for r in rows}
    out: dict[str, Any] = {}
    for (side, op, size, n_clients), row in index.items():
        if side != "walrus":
            continue
        key = f"{op} {size} x{n_clients}"
        measure = "MBps" if op != "LIST" else "ops_per_s"
        entry: dict[str, Any] = {"walrus": row[measure]}
        moto = index.get(("moto", op, size, n_clients))
        if moto is not None and moto[measure]:
            entry["moto"] = moto[measure]
            entry["ratio_to_moto"] = round(row[measure] / moto[measure], 2)
        plain = index.get(("plain copy", op, size, n_clients))
        if plain is not None and plain[measure]:
            entry["plain"] = plain[measure]
            entry["share_of_plain"] = round(row[measure] / plain[measure], 3)
        wire = index.get(("loopback socket", op, size, n_clients))
        if wire is not None and wire[measure]:
            entry["socket"] = wire[measure]
            entry["share_of_socket"] = round(row[measure] / wire[measure], 3)
        null = index.get(("null server", op, size, n_clients))
        if null is not None and null[measure]:
            entry["null"] = null[measure]
            entry["share_of_null"] = round(row[measure] / null[measure], 3)
            if moto is not None and moto[measure]:
                entry["null_to_moto"] = round(null[measure] / moto[measure], 2)  # the best ratio any server has
        out[key] = entry
    return out


def report_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"{'S3 measurement':24} {'walrus':>12} {'moto':>12} {'x moto':>8} {'plain':>12} {'of plain':>9}"
             f" {'socket':>9} {'of socket':>9} {'null':>7} {'null/moto':>9}"]  # fmt: skip
    for key, e in result["summary"].items():
        unit = "keys/s" if key.startswith("LIST") else "MB/s"
        lines.append(
            f"{key:24} {e['walrus']:>9} {unit:<2} {e.get('moto', '-'):>12} {e.get('ratio_to_moto', '-'):>8} "
            f"{e.get('plain', '-'):>12} {e.get('share_of_plain', '-'):>9} {e.get('socket', '-'):>9}"
            f" {e.get('share_of_socket', '-'):>9} {e.get('null', '-'):>7} {e.get('null_to_moto', '-'):>9}"
        )
    lines += [f"skipped: {s}" for s in result.get("skipped", [])]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cloudlab bench s3", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="results", help="folder for the results (default results/)")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"object sizes (default {','.join(SIZES)})")
    parser.add_argument("--keys", default=",".join(map(str, LIST_SIZES)), help="listing sizes (default 10000,100000)")
    parser.add_argument("--clients", default="1,8", help="concurrent clients (default 1,8)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size's volume (e.g. 0.1 to try)")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    try:
        sizes = {label: SIZES[label] for label in args.sizes.split(",") if label}
        keys = tuple(int(k) for k in args.keys.split(",") if k)
        clients = tuple(int(c) for c in args.clients.split(",") if c)
    except (KeyError, ValueError) as exc:
        parser.error(f"bad --sizes, --keys or --clients: {exc}")
    volume = {label: max(SIZES[label], int(v * args.scale)) for label, v in VOLUME.items()}

    def say(message: str) -> None:
        print(f"[bench s3] {message}", file=sys.stderr, flush=True)

    work = out / f".s3-work-{secrets.token_hex(3)}"  # on the results' disk: Walrus and the copy share it
    work.mkdir()
    try:
        result = run_s3_benchmark(work, sizes, keys, clients, volume, say)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    import pandas as pd

    pd.DataFrame(result["rows"]).to_csv(out / f"bench-s3-{stamp}.csv", index=False)
    from cloudlab.bench.environment import describe_environment

    result["environment"] = describe_environment(None)
    (out / f"bench-s3-{stamp}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print("\n".join(report_lines(result)))
    print(f"\nresults written to {out}/bench-s3-{stamp}.json and .csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
