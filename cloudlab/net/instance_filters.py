"""VPC security groups as stateful per-instance filters: one nftables table where the instances' ports are.

In the vpc network model a security group belongs to instances, not to a segment: two instances of one
subnet share a layer-2 segment, and their groups must still filter what passes between them. So the filter
sits on each instance's port, and every packet of an instance crosses it, whether it goes to a neighbour on
the segment, to the VPC's router or beyond.

Where: on ``direct`` an instance's NIC is a tap on its subnet's bridge ``br<vlan>`` in the host namespace.
A ``bridge`` family table could match the taps, but stateful filtering (``ct state``) of bridged frames
needs ``nf_conntrack_bridge``, which kernels may lack (this CI's does). ``br_netfilter`` instead hands every
bridged IPv4 packet to the host namespace's ``inet`` hooks, with the bridge as ``iifname``/``oifname`` and
the ordinary conntrack behind it (as container hosts filter their bridges). An instance is then its
segment's bridge plus its private address (unique on the segment; VPC ranges may overlap elsewhere), and
each segment's packets are tracked in a conntrack zone of their own (the VLAN number), so two VPCs using the
same addresses never share a connection entry.

On ``vde`` an instance's NIC passes through the kernel too: a bridge of its own, ``vb<port>``, holds
libvirt's tap and the tap of the ``vde_plug`` that joins it to the switch (:mod:`cloudlab.nc.vde_nics`). Its
node's NC, the only one that knows the port, applies the same table in its host namespace with that bridge
and a zone per port; a packet between two instances crosses both bridges, each filtering its own instance.

What (EC2's semantics): a packet to an instance is accepted if it belongs to a tracked connection or one of
the instance's groups' ingress rules allows it; everything else to it is dropped. A packet from an instance
must pass its egress rules first (a group's default egress rule allows everything), then the receiver's
ingress rules if the receiver is an instance of the segment too. Traffic to the metadata service is never
filtered (EC2 does not filter it either). Group references were resolved to member addresses by the CLC.

The ruleset is text (reviewable, checked with ``nft -c``) applied in ONE transaction by
:func:`cloudlab.net.firewall.apply`, so a changed rule takes effect on running instances at once and no
packet sees a half-applied set. Not filtered: IPv6 (VPCs here have no IPv6 ranges) and non-IP frames (ARP).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from cloudlab.contract import FilterRule, InstanceFilter
from cloudlab.net import NetError
from cloudlab.net.firewall import PROTOCOLS, protocol_match

TABLE = "cloudlab_sg"
METADATA_ADDRESS = "169.254.169.254"


def bridge_of(vlan: int) -> str:
    """The bridge of segment ``vlan`` on a direct host (made by :meth:`ClusterNetwork.add_segment`)."""
    return f"br{vlan}"


def _address(text: str, where: str) -> str:
    try:
        addr = ipaddress.IPv4Address(text)
    except (ValueError, TypeError) as exc:
        raise NetError(f"{where}: bad private address {text!r}, write a plain IPv4 address") from exc
    return str(addr)


def _peers(cidrs: tuple[str, ...], where: str) -> list[str]:
    """``cidrs`` collapsed (an nft set must not hold overlapping ranges), validated."""
    nets = []
    for text in cidrs:
        try:
            nets.append(ipaddress.IPv4Network(text, strict=False))
        except (ValueError, TypeError) as exc:
            raise NetError(f"{where}: bad peer {text!r}, write NETWORK/PREFIX, e.g. 10.0.1.0/24") from exc
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


def _rule_line(rule: FilterRule, direction: str, verdict: str, where: str) -> str:
    if rule.protocol not in PROTOCOLS:
        raise NetError(f"{where}: protocol {rule.protocol!r} unknown, use one of {', '.join(PROTOCOLS)}")
    for value in (rule.from_port, rule.to_port):
        low = -1 if rule.protocol == "icmp" else 0
        high = 255 if rule.protocol == "icmp" else 65535
        if value is not None and value != -1 and not low <= int(value) <= high:
            raise NetError(f"{where}: port or icmp value {value} out of range ({low} to {high})")
    peers = _peers(rule.cidrs, where)
    if not peers:
        return f"# {rule.protocol} {rule.from_port}-{rule.to_port}: no peer (a group without members)"
    field = "saddr" if direction == "ingress" else "daddr"
    if peers == ["0.0.0.0/0"]:
        peer = ""
    elif len(peers) == 1:
        peer = f"ip {field} {peers[0]} "
    else:
        peer = f"ip {field} {{ {', '.join(peers)} }} "
    return f"{peer}{protocol_match(rule)}{verdict}"


def _chain(instance: InstanceFilter, index: int, direction: str) -> list[str]:
    where = f"{direction} of {instance.instance_id}"
    name = f"{'in' if direction == 'ingress' else 'out'}_{index}"
    lines = [f"  chain {name} {{", f"    # {where} ({instance.private_ip}, segment {instance.vlan})"]
    if direction == "egress":  # allowed egress goes on to the receiver's ingress check (in forward)
        lines.append(f"    ip daddr {METADATA_ADDRESS} return")
        rules, verdict = instance.egress, "return"
    else:
        rules, verdict = instance.ingress, "accept"
    lines += [f"    {_rule_line(rule, direction, verdict, where)}" for rule in rules]
    lines += ["    drop", "  }"]
    return lines


def ruleset(
    filters: list[InstanceFilter], table: str = TABLE, ports: Mapping[str, tuple[str, int]] | None = None
) -> str:
    """The nftables text of every instance filter of one host (table ``inet TABLE``; empty chains if none).

    ``ports``: each instance's bridge and conntrack zone where it has a bridge of its own (vde: ``vb<port>``,
    zone = the port); else its segment's bridge ``br<vlan>``, zone = the VLAN (direct)."""
    ports = ports or {}
    seen: set[tuple[str, str]] = set()
    where: list[tuple[str, int]] = []
    for f in filters:
        if not 1 <= int(f.vlan) <= 4094:
            raise NetError(f"instance {f.instance_id}: VLAN {f.vlan} out of range, use 1-4094")
        bridge, zone = ports.get(f.instance_id, (bridge_of(f.vlan), f.vlan))
        if not re.match(r"^[A-Za-z0-9_.-]{1,15}$", bridge) or not 1 <= int(zone) <= 65535:
            raise NetError(f"instance {f.instance_id}: bad bridge {bridge!r} or zone {zone}")
        key = (bridge, _address(f.private_ip, f"instance {f.instance_id}"))
        if key in seen:
            raise NetError(f"instance {f.instance_id}: {f.private_ip} on {bridge} is listed twice")
        seen.add(key)
        where.append((bridge, int(zone)))
    out = [f"table inet {table} {{"]
    out += ["  chain zones {", "    type filter hook prerouting priority raw; policy accept;"]
    out += [f'    iifname "{b}" ct zone set {z}' for b, z in sorted(set(where))] + ["  }"]
    out += ["  chain forward {", "    type filter hook forward priority filter; policy accept;"]
    out.append("    ct state established,related accept")
    for i, f in enumerate(filters):
        out.append(f'    iifname "{where[i][0]}" ip saddr {f.private_ip} jump out_{i}')
    for i, f in enumerate(filters):
        out.append(f'    oifname "{where[i][0]}" ip daddr {f.private_ip} jump in_{i}')
    out.append("  }")
    for i, f in enumerate(filters):
        out += _chain(f, i, "egress") + _chain(f, i, "ingress")
    out.append("}")
    return "\n".join(out) + "\n"
