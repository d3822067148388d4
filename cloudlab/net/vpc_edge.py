"""A VPC router's edge: its uplink to the cluster's public side, and the NAT an internet gateway stands for.

EC2's internet gateway is what lets a VPC's instances reach the internet and be reached at public
addresses. Here "the internet" is the cluster's public side, the outside namespace (where the classic
model's elastic addresses live and ``cloudlab exec`` runs); traffic never goes further than cloudlab's own
namespaces. Each VPC router has one veth into the outside namespace (its *uplink*, a /30 of
:data:`UPLINKS`, shared address space that no VPC may use: their ranges are RFC 1918's). Through it:

- while the VPC has an internet gateway, an instance with a public address (elastic, or auto-assigned in a
  subnet that maps public addresses on launch) is translated 1:1 (DNAT in, SNAT out); an instance with only a
  private address does not get out (dropped in the router's forward hook), as on EC2, where an internet gateway
  translates only public addresses and a private instance needs a NAT gateway (which cloudlab does not offer: a
  masquerade here once let every instance out and so hid a missing public address);
- without a gateway, nothing crosses the uplink in either direction.

The outside namespace routes each public address to its VPC router's uplink (:mod:`cloudlab.cc.vpc_routers`),
and has no route to any VPC's private range, so overlapping VPC ranges never meet there. What comes up an
uplink ends in the outside namespace itself or goes down another uplink (a public address of another VPC): it
is never forwarded onto the controllers' underlay (:func:`outside_ruleset`), whose root end has a default
route out of cloudlab's namespaces. The rulesets are text, applied atomically by
:func:`cloudlab.net.firewall.apply`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from cloudlab.contract import ElasticNat
from cloudlab.net import NetError

TABLE = "cloudlab_edge"
OUTSIDE_TABLE = "cloudlab_uplinks"
UPLINK = "up0"  # the router's end of its uplink (its other end, in the outside namespace: ``v<slot>``)
#: Uplinks' addresses: RFC 6598's shared address space (for carrier-grade NAT, which this is), a /30 per router slot.
UPLINKS = ipaddress.IPv4Network("100.64.0.0/20")


def uplink_addresses(slot: int) -> tuple[str, str]:
    """(outside end, router end) of router ``slot``'s uplink, both in a /30 of :data:`UPLINKS`."""
    base = UPLINKS.network_address + 4 * slot
    if slot < 0 or base + 3 > UPLINKS.broadcast_address:
        raise NetError(f"VPC router slot {slot} has no uplink in {UPLINKS}")
    return str(base + 1), str(base + 2)


def outside_link(slot: int) -> str:
    return f"v{slot}"


def _ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except (ValueError, TypeError) as exc:
        raise NetError(f"bad {what} {text!r}: write a plain IPv4 address") from exc


def ruleset(nats: Sequence[ElasticNat], internet: bool) -> str:
    """The router's edge as nftables text (table ``ip cloudlab_edge``): 1:1 NAT of ``nats`` while ``internet``
    (an attached gateway), and only their private addresses let out; else a closed uplink. Public addresses
    without a gateway are refused: they would be a NAT nobody asked for."""
    if nats and not internet:
        raise NetError("public addresses need the VPC's internet gateway: none is attached")
    pairs = [(_ip(n.public_ip, "public address"), _ip(n.private_ip, "private address")) for n in nats]
    publics = [p for p, _ in pairs]
    if len(set(publics)) != len(publics):
        raise NetError(f"a public address is translated twice: {sorted(publics)}")
    up = f'"{UPLINK}"'
    out = [f"table ip {TABLE} {{"]
    out += ["  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;"]
    out += [f"    iifname {up} ip daddr {public} dnat to {private}" for public, private in pairs] + ["  }"]
    out += ["  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;"]
    out += [f"    oifname {up} ip saddr {private} snat to {public}" for public, private in pairs] + ["  }"]
    out += ["  chain forward {", "    type filter hook forward priority filter; policy accept;"]
    if internet:
        out += [f"    iifname {up} ct state established,related accept", f"    iifname {up} ct status dnat accept"]
        # (the forward hook sees a packet before postrouting's SNAT: its source is still the private address)
        out += [f"    oifname {up} ip saddr {private} accept" for private in dict.fromkeys(p for _, p in pairs)]
    out += [f"    iifname {up} drop", f"    oifname {up} drop", "  }", "}"]
    return "\n".join(out) + "\n"


def outside_ruleset(public_pool: str | None = None, wan: str | None = None) -> str:
    """The outside namespace's guard (table ``inet cloudlab_uplinks``): traffic from a VPC router's uplink
    (``v<slot>``) reaches the outside namespace and other uplinks, nothing else. With ``public_pool`` (the
    zones of a direct cloud share a WAN, :mod:`cloudlab.cc.public_wan`), the pool's addresses are also
    forwarded between the uplinks and the WAN (``wan0``), as are answers to the other zones' public sides
    (``wan``, the WAN's range: ``cloudlab exec`` there reaching this zone's public addresses), and nothing else
    crosses it."""
    lines = []
    if public_pool is not None:
        pool = str(ipaddress.IPv4Network(public_pool, strict=False))
        lines += [f'    iifname "v*" oifname "wan0" ip daddr {pool} accept']
        lines += [f'    iifname "v*" oifname "wan0" ip daddr {wan} accept'] if wan else []
        lines += [f'    iifname "wan0" oifname "v*" ip daddr {pool} accept', '    iifname "wan0" drop']
    lines.append('    iifname "v*" oifname != "v*" drop')
    return (
        f"table inet {OUTSIDE_TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        + "".join(f"{line}\n" for line in lines)
        + "  }\n"
        "}\n"
    )
