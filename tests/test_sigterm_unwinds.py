"""A benchmark killed with SIGTERM tears down what it built (``processes.interrupt_on_sigterm``).

SIGTERM's default action ends a process without running its ``finally`` blocks or context managers'
exits, so a killed ``cloudlab bench storage`` used to leave its cloud, its hand-booted guest, its
``qemu-nbd`` exports and its namespaces running. The benchmark commands turn SIGTERM into
``KeyboardInterrupt``; this runs a child that does the same and checks its clean-up really ran.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from cloudlab.waiting import wait_until

CHILD = """
import sys, time
from pathlib import Path
from cloudlab.processes import interrupt_on_sigterm
interrupt_on_sigterm()
marker = Path(sys.argv[1])
try:
    marker.write_text("started")
    time.sleep(60)
finally:
    marker.write_text("cleaned up")
"""


def run_child(tmp_path: Path, with_handler: bool) -> tuple[str, int]:
    marker = tmp_path / "marker"
    code = CHILD if with_handler else CHILD.replace("interrupt_on_sigterm()\n", "")
    child = subprocess.Popen([sys.executable, "-c", code, str(marker)], cwd=Path(__file__).parent.parent)
    try:
        wait_until(lambda: marker.exists() and marker.read_text() == "started", 30, what="the child to start")
        child.send_signal(signal.SIGTERM)
        returncode = child.wait(30)
    finally:
        child.kill()
        child.wait()
    return marker.read_text(), returncode


def test_sigterm_runs_the_clean_up(tmp_path: Path) -> None:
    assert run_child(tmp_path, with_handler=True)[0] == "cleaned up"


def test_without_it_sigterm_skips_the_clean_up(tmp_path: Path) -> None:
    text, returncode = run_child(tmp_path, with_handler=False)
    assert text == "started" and returncode == -signal.SIGTERM


FORKING_CHILD = """
import os, signal, sys, time
from pathlib import Path
from cloudlab.processes import interrupt_on_sigterm
interrupt_on_sigterm()
marker = Path(sys.argv[1])
pid = os.fork()
if pid == 0:
    try:
        time.sleep(60)
    finally:
        marker.write_text("the child ran its parent's clean-up")
    os._exit(0)
time.sleep(0.5)
os.kill(pid, signal.SIGTERM)
_, status = os.waitpid(pid, 0)
print(os.WIFSIGNALED(status) and os.WTERMSIG(status))
"""


def test_a_forked_child_dies_of_sigterm_without_running_its_parents_clean_up(tmp_path: Path) -> None:
    """A child forked after the handler was installed (pyroute2 forks) is killed by SIGTERM as usual:
    raising there once ran a test session's teardown in the child and stopped the shared cloud."""
    marker = tmp_path / "marker"
    done = subprocess.run(
        [sys.executable, "-c", FORKING_CHILD, str(marker)],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == str(int(signal.SIGTERM)), done
    assert not marker.exists()


def test_the_benchmark_commands_install_it() -> None:
    source = (Path(__file__).parent.parent / "cloudlab" / "cli" / "bench.py").read_text()
    bodies = source.split("\ndef bench_")[1:]
    assert len(bodies) == 4 and all("interrupt_on_sigterm()" in body.split("\n\n\n")[0] for body in bodies)
