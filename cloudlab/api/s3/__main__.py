"""``python -m cloudlab.api.s3 --state DIR [--port N]``: Walrus's S3 endpoint alone, over a state folder.

The cloud service starts the same endpoint beside EC2 (``cloudlab up``); this entry point serves one
without the rest of the cloud, for the crash tests (a process to ``kill -9``) and the benchmark. Users
and keys are the state folder's (``clc.db``); the admin is created if the folder is new.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from pathlib import Path

from cloudlab.api.s3.server import serve_s3
from cloudlab.clc.store import Store
from cloudlab.clc.users import Users
from cloudlab.config import DEFAULT_REGION
from cloudlab.walrus import Walrus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloudlab.api.s3", description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--region", default=DEFAULT_REGION)
    parser.add_argument("--ready-file", type=Path, help="write {port, access_key, secret_key} here once serving")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.state.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = Store(args.state / "clc.db")
    users = Users(store, None)
    _, key = users.ensure_admin()
    walrus = Walrus(args.state / "walrus", args.region)
    server = serve_s3(walrus, users, args.region, args.host, args.port)
    if args.ready_file:
        info = {"port": server.server_port, "access_key": key.access_key, "secret_key": key.secret_key}
        tmp = args.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.rename(args.ready_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    walrus.close()
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
