"""Security groups as nftables rules in the cluster's router namespace (Eucalyptus MANAGED mode).

Each security group is one VLAN and one subnet; the router namespace owns every group's gateway address, so all
traffic between groups and from outside crosses it and is filtered here, while traffic inside one group never
reaches the router. Elastic (public) addresses are 1:1 NAT in the same namespace.

The ruleset is generated as text (reviewable, testable with ``nft -c``) and applied in ONE ``nft -f -``
transaction that replaces cloudlab's tables, so packets never see a half-applied set.
"""

from __future__ import annotations

import ipaddress
import re

from cloudlab.contract import ElasticNat, FilterRule, GroupSegment, IngressRule
from cloudlab.net import NetError
from cloudlab.net import netns as _netns

PROTOCOLS = ("tcp", "udp", "icmp", "-1")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,30}$")


def _network(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except (ValueError, TypeError) as exc:
        raise NetError(f"bad {what} {text!r}: write it as NETWORK/PREFIX, e.g. 10.0.1.0/24") from exc


def _address(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.ip_address(text)
    except (ValueError, TypeError) as exc:
        raise NetError(f"bad {what} {text!r}: write a plain IPv4 address, e.g. 10.0.1.1") from exc
    if addr.version != 4:
        raise NetError(f"{what} {text} is IPv6: elastic addresses and gateways are IPv4")
    return addr


def _validate(groups: list[GroupSegment], rules: list[IngressRule], nats: list[ElasticNat]) -> None:
    """Reject bad input before any text exists: a half-valid ruleset must never be generated."""
    seen: dict[str, GroupSegment] = {}
    for g in groups:
        if g.group_id in seen:
            raise NetError(f"security group {g.group_id} listed twice: give each group one network")
        seen[g.group_id] = g
        if not 1 <= int(g.vlan) <= 4094:
            raise NetError(f"group {g.group_id}: VLAN {g.vlan} out of range, use 1-4094")
        net = _network(g.subnet, f"subnet of group {g.group_id}")
        gw = _address(g.gateway, f"gateway of group {g.group_id}")
        if gw not in net:
            raise NetError(f"group {g.group_id}: gateway {g.gateway} is outside its subnet {g.subnet}")
    for r in rules:
        where = f"rule of group {r.group_id} ({r.protocol} {r.from_port}-{r.to_port})"
        if r.protocol not in PROTOCOLS:
            raise NetError(f"{where}: protocol {r.protocol!r} unknown, use one of {', '.join(PROTOCOLS)}")
        if r.cidr is not None:
            _network(r.cidr, f"source CIDR in {where}")
        if r.protocol in ("tcp", "udp"):
            for port in (r.from_port, r.to_port):
                if port is not None and port != -1 and not 0 <= int(port) <= 65535:
                    raise NetError(f"{where}: port {port} out of range, use 0-65535")
            lo, hi = _port_range(r)
            if lo is not None and hi is not None and lo > hi:
                raise NetError(f"{where}: from_port {lo} is above to_port {hi}")
        if r.protocol == "icmp":
            for value in (r.from_port, r.to_port):
                if value is not None and not -1 <= int(value) <= 255:
                    raise NetError(f"{where}: icmp type/code {value} out of range, use -1 (any) or 0-255")
    for n in nats:
        _address(n.public_ip, "elastic public address")
        _address(n.private_ip, "elastic private address")


def _port_range(r: IngressRule | FilterRule) -> tuple[int | None, int | None]:
    lo = None if r.from_port in (None, -1) else int(r.from_port)
    hi = None if r.to_port in (None, -1) else int(r.to_port)
    if lo is None and hi is not None:
        lo = hi
    if hi is None and lo is not None:
        hi = lo
    return lo, hi


def _family(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return "ip" if net.version == 4 else "ip6"


def _chain_names(groups: list[GroupSegment]) -> dict[str, str]:
    """nft-safe, unique chain names per group id (ids like ``sg-1a2b`` contain characters nft dislikes)."""
    return {g.group_id: f"g{i}_{re.sub(r'[^A-Za-z0-9_]', '_', g.group_id)[:24]}" for i, g in enumerate(groups)}


def _rule_lines(rule: IngressRule, subnets: dict[str, str]) -> list[str]:
    sources: list[str]
    if rule.source_group_id is not None:
        if rule.source_group_id not in subnets:
            return [f"# skipped: source group {rule.source_group_id} has no network"]
        net = _network(subnets[rule.source_group_id], "source group subnet")
        sources = [f"{_family(net)} saddr {net} "]
    elif rule.cidr is not None:
        net = _network(rule.cidr, "source CIDR")
        sources = [""] if net.prefixlen == 0 and net.version == 4 else [f"{_family(net)} saddr {net} "]
    else:
        sources = [""]
    match = protocol_match(rule)
    return [f"{src}{match}accept" for src in sources]


def protocol_match(rule: IngressRule | FilterRule) -> str:
    """The nft match (with a trailing space, or empty for every protocol) of a rule's protocol and ports
    (for icmp: ``from_port`` is the type, ``to_port`` the code; -1 or None = any)."""
    if rule.protocol == "-1":
        return ""
    if rule.protocol in ("tcp", "udp"):
        lo, hi = _port_range(rule)
        if lo is None or hi is None:
            return f"meta l4proto {rule.protocol} "
        return f"{rule.protocol} dport {lo if lo == hi else f'{lo}-{hi}'} "
    icmp_type = None if rule.from_port in (None, -1) else int(rule.from_port)
    icmp_code = None if rule.to_port in (None, -1) else int(rule.to_port)
    if icmp_type is None:
        return "meta l4proto icmp "
    if icmp_code is None:
        return f"icmp type {icmp_type} "
    return f"icmp type {icmp_type} icmp code {icmp_code} "


def cluster_ruleset(
    table: str,
    groups: list[GroupSegment],
    rules: list[IngressRule],
    nats: list[ElasticNat],
    public_ifname: str | None = None,
) -> str:
    """The nftables text of a cluster's security groups and elastic NAT (tables ``inet TABLE``, ``ip TABLE_nat``).

    Destinations in a group's subnet go through that group's chain (accept what its rules allow, drop the
    rest); established/related traffic and traffic to anything else is accepted. ``output`` is filtered too,
    so connections started from the router namespace itself obey the groups.
    """
    if not _NAME.match(table):
        raise NetError(f"bad table name {table!r}: use letters, digits and _ (at most 31), starting with a letter")
    if public_ifname is not None and not re.match(r"^[A-Za-z0-9_.-]{1,15}$", public_ifname):
        raise NetError(f"bad interface name {public_ifname!r}")
    _validate(groups, rules, nats)
    chains = _chain_names(groups)
    subnets = {g.group_id: str(_network(g.subnet, "subnet")) for g in groups}

    dispatch = ["ct state established,related accept"]
    for g in groups:
        net = _network(g.subnet, "subnet")
        dispatch.append(f"{_family(net)} daddr {net} jump {chains[g.group_id]}")

    out = [f"table inet {table} {{"]
    out += ["  chain forward {", "    type filter hook forward priority filter; policy accept;"]
    out += [f"    {line}" for line in dispatch] + ["  }"]
    out += ["  chain output {", "    type filter hook output priority filter; policy accept;"]
    out += ['    oifname "lo" accept']
    out += [f"    {line}" for line in dispatch] + ["  }"]
    for g in groups:
        out.append(f"  chain {chains[g.group_id]} {{")
        out.append(f"    # group {g.group_id}: vlan {g.vlan}, subnet {subnets[g.group_id]}, gateway {g.gateway}")
        for rule in rules:
            if rule.group_id == g.group_id:
                out += [f"    {line}" for line in _rule_lines(rule, subnets)]
        out.append("    drop")
        out.append("  }")
    out.append("}")

    out.append(f"table ip {table}_nat {{")
    out += ["  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;"]
    out += [f"    ip daddr {n.public_ip} dnat to {n.private_ip}" for n in nats] + ["  }"]
    out += ["  chain output {", "    type nat hook output priority -100; policy accept;"]
    out += [f"    ip daddr {n.public_ip} dnat to {n.private_ip}" for n in nats] + ["  }"]
    out += ["  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;"]
    oif = f'oifname "{public_ifname}" ' if public_ifname else ""
    out += [f"    {oif}ip saddr {n.private_ip} snat to {n.public_ip}" for n in nats] + ["  }"]
    out.append("}")
    return "\n".join(out) + "\n"


_TABLE_LINE = re.compile(r"^table\s+(inet|ip|ip6|arp|bridge|netdev)\s+([A-Za-z0-9_]+)\s*\{", re.MULTILINE)


def _nft(ns: str, args: list[str], text: str | None = None) -> str:
    try:
        proc = _netns.run(ns, ["nft", *args], timeout=15, check=False, input=text)
    except NetError as exc:
        if "not found" in str(exc):
            raise NetError("nft not found: install it (apt-get install nftables) or run `make setup`") from exc
        raise
    if proc.returncode != 0:
        raise NetError(f"nft {' '.join(args)} in namespace {ns} failed: {proc.stderr.strip()}")
    return proc.stdout


def check(ns: str, ruleset: str) -> None:
    """Validate ``ruleset`` with ``nft -c`` inside ``ns`` without changing anything (NetError on a bad set)."""
    _nft(ns, ["-c", "-f", "-"], ruleset)


def apply(ns: str, ruleset: str) -> None:
    """Replace the tables that ``ruleset`` defines, in one atomic ``nft -f -`` transaction inside ``ns``.

    Each table is first declared (so the delete works on the first apply), deleted and defined again, all in
    the same transaction: either the whole new set is in force or, on error, the old one stays.
    """
    tables = _TABLE_LINE.findall(ruleset)
    if not tables:
        raise NetError("ruleset defines no table: generate it with cluster_ruleset()")
    prologue = "".join(f"table {fam} {name} {{}}\ndelete table {fam} {name}\n" for fam, name in tables)
    _nft(ns, ["-f", "-"], prologue + ruleset)


def remove(ns: str, table: str) -> None:
    """Delete cloudlab's tables ``inet TABLE`` and ``ip TABLE_nat`` from ``ns`` (idempotent)."""
    if not _NAME.match(table):
        raise NetError(f"bad table name {table!r}")
    pairs = (("inet", table), ("ip", f"{table}_nat"))
    text = "".join(f"table {fam} {name} {{}}\ndelete table {fam} {name}\n" for fam, name in pairs)
    _nft(ns, ["-f", "-"], text)


def listing(ns: str) -> str:
    """The whole ruleset of ``ns`` as ``nft list ruleset`` prints it (for status views and debugging)."""
    return _nft(ns, ["list", "ruleset"])
