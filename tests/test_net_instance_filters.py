"""cloudlab.net.instance_filters: per-instance security groups, checked by nft and enforced on a real bridge.

The bridge stands for a direct host's subnet segment: its ports are veths to namespaces standing for two
instances and the VPC's router, as libvirt's taps and the router's veth are in a cloud (the real-VM test is in
tests/test_vpc_security_groups.py).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator

import pytest

from cloudlab.contract import FilterRule, InstanceFilter
from cloudlab.net import NetError, firewall, instance_filters, links, netns
from tests.test_net_firewall import SERVER, connects, needs_nft, wait_connects

VLAN = 1001
A, B, GATEWAY = "10.81.1.10", "10.81.1.11", "10.81.1.1"
EVERYWHERE = FilterRule("-1", None, None, ("0.0.0.0/0",))


def allow(proto: str, lo: int | None, hi: int | None, *cidrs: str) -> FilterRule:
    return FilterRule(proto, lo, hi, tuple(cidrs))


def filters(a_in: list[FilterRule], b_in: list[FilterRule], a_out: list[FilterRule] | None = None):
    out = [EVERYWHERE] if a_out is None else a_out
    return [
        InstanceFilter("i-a", VLAN, A, tuple(a_in), tuple(out)),
        InstanceFilter("i-b", VLAN, B, tuple(b_in), (EVERYWHERE,)),
    ]


def test_ruleset_text() -> None:
    text = instance_filters.ruleset(
        filters(
            [allow("tcp", 22, 22, "0.0.0.0/0"), allow("tcp", 80, 90, "10.0.0.0/8", "10.1.0.0/16", "10.81.1.11/32")],
            [allow("icmp", 8, -1, A + "/32"), allow("udp", 53, 53)],
        )
    )
    assert text.startswith("table inet cloudlab_sg {")
    assert f'iifname "br{VLAN}" ct zone set {VLAN}' in text, "a segment's connections are tracked in its own zone"
    assert "ct state established,related accept" in text
    assert f'iifname "br{VLAN}" ip saddr {A} jump out_0' in text
    assert f'oifname "br{VLAN}" ip daddr {B} jump in_1' in text
    assert "tcp dport 22 accept" in text
    # overlapping peers are collapsed (an nft set must not hold overlapping intervals)
    assert "ip saddr { 10.0.0.0/8 } tcp dport 80-90 accept" not in text
    assert "ip saddr 10.0.0.0/8 tcp dport 80-90 accept" in text
    assert f"ip saddr {A}/32 icmp type 8 accept" in text
    assert "no peer" in text, "a rule naming an empty group allows nothing"
    assert "ip daddr 169.254.169.254 return" in text, "the metadata service is never filtered"
    assert text.count("    drop") == 4, "every chain ends in drop"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (InstanceFilter("i-x", 0, A), "VLAN"),
        (InstanceFilter("i-x", VLAN, "10.81.1"), "private address"),
        (InstanceFilter("i-x", VLAN, A, (allow("sctp", 1, 1, "0.0.0.0/0"),)), "protocol"),
        (InstanceFilter("i-x", VLAN, A, (allow("tcp", 1, 70000, "0.0.0.0/0"),)), "out of range"),
        (InstanceFilter("i-x", VLAN, A, (allow("tcp", 22, 22, "10.0.0.0/33"),)), "bad peer"),
    ],
)
def test_bad_input_is_rejected_before_generation(bad: InstanceFilter, message: str) -> None:
    with pytest.raises(NetError, match=message):
        instance_filters.ruleset([bad])


def test_an_address_twice_on_a_segment_is_rejected() -> None:
    with pytest.raises(NetError, match="twice"):
        instance_filters.ruleset([InstanceFilter("i-a", VLAN, A), InstanceFilter("i-b", VLAN, A)])
    instance_filters.ruleset([InstanceFilter("i-a", VLAN, A), InstanceFilter("i-b", VLAN + 1, A)])  # other segment


@pytest.fixture
def segment() -> Iterator[dict[str, str]]:
    """A host namespace with the segment's bridge; two instances and the router plugged into it."""
    prefix = f"ift{secrets.token_hex(3)}"
    host_links = set(os.listdir("/sys/class/net"))
    names = {role: prefix + role for role in ("h", "a", "b", "r")}
    try:
        for ns in names.values():
            netns.create(ns)
        h = names["h"]
        links.bridge(h, f"br{VLAN}", vlan_filtering=False)
        for role, address in (("a", A), ("b", B), ("r", GATEWAY)):
            links.veth(h, f"p{role}", names[role], "eth0")
            links.set_master(h, f"p{role}", f"br{VLAN}")
            links.add_address(names[role], "eth0", f"{address}/24")
        links.sysctl(h, "net.bridge.bridge-nf-call-iptables", 1)
        for role in ("a", "b"):
            netns.popen(names[role], [sys.executable, "-c", SERVER, "0.0.0.0", "22", "8080"])
        yield names
    finally:
        for ns in netns.names(prefix):
            netns.kill_all(ns)
            netns.remove(ns)
        assert netns.names(prefix) == []
        assert not {n for n in set(os.listdir("/sys/class/net")) - host_links if n.startswith(("pa", "pb", "pr"))}


@needs_nft
def test_ruleset_loads_in_nft_check_mode(segment: dict[str, str]) -> None:
    text = instance_filters.ruleset(filters([allow("tcp", 22, 22, "0.0.0.0/0")], [allow("icmp", -1, -1, A)]))
    firewall.check(segment["h"], text)
    firewall.check(segment["h"], instance_filters.ruleset(filters([], []), ports={"i-a": ("vb80", 80)}))
    assert "cloudlab_sg" not in firewall.listing(segment["h"]), "check mode changes nothing"
    firewall.check(segment["h"], instance_filters.ruleset([]))


@needs_nft
def test_filters_are_stateful_per_instance_ingress_and_egress(segment: dict[str, str]) -> None:
    h, a, b, r = segment["h"], segment["a"], segment["b"], segment["r"]
    assert wait_connects(b, A, 8080) and wait_connects(a, B, 8080), "open before any ruleset"

    def apply(a_in: list[FilterRule], b_in: list[FilterRule], a_out: list[FilterRule] | None = None) -> None:
        firewall.apply(h, instance_filters.ruleset(filters(a_in, b_in, a_out)))

    # a lets SSH in from anywhere and pings from b; b lets nothing in
    apply([allow("tcp", 22, 22, "0.0.0.0/0"), allow("icmp", 8, -1, B + "/32")], [])
    assert connects(b, A, 22) and connects(r, A, 22), "allowed: a neighbour and the router"
    assert not connects(b, A, 8080), "a port no rule allows is dropped, even on the same segment"
    assert links.ping(b, A, count=1) == 1
    assert links.ping(r, A, count=1, timeout=0.5) == 0, "icmp only from b"
    assert not connects(a, B, 22), "b allows nothing in"
    assert links.ping(a, GATEWAY, count=1) == 1, "a may go out anywhere"

    # authorising opens at once; the replies of an allowed connection come back (stateful, no rule for them)
    apply([allow("tcp", 22, 22, "0.0.0.0/0")], [allow("tcp", 8080, 8080, A + "/32")])
    assert connects(a, B, 8080)
    assert not connects(r, B, 8080), "only from a"

    # revoking a's egress blocks what it starts, even where the receiver would let it in
    apply([allow("tcp", 22, 22, "0.0.0.0/0")], [allow("tcp", 8080, 8080, A + "/32")], a_out=[])
    assert not connects(a, B, 8080)
    assert links.ping(a, GATEWAY, count=1, timeout=0.5) == 0
    assert connects(b, A, 22), "ingress to a still works: its replies are tracked, not egress-filtered"
    apply(
        [allow("tcp", 22, 22, "0.0.0.0/0")],
        [allow("tcp", 8080, 8080, A + "/32")],
        a_out=[allow("tcp", 8080, 8080, B + "/32")],
    )
    assert connects(a, B, 8080), "an egress rule for b's port alone"
    assert links.ping(a, GATEWAY, count=1, timeout=0.5) == 0, "and nothing else"
    assert firewall.listing(h).count("table inet cloudlab_sg ") == 1, "apply replaces, never duplicates"


def test_instances_with_bridges_of_their_own() -> None:
    """On vde each NIC has its own bridge ``vb<port>`` (the node's NC knows it): the filter and zone go there."""
    text = instance_filters.ruleset(filters([EVERYWHERE], []), ports={"i-a": ("vb80", 80), "i-b": ("vb81", 81)})
    assert 'iifname "vb80" ct zone set 80' in text and 'iifname "vb81" ct zone set 81' in text
    assert f'iifname "vb80" ip saddr {A} jump out_0' in text and f'oifname "vb81" ip daddr {B} jump in_1' in text
    assert f"br{VLAN}" not in text
    with pytest.raises(NetError, match="bad bridge"):
        instance_filters.ruleset(filters([], []), ports={"i-a": ("vb 80; drop", 80)})
