"""The fabric between clusters on both VDE profiles, built for real without VMs (cloudlab.cc.fabric, fabric_cables).

Two cluster networks in throwaway namespaces, the second behind a masquerading NAT, joined by the fabric exactly
as ``cloudlab up --clusters 2 --nat-cluster cluster2`` joins them; one VPC with a subnet segment in each cluster's
plan and its router on the first cluster. A tap plugged where an instance's NIC would be stands in for each
guest. What each profile builds between the clusters (one VLAN trunk, or a cable per segment), that the taps
reach each other across the NAT through the VPC's router (fast: in 8900-byte frames, so MTU 9000 holds end to end
over the TCP cable), that a cut cable is dialled again and reported, and that teardown leaves nothing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudlab import processes
from cloudlab.cc import fabric_cables, segments
from cloudlab.cc.fabric import Fabric
from cloudlab.cc.network import ClusterNetwork
from cloudlab.contract import NetworkPlan, SubnetSegment, VpcRouter
from cloudlab.nc.vde_nics import plug_tap_name
from cloudlab.net import NetError, links, netns, vde_plugs
from cloudlab.waiting import wait_until

HUB_SEGMENT = SubnetSegment("subnet-a", 1000, "10.90.1.0/24", "10.90.1.1")
FAR_SEGMENT = SubnetSegment("subnet-b", 1001, "10.90.2.0/24", "10.90.2.1")
ROUTER = VpcRouter("vpc-1", 0, (HUB_SEGMENT, FAR_SEGMENT))


def _skip_without_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and taps need root")
    if any(shutil.which(t) is None for t in ("vde_switch", "vde_plug", "nft", "busybox")):
        pytest.skip("needs vde_switch, vde_plug, nft and busybox")


def _ping(ns: str, address: str, size: int = 56) -> subprocess.CompletedProcess:
    argv = ["ip", "netns", "exec", ns, "busybox", "ping", "-c", "2", "-W", "2", "-s", str(size), address]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def _ours(run_dir: Path) -> list[int]:
    """Processes still running that name this test's run folders (switches, plugs, cables)."""
    mark = str(run_dir).encode()
    return [pid for pid, words in processes.command_lines() if any(mark in w for w in words)]


def _network(name: str, prefix: str, profile: str, run_dir: Path) -> ClusterNetwork:
    net = ClusterNetwork(
        name, "vde", prefix=prefix, nodes=["node-01"], subnet="10.211.0.0/16", underlay="auto",
        run_dir=run_dir, profile=profile,
    )  # fmt: skip
    net.check("198.51.100.0/24")
    return net


@contextlib.contextmanager
def _fabric(profile: str, tmp_path: Path) -> Iterator[tuple[ClusterNetwork, ClusterNetwork, Fabric]]:
    """cluster1 (the hub, holding the VPC's router) and cluster2 behind a NAT, joined; nothing left after."""
    _skip_without_tools()
    prefix = f"clt{secrets.token_hex(3)}"
    hub = _network("cluster1", prefix, profile, tmp_path / "run" / "c1")
    far = _network("cluster2", f"{prefix}-c2", profile, tmp_path / "run" / "c2")
    joined = Fabric(prefix, [hub, far], ["cluster2"])
    try:
        hub.build()
        far.build()
        # the hub's plan before the fabric (a segment carried already is joined when the fabric comes), the far
        # cluster's after it (a segment carried later is joined as it comes): the two orders a cloud sees
        hub.apply(NetworkPlan(cluster="cluster1", vpcs=(ROUTER,)))
        joined.build()
        far.apply(NetworkPlan(cluster="cluster2", vpcs=(VpcRouter("vpc-1", 0, ROUTER.subnets, home="cluster1"),)))
        yield hub, far, joined
    finally:
        far.teardown()
        hub.teardown()
        joined.teardown()
    assert netns.names(prefix + "-") == []
    assert _ours(tmp_path / "run") == []


def _guest(net: ClusterNetwork, segment: SubnetSegment, address: str, other: SubnetSegment) -> vde_plugs.TapPlug:
    """A tap where the NC would plug an instance's NIC on ``segment``, at ``address``, routed to ``other``."""
    attach = net.attachment("node-01", segment.vlan)
    assert attach.sock is not None and attach.netns is not None
    port = 80
    if attach.mgmt is None:  # fast: the segment's own switch, which numbers its ports itself
        plug = vde_plugs.TapPlug(attach.sock, plug_tap_name(port), attach.netns, mtu=attach.mtu)
        plug.start()
    else:
        plug = vde_plugs.TapPlug(attach.sock, plug_tap_name(port), attach.netns, port=port)
        plug.start()
        net.first_switch.set_port_vlan(port, segment.vlan)
    links.add_address(attach.netns, plug.tap, f"{address}/24")
    links.add_route(attach.netns, other.cidr, gateway=segment.gateway)
    return plug


@pytest.fixture(params=["fast", "classic"])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    with _fabric(request.param, tmp_path) as (hub, far, joined):
        here = _guest(hub, HUB_SEGMENT, "10.90.1.5", FAR_SEGMENT)
        there = _guest(far, FAR_SEGMENT, "10.90.2.5", HUB_SEGMENT)
        try:
            yield {"profile": request.param, "hub": hub, "far": far, "fabric": joined, "here": here, "there": there}
        finally:
            there.remove()
            here.remove()


def _roles(net: ClusterNetwork) -> dict[str, Any]:
    return dict(net.processes())


def _reaches(ns: str, address: str, size: int = 56) -> subprocess.CompletedProcess:
    result: list[subprocess.CompletedProcess] = []

    def replied() -> bool:
        result[:] = [_ping(ns, address, size)]
        return result[0].returncode == 0

    wait_until(replied, 20, what=f"{address} from {ns}", interval_s=0.3)
    return result[0]


def test_each_profile_joins_the_clusters_its_own_way_and_the_nat_side_dials(lab: dict[str, Any]) -> None:
    hub, far = lab["hub"], lab["far"]
    fast = lab["profile"] == "fast"
    hub_roles, far_roles = _roles(hub), _roles(far)
    assert hub.describe()["vde_profile"] == far.describe()["vde_profile"] == lab["profile"]
    if fast:  # a cable per VPC subnet segment, both segments on both clusters, none trunked
        for vid in (1000, 1001):
            listener = hub_roles[f"cluster cable cluster2 vlan {vid}"]
            dialer = far_roles[f"cluster cable cluster1 vlan {vid}"]
            assert isinstance(listener, vde_plugs.TcpCableListener) and isinstance(dialer, vde_plugs.TcpCableDialer)
            assert listener.port == dialer.port == fabric_cables.fabric_tcp_port(vid, 2)
            assert listener.netns == hub.outside and dialer.netns == far.outside
            assert listener.switch_sock == hub.segments.switch("node-01", vid).sock
            assert dialer.switch_sock == far.segments.switch("node-01", vid).sock
            wait_until(listener.connected, 5, what=f"the hub's end of segment {vid}'s cable", interval_s=0.1)
        assert "cluster cable cluster1" not in far_roles and hub.uplinks == far.uplinks == {}
        assert all(host.switch is None for net in (hub, far) for host in net.hosts.values())
    else:  # one cable per cluster, both subnets' VLANs tagged on it
        assert isinstance(far_roles["cluster cable cluster1"], vde_plugs.TcpCableDialer)
        assert not any(" vlan " in role for role in [*hub_roles, *far_roles] if role.startswith("cluster cable"))
        assert {1000, 1001} <= set(far.first_switch.management().vlans())
    assert hub.vlans == far.vlans == {1000, 1001}
    # the cables arrive from the NAT's public address (masqueraded), never from the cluster's own
    seen = netns.run(hub.outside, ["ss", "-Htn", "state", "established"]).stdout
    assert f"{far.edge['address']}:" in seen and far.edge["private_address"] not in seen, seen


def test_guests_in_the_two_clusters_reach_each_other_through_their_router_at_the_segments_mtu(
    lab: dict[str, Any],
) -> None:
    here, there = lab["here"], lab["there"]
    mtu = segments.MTU if lab["profile"] == "fast" else 1500
    assert links.mtu(there.netns, there.tap) == links.mtu(here.netns, here.tap) == mtu
    router = lab["hub"].vpc_routers.namespaces["vpc-1"]
    assert links.mtu(router, "g1000") == links.mtu(router, "g1001") == mtu
    across = _reaches(there.netns, "10.90.1.5")
    assert "ttl=63" in across.stdout  # routed once, by the VPC's router on the hub
    largest = mtu - 28  # ICMP payload that fills one frame at the MTU (20 bytes IP, 8 ICMP)
    full = _reaches(there.netns, "10.90.1.5", largest)
    assert f"{largest + 8} bytes from 10.90.1.5" in full.stdout, full.stdout
    back = _reaches(here.netns, "10.90.2.5", largest)
    assert f"{largest + 8} bytes from 10.90.2.5" in back.stdout


def test_a_cut_cable_between_the_clusters_is_dialled_again_and_reported(lab: dict[str, Any]) -> None:
    hub, far, there = lab["hub"], lab["far"], lab["there"]
    role = "cluster cable cluster1" + (" vlan 1001" if lab["profile"] == "fast" else "")
    _reaches(there.netns, "10.90.1.5")
    cable = _roles(far)[role]
    old_pid, restarts = cable.pid, cable.restarts
    os.kill(old_pid, 9)
    events = wait_until(lambda: far.supervise_once() or None, 10, what="the cable's restart", interval_s=0.2)
    assert any(f"{role} died; restarted" in e for e in events), events
    assert cable.alive() and cable.pid != old_pid and cable.restarts == restarts + 1
    assert any(f"{role} died; restarted" in e for e in far.describe()["history"])
    if lab["profile"] == "fast":  # the hub's end took the new connection; the other segment's cable never moved
        listener = _roles(hub)["cluster cable cluster2 vlan 1001"]
        wait_until(lambda: listener.connections >= 2 and listener.connected(), 5, what="the hub's end", interval_s=0.1)
        assert _roles(far)["cluster cable cluster1 vlan 1000"].restarts == 0
    again = _reaches(there.netns, "10.90.1.5", (segments.MTU if lab["profile"] == "fast" else 1500) - 28)
    assert "0% packet loss" in again.stdout or "2 packets received" in again.stdout
    assert far.describe()["healthy"] and hub.describe()["healthy"]


def test_a_killed_segment_switch_on_the_hub_makes_the_far_cluster_dial_again(tmp_path: Path) -> None:
    """fast: the hub's switch of a segment ends, and with it the plug of its cable's connection; the hub restarts
    the switch, the far cluster's dialer sees its connection close and its supervisor dials again."""
    with _fabric("fast", tmp_path) as (hub, far, _joined):
        here = _guest(hub, HUB_SEGMENT, "10.90.1.5", FAR_SEGMENT)
        there = _guest(far, FAR_SEGMENT, "10.90.2.5", HUB_SEGMENT)
        try:
            _reaches(there.netns, "10.90.1.5")
            switch = hub.segments.switch("node-01", FAR_SEGMENT.vlan)  # type: ignore[union-attr]
            dialer = _roles(far)[f"cluster cable cluster1 vlan {FAR_SEGMENT.vlan}"]
            old_switch, old_dialer = switch.pid, dialer.pid
            os.kill(old_switch, 9)

            def healed() -> bool:
                hub.supervise_once()
                far.supervise_once()
                return all(p.alive() for _, p in hub.processes() + far.processes()) and dialer.pid != old_dialer

            wait_until(healed, 20, what="both clusters whole again", interval_s=0.3)
            assert switch.pid != old_switch
            assert any(f"segment switch node-01 vlan {FAR_SEGMENT.vlan} died; restarted" in e for e in hub.history)
            assert any(f"cluster cable cluster1 vlan {FAR_SEGMENT.vlan} died; restarted" in e for e in far.history)
            # the far guest's segment reaches the router again (through the new connection), and the hub's guest
            _reaches(there.netns, "10.90.1.5", segments.MTU - 28)
        finally:
            there.remove()
            here.remove()


def test_a_segment_whose_plan_comes_before_the_hubs_is_dialled_by_the_supervisor(tmp_path: Path) -> None:
    """The far cluster carries a segment the hub does not listen for yet (its plan came first): the dial fails,
    is said in the history, and the supervisor dials it once the hub carries the segment."""
    with _fabric("fast", tmp_path) as (hub, far, _joined):
        late = SubnetSegment("subnet-c", 1002, "10.90.3.0/24", "10.90.3.1")
        subnets = (*ROUTER.subnets, late)
        far.apply(NetworkPlan(cluster="cluster2", vpcs=(VpcRouter("vpc-1", 0, subnets, home="cluster1"),)))
        dialer = _roles(far)["cluster cable cluster1 vlan 1002"]
        assert not dialer.alive() and not far.describe()["healthy"]
        assert any("cluster cable cluster1 vlan 1002 not dialled yet" in e for e in far.history), far.history
        hub.apply(NetworkPlan(cluster="cluster1", vpcs=(VpcRouter("vpc-1", 0, subnets),)))
        wait_until(lambda: far.supervise_once() and dialer.alive(), 15, what="the late dial", interval_s=0.2)
        listener = _roles(hub)["cluster cable cluster2 vlan 1002"]
        wait_until(listener.connected, 5, what="the hub's end", interval_s=0.1)
        assert far.describe()["healthy"]


def test_cable_ports_are_one_per_segment_and_cluster_and_refuse_what_does_not_fit() -> None:
    ports = {fabric_cables.fabric_tcp_port(vid, i) for vid in range(1000, 1064) for i in range(2, 16)}
    assert len(ports) == 64 * 14 and min(ports) == 10002 and max(ports) < 32768  # none in the ephemeral range
    assert not fabric_cables.joined(100) and fabric_cables.joined(1063) and not fabric_cables.joined(1064)
    with pytest.raises(NetError, match="at most 15 clusters"):
        fabric_cables.fabric_tcp_port(1000, 16)
    with pytest.raises(NetError, match="not a VPC subnet's"):
        fabric_cables.fabric_tcp_port(100, 2)


def test_a_fabric_refuses_clusters_of_two_profiles(tmp_path: Path) -> None:
    a = ClusterNetwork("cluster1", "vde", prefix="x1", nodes=["n"], subnet="10.211.0.0/16", underlay="10.253.9.0/24",
                       run_dir=tmp_path / "a", profile="fast")  # fmt: skip
    b = ClusterNetwork("cluster2", "vde", prefix="x2", nodes=["n"], subnet="10.211.0.0/16", underlay="10.253.8.0/24",
                       run_dir=tmp_path / "b", profile="classic")  # fmt: skip
    with pytest.raises(NetError, match="need one VDE profile, not classic and fast"):
        Fabric("x", [a, b], [])
