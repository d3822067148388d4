"""The fast VDE profile (cloudlab.cc.segments) and the classic one, built for real without VMs.

A cluster network of two hosts (the second behind a NAT) is built in throwaway namespaces with real
vdeplug4 switches, ``vde_switch``es and cables; a tap plugged where an instance's NIC would be stands in for
the guest. What each profile builds, jumbo frames across the cable, supervision after a killed switch, the
node's re-plugging of an unmanaged NIC, and that teardown leaves nothing. Also the pieces that need no
network: the configuration field, the domain XML's ``<mtu>``, the template key, the benchmark's pairing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from cloudlab import processes
from cloudlab.cc import segments
from cloudlab.cc.network import ClusterNetwork
from cloudlab.config import CloudConfig, ConfigError
from cloudlab.contract import GroupSegment, NetworkPlan
from cloudlab.nc.domain_xml import DomainSpec, Nic, build_domain_xml
from cloudlab.nc.templates import TemplateKey
from cloudlab.nc.vde_nics import PlugPlace, VdeNics, plug_tap_name
from cloudlab.net import links, netns, vde_plugs
from cloudlab.waiting import wait_until

needs_network = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and taps need root"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("vde_switch", "vde_plug", "nft", "busybox")),
        reason="needs vde_switch, vde_plug, nft and busybox",
    ),
]
VID = 100
GROUP = GroupSegment("sg-1", VID, "10.211.0.0/24", "10.211.0.1")


def _ping(ns: str, address: str, size: int) -> subprocess.CompletedProcess:
    argv = ["ip", "netns", "exec", ns, "busybox", "ping", "-c", "2", "-W", "2", "-s", str(size), address]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def _ours(run_dir: Path) -> list[int]:
    """Processes still running that name this test's run folder (switches, plugs, cables)."""
    mark = str(run_dir).encode()
    return [pid for pid, words in processes.command_lines() if any(mark in w for w in words)]


@contextlib.contextmanager
def _built(profile: str, cable: str, tmp_path: Path) -> Iterator[ClusterNetwork]:
    """Two hosts of one cluster (node-02 behind a NAT) with one group's segment, torn down to nothing after."""
    for mark in needs_network:
        if mark.args[0]:
            pytest.skip(mark.kwargs["reason"])
    net = ClusterNetwork(
        "cluster1",
        "vde",
        prefix=f"clt{secrets.token_hex(3)}",
        nodes=["node-01", "node-02"],
        subnet="10.211.0.0/16",
        underlay="auto",
        run_dir=tmp_path / "run",
        nat_nodes=["node-02"],
        cable=cable,
        profile=profile,
    )
    net.check("198.51.100.0/24")
    net.build()
    try:
        net.apply(NetworkPlan(cluster="cluster1", groups=(GROUP,)))
        yield net
    finally:
        net.teardown()
    assert netns.names(net.prefix + "-") == []
    assert _ours(tmp_path / "run") == []


@pytest.fixture(params=[("fast", "tcp"), ("fast", "unix"), ("classic", "tcp")], ids=lambda p: "-".join(p))
def network(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClusterNetwork]:
    with _built(*request.param, tmp_path) as net:
        yield net


@pytest.fixture(params=["tcp", "unix"], ids=lambda cable: f"fast-{cable}")
def fast_network(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClusterNetwork]:
    """The fast profile only: what its segment switches do that the classic switch does not have."""
    with _built("fast", request.param, tmp_path) as net:
        yield net


def _instance_tap(net: ClusterNetwork, node: str, port: int, address: str) -> vde_plugs.TapPlug:
    """A tap plugged where ``node``'s NC would plug an instance's NIC, holding ``address``."""
    attach = net.attachment(node, VID)
    assert attach.sock is not None
    if attach.mgmt is None:
        plug = vde_plugs.TapPlug(attach.sock, plug_tap_name(port), attach.netns, mtu=attach.mtu)
        plug.start()
    else:
        plug = vde_plugs.TapPlug(attach.sock, plug_tap_name(port), attach.netns, port=port)
        plug.start()
        net.hosts[node].switch.set_port_vlan(port, VID)  # type: ignore[union-attr]
    links.add_address(attach.netns, plug.tap, f"{address}/24")
    return plug


def test_each_profile_builds_its_own_path_and_jumbo_frames_cross_the_fast_cable(network: ClusterNetwork) -> None:
    fast = network.profile == "fast"
    roles = {label: proc.describe()["kind"] for label, proc in network.processes()}
    attach = network.attachment("node-02", VID)
    if fast:
        assert {f"segment switch node-01 vlan {VID}", f"segment switch node-02 vlan {VID}"} <= set(roles)
        assert roles[f"segment switch node-01 vlan {VID}"] == "segment-switch"
        assert f"segment cable node-02 vlan {VID}" in roles
        assert all(host.switch is None for host in network.hosts.values())  # no vde_switch at all
        assert attach.mgmt is None and attach.mtu == segments.MTU and attach.sock.endswith(f"seg{VID}")
    else:  # exactly the classic path: a vde_switch per host, VLANs on it, one cable per host
        assert {"switch node-01", "switch node-02", "cable node-02"} <= set(roles)
        assert not any(label.startswith("segment") for label in roles)
        assert VID in network.hosts["node-02"].switch.management().vlans()  # type: ignore[union-attr]
        assert attach.mgmt is not None and attach.mtu is None
    assert links.mtu(network.outside, f"g{VID}") == (9000 if fast else 1500)
    assert network.describe()["vde_profile"] == network.profile

    plug = _instance_tap(network, "node-02", 80, "10.211.0.5")  # behind the NAT, across the cable
    assert links.mtu(attach.netns, plug.tap) == (9000 if fast else 1500)
    wait_until(lambda: _ping(attach.netns, "10.211.0.1", 56).returncode == 0, 15, what="the gateway", interval_s=0.3)
    if fast:  # 8900 bytes of ICMP in one frame: through node-02's switch, the cable, node-01's switch, the router
        jumbo = _ping(attach.netns, "10.211.0.1", 8900)
        assert jumbo.returncode == 0 and "8908 bytes from 10.211.0.1" in jumbo.stdout, jumbo.stdout
    plug.stop()


def test_a_killed_segment_switch_is_restarted_with_its_cable_and_gateway(fast_network: ClusterNetwork) -> None:
    network = fast_network  # the classic switch's supervision is tests/test_net_vde.py's and test_network_cloud.py's
    plug = _instance_tap(network, "node-02", 80, "10.211.0.5")
    ns = plug.netns
    assert ns is not None
    wait_until(lambda: _ping(ns, "10.211.0.1", 56).returncode == 0, 15, what="the gateway", interval_s=0.3)
    switch = network.segments.switch("node-01", VID)  # type: ignore[union-attr]
    old_pid = switch.pid
    assert old_pid is not None
    os.kill(old_pid, 9)
    events = wait_until(lambda: network.supervise_once() or None, 10, what="a restart", interval_s=0.2)
    assert any(f"segment switch node-01 vlan {VID} died; restarted" in e for e in events), events

    def healed() -> bool:  # the cable's far end notices its connection closed a moment later: another round
        network.supervise_once()
        return all(proc.alive() for _, proc in network.processes())

    wait_until(healed, 10, what="everything alive again", interval_s=0.2)
    assert switch.pid != old_pid and network.describe()["healthy"]
    # node-02's tap is on node-02's switch, which never died: only the cable and the router's side came back
    wait_until(lambda: _ping(ns, "10.211.0.1", 8900).returncode == 0, 15, what="jumbo after", interval_s=0.3)
    plug.stop()


def test_the_node_plugs_an_unmanaged_nic_in_again_when_its_plug_dies(fast_network: ClusterNetwork) -> None:
    network = fast_network  # the managed NIC's re-plugging is tests/test_network_cloud.py's
    attach = network.attachment("node-01", VID)
    assert attach.sock is not None
    place = PlugPlace(attach.sock, "", 81, VID, attach.netns, segments.MTU)
    assert PlugPlace.from_metadata(place.metadata()) == place and not place.managed
    nics = VdeNics("node-01")
    try:
        bridge = nics.prepare(place)
        assert links.mtu(attach.netns, bridge) == segments.MTU
        assert links.mtu(attach.netns, plug_tap_name(81)) == segments.MTU
        assert nics.check([place], {}) == []  # alive: nothing to do (no management socket is asked)
        nics._plugs[81].stop()  # the plug died (its switch restarted, say)
        assert nics.check([place], {}) == ["port 81 plugged in again"]
        assert nics._plugs[81].alive()
        assert "[" not in nics._plugs[81]._argv()[2]  # not pinned to a port: vdeplug4's switch numbers its own
    finally:
        nics.remove(place)
    assert not links.exists(attach.netns, bridge)


# -- no network needed -------------------------------------------------------------------------------------------


def test_vde_profile_defaults_to_fast_and_is_checked(tmp_path: Path) -> None:
    assert CloudConfig().vde_profile == "fast"
    path = tmp_path / "cloud.json"
    path.write_text(json.dumps({"network": "vde", "vde_profile": "quick"}))
    with pytest.raises(ConfigError, match="vde_profile.*fast, classic"):
        CloudConfig.load(path)
    path.write_text(json.dumps({"network": "vde", "vde_profile": "classic"}))
    assert CloudConfig.load(path).vde_profile_in_use == "classic"
    fabric = CloudConfig(network="vde", network_model="vpc", clusters=2)  # a cable per segment: fast there too
    assert fabric.vde_profile == "fast" and fabric.vde_profile_in_use == "fast"
    assert dataclasses.replace(fabric, vde_profile="classic").vde_profile_in_use == "classic"
    assert CloudConfig(network="vde", network_model="classic", clusters=2).vde_profile_in_use == "fast"
    assert CloudConfig(network="vde", network_model="vpc", clusters=1).vde_profile_in_use == "fast"


def test_up_help_names_the_profiles() -> None:
    done = subprocess.run(
        [str(Path(__file__).parents[1] / ".venv/bin/cloudlab"), "up", "--help"], capture_output=True, text=True
    )
    assert "--vde-profile {fast,classic}" in done.stdout, done.stdout


def _spec(mtu: int) -> DomainSpec:
    return DomainSpec(
        instance_id="i-0123456789abcdef0",
        vcpus=1,
        memory_mb=256,
        kernel=Path("/k"),
        ramdisk=Path("/r"),
        console_log=Path("/c"),
        accel="tcg",
        nic=Nic("52:54:00:00:00:01", "10.211.0.5/24", "10.211.0.1", "vb80", mtu=mtu),
    )


def test_the_nic_carries_the_segments_mtu_only_on_a_fast_segment() -> None:
    assert '<mtu size="9000" />' in build_domain_xml(_spec(9000))
    assert "<mtu" not in build_domain_xml(_spec(0))


def test_template_names_of_the_default_nic_are_unchanged_and_a_jumbo_nic_has_its_own() -> None:
    key = TemplateKey("k", "r", "console=ttyS0", 1, 256, True, "tcg", 8002000, 10000000)
    later = ("nic_mtu", "disk_sha256", "root_gib")  # fields added since: unset, they leave the name as it was
    before = {f.name: getattr(key, f.name) for f in dataclasses.fields(key) if f.name not in later}
    expected = "tpl-" + hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert key.name == expected  # what the name was before these existed: cached templates still found
    assert dataclasses.replace(key, nic_mtu=9000).name != key.name


def test_the_benchmark_runs_both_profiles_beside_their_twins_and_states_both_penalties() -> None:
    from cloudlab.bench import handmade, network

    suite = network.vm_suite()
    named = [(f.func.__name__, f.args, f.keywords) for f in suite]
    assert [n for n, _a, _k in named] == ["cloud_vms", "vms_bridge"] + ["cloud_vms", "vms_vde"] * 2
    assert named[2][2] == {"vde_profile": "classic"} and named[3][2] == {}
    assert named[4][2] == {"vde_profile": "fast"}
    assert named[5][2] == {"attach": "tap", "switch": "vdeplug-switch", "mtu": 9000}
    assert suite[5].func is handmade.vms_vde
    rows = [
        {"path": path, "gbit_s": value, "error": None}
        for path, values in (
            ("cloudlab:vm-bridge", [3.0, 3.3]),
            ("cloudlab:vm-vde", [0.5, 0.6]),
            (f"cloudlab:{network.FAST_KIND}", [1.0, 1.5]),
        )
        for value in values
    ]
    found = network.ratios(pd.DataFrame(rows))
    fast = found["VDE penalty --vde-profile fast (direct/vde)"]
    classic = found["VDE penalty --vde-profile classic (direct/vde)"]
    assert fast["ratio"] == round(3.15 / 1.25, 3) and fast["low"] == round(3.0 / 1.5, 3)
    assert classic["ratio"] == round(3.15 / 0.55, 3)
    assert found["vde fast/classic"]["ratio"] == round(1.25 / 0.55, 3)
