"""Starting, finding and stopping the background service (used by the CLI and the Python client).

``up`` returns once the EC2 endpoint answers, or fails with the service log's last lines;
``down`` asks the service to terminate its instances and stop, and then makes sure that no QEMU
process of this cloud is left, even if the service had been killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from cloudlab import processes
from cloudlab.cc.network_host import sweep as sweep_network
from cloudlab.config import CloudConfig
from cloudlab.paths import StateLayout
from cloudlab.waiting import WaitTimeout, wait_until


class ControlError(Exception):
    """A one-line, actionable problem starting or stopping the cloud."""


def service_pid(layout: StateLayout) -> int | None:
    try:
        pid = int(layout.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if processes.pid_alive(pid) else None


def endpoint(layout: StateLayout) -> dict[str, Any] | None:
    """The running cloud's endpoint record, or None if it is not running."""
    if service_pid(layout) is None:
        return None
    try:
        return json.loads(layout.endpoint_file.read_text())
    except (OSError, ValueError):
        return None


def connection(layout: StateLayout, user: str = "admin") -> tuple[dict[str, Any], dict[str, str]]:
    """The running cloud's endpoint record and ``user``'s access key, or ControlError saying what to do."""
    info = endpoint(layout)
    if info is None:
        raise ControlError(f"cloud is not running (state {layout.root}); start it with: cloudlab up (or make lab)")
    path = layout.credentials / f"{user}.json"
    if not path.exists():
        raise ControlError(f"no credentials for user {user!r} in {layout.credentials}")
    return info, json.loads(path.read_text())


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback URL we wrote
        return json.loads(response.read())


def service_status(layout: StateLayout, info: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    """The running service's full status (``GET /_cloudlab/status``), which only the admin may read:
    the request is SigV4-signed with the admin's key from the state folder, as boto3 signs."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    found, creds = connection(layout, "admin")
    info = info or found
    url = info["url"].rstrip("/") + "/_cloudlab/status"
    request = AWSRequest(method="GET", url=url)
    SigV4Auth(Credentials(creds["access_key"], creds["secret_key"]), "ec2", info["region"]).add_auth(request)
    sent = urllib.request.Request(url, headers=dict(request.headers.items()))
    with urllib.request.urlopen(sent, timeout=timeout) as response:  # noqa: S310 - loopback URL we wrote
        return json.loads(response.read())


def check_port_free(host: str, port: int) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ControlError(
                f"port {port} on {host} is taken ({exc.strerror}): stop what uses it or run "
                f"'cloudlab up --port N' (0 picks a free port)"
            ) from None


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def up(layout: StateLayout, config: CloudConfig, timeout_s: float = 90.0) -> dict[str, Any]:
    """Start the service unless it runs; return its endpoint record."""
    running = endpoint(layout)
    if running is not None:
        return running | {"already_running": True}
    check_port_free(config.api_host, config.api_port)
    layout.ensure()
    config.save(layout.config)
    layout.endpoint_file.unlink(missing_ok=True)
    with layout.log.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cloudlab.cli", "--state", str(layout.root), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=layout.root,
            umask=0o077,  # what the service writes in the state folder is its own
        )
    layout.pidfile.write_text(f"{process.pid}\n")

    def answering() -> dict[str, Any] | None:
        if process.poll() is not None:
            raise ControlError(
                f"the cloud service exited with status {process.returncode}; its log "
                f"({layout.log}) ends with:\n{tail(layout.log)}"
            )
        info = endpoint(layout)
        if info is not None:
            get_json(info["url"].rstrip("/") + "/_cloudlab/health", timeout=2)  # OSError: not yet
        return info

    try:
        info = wait_until(answering, timeout_s, what="the cloud service", interval_s=0.2, ignore=(OSError,))
    except WaitTimeout:
        raise ControlError(
            f"the cloud did not answer within {timeout_s:.0f} s; see {layout.log}:\n{tail(layout.log)}"
        ) from None
    _refuse_missing_nodes(layout, info.get("nodes_missing") or [])
    return info | {"already_running": False}


def _refuse_missing_nodes(layout: StateLayout, missing: list[str]) -> None:
    """A cloud whose nodes did not all start is stopped again, with what their logs say."""
    if not missing:
        return
    logs = "\n".join(
        f"{layout.node_dir(n) / 'nc.log'} ends with:\n{tail(layout.node_dir(n) / 'nc.log', 8)}" for n in missing
    )
    down(layout)
    raise ControlError(f"node(s) {', '.join(missing)} did not start, so the cloud was stopped again; {logs}")


def leftover_qemu(
    layout: StateLayout, programs: tuple[bytes, ...] = (b"qemu-system",), *, templates: bool = False
) -> list[int]:
    """QEMU (or ``programs``) processes whose command line points into this state folder (or its short links).

    A node booting a template (``cloudlab/nc/templates.py``, a QEMU named ``cloudlab-tpl-...``) for a moment
    runs one QEMU that is no instance's: counted only with ``templates`` (``down`` sweeps those too).
    """
    markers = (str(layout.root.resolve()).encode(), layout.short_prefix.encode())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv0 = cmdline.split(b"\0", 1)[0]
        if any(p in argv0 for p in programs) and any(m in cmdline for m in markers):
            if not templates and b"guest=cloudlab-tpl-" in cmdline:
                continue
            found.append(int(entry.name))
    return found


def down(layout: StateLayout, timeout_s: float = 90.0) -> dict[str, Any]:
    """Stop the service (terminating its instances) and sweep anything it left."""
    pid = service_pid(layout)
    stopped = False
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(WaitTimeout):  # then SIGKILL
            wait_until(
                lambda: not processes.pid_alive(pid), timeout_s, what=f"the service (pid {pid}) to exit", interval_s=0.2
            )
        if processes.pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        stopped = True
    swept = leftover_qemu(layout, templates=True)
    for qemu in swept:
        with contextlib.suppress(ProcessLookupError):
            os.kill(qemu, signal.SIGKILL)
    # Switches, plugs and cables of a killed service, then its namespaces and root veth.
    for leftover in leftover_qemu(layout, (b"vde_switch", b"vde_plug", b"dpipe")):
        with contextlib.suppress(ProcessLookupError):
            os.kill(leftover, signal.SIGKILL)
    processes.end(processes.node_controllers(layout))  # orphans of a killed service, if any survived
    processes.end(processes.storage_controllers(layout))
    processes.end(processes.of_state(layout, (b"qemu-nbd",)))  # NBD exports outlive their SC on purpose
    swept_network = sweep_network(layout.network_prefix)
    shutil.rmtree(layout.network_run_dir, ignore_errors=True)
    layout.pidfile.unlink(missing_ok=True)
    layout.endpoint_file.unlink(missing_ok=True)
    for link in Path(layout.short_prefix).parent.glob(Path(layout.short_prefix).name + "*"):
        if link.is_symlink():
            link.unlink()
    return {"stopped": stopped, "swept_qemu": swept, "swept_network": swept_network}
