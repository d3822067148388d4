"""The network benchmark's measurement layer and its hand-built baseline paths.

Parsers are tested on captured iperf3 JSON and ping output (iputils and busybox). The paths are
built for real in namespaces ``clb<hex>-*``, measured for 1 s, and must leave nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cloudlab.bench import handmade, lab, measure, network
from cloudlab.reach import NamespaceRemote, SshRemote
from cloudlab.waiting import wait_until

IPERF_JSON = {
    "start": {"test_start": {"protocol": "TCP", "num_streams": 1, "duration": 1}},
    "intervals": [],
    "end": {
        "streams": [{"sender": {"bits_per_second": 12893100000.0, "retransmits": 45}}],
        "sum_sent": {
            "start": 0,
            "end": 1.004,
            "seconds": 1.004,
            "bytes": 1617999872,
            "bits_per_second": 12893100000.0,
            "retransmits": 45,
            "sender": True,
        },
        "sum_received": {
            "start": 0,
            "end": 1.004,
            "seconds": 1.004,
            "bytes": 1611923456,
            "bits_per_second": 12847800000.0,
            "sender": True,
        },
        "cpu_utilization_percent": {
            "host_total": 45.43,
            "host_user": 1.2,
            "host_system": 44.2,
            "remote_total": 43.71,
            "remote_user": 0.9,
            "remote_system": 42.8,
        },
        "sender_tcp_congestion": "cubic",
        "receiver_tcp_congestion": "cubic",
    },
}

IPUTILS_PING = """PING 10.77.0.2 (10.77.0.2) 56(84) bytes of data.
64 bytes from 10.77.0.2: icmp_seq=1 ttl=64 time=0.061 ms
64 bytes from 10.77.0.2: icmp_seq=2 ttl=64 time=0.045 ms
64 bytes from 10.77.0.2: icmp_seq=3 ttl=64 time=0.032 ms

--- 10.77.0.2 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 605ms
rtt min/avg/max/mdev = 0.032/0.046/0.061/0.010 ms
"""

BUSYBOX_PING = """PING 10.77.0.2 (10.77.0.2): 56 data bytes
64 bytes from 10.77.0.2: seq=0 ttl=64 time=2.031 ms
64 bytes from 10.77.0.2: seq=1 ttl=64 time=4.000 ms
64 bytes from 10.77.0.2: seq=2 ttl=64 time=3.000 ms

--- 10.77.0.2 ping statistics ---
3 packets transmitted, 3 packets received, 0% packet loss
round-trip min/avg/max = 2.031/3.010/4.000 ms
"""

BUSYBOX_ALL_LOST = """PING 10.77.0.9 (10.77.0.9): 56 data bytes

--- 10.77.0.9 ping statistics ---
3 packets transmitted, 0 packets received, 100% packet loss
"""

NEEDED = ("ip", "nsenter", "iperf3", "busybox", "vde_switch", "vde_plug")
missing = [tool for tool in NEEDED if shutil.which(tool) is None]
needs_tools = pytest.mark.skipif(
    bool(missing) or os.geteuid() != 0, reason=f"needs root and {NEEDED}: missing {missing}"
)


# ------------------------------------------------------------------------------------- parsers


def test_iperf_json_gives_numbers() -> None:
    result = measure.parse_iperf_json(json.dumps(IPERF_JSON))
    assert result["gbit_s"] == pytest.approx(12.8478)
    assert result["retransmits"] == 45
    assert result["client_cpu_pct"] == 45.4 and result["server_cpu_pct"] == 43.7
    assert result["streams"] == 1


def test_iperf_json_error_and_garbage_raise() -> None:
    with pytest.raises(measure.MeasurementError, match="unable to connect"):
        measure.parse_iperf_json(json.dumps({"start": {}, "end": {}, "error": "unable to connect to server"}))
    with pytest.raises(measure.MeasurementError, match="not JSON"):
        measure.parse_iperf_json("iperf3: error - ...")


def test_iputils_ping() -> None:
    result = measure.parse_ping(IPUTILS_PING)
    assert (result["sent"], result["received"], result["loss_pct"]) == (4, 3, 25.0)
    assert (result["rtt_min_ms"], result["rtt_ms"], result["rtt_max_ms"], result["rtt_mdev_ms"]) == (
        0.032,
        0.046,
        0.061,
        0.010,
    )


def test_busybox_ping_mdev_from_replies() -> None:
    result = measure.parse_ping(BUSYBOX_PING)
    assert (result["sent"], result["received"], result["loss_pct"]) == (3, 3, 0.0)
    assert result["rtt_ms"] == 3.010 and result["rtt_min_ms"] == 2.031 and result["rtt_max_ms"] == 4.0
    assert result["rtt_mdev_ms"] == pytest.approx(0.804, abs=0.001)


def test_ping_all_lost_and_no_summary() -> None:
    result = measure.parse_ping(BUSYBOX_ALL_LOST)
    assert result["loss_pct"] == 100.0 and result["received"] == 0
    assert result["rtt_ms"] != result["rtt_ms"]  # NaN
    with pytest.raises(measure.MeasurementError):
        measure.parse_ping("ping: bad address 'x'")


def test_host_cpu_arithmetic_on_given_counters() -> None:
    assert measure.cpu_times_of("cpu  10 2 5 80 3 0 0 0 0 0") == (17, 100)  # idle 80 + iowait 3 are not busy
    assert measure.cpu_pct((17, 100), (67, 200)) == 50.0
    assert measure.cpu_pct((17, 100), (17, 300)) == 0.0
    assert math.isnan(measure.cpu_pct((17, 100), (17, 100)))  # within one jiffy: no figure, not 0 %


def test_host_cpu_sampler_over_a_span_of_jiffies() -> None:
    with measure.HostCpu() as cpu:  # a span that cannot be empty: until ten jiffies have been counted
        wait_until(lambda: measure.cpu_times()[1] >= cpu.start[1] + 10, 10, what="ten jiffies", interval_s=0.01)
    assert 0 <= cpu.pct <= 100


def test_ssh_remote_argv_is_batch_and_throwaway(tmp_path: Path) -> None:
    argv = SshRemote("10.77.0.1", tmp_path / "k", netns="clb000000-m").argv("true")
    assert argv[:3] == ["nsenter", "--net=/run/netns/clb000000-m", "--"]
    assert "BatchMode=yes" in argv and "UserKnownHostsFile=/dev/null" in argv and "StrictHostKeyChecking=no" in argv
    assert argv[-2:] == ["root@10.77.0.1", "true"]


# ------------------------------------------------------------------------------------- results


def _fake_runs() -> pd.DataFrame:
    rows = []
    for built_by, kind, values in (
        ("hand", "bridge", [19.0, 18.0, 20.0]),
        ("hand", "vde", [0.4, 0.3, 0.5]),
        ("cloudlab", "bridge", [17.0, 18.0, 16.0]),
    ):
        for repeat, gbit in enumerate(values):
            rows.append(
                {
                    "path": f"{built_by}:{kind}",
                    "label": kind,
                    "kind": kind,
                    "built_by": built_by,
                    "repeat": repeat,
                    "gbit_s": gbit,
                    "retransmits": 3,
                    "rtt_ms": 0.1 + repeat / 100,
                    "host_cpu_pct": 90.0,
                }
            )
    rows.append({"path": "?:broken", "label": "broken", "repeat": 0, "error": "BuildError: no"})
    return pd.DataFrame(rows, columns=network.COLUMNS)


def test_summary_ratios_results_and_charts(tmp_path: Path) -> None:
    df = _fake_runs()
    summary = network.summarise(df).set_index("path")
    assert summary.loc["hand:bridge", "gbit_s_median"] == 19.0
    assert summary.loc["hand:bridge", "gbit_s_min"] == 18.0 and summary.loc["hand:bridge", "gbit_s_max"] == 20.0
    assert summary.loc["hand:bridge", "n"] == 3 and "?:broken" not in summary.index
    found = network.ratios(df)
    assert found["cloudlab/hand bridge"]["ratio"] == pytest.approx(17 / 19, abs=1e-3)
    assert found["cloudlab/hand bridge"]["low"] == pytest.approx(16 / 20, abs=1e-3)
    assert found["VDE penalty hand bridge/vde"]["ratio"] == pytest.approx(19 / 0.4, abs=1e-2)
    assert network.ratios(df, [("hand:vde", "hand:bridge")])["hand:vde / hand:bridge"]["ratio"] == pytest.approx(
        0.4 / 19, abs=1e-3
    )
    files = network.write_results(df, tmp_path, "network-test")
    document = json.loads(files["json"].read_text())
    assert document["environment"]["tools"]["iperf3"].startswith("iperf")
    assert len(document["runs"]) == 10 and pd.read_csv(files["csv"]).shape[0] == 10
    from cloudlab.bench.chart import rtt_chart, throughput_chart

    assert throughput_chart(df, tmp_path / "t.png").stat().st_size > 1000
    assert rtt_chart(df, tmp_path / "r.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------- real paths


def _ours_left(tag: str) -> tuple[list[str], list[str]]:
    namespaces = [n for n in lab.leftover_namespaces() if n.startswith(tag + "-")]
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, timeout=10).stdout
    processes = [line for line in ps.splitlines() if tag in line and "ps -eo" not in line]
    return namespaces, processes


def _measure_and_check(factory) -> dict:
    with factory() as path:
        tag = path.extra["namespaces"][0].split("-")[0]
        assert all(n.startswith(tag + "-") for n in path.extra["namespaces"])
        rtt = measure.ping(path.client, path.server_address, count=3, interval=0.2)
        result = measure.iperf(path.server, path.client, path.server_address, duration_s=1)
    assert result["gbit_s"] > 0 and result["retransmits"] is not None
    assert rtt["loss_pct"] < 100 and rtt["rtt_ms"] > 0
    assert _ours_left(tag) == ([], []), "teardown left namespaces or processes behind"
    return {**result, **rtt}


@needs_tools
def test_namespaces_bridge() -> None:
    result = _measure_and_check(handmade.namespaces_bridge)
    assert result["gbit_s"] > 1  # a veth + bridge path moves well over a gigabit even on 2 cores


@needs_tools
def test_namespaces_vde() -> None:
    _measure_and_check(handmade.namespaces_vde)


@needs_tools
def test_namespaces_vde_jumbo_frames_on_vdeplug_switch() -> None:
    with pytest.raises(ValueError, match="1514"), handmade.namespaces_vde(mtu=9000):  # vde_switch would drop them
        pass
    with handmade.namespaces_vde(switch="vdeplug-switch", mtu=9000, dgram_qlen=64) as path:
        assert path.kind == "vde-vdeplug-switch-qlen64-mtu9000"
        tuned = path.client.run("cat /proc/sys/net/unix/max_dgram_qlen; ip -o link show tap0").stdout
        assert tuned.startswith("64\n") and " mtu 9000 " in tuned
        assert measure.iperf(path.server, path.client, path.server_address, duration_s=1)["gbit_s"] > 0
        tag = path.extra["namespaces"][0].split("-")[0]
    assert _ours_left(tag) == ([], [])


@needs_tools
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_cable_path(transport: str) -> None:
    _measure_and_check(lambda: handmade.cable_path(transport))


@needs_tools
@pytest.mark.skipif(not (shutil.which("dropbear") and shutil.which("ssh")), reason="needs dropbear and ssh")
def test_cable_over_ssh_leaves_root_home_alone() -> None:
    before = sorted(os.listdir("/root/.ssh")) if os.path.isdir("/root/.ssh") else None
    _measure_and_check(lambda: handmade.cable_path("ssh"))
    assert (sorted(os.listdir("/root/.ssh")) if os.path.isdir("/root/.ssh") else None) == before
    mounts = Path("/proc/self/mountinfo").read_text()
    assert " /root " not in mounts  # the bind mount lived only in dropbear's mount namespace


@needs_tools
def test_teardown_on_error_removes_everything() -> None:
    tag = None
    with pytest.raises(RuntimeError, match="boom"), handmade.namespaces_vde() as path:
        tag = path.extra["namespaces"][0].split("-")[0]
        NamespaceRemote(path.extra["namespaces"][1]).run("iperf3 -s -D -p 5999")  # a stray daemon
        raise RuntimeError("boom")
    assert tag and _ours_left(tag) == ([], [])


@needs_tools
def test_run_paths_records_failures_and_goes_on() -> None:
    def broken():
        raise handmade.BuildError("cannot build this one")

    df = network.run_paths([broken, handmade.namespaces_bridge], repeats=2, duration_s=1, progress=False, ping_count=2)
    assert df["error"].iloc[0].startswith("BuildError")
    ok = df[df["error"].isna()]
    assert list(ok["path"]) == ["hand:bridge", "hand:bridge"] and (ok["gbit_s"] > 0).all()
    assert (ok["rtt_ms"] > 0).all() and (ok["host_cpu_pct"] > 0).all()


@pytest.mark.vm
@needs_tools
@pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or shutil.which("ssh") is None, reason="needs qemu-system-x86_64 and ssh"
)
def test_vms_bridge_vm_to_vm() -> None:
    from cloudlab.images.cached import find_built_image

    image = find_built_image()
    if image is None:
        pytest.skip("no default image built (cloudlab image build)")
    if (
        b"cloudlab.sshkey"
        not in subprocess.run(
            ["sh", "-c", f"zcat {image.ramdisk} | cpio -i --to-stdout init"], capture_output=True, timeout=60
        ).stdout
    ):
        pytest.skip("the built image's init has no cloudlab.sshkey hook yet: rebuild the image")
    with handmade.vms_bridge(image) as path:
        tag = path.extra["namespaces"][0].split("-")[0]
        assert isinstance(path.client, SshRemote) and path.extra["ends"] == "vms"
        rtt = measure.ping(path.client, path.server_address, count=3)
        result = measure.iperf(path.server, path.client, path.server_address, duration_s=1)
        burn = measure.cpu_burn(path.client, seconds=1)
    assert result["gbit_s"] > 0 and rtt["loss_pct"] < 100 and burn["ops_per_s"] > 0
    assert _ours_left(tag) == ([], [])


@pytest.mark.vm
@pytest.mark.slow
@needs_tools
def test_vpc_placements_in_their_quickest_form(tmp_path: Path) -> None:
    """``cloudlab bench network --vpc-only``, one 1-s run per path: one VPC's pair within a cluster and across
    two clusters (through the NAT), then that path by hand in the same shape, on the fast profile, then on classic;
    the report has all six, the cross-cluster cost of each profile, fast against classic, and each against hand."""
    from tests.clouds import network_requirements

    reason = network_requirements()
    if reason:
        pytest.skip(reason)
    argv = [sys.executable, "-m", "cloudlab.cli", "bench", "network", "--vpc-only", "--repeats", "1"]
    done = subprocess.run(
        [*argv, "--duration", "1", "--output", str(tmp_path)], capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    [report] = list(tmp_path.glob("bench-network-*[0-9].json"))
    document = json.loads(report.read_text())
    runs = {r["path"]: r for r in document["runs"]}
    assert list(runs) == [
        "cloudlab:vm-vpc-same-cluster-fast",
        "cloudlab:vm-vpc-cross-cluster-fast",
        "hand:vm-vde-nat-cable-vdeplug-switch-mtu9000",
        "cloudlab:vm-vpc-same-cluster-classic",
        "cloudlab:vm-vpc-cross-cluster-classic",
        "hand:vm-vde-nat-cable",
    ]  # measured in this order, side by side
    for run in runs.values():
        assert run["error"] is None and run["gbit_s"] > 0 and run["rtt_ms"] > 0 and run["loss_pct"] < 100
    assert [r["path"] for r in document["summary"]] == list(runs)
    names = [
        "VPC cross-cluster/same-cluster --vde-profile fast",
        "VPC cross-cluster/same-cluster --vde-profile classic",
        "VPC cross-cluster fast/classic",
        "VPC cross-cluster cloudlab/hand --vde-profile fast",
        "VPC cross-cluster cloudlab/hand --vde-profile classic",
    ]
    for name in names:
        ratio = document["ratios"][name]
        expected = runs[ratio["numerator"]]["gbit_s"] / runs[ratio["denominator"]]["gbit_s"]
        assert ratio["ratio"] == pytest.approx(expected, abs=2e-3) and ratio["n"] == [1, 1]
        assert f"{name}: x" in done.stdout
    assert document["environment"]["tools"]["vde_switch"]
    assert "load average (1 min):" in done.stdout


def test_the_vpc_placements_run_on_each_profile_asked_for_in_neighbouring_pairs() -> None:
    from cloudlab.bench import cloudpaths, handcables, network

    suite = network.vpc_suite()
    shapes = [(f.func, f.args, f.keywords) for f in suite]
    pair = cloudpaths.cloud_vpc_pair
    hand = handcables.vms_vde_nat_cable
    assert shapes == [
        (pair, ("same-cluster",), {"vde_profile": "fast"}),
        (pair, ("cross-cluster",), {"vde_profile": "fast"}),
        (hand, (None,), {"switch": "vdeplug-switch", "mtu": 9000}),  # the fast profile's shape, by hand
        (pair, ("same-cluster",), {"vde_profile": "classic"}),
        (pair, ("cross-cluster",), {"vde_profile": "classic"}),
        (hand, (None,), {}),
    ]
    assert len(network.vpc_suite(profiles=["classic"])) == 3
    with pytest.raises(ValueError, match="jumbo frames need vdeplug-switch"), hand(mtu=9000):
        pass
    with pytest.raises(ValueError, match="unknown VDE profile 'quick'"):
        network.vpc_suite(profiles=["quick"])
    assert cloudpaths.vpc_kind("cross-cluster", "classic") == "vm-vpc-cross-cluster-classic"
    assert cloudpaths.KIND_OF_PLACEMENT["same-cluster"] == "vm-vpc-same-cluster-fast"  # the default profile's
    kinds = [cloudpaths.vpc_kind(p, v) for p in ("same-cluster", "cross-cluster") for v in ("fast", "classic")]
    measured = pd.DataFrame({"path": [f"cloudlab:{kind}" for kind in kinds]})
    found = {name: (num, den) for name, num, den in network.default_pairs(measured)}
    assert found["VPC cross-cluster fast/classic"] == (
        "cloudlab:vm-vpc-cross-cluster-fast",
        "cloudlab:vm-vpc-cross-cluster-classic",
    )
    assert "VPC cross-cluster cloudlab/hand --vde-profile fast" not in found  # no hand path measured: no ratio


@pytest.mark.vm
@pytest.mark.slow
@needs_tools
def test_vde_profiles_side_by_side_in_their_quickest_form(tmp_path: Path) -> None:
    """``cloudlab bench network --vde-only``, one 1-s run per path: cloudlab direct, vde classic and vde fast, each
    right before its hand-built twin; the report states the VDE penalty (direct ÷ vde) of both profiles."""
    from tests.clouds import network_requirements

    reason = network_requirements()
    if reason:
        pytest.skip(reason)
    argv = [sys.executable, "-m", "cloudlab.cli", "bench", "network", "--vde-only", "--repeats", "1"]
    done = subprocess.run(
        [*argv, "--duration", "1", "--output", str(tmp_path)], capture_output=True, text=True, timeout=1500
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    [report] = list(tmp_path.glob("bench-network-*[0-9].json"))
    document = json.loads(report.read_text())
    order = [r["path"] for r in document["runs"]]
    fast = "vm-vde-tap-vdeplug-switch-mtu9000"
    assert order == [
        "cloudlab:vm-bridge",
        "hand:vm-bridge",
        "cloudlab:vm-vde",
        "hand:vm-vde",
        f"cloudlab:{fast}",
        f"hand:{fast}",
    ]
    runs = {r["path"]: r for r in document["runs"]}
    for run in runs.values():
        assert run["error"] is None and run["gbit_s"] > 0 and run["rtt_ms"] > 0 and run["loss_pct"] < 100
    for name, vde in (("fast", f"cloudlab:{fast}"), ("classic", "cloudlab:vm-vde")):
        ratio = document["ratios"][f"VDE penalty --vde-profile {name} (direct/vde)"]
        assert ratio["numerator"] == "cloudlab:vm-bridge" and ratio["denominator"] == vde
        expected = runs["cloudlab:vm-bridge"]["gbit_s"] / runs[vde]["gbit_s"]
        assert ratio["ratio"] == pytest.approx(expected, abs=2e-3)
        assert f"VDE penalty --vde-profile {name} (direct/vde): x" in done.stdout
    assert "load average (1 min):" in done.stdout
