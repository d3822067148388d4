"""moto's S3 server in its own process, with buckets of empty keys made in its backend before it serves.

``python -m cloudlab.bench.s3_moto PORT [BUCKET=N ...]``: 100,000 PUTs over HTTP would take moto
minutes, so the listing buckets are filled through moto's own backend (as Walrus's are through its
engine); every measured request then goes over HTTP.
"""

from __future__ import annotations

import sys
import threading


def main(argv: list[str]) -> int:
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    port = int(argv[0])
    backend = s3_backends["123456789012"]["aws"]
    for spec in argv[1:]:
        bucket, _, count = spec.partition("=")
        backend.create_bucket(bucket, "us-east-1")
        for index in range(int(count)):
            backend.put_object(bucket, f"keys/{index:07d}", b"")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print("ready", flush=True)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
