"""cloudlab.net.netns and cloudlab.net.links against the real kernel, inside throwaway namespaces only (root)."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterator

import pytest

from cloudlab.net import NetError, links, netns
from cloudlab.waiting import wait_until

# names of links these tests create: none may ever appear in the host's namespace
OURS = {"ph1", "ph2", "ph3", "br0", "br10", "br20", "ra", "rb", "pub0", "tap0", "peer0", "v10", "v20", "eth0.10"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture
def make_ns() -> Iterator[Callable[[str], str]]:
    """Factory of namespaces named ``clt<hex><suffix>``; all of them (and their processes) go at teardown."""
    prefix = f"clt{secrets.token_hex(3)}"
    host_links = sorted(os.listdir("/sys/class/net"))

    def make(suffix: str) -> str:
        name = prefix + suffix
        netns.create(name)
        return name

    try:
        yield make
    finally:
        for name in netns.names(prefix):
            netns.kill_all(name)
            netns.remove(name)
        assert netns.names(prefix) == []
        assert not (set(os.listdir("/sys/class/net")) - set(host_links)) & OURS, "a test link leaked into the host"


def test_namespace_lifecycle(make_ns: Callable[[str], str]) -> None:
    ns = make_ns("a")
    assert netns.exists(ns) and ns in netns.names(ns[:9])
    netns.create(ns)  # idempotent
    assert links.exists(ns, "lo")
    assert "127.0.0.1/8" in links.addresses(ns, "lo"), "lo must be up (it has its address only when up)"
    assert links.ping(ns, "127.0.0.1", count=1) == 1
    proc = netns.popen(ns, ["sleep", "30"])
    try:
        # nsenter enters the namespace a moment after it starts: wait for it (bounded)
        wait_until(lambda: proc.pid in netns.processes_in(ns), 5, what="sleep inside the namespace", interval_s=0.02)
        netns.kill_all(ns)
        assert proc.wait(5) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert netns.processes_in(ns) == []
    netns.remove(ns)
    netns.remove(ns)  # idempotent
    assert not netns.exists(ns)


def test_entered_switches_only_the_calling_thread(make_ns: Callable[[str], str]) -> None:
    ns = make_ns("a")
    host_inode = os.stat("/proc/thread-self/ns/net").st_ino
    seen: dict[str, int] = {}
    go = threading.Event()

    def other() -> None:
        go.wait(5)
        seen["other"] = os.stat("/proc/thread-self/ns/net").st_ino

    t = threading.Thread(target=other)
    t.start()  # started before entering: a thread started inside would inherit the namespace
    with netns.entered(ns):
        seen["inside"] = os.stat("/proc/thread-self/ns/net").st_ino
        go.set()
        t.join(5)
    assert seen["inside"] == os.stat(netns.path(ns)).st_ino != host_inode
    assert seen["other"] == host_inode
    assert os.stat("/proc/thread-self/ns/net").st_ino == host_inode


def test_command_and_run(make_ns: Callable[[str], str]) -> None:
    ns = make_ns("a")
    assert netns.command(None, ["true"]) == ["true"]
    assert netns.command(ns, ["true"])[-2:] == ["--", "true"]
    out = netns.run(ns, ["cat", "/proc/net/dev"]).stdout
    assert "lo:" in out and "eth0" not in out
    with pytest.raises(NetError, match="failed"):
        netns.run(ns, ["false"])
    with pytest.raises(NetError, match="does not exist"):
        netns.run(ns + "zz", ["true"])
    with pytest.raises(NetError, match="invalid namespace name"):
        netns.path("../etc")


def test_veth_addresses_routes_counters(make_ns: Callable[[str], str]) -> None:
    a, r, b = make_ns("a"), make_ns("r"), make_ns("b")
    links.veth(a, "eth0", r, "ra")
    links.veth(b, "eth0", r, "rb")
    links.add_address(a, "eth0", "10.61.1.5/24")
    links.add_address(a, "eth0", "10.61.1.5/24")  # idempotent
    links.add_address(r, "ra", "10.61.1.1/24")
    links.add_address(r, "rb", "10.61.2.1/24")
    links.add_address(b, "eth0", "10.61.2.5/24")
    links.add_route(a, "10.61.0.0/16", gateway="10.61.1.1")
    links.add_route(b, "default", gateway="10.61.2.1")
    links.sysctl(r, "net.ipv4.ip_forward", 1)
    assert netns.run(r, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    assert "10.61.1.5/24" in links.addresses(a, "eth0")

    route = links.route_get(a, "10.61.2.5")
    assert route == {"dev": "eth0", "gateway": "10.61.1.1", "prefsrc": "10.61.1.5"}
    assert links.route_get(r, "10.61.2.5")["dev"] == "rb"
    with pytest.raises(NetError, match="route"):
        links.route_get(a, "192.0.2.1")  # no default route in a: unreachable, never the host's route

    before = links.counters(r, "rb")
    assert links.ping(a, "10.61.2.5", count=2) == 2
    after = links.counters(r, "rb")
    assert after[0] > before[0] and after[1] > before[1]

    links.del_address(b, "eth0", "10.61.2.5/24")
    links.del_address(b, "eth0", "10.61.2.5/24")
    assert links.ping(a, "10.61.2.5", count=1, timeout=0.5) == 0
    assert links.index(a, "eth0") > 1
    links.delete(a, "eth0")
    links.delete(a, "eth0")
    assert not links.exists(a, "eth0") and not links.exists(r, "ra"), "deleting one veth end removes both"


def test_bridge_per_vlan_isolates_groups(make_ns: Callable[[str], str]) -> None:
    """Fallback for kernels without VLAN filtering: one bridge per VLAN, same subnet, no path across."""
    sw = make_ns("sw")
    hosts = {name: make_ns(name) for name in ("h1", "h2", "h3")}
    links.bridge(sw, "br10", vlan_filtering=False)
    links.bridge(sw, "br20", vlan_filtering=False)
    for i, (name, ns) in enumerate(hosts.items(), start=1):
        links.veth(sw, f"p{name}", ns, "eth0")
        links.set_master(sw, f"p{name}", "br20" if name == "h3" else "br10")
        links.add_address(ns, "eth0", f"10.62.0.{i}/24")
    assert links.ping(hosts["h1"], "10.62.0.2", count=2) == 2
    assert links.ping(hosts["h1"], "10.62.0.3", count=2, timeout=0.5) == 0


@pytest.mark.skipif(not links.supports_vlan_filtering(), reason="kernel built without CONFIG_BRIDGE_VLAN_FILTERING")
def test_vlan_filtering_bridge_isolates_vlans(make_ns: Callable[[str], str]) -> None:
    sw = make_ns("sw")
    hosts = {name: make_ns(name) for name in ("h1", "h2", "h3")}
    links.bridge(sw, "br0")
    for i, (name, ns) in enumerate(hosts.items(), start=1):
        links.veth(sw, f"p{name}", ns, "eth0")
        links.set_master(sw, f"p{name}", "br0")
        links.access_port(sw, f"p{name}", 20 if name == "h3" else 10)
        links.add_address(ns, "eth0", f"10.63.0.{i}/24")
    assert links.bridge_vlans(sw)["ph1"] == [10]
    assert links.bridge_vlans(sw)["ph3"] == [20]
    assert links.ping(hosts["h1"], "10.63.0.2", count=2) == 2
    assert links.ping(hosts["h1"], "10.63.0.3", count=2, timeout=0.5) == 0
    links.trunk_port(sw, "ph3", [10, 20])
    assert links.bridge_vlans(sw)["ph3"] == [10, 20]
    links.bridge_vlan_add(sw, "br0", 10)
    assert 10 in links.bridge_vlans(sw)["br0"]
    links.bridge_vlan_del(sw, "br0", 10)


def test_vlan_filtering_absent_is_a_clear_error(make_ns: Callable[[str], str]) -> None:
    ns = make_ns("a")
    if links.supports_vlan_filtering():
        links.bridge(ns, "br0")
        assert links.exists(ns, "br0")
    else:
        with pytest.raises(NetError, match="CONFIG_BRIDGE_VLAN_FILTERING.*vlan_filtering=False"):
            links.bridge(ns, "br0")
        assert not links.exists(ns, "br0"), "nothing half-made is left behind"


def test_vlan_subinterfaces(make_ns: Callable[[str], str]) -> None:
    a, b = make_ns("a"), make_ns("b")
    links.veth(a, "eth0", b, "eth0")
    if not links.supports_8021q():
        with pytest.raises(NetError, match="CONFIG_VLAN_8021Q"):
            links.vlan_subif(a, "eth0", 10)
        assert not links.exists(a, "eth0.10")
        return  # kernel built without CONFIG_VLAN_8021Q: the clear error is the behaviour to check
    assert links.vlan_subif(a, "eth0", 10) == "eth0.10"
    links.vlan_subif(b, "eth0", 10, name="v10")
    links.vlan_subif(b, "eth0", 20, name="v20")
    links.add_address(a, "eth0.10", "10.64.0.1/24")
    links.add_address(b, "v10", "10.64.0.2/24")
    links.add_address(b, "v20", "10.64.1.2/24")
    assert links.ping(a, "10.64.0.2", count=2) == 2
    assert links.route_get(a, "10.64.0.2")["dev"] == "eth0.10"


def test_dummy_tap_and_errors(make_ns: Callable[[str], str]) -> None:
    ns = make_ns("a")
    if links.supports_dummy():
        links.dummy(ns, "pub0")
    else:
        with pytest.raises(NetError, match="CONFIG_DUMMY"):
            links.dummy(ns, "pub0")
        links.tap(ns, "pub0")  # stands in as the address holder below
    links.tap(ns, "tap0")
    assert links.exists(ns, "pub0") and links.exists(ns, "tap0")
    with pytest.raises(NetError, match="no interface"):
        links.up(ns, "nothere")
    with pytest.raises(NetError, match="does not exist"):
        links.exists(ns + "zz", "lo")
    with pytest.raises(NetError, match="bad address"):
        links.add_address(ns, "pub0", "10.0.0.300/24")
    with pytest.raises(NetError, match="net"):
        links.sysctl(ns, "kernel.hostname", "x")
    with pytest.raises(NetError, match="names must be free"):
        links.veth(ns, "tap0", ns, "peer0")  # tap0 is taken
    assert not links.exists(ns, "peer0")


def test_check_free_subnet() -> None:
    links.check_free_subnet("10.0.3.0/24", ["10.0.1.0/24", "10.0.2.0/24"])
    with pytest.raises(NetError, match="overlaps 10.0.0.0/16"):
        links.check_free_subnet("10.0.3.0/24", ["10.0.0.0/16"])
    with pytest.raises(NetError, match="bad subnet"):
        links.check_free_subnet("10.0.3/33", [])
