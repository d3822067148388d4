"""A killed cloud's next ``up`` builds its network on the underlay the leftover was built on.

Before: an automatic underlay was the first 10.253.N.0/24 free *at that moment*. A cloud started while
other clouds held 10.253.0-4 got 10.253.5; killed, and started again after they had gone, it got 10.253.0:
the leftover network no longer matched (its signature names the underlay), so it was torn down with the
guests in its host namespaces, and the reconciler saw them shut off ("Instance initiated shutdown").
That was ``test_kill_recovery``'s rare "SSH to every instance after the restart" timeout in mixed runs.
Here the other clouds' routes come and go through ``host_routes``; nothing is built.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
from pathlib import Path

import pytest

from cloudlab.cc import network_adoption, network_host
from cloudlab.cc.network import ClusterNetwork

PREFIX = "cltest1"


def make(run_dir: Path) -> ClusterNetwork:
    return ClusterNetwork(
        "cluster1", "direct", prefix=PREFIX, nodes=["node-01"], subnet="10.80.0.0/16", underlay="auto", run_dir=run_dir
    )


def routes(*cidrs: str) -> list[tuple[ipaddress.IPv4Network, str]]:
    return [(ipaddress.IPv4Network(c), f"other{i}") for i, c in enumerate(cidrs)]


def test_the_next_up_after_a_kill_takes_the_leftovers_underlay_while_it_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "net"
    run_dir.mkdir()
    busy = routes("10.253.0.0/24", "10.253.1.0/24")  # two other clouds run
    monkeypatch.setattr(network_host, "host_routes", lambda exclude=None: busy)
    first = make(run_dir)
    assert str(first.underlay) == "10.253.2.0/24"
    network_adoption.note_built(first)  # built, then the service is killed

    busy = []  # the other clouds have gone
    again = make(run_dir)
    assert str(again.underlay) == "10.253.2.0/24"
    assert network_adoption.signature(again) == network_adoption.signature(first)

    busy = routes("10.253.2.0/24")  # someone else's route there now: the leftover's is not taken
    assert str(make(run_dir).underlay) == "10.253.0.0/24"


def test_without_a_leftover_the_first_free_underlay_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network_host, "host_routes", lambda exclude=None: routes("10.253.0.0/24"))
    assert network_adoption.recorded_underlay(tmp_path) is None
    assert str(make(tmp_path).underlay) == "10.253.1.0/24"
    (tmp_path / network_adoption.BUILT_FILE).write_text("not json")
    assert str(make(tmp_path).underlay) == "10.253.1.0/24"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft (make setup)")
def test_two_clouds_starting_at_once_take_different_underlays(tmp_path: Path) -> None:
    """Both chose the first free /24 when they were made, before either had built its route; the second build
    chooses again (under the host's underlay lock) and sees the first one's route. Real namespaces, no VM."""
    prefixes = [f"clu{secrets.token_hex(2)}{i}" for i in range(2)]
    networks = [
        ClusterNetwork(
            "cluster1",
            "direct",
            prefix=p,
            nodes=["node-01"],
            subnet="10.80.0.0/16",
            underlay="auto",
            run_dir=tmp_path / p,
        )  # fmt: skip
        for p in prefixes
    ]
    assert networks[0].underlay == networks[1].underlay  # neither route exists yet
    try:
        for network in networks:
            network.build()
        a, b = (n.underlay for n in networks)
        assert not a.overlaps(b), (a, b)
        routes = network_host.host_routes()
        assert (a, prefixes[0]) in routes and (b, prefixes[1]) in routes
        # the addresses follow the underlay chosen at build
        assert ipaddress.ip_address(networks[1].hosts["node-01"].address) in b
    finally:
        for network in networks:
            network.teardown()
    for prefix in prefixes:
        assert network_host.sweep(prefix) == []
