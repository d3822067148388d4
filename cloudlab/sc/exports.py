"""NBD exports of volumes: one ``qemu-nbd`` per attached volume, on the SC's address.

``qemu-nbd --fork`` returns once its socket listens, so an export is ready when :meth:`Exports.export`
returns (no polling). The server outlives the SC process on purpose: a killed or restarted SC must
not cut a guest off its disk; the SC finds its servers again from ``exports/<volume>.json`` (pid,
port) and the process table, and ``cloudlab down`` ends any that are left (their command line names
the state folder). A server that died anyway is started again on its old port when the cloud
controller finds an attached volume of a running instance unserved, and one no running instance
needs is closed (``cloudlab.clc.volume_work``, which compares :meth:`Exports.current` with its
records every few seconds). ``--shared=2``: the guest's QEMU, plus one reader for a snapshot taken
while it is attached. ``--persistent``: a client that disconnects (an instance stopped, a node
restarted) can connect again. The export is raw guest data; the qcow2 format stays on the SC's side.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

from cloudlab.contract import NbdExport
from cloudlab.errors import CloudError
from cloudlab.files import write_atomic
from cloudlab.processes import pid_alive
from cloudlab.waiting import WaitTimeout, wait_until

log = logging.getLogger(__name__)

FIRST_PORT = 10809  # NBD's own port, and the ones after it
PORT_TRIES = 200


class Exports:
    """The volumes this SC serves, each by a ``qemu-nbd`` of its own on ``host``."""

    def __init__(self, folder: Path, host: str, first_port: int = FIRST_PORT) -> None:
        self.folder = folder
        self.host = host
        self.first_port = first_port
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _record(self, volume_id: str) -> Path:
        return self.folder / f"{volume_id}.json"

    def _read(self, volume_id: str) -> dict | None:
        try:
            data = json.loads(self._record(volume_id).read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def _alive(self, record: dict, path: Path) -> bool:
        """Whether the recorded server still runs and is ours (its command line names the volume)."""
        pid = int(record.get("pid", 0))
        if pid <= 0 or not pid_alive(pid):
            return False
        try:
            return str(path).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    def current(self) -> dict[str, NbdExport]:
        """Every export whose server runs."""
        found = {}
        for record_file in sorted(self.folder.glob("vol-*.json")):
            record = self._read(record_file.stem)
            if record and self._alive(record, Path(record["path"])):
                found[record_file.stem] = NbdExport(self.host, int(record["port"]), record_file.stem)
        return found

    def export(self, volume_id: str, path: Path) -> NbdExport:
        """Serve ``path`` as export ``volume_id`` (the running server if there is one)."""
        with self._lock:
            record = self._read(volume_id)
            if record and self._alive(record, path) and record.get("host") == self.host:
                return NbdExport(self.host, int(record["port"]), volume_id)
            if record:
                self._stop(record, path)
            if not path.exists():
                raise CloudError("InvalidVolume.NotFound", f"The volume '{volume_id}' does not exist")
            taken = {int(r["port"]) for v in self.folder.glob("vol-*.json") if (r := self._read(v.stem))}
            # a server that died is started again on its old port, where its clients look for it
            again = [int(record["port"])] if record and record.get("host") == self.host else []
            if again:  # a killed server's other threads may hold its socket a moment after it is gone
                with contextlib.suppress(WaitTimeout):
                    wait_until(lambda: _port_free(self.host, again[0]), 5.0, what="the old port", interval_s=0.05)
            last_error = ""
            for port in again + list(range(self.first_port, self.first_port + PORT_TRIES)):
                if (port in taken and port not in again) or not _port_free(self.host, port):
                    continue
                pid_file = self.folder / f"{volume_id}.pid"
                pid_file.unlink(missing_ok=True)
                argv = [
                    "qemu-nbd",
                    "--fork",
                    f"--pid-file={pid_file}",
                    "--persistent",
                    "--shared=2",
                    f"--bind={self.host}",
                    f"--port={port}",
                    f"--export-name={volume_id}",
                    "--format=qcow2",
                    "--cache=writeback",
                    "--discard=unmap",
                    str(path),
                ]
                try:
                    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
                except FileNotFoundError:
                    raise CloudError("InternalError", "qemu-nbd is missing (apt-get install qemu-utils)") from None
                except subprocess.TimeoutExpired:
                    raise CloudError("InternalError", f"qemu-nbd for {volume_id} did not start in 30 s") from None
                if done.returncode == 0:
                    pid = int(pid_file.read_text().strip())
                    write_atomic(
                        self._record(volume_id),
                        json.dumps({"pid": pid, "port": port, "host": self.host, "path": str(path)}),
                    )
                    log.info("exported %s on nbd://%s:%d (pid %d)", volume_id, self.host, port, pid)
                    return NbdExport(self.host, port, volume_id)
                last_error = (done.stderr or done.stdout).strip().splitlines()[-1:] or [str(done.returncode)]
                last_error = last_error[0]
                log.info("qemu-nbd for %s on port %d: %s", volume_id, port, last_error)
                if "Address already in use" not in last_error:
                    break
            raise CloudError("InternalError", f"cannot export {volume_id} over NBD: {last_error or 'no free port'}")

    def unexport(self, volume_id: str) -> None:
        """Stop serving ``volume_id`` (nothing to do if it is not served)."""
        with self._lock:
            record = self._read(volume_id)
            if record:
                self._stop(record, Path(record.get("path", "")))
            self._record(volume_id).unlink(missing_ok=True)
            (self.folder / f"{volume_id}.pid").unlink(missing_ok=True)

    def _stop(self, record: dict, path: Path) -> None:
        if not self._alive(record, path):
            return
        pid = int(record["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: not pid_alive(pid), 10.0, what=f"qemu-nbd {pid} to exit", interval_s=0.05)
        except WaitTimeout:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for volume_id in list(self.current()):
            self.unexport(volume_id)


def _port_free(host: str, port: int) -> bool:
    """Whether qemu-nbd could listen on ``port`` (it sets SO_REUSEADDR too, so TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
