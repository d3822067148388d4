"""The ``cloudlab`` command: help everywhere, one clear line for bad input, up/status/down."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cloudlab import control
from cloudlab.paths import StateLayout


def cloudlab(*args: str, state: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cloudlab.cli"]
    if state is not None:
        argv += ["--state", str(state)]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["up"],
        ["down"],
        ["status"],
        ["env"],
        ["image"],
        ["image", "build"],
        ["image", "list"],
        ["serve"],
        ["nc"],
        ["sc"],
        ["accel"],
    ],
)
def test_help_everywhere(command: list[str]) -> None:
    result = cloudlab(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: cloudlab" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["up", "--nodes", "0"], "must be at least 1"),
        (["up", "--nodes", "many"], "not a whole number"),
        (["up", "--hypervisor", "xen:///"], "not a supported libvirt URI"),
        (["up", "--port", "70000"], "not a port"),
        (["up", "--network", "token-ring"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        (["image", "build", "ubuntu"], "invalid choice"),
        (["nc", "--name", "n1"], "--cc"),
        (["nc", "--name", "n1", "--cc", "notaurl"], "must look like http://HOST:PORT"),
        (["sc", "--name", "c1"], "--cc"),
        (["sc", "--name", "c1", "--cc", "ftp://x:1"], "must look like http://HOST:PORT"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], needle: str) -> None:
    result = cloudlab(*args, state=tmp_path / "state")
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists(), "a refused command leaves nothing behind"


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (["status"], "cloud is not running", 3),
        (["env"], "cloud is not running", 1),
        (["image", "list"], "no cloud in", 1),
        (["exec", "--", "true"], "cloud is not running", 1),
        (["ssh", "i-0123456789abcdef0", "--", "true"], "cloud is not running", 1),
    ],
)
def test_clear_errors_without_a_cloud(tmp_path: Path, args: list[str], needle: str, code: int) -> None:
    result = cloudlab(*args, state=tmp_path / "state")
    assert result.returncode == code, (result.stdout, result.stderr)
    assert needle in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_status_json_when_down(tmp_path: Path) -> None:
    result = cloudlab("status", "--json", state=tmp_path / "state")
    assert result.returncode == 3
    assert json.loads(result.stdout)["running"] is False


def test_port_taken_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cloudlab("up", "--hypervisor", "test:///default", "--port", str(port), state=tmp_path / "state")
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "cloudlab up --port" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert control.service_pid(StateLayout(tmp_path / "state")) is None


def test_up_status_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = cloudlab("up", "--hypervisor", "test:///default", "--nodes", "3", "--port", "0", state=state)
    assert up.returncode == 0, up.stderr
    assert "EC2 endpoint http://127.0.0.1:" in up.stdout
    try:
        again = cloudlab("up", state=state)
        assert again.returncode == 0 and "already running" in again.stdout
        status = json.loads(cloudlab("status", "--json", state=state).stdout)
        assert status["running"] is True
        [cluster] = status["clusters"]
        assert [n["name"] for n in cluster["nodes"]] == ["node-01", "node-02", "node-03"]
        assert all(n["alive"] for n in cluster["nodes"])
        human = cloudlab("status", state=state)
        assert human.returncode == 0 and "node-02: alive" in human.stdout
        env = cloudlab("env", state=state).stdout
        assert "AWS_ENDPOINT_URL_EC2=http://127.0.0.1:" in env
        listing = json.loads(cloudlab("image", "list", "--json", state=state).stdout)
        assert {i["type"] for i in listing} == {"machine", "kernel", "ramdisk"}
        pid = control.service_pid(StateLayout(state))
        assert pid is not None
    finally:
        down = cloudlab("down", state=state)
    assert down.returncode == 0 and "cloud stopped" in down.stdout
    assert control.service_pid(StateLayout(state)) is None
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert cloudlab("down", state=state).stdout.startswith("cloud was not running")
