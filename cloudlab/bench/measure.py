"""Network measurements that return numbers (Mininet's ``net.iperf()`` style), never prose.

``iperf`` runs iperf3 between two ``Remote`` ends and parses its JSON; ``ping`` parses both iputils
and busybox output; ``cpu_burn`` counts shell-loop iterations per second; ``HostCpu`` samples the
whole machine's CPU utilisation from /proc/stat around a measurement.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import statistics
import time
from typing import Any

from cloudlab.reach import Remote


class MeasurementError(RuntimeError):
    pass


def cpu_times_of(line: str) -> tuple[int, int]:
    """(busy, total) jiffies from the ``cpu`` line of /proc/stat (idle and iowait are not busy)."""
    fields = [int(x) for x in line.split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user/nice
    return total - idle, total


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs now."""
    with open("/proc/stat") as stat:
        return cpu_times_of(stat.readline())


def cpu_pct(start: tuple[int, int], end: tuple[int, int]) -> float:
    """The share of busy jiffies between two ``cpu_times`` readings, in % (NaN for a span shorter than a
    jiffy, which says nothing: /proc/stat counts in jiffies, 10 ms on most kernels)."""
    d_total = end[1] - start[1]
    return round(100.0 * (end[0] - start[0]) / d_total, 1) if d_total > 0 else float("nan")


class HostCpu:
    """Context manager: ``pct`` is the machine's CPU utilisation (0–100 %, all cores) while inside."""

    def __init__(self) -> None:
        self.pct: float = float("nan")
        self.start = (0, 0)

    def __enter__(self) -> HostCpu:
        self.start = cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pct = cpu_pct(self.start, cpu_times())


# ---------------------------------------------------------------------------------------------- iperf3


def parse_iperf_json(text: str) -> dict[str, Any]:
    """The figures of one ``iperf3 -c ... -J`` run (TCP)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MeasurementError(f"iperf3 output is not JSON: {text[:300]!r}") from exc
    if data.get("error"):
        raise MeasurementError(f"iperf3: {data['error']}")
    end = data.get("end") or {}
    received = end.get("sum_received") or end.get("sum") or {}
    sent = end.get("sum_sent") or {}
    cpu = end.get("cpu_utilization_percent") or {}
    if "bits_per_second" not in received:
        raise MeasurementError("iperf3 JSON has no end.sum_received.bits_per_second")
    return {
        "gbit_s": round(received["bits_per_second"] / 1e9, 4),
        "sent_gbit_s": round(sent.get("bits_per_second", float("nan")) / 1e9, 4),
        "retransmits": sent.get("retransmits"),
        "seconds": round(received.get("seconds", float("nan")), 3),
        "bytes": received.get("bytes"),
        "client_cpu_pct": _round(cpu.get("host_total")),
        "server_cpu_pct": _round(cpu.get("remote_total")),
        "streams": len(end.get("streams") or []) or None,
    }


def _round(value: Any, digits: int = 1) -> float | None:
    return round(value, digits) if isinstance(value, int | float) else None


def iperf(
    server: Remote,
    client: Remote,
    server_address: str,
    duration_s: float = 3.0,
    streams: int = 1,
    port: int = 5201,
    attempts: int = 5,
) -> dict[str, Any]:
    """One iperf3 TCP run from ``client`` to the server on ``server_address``; numbers in a dict.

    The server is started as a one-shot daemon (``iperf3 -s -1 -D``) with a pid file and is killed
    afterwards whatever happens. ``cpu_host_pct`` is the whole machine's CPU over the client's run.
    """
    seconds = max(1, round(duration_s))
    pidfile = f"/tmp/clb-iperf-{secrets.token_hex(4)}.pid"
    start = f"iperf3 -s -1 -D -p {port} -B {shlex.quote(server_address)} -I {pidfile}"
    stop = (
        f'p=$(cat {pidfile} 2>/dev/null) && [ -n "$p" ] && [ "$(cat /proc/$p/comm 2>/dev/null)" = iperf3 ]'
        f' && kill "$p"; rm -f {pidfile}; true'
    )
    command = f"iperf3 -c {shlex.quote(server_address)} -p {port} -J -t {seconds} -P {max(1, streams)}"
    try:
        started = server.run(start, timeout=20)
        if started.returncode != 0:
            raise MeasurementError(f"iperf3 server on {server.name} failed: {started.stderr.strip()}")
        for attempt in range(attempts):
            with HostCpu() as cpu:
                done = client.run(command, timeout=seconds + 30)
            if done.returncode == 0:
                break
            refused = "refused" in done.stdout + done.stderr or "unable to connect" in done.stdout + done.stderr
            if not refused or attempt == attempts - 1:
                detail = (done.stdout[-400:] + done.stderr[-400:]).strip()
                raise MeasurementError(f"iperf3 client on {client.name} failed ({done.returncode}): {detail}")
            time.sleep(0.3)  # the daemon may not be listening yet
        result = parse_iperf_json(done.stdout)
    finally:
        server.run(stop, timeout=15)
    result["cpu_host_pct"] = cpu.pct
    result["duration_s"] = seconds
    return result


# ---------------------------------------------------------------------------------------------- ping

_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_LOSS = re.compile(r"([\d.]+)% packet loss")
_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max(?:/mdev)? = ([\d.]+)/([\d.]+)/([\d.]+)(?:/([\d.]+))? ms")
_TIME = re.compile(r"time[=<]([\d.]+) ?ms")


def parse_ping(text: str) -> dict[str, Any]:
    """Figures from iputils or busybox ping output (busybox prints no mdev: computed from the replies
    as iputils does, the population standard deviation)."""
    summary = _SUMMARY.search(text)
    if not summary:
        raise MeasurementError(f"no ping summary in {text[-300:]!r}")
    sent, received = int(summary.group(1)), int(summary.group(2))
    loss = _LOSS.search(text)
    times = [float(t) for t in _TIME.findall(text)]
    result: dict[str, Any] = {
        "sent": sent,
        "received": received,
        "loss_pct": float(loss.group(1)) if loss else (100.0 * (sent - received) / sent if sent else float("nan")),
        "rtt_ms": float("nan"),
        "rtt_min_ms": float("nan"),
        "rtt_max_ms": float("nan"),
        "rtt_mdev_ms": float("nan"),
    }
    rtt = _RTT.search(text)
    if rtt:
        result["rtt_min_ms"], result["rtt_ms"], result["rtt_max_ms"] = (float(rtt.group(i)) for i in (1, 2, 3))
        if rtt.group(4) is not None:
            result["rtt_mdev_ms"] = float(rtt.group(4))
    if times and result["rtt_mdev_ms"] != result["rtt_mdev_ms"]:  # nan: busybox
        mean = statistics.fmean(times)
        result["rtt_mdev_ms"] = round(statistics.pstdev(times), 3)  # what iputils calls mdev
        if not rtt:
            result["rtt_ms"], result["rtt_min_ms"], result["rtt_max_ms"] = round(mean, 3), min(times), max(times)
    return result


def ping(src: Remote, address: str, count: int = 5, interval: float = 0.2) -> dict[str, Any]:
    """ICMP round trips from ``src`` to ``address`` (iputils ``ping`` where present, else busybox)."""
    deadline = max(2, int(count * interval + 3))
    args = f"-c {count} -i {interval} -w {deadline} {shlex.quote(address)}"
    command = f"if command -v ping >/dev/null 2>&1; then ping {args}; else busybox ping {args}; fi"
    done = src.run(command, timeout=deadline + 15)
    try:
        return parse_ping(done.stdout)
    except MeasurementError as exc:
        raise MeasurementError(f"ping from {src.name} to {address}: {done.stderr.strip() or exc}") from exc


# ---------------------------------------------------------------------------------------------- CPU

_BURN = (
    "read u _ </proc/uptime; s=$((${{u%.*}}*100 + 1${{u#*.}} - 100)); now=$s; e=$((s + {cs})); n=0; "
    "while [ $now -lt $e ]; do j=0; while [ $j -lt 2000 ]; do j=$((j+1)); done; n=$((n+2000)); "
    "read u _ </proc/uptime; now=$((${{u%.*}}*100 + 1${{u#*.}} - 100)); done; echo $n $((now - s))"
)


def cpu_burn(remote: Remote, seconds: float = 2) -> dict[str, Any]:
    """Shell-loop iterations per second on ``remote`` for about ``seconds`` (bounded by ``timeout``)."""
    centis = max(10, int(seconds * 100))
    script = _BURN.format(cs=centis)
    done = remote.run(f"timeout {int(seconds) + 10} sh -c {shlex.quote(script)}", timeout=seconds + 30)
    parts = done.stdout.split()
    if done.returncode != 0 or len(parts) != 2:
        raise MeasurementError(f"cpu burn on {remote.name} failed: {done.stderr.strip() or done.stdout!r}")
    ops, elapsed_cs = int(parts[0]), int(parts[1])
    return {
        "ops": ops,
        "seconds": elapsed_cs / 100,
        "ops_per_s": round(ops / (elapsed_cs / 100)) if elapsed_cs else float("nan"),
    }
