"""``/_cloudlab/status`` tells strangers only that the service answers (issue 10, item 18).

The full status (PID, the CC's URL, the nodes) is the admin's: ``cloudlab status`` signs its request
with the admin's key from the state folder, and keeps working.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cloudlab import servicectl
from tests.clouds import RunningCloud


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _signed(sim_cloud: RunningCloud, url: str, access_key: str, secret_key: str) -> dict[str, str]:
    request = AWSRequest(method="GET", url=url)
    SigV4Auth(Credentials(access_key, secret_key), "ec2", sim_cloud.info["region"]).add_auth(request)
    return dict(request.headers.items())


@pytest.mark.parametrize("path", ["/_cloudlab/status", "/_cloudlab/status/", "/_cloudlab/health"])
def test_an_unsigned_request_learns_only_that_the_service_answers(sim_cloud: RunningCloud, path: str) -> None:
    status, answer = _get(sim_cloud.url.rstrip("/") + path)
    assert status == 200
    assert answer == {"ok": True}
    text = json.dumps(answer)
    assert "pid" not in text and "cc_url" not in text and "node-01" not in text


def test_a_user_who_is_not_the_admin_is_refused(sim_cloud: RunningCloud) -> None:
    _user, key = sim_cloud.add_user("status")
    url = sim_cloud.url.rstrip("/") + "/_cloudlab/status"
    status, answer = _get(url, _signed(sim_cloud, url, key.access_key, key.secret_key))
    assert status == 403 and answer["error"] == "UnauthorizedOperation"
    assert "clusters" not in answer
    admin = sim_cloud.credentials()
    secret = admin["secret_key"]
    wrong = secret[:-1] + ("y" if secret.endswith("x") else "x")
    status, answer = _get(url, _signed(sim_cloud, url, admin["access_key"], wrong))
    assert status in (401, 403) and answer["error"] in ("SignatureDoesNotMatch", "AuthFailure")


def test_the_admin_gets_the_full_status(sim_cloud: RunningCloud) -> None:
    status = servicectl.service_status(sim_cloud.layout)
    assert isinstance(status["pid"], int)
    [cluster] = status["clusters"]
    assert cluster["cc_url"].startswith("http://")
    assert sorted(n["name"] for n in cluster["nodes"]) == ["node-01", "node-02", "node-03", "node-04"]


def test_cloudlab_status_keeps_working(sim_cloud: RunningCloud) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cloudlab.cli", "--state", str(sim_cloud.layout.root), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["running"] is True and len(status["clusters"][0]["nodes"]) == 4
    plain = subprocess.run(
        [sys.executable, "-m", "cloudlab.cli", "--state", str(sim_cloud.layout.root), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0 and "node-04: alive" in plain.stdout, plain.stdout + plain.stderr
