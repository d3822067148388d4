"""cloudlab.net.firewall: generated nftables text, checked by nft and enforced on real traffic between namespaces."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
from collections.abc import Iterator

import pytest

from cloudlab.contract import ElasticNat, GroupSegment, IngressRule
from cloudlab.net import NetError, firewall, links, netns
from cloudlab.waiting import WaitTimeout, wait_until

# names of links these tests create: none may ever appear in the host's namespace
OURS = {"ga", "gb", "pub0"}

needs_nft = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft (apt-get install nftables)"
)

GROUPS = [GroupSegment("sg-a", 10, "10.80.1.0/24", "10.80.1.1"), GroupSegment("sg-b", 11, "10.80.2.0/24", "10.80.2.1")]
PUBLIC = "203.0.113.5"

SERVER = """
import socket, sys, time
socks = []
for port in sys.argv[2:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(port))); s.listen(8); s.settimeout(0.1); socks.append(s)
end = time.monotonic() + 60
while time.monotonic() < end:
    for s in socks:
        try:
            c, _ = s.accept()
        except OSError:
            continue
        c.sendall(b"ok"); c.close()
"""


def rule(group: str, proto: str, lo: int | None, hi: int | None, cidr: str | None = None, src: str | None = None):
    return IngressRule(group, proto, lo, hi, cidr, src)


def test_ruleset_text() -> None:
    rules = [
        rule("sg-a", "tcp", 22, 22, "0.0.0.0/0"),
        rule("sg-a", "tcp", 8000, 8100, src="sg-b"),
        rule("sg-a", "icmp", 8, -1, "10.0.0.0/8"),
        rule("sg-b", "-1", None, None, src="sg-a"),
        rule("sg-b", "udp", 53, 53, src="sg-unknown"),
    ]
    text = firewall.cluster_ruleset("cl", GROUPS, rules, [ElasticNat(PUBLIC, "10.80.1.5")], public_ifname="pub0")
    assert "table inet cl {" in text and "table ip cl_nat {" in text
    assert "hook forward" in text and "hook output" in text
    assert "ip daddr 10.80.1.0/24 jump g0_sg_a" in text
    assert "tcp dport 22 accept" in text
    assert "ip saddr 10.80.2.0/24 tcp dport 8000-8100 accept" in text
    assert "ip saddr 10.0.0.0/8 icmp type 8 accept" in text
    assert "ip saddr 10.80.1.0/24 accept" in text
    assert "skipped: source group sg-unknown" in text
    assert f"ip daddr {PUBLIC} dnat to 10.80.1.5" in text
    assert f'oifname "pub0" ip saddr 10.80.1.5 snat to {PUBLIC}' in text
    assert text.index("ct state established,related accept") < text.index("jump g0_sg_a")


@pytest.mark.parametrize(
    ("groups", "rules", "nats", "message"),
    [
        ([GroupSegment("sg-a", 10, "10.80.1.0/33", "10.80.1.1")], [], [], "bad subnet"),
        ([GroupSegment("sg-a", 5000, "10.80.1.0/24", "10.80.1.1")], [], [], "VLAN 5000"),
        ([GroupSegment("sg-a", 10, "10.80.1.0/24", "10.9.9.9")], [], [], "outside its subnet"),
        (GROUPS, [rule("sg-a", "tcp", 70000, 70000)], [], "port 70000 out of range"),
        (GROUPS, [rule("sg-a", "tcp", 90, 80)], [], "from_port 90 is above to_port 80"),
        (GROUPS, [rule("sg-a", "sctp", 1, 1)], [], "protocol 'sctp' unknown"),
        (GROUPS, [rule("sg-a", "tcp", 80, 80, "10.1.2.3/40")], [], "bad source CIDR"),
        (GROUPS, [], [ElasticNat("not-an-ip", "10.80.1.5")], "bad elastic public address"),
    ],
)
def test_bad_input_is_rejected_before_generation(groups, rules, nats, message) -> None:  # noqa: ANN001
    with pytest.raises(NetError, match=message):
        firewall.cluster_ruleset("cl", groups, rules, nats)


@pytest.fixture
def cluster() -> Iterator[dict[str, str]]:
    """Router namespace with two groups (one instance each) and an outside host on a public link."""
    prefix = f"clt{secrets.token_hex(3)}"
    host_links = sorted(os.listdir("/sys/class/net"))
    names = {role: prefix + role for role in ("r", "a", "b", "x")}
    try:
        for ns in names.values():
            netns.create(ns)
        r, a, b, x = names["r"], names["a"], names["b"], names["x"]
        links.veth(r, "ga", a, "eth0")
        links.veth(r, "gb", b, "eth0")
        links.veth(r, "pub0", x, "eth0")
        links.add_address(r, "ga", "10.80.1.1/24")
        links.add_address(r, "gb", "10.80.2.1/24")
        links.add_address(r, "pub0", "198.51.100.1/24")
        links.add_address(a, "eth0", "10.80.1.5/24")
        links.add_address(b, "eth0", "10.80.2.5/24")
        links.add_address(x, "eth0", "198.51.100.2/24")
        links.add_route(a, "default", gateway="10.80.1.1")
        links.add_route(b, "default", gateway="10.80.2.1")
        links.add_route(x, "203.0.113.0/24", gateway="198.51.100.1")
        links.add_route(r, "203.0.113.0/24", dev="pub0")  # the public range is routed out of the router
        links.sysctl(r, "net.ipv4.ip_forward", 1)
        netns.popen(a, [sys.executable, "-c", SERVER, "10.80.1.5", "8080", "9090"])
        yield names
    finally:
        for ns in netns.names(prefix):
            netns.kill_all(ns)
            netns.remove(ns)
        assert netns.names(prefix) == []
        assert not (set(os.listdir("/sys/class/net")) - set(host_links)) & OURS, "a test link leaked into the host"


def connects(ns: str, host: str, port: int, timeout: float = 0.7) -> bool:
    """One TCP connect from inside ``ns`` (the listener answers 'ok'); False on drop (timeout) or refusal."""
    with netns.entered(ns):
        sock = socket.socket()
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            return sock.recv(2) == b"ok"
        except OSError:
            return False


def wait_connects(ns: str, host: str, port: int) -> bool:
    """Whether a connection succeeds within 3 s (the listener process needs a moment to start)."""
    try:
        return wait_until(lambda: connects(ns, host, port, timeout=0.3), 3, what=f"{host}:{port} to accept")
    except WaitTimeout:
        return False


@needs_nft
def test_ruleset_loads_in_nft_check_mode(cluster: dict[str, str]) -> None:
    text = firewall.cluster_ruleset("cl", GROUPS, [rule("sg-a", "icmp", -1, -1)], [ElasticNat(PUBLIC, "10.80.1.5")])
    firewall.check(cluster["r"], text)
    assert "cl" not in firewall.listing(cluster["r"]), "check mode changes nothing"
    with pytest.raises(NetError, match="nft"):
        firewall.check(cluster["r"], text.replace("accept", "acept", 1))


@needs_nft
def test_groups_filter_traffic_and_nat(cluster: dict[str, str]) -> None:
    r, a, b, x = cluster["r"], cluster["a"], cluster["b"], cluster["x"]
    assert wait_connects(b, "10.80.1.5", 8080) and connects(b, "10.80.1.5", 9090), "open before any ruleset"
    assert links.route_get(b, "10.80.1.5") == {"dev": "eth0", "gateway": "10.80.2.1", "prefsrc": "10.80.2.5"}

    nat = [ElasticNat(PUBLIC, "10.80.1.5")]
    allow = [rule("sg-a", "tcp", 8080, 8080, src="sg-b"), rule("sg-a", "icmp", 8, -1, "10.80.2.0/24")]
    firewall.apply(r, firewall.cluster_ruleset("cl", GROUPS, allow, nat, public_ifname="pub0"))
    assert connects(b, "10.80.1.5", 8080)
    assert not connects(b, "10.80.1.5", 9090), "a port no rule allows is dropped"
    assert links.ping(b, "10.80.1.5", count=1) == 1
    assert links.ping(r, "10.80.1.5", count=1, timeout=0.5) == 0, "the router's own traffic is filtered too"
    assert not connects(x, PUBLIC, 8080), "sg-b may reach 8080, the outside may not"
    assert links.ping(a, "10.80.2.5", count=1, timeout=0.5) == 0, "sg-b has no rules: it allows nothing in"

    # the outside is allowed: DNAT of the public address, from outside and from the router itself
    public = [*allow, rule("sg-a", "tcp", 8080, 8080, "0.0.0.0/0")]
    firewall.apply(r, firewall.cluster_ruleset("cl", GROUPS, public, nat, public_ifname="pub0"))
    assert connects(x, PUBLIC, 8080)
    assert connects(r, PUBLIC, 8080)
    assert not connects(x, PUBLIC, 9090)

    # re-applying without the rules takes them away at once
    firewall.apply(r, firewall.cluster_ruleset("cl", GROUPS, [], nat, public_ifname="pub0"))
    assert not connects(b, "10.80.1.5", 8080)
    assert not connects(x, PUBLIC, 8080)
    assert firewall.listing(r).count("table inet cl ") == 1, "apply replaces, never duplicates"

    firewall.remove(r, "cl")
    firewall.remove(r, "cl")
    assert "table" not in firewall.listing(r)
    assert connects(b, "10.80.1.5", 9090)
