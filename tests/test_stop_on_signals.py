"""The controllers' daemons stop on SIGTERM and, told SIGUSR1, write every thread's stack to their log."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from cloudlab.waiting import wait_until

DAEMON = """
import threading, sys
from cloudlab.registration import stop_on_signals
stop = threading.Event()
stop_on_signals(stop)
print("ready", flush=True)
while not stop.is_set():
    stop.wait(0.001)  # a loop that mostly holds the event's lock between waits, as keep_registered's does
print("stopped", flush=True)
"""


def test_sigusr1_dumps_the_stacks_and_sigterm_stops_a_busy_waiting_loop() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", DAEMON], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="."
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        for _ in range(20):  # many signals, each landing somewhere in the wait loop
            proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        assert proc.poll() is None, "SIGUSR1 only dumps the stacks"
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: proc.poll() is not None, 20, what="the daemon to stop", interval_s=0.05)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and out.strip() == "stopped", (out, err)
        assert "Current thread" in err and "in <module>" in err, err  # faulthandler's dump of the main thread
    finally:
        if proc.poll() is None:
            proc.kill()
