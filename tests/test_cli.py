"""The ``cloudlab`` command: help everywhere, one clear line for bad input, up/status/down."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cloudlab import servicectl
from cloudlab.config import CloudConfig
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
        ["cc"],
        ["cluster-credentials"],
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
        (["cc", "--name", "cluster2"], "--clc"),
        (["cc", "--name", "cluster2", "--clc", "notaurl"], "must look like http://HOST:PORT"),
        (["cc", "--name", "cluster2", "--clc", "http://127.0.0.1:1", "--listen", "h:99999"], "not a port"),
        (["cc", "--name", "cluster2", "--clc", "http://127.0.0.1:1", "--network", "vde"], "invalid choice"),
        (["up", "--clc-listen", ":80"], "not HOST or HOST:PORT"),
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


def test_every_registered_command_has_help_in_process() -> None:
    """Every command an area module registers is reachable and answers --help (the registry builds them all)."""
    import contextlib
    import io

    from cloudlab.cli import main
    from cloudlab.cli.registry import COMMANDS

    assert {"up", "user keys create", "bench notebook", "node-credentials"} <= {" ".join(w) for w in COMMANDS}
    for words in COMMANDS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
            main([*words, "--help"])
        assert done.value.code == 0, words
        assert f"usage: cloudlab {' '.join(words)}" in " ".join(out.getvalue().split()), words


def test_every_cli_module_is_an_area() -> None:
    """A module of ``cloudlab/cli/`` either registers commands (and is listed in AREAS) or is the machinery."""
    import pkgutil

    import cloudlab.cli

    modules = {m.name for m in pkgutil.iter_modules(cloudlab.cli.__path__)}
    assert modules - {"registry", "common", "__main__"} == set(cloudlab.cli.AREAS)


def test_python_dash_m_cloudlab() -> None:
    result = subprocess.run([sys.executable, "-m", "cloudlab", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: cloudlab" in result.stdout and "node-credentials" in result.stdout


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
    assert servicectl.service_pid(StateLayout(tmp_path / "state")) is None


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
        pid = servicectl.service_pid(StateLayout(state))
        assert pid is not None
    finally:
        down = cloudlab("down", state=state)
    assert down.returncode == 0 and "cloud stopped" in down.stdout
    assert servicectl.service_pid(StateLayout(state)) is None
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert cloudlab("down", state=state).stdout.startswith("cloud was not running")
    again = cloudlab("up", state=state)  # the options of the first `up` are saved, reused and said
    try:
        assert again.returncode == 0, again.stderr
        assert "hypervisor test:///default, from the last `up`; --hypervisor to change" in again.stdout
        assert "nodes 3, from the last `up`; --nodes to change" in again.stdout
        status = json.loads(cloudlab("status", "--json", state=state).stdout)
        assert len(status["clusters"][0]["nodes"]) == 3 and status["hypervisor"].startswith("test://")
    finally:
        cloudlab("down", state=state)


# -- cloud.json and the options `up` saves (issue 10 item 15) -----------------------------------------------


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("cloudlab: error: ")
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ('{"nodes": 3, "netw', ["is not valid JSON", "line 1 column"]),
        ("", ["is not valid JSON"]),
        ("null", ["must hold a JSON object", "not null"]),
        ("[1,2]", ["must hold a JSON object", "not [1, 2]"]),
        ('{"nodes": "four"}', ["field 'nodes'", 'must be a whole number, not "four"']),
        ('{"nodes": -3}', ["field 'nodes'", "must be at least 1, not -3"]),
        ('{"network": "token-ring"}', ["field 'network'", "must be one of none, vde, direct"]),
    ],
)
def test_a_corrupt_cloud_json_is_one_line_naming_the_file_and_field(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "cloud.json").write_text(text)
    result = cloudlab("up", "--hypervisor", "test:///default", "--port", "0", state=state)
    one_line_error(result, str(state / "cloud.json"), *needles)
    assert servicectl.service_pid(StateLayout(state)) is None and not (state / "clc.db").exists()
    assert (state / "cloud.json").read_text() == text, "a refused start leaves the file for the user to fix"


@pytest.mark.parametrize("scheduler", ["NOPE", "no.such.module:Policy", "json:dumps"])
def test_a_bad_scheduler_is_refused_before_it_is_saved(tmp_path: Path, scheduler: str) -> None:
    state = tmp_path / "state"
    result = cloudlab("up", "--hypervisor", "test:///default", "--port", "0", "--scheduler", scheduler, state=state)
    one_line_error(result, "--scheduler", scheduler)
    assert not (state / "cloud.json").exists()


def test_options_reused_from_the_last_up_are_said(tmp_path: Path) -> None:
    """``make demo`` (a direct network) and then ``up --hypervisor test:///default --nodes 4``: the saved network
    is said before the error it leads to, and a refused start changes nothing that was saved."""
    state = tmp_path / "state"
    CloudConfig(network="direct", nodes=2, api_port=0).save(state / "cloud.json")
    saved = (state / "cloud.json").read_text()
    result = cloudlab("up", "--hypervisor", "test:///default", "--nodes", "4", "--scheduler", "NOPE", state=state)
    assert "network direct, from the last `up`; --network to change" in result.stdout.splitlines()
    assert "port 0, from the last `up`; --port to change" in result.stdout.splitlines()
    assert "nodes" not in result.stdout and "hypervisor" not in result.stdout  # given now, not reused
    one_line_error(result, "unknown scheduling policy 'NOPE'")
    assert (state / "cloud.json").read_text() == saved
