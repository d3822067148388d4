"""Fixtures for Walrus's tests: a real S3 endpoint on loopback over a temporary state folder.

``s3`` is the endpoint in this process (the engine, the real HTTP server, the cloud's users in a real
``clc.db``), for tests that drive it with unmodified clients; ``s3_process`` runs it as a separate
process (``python -m cloudlab.api.s3``) so that tests can ``kill -9`` it. Import the fixtures you use
into the test module (``from tests.s3_fixtures import s3  # noqa: F401``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from cloudlab.api.s3.server import serve_s3
from cloudlab.clc.store import Store
from cloudlab.clc.users import AccessKey, Users
from cloudlab.waiting import WaitTimeout, wait_until
from cloudlab.walrus import Walrus

REGION = "cloudlab-1"


@dataclass
class S3Endpoint:
    root: Path
    url: str
    store: Store | None
    walrus: Walrus | None
    admin: AccessKey
    server: Any = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self, key: AccessKey | None = None, style: str = "path", **config: Any) -> Any:
        key = key or self.admin
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=key.access_key,
            aws_secret_access_key=key.secret_key,
            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": style}, **config),
        )

    def anonymous(self) -> Any:
        from botocore import UNSIGNED

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION,
                            config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1},
                                          s3={"addressing_style": "path"}))  # fmt: skip

    def new_user(self, prefix: str = "user") -> AccessKey:
        assert self.store is not None
        users = Users(self.store, None)
        user = users.create(f"{prefix}-{secrets.token_hex(3)}")
        return users.create_key(user.name)

    def bucket(self, client: Any | None = None, prefix: str = "b") -> str:
        name = f"{prefix}-{secrets.token_hex(4)}"
        (client or self.client()).create_bucket(Bucket=name)
        return name


def error_code(excinfo: pytest.ExceptionInfo[Any]) -> str:
    return excinfo.value.response["Error"]["Code"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    root = tmp_path_factory.mktemp("walrus")
    store = Store(root / "clc.db")
    users = Users(store, None)
    _, admin = users.ensure_admin()
    walrus = Walrus(root / "walrus", REGION)
    server = serve_s3(walrus, users, REGION)
    yield S3Endpoint(root, f"http://127.0.0.1:{server.server_port}", store, walrus, admin, server)
    server.shutdown()
    server.server_close()
    walrus.close()
    store.close()


class S3Process:
    """``python -m cloudlab.api.s3`` over a state folder, restartable and killable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint: S3Endpoint | None = None

    def start(self, timeout_s: float = 30.0) -> S3Endpoint:
        ready = self.root / f"ready-{secrets.token_hex(3)}.json"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cloudlab.api.s3", "--state", str(self.root), "--ready-file", str(ready)],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "ab"),  # noqa: SIM115
        )  # fmt: skip
        process = self.process
        with contextlib.suppress(WaitTimeout):  # a timeout, or the server exited: said just below
            wait_until(lambda: ready.exists() or process.poll() is not None, timeout_s, what="S3", interval_s=0.05)
        if not ready.exists():
            raise RuntimeError(f"S3 server did not start: {(self.root / 'server.log').read_text()[-2000:]}")
        info = json.loads(ready.read_text())
        ready.unlink()
        key = AccessKey(info["access_key"], info["secret_key"], "admin")
        self.endpoint = S3Endpoint(self.root, f"http://127.0.0.1:{info['port']}", None, None, key)
        return self.endpoint

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def s3_process(tmp_path: Path) -> Iterator[S3Process]:
    process = S3Process(tmp_path / "state")
    process.root.mkdir()
    yield process
    process.stop()


def signer_declaring(declared: str) -> Any:
    """botocore's S3 SigV4 signer, signing the payload hash a test declares (true or not)."""
    from botocore.auth import S3SigV4Auth

    class Signer(S3SigV4Auth):
        def payload(self, request: Any) -> str:
            return declared

    return Signer


def signed_request(
    endpoint: S3Endpoint, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
    key: AccessKey | None = None,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """A raw request signed by botocore's own S3 SigV4 signer (for checks of the exact wire form)."""
    import hashlib
    import http.client

    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    key = key or endpoint.admin
    headers = dict(headers or {})
    declared = headers.pop("X-Amz-Content-SHA256", None) or hashlib.sha256(body).hexdigest()

    request = AWSRequest(method=method, url=f"{endpoint.url}{path}", data=body, headers=headers)
    signer_declaring(declared)(Credentials(key.access_key, key.secret_key), "s3", REGION).add_auth(request)
    assert request.headers["X-Amz-Content-SHA256"] == declared
    prepared = request.prepare()
    connection = http.client.HTTPConnection("127.0.0.1", endpoint.port, timeout=30)
    try:
        connection.request(method, prepared.url.split(str(endpoint.port), 1)[1], body=body or None,
                           headers=dict(prepared.headers))  # fmt: skip
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()
