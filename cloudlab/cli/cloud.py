"""The cloud itself: ``up``, ``down``, ``status``, ``env``, ``usage`` and ``serve`` (what ``up`` starts)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from cloudlab import servicectl
from cloudlab.cli.common import (
    CliError,
    hypervisor,
    listen_address,
    log_to_stderr,
    port,
    positive,
    region,
    state_admin,
    state_layout,
)
from cloudlab.cli.registry import arg, command
from cloudlab.config import DEFAULT_API_PORT, CloudConfig
from cloudlab.paths import StateLayout

# ``cloudlab up`` options and the cloud.json fields they set (saved, and reused by the next ``up``).
UP_OPTIONS = {
    "hypervisor": "hypervisor",
    "nodes": "nodes",
    "clusters": "clusters",
    "network_model": "network_model",
    "network": "network",
    "scheduler": "scheduler",
    "port": "api_port",
    "accel": "accel",
    "node_vcpus": "node_vcpus",
    "node_memory": "node_memory_mb",
    "cc_listen": "cc_host",
    "subnet": "subnet",
    "underlay": "underlay",
    "nat_node": "nat_nodes",
    "nat_cluster": "nat_clusters",
    "cable": "cable",
    "vde_profile": "vde_profile",
    "region": "region",
    "launch": "launch",
    "powersave_idle_s": "powersave_idle_s",
    "powersave_wake_s": "powersave_wake_s",
    "zone_policy": "zone_policy",
}


@command(
    "up",
    help="start the cloud in the background (returns when its API answers)",
    args=[
        arg(
            "--hypervisor",
            type=hypervisor,
            metavar="URI",
            help="libvirt URI: qemu:///embed (default), qemu:///system or test:///default",
        ),
        arg("--nodes", type=positive, metavar="N", help="number of node controllers (default 1)"),
        arg("--clusters", type=positive, metavar="N", help="clusters (zones), N nodes each (default 1)"),
        arg("--network", choices=["none", "vde", "direct"], help="cluster network flavour (default none)"),
        arg(
            "--network-model",
            choices=["vpc", "classic"],
            help="vpc (default): VPC subnets, a router per VPC; classic: Eucalyptus' managed mode (a VLAN per group)",
        ),
        arg("--scheduler", metavar="POLICY", help="GREEDY (default), ROUNDROBIN, POWERSAVE or module:Class"),
        arg(
            "--powersave-idle-s",
            type=float,
            metavar="S",
            help="POWERSAVE: power a node down after S seconds idle (default 300)",
        ),
        arg("--powersave-wake-s", type=float, metavar="S", help="POWERSAVE: a woken node's boot time (default 2)"),
        arg(
            "--zone-policy",
            metavar="POLICY",
            help="zone for requests naming none: FIRST (default), ROUNDROBIN, MOSTFREE",
        ),
        arg("--region", type=region, metavar="NAME", help="the cloud's region name (default cloudlab-1)"),
        arg("--port", type=port, metavar="PORT", help=f"EC2 endpoint port (default {DEFAULT_API_PORT}; 0 = any)"),
        arg("--accel", choices=["auto", "kvm", "tcg"], help="accelerator (default auto: probe KVM, else TCG)"),
        arg("--launch", choices=["restore", "boot"], help="restore booted templates (default) or boot cold"),
        arg("--node-vcpus", type=positive, metavar="N", help="vCPUs each node offers"),
        arg("--node-memory", type=positive, metavar="MIB", help="memory (MiB) each node offers"),
        arg(
            "--cc-listen",
            metavar="ADDR",
            help="address the cluster controller listens on for node controllers on other hosts (default 127.0.0.1)",
        ),
        arg(
            "--clc-listen",
            type=listen_address,
            metavar="HOST[:PORT]",
            help="where the cloud controller takes cluster controllers of their own (cloudlab cc; default 127.0.0.1)",
        ),
        arg("--subnet", metavar="CIDR", help="instances' private range, a /24 per group (10.211.0.0/16)"),
        arg(
            "--underlay", metavar="CIDR", help="range between the host namespaces (default auto: a free 10.253.N.0/24)"
        ),
        arg("--nat-node", action="append", metavar="NODE", help="put NODE's host behind a NAT (repeatable; vde only)"),
        arg(
            "--nat-cluster",
            action="append",
            metavar="NAME",
            help="put cluster NAME's whole site behind a NAT: it dials the cable to the first cluster (repeatable;"
            " vde, --network-model vpc, --clusters 2+)",
        ),
        arg("--cable", choices=["tcp", "unix"], help="VDE cable transport between hosts (default tcp)"),
        arg(
            "--vde-profile",
            choices=["fast", "classic"],
            help="vde: fast (default; a vdeplug4 switch per segment and host, jumbo frames, MTU 9000) or classic"
            " (one vde_switch per host, a VLAN per segment, MTU 1500: the 2008-style settings)",
        ),
        arg("--timeout", type=float, default=90.0, help="seconds to wait for the API (default 90)"),
    ],
)
def up(args: argparse.Namespace) -> int:
    layout = state_layout(args)
    saved = layout.config.exists()
    config = CloudConfig.load(layout.config) if saved else CloudConfig()
    reused = []
    for option, attr in UP_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            setattr(config, attr, value)
        elif saved and getattr(config, attr) != getattr(CloudConfig(), attr):
            reused.append((option, getattr(config, attr)))
    if args.clc_listen is not None:
        config.clc_host, config.clc_port = args.clc_listen
    running = servicectl.endpoint(layout) is not None
    for option, value in [] if running else reused:  # said first, so that an error they cause is understood
        flag = option.replace("_", "-")
        shown = ",".join(value) if isinstance(value, list) else value
        print(f"{flag} {shown}, from the last `up`; --{flag} to change", flush=True)
    _check_scheduler(config.scheduler)  # before servicectl.up saves it: a bad one would fail every later start
    _check_zone_policy(config.zone_policy)
    if config.powersave_idle_s <= 0 or config.powersave_wake_s < 0:
        raise CliError("--powersave-idle-s must be more than 0 and --powersave-wake-s at least 0")
    if not running and config.network != "none":
        _check_network(layout, config)
    try:
        info = servicectl.up(layout, config, timeout_s=args.timeout)
    except servicectl.ControlError as exc:
        raise CliError(str(exc)) from None
    word = "already running" if info.get("already_running") else "up"
    print(f"cloud {word}: EC2 endpoint {info['url']} (state {layout.root})")
    print(f'use it with: eval "$(cloudlab --state {layout.root} env)"')
    return 0


def _check_scheduler(spec: str) -> None:
    from cloudlab.cc.scheduler import load_policy

    try:
        load_policy(spec)
    except ValueError as exc:
        raise CliError(f"--scheduler: {exc}") from None


def _check_zone_policy(spec: str) -> None:
    from cloudlab.clc.placement import load_zone_policy

    try:
        load_zone_policy(spec)
    except ValueError as exc:
        raise CliError(f"--zone-policy: {exc}") from None


def _check_network(layout: StateLayout, config: CloudConfig) -> None:
    """Refuse a network that cannot be built (overlaps, a missing tool, a bad layout) before starting anything."""
    from cloudlab.cc.network import ClusterNetwork
    from cloudlab.net import NetError

    if os.geteuid() != 0:
        raise CliError(f"the {config.network} network needs root (namespaces, taps, nftables): run as root")
    from cloudlab.cc import fabric, public_wan

    try:
        ClusterNetwork.for_cloud(config, layout).check(config.public_pool)
        fabric.check_config(config)
        public_wan.check_config(config)
    except (NetError, ValueError) as exc:
        raise CliError(str(exc)) from None


@command(
    "down",
    help="terminate all instances and stop the cloud",
    args=[arg("--timeout", type=float, default=90.0, help="seconds to wait before killing (default 90)")],
)
def down(args: argparse.Namespace) -> int:
    layout = state_layout(args)
    result = servicectl.down(layout, timeout_s=args.timeout)
    if result["stopped"]:
        print(f"cloud stopped (state {layout.root})")
    else:
        print(f"cloud was not running (state {layout.root})")
    if result["swept_qemu"]:
        print(f"killed {len(result['swept_qemu'])} leftover QEMU process(es)")
    return 0


@command(
    "status",
    help="what runs: controllers, nodes, instances",
    args=[arg("--json", action="store_true", help="machine-readable output")],
)
def status(args: argparse.Namespace) -> int:
    layout = state_layout(args)
    info = servicectl.endpoint(layout)
    if info is None:
        if args.json:
            print(json.dumps({"running": False, "state": str(layout.root)}))
        else:
            print(f"cloud is not running (state {layout.root}); start it with: cloudlab up")
        return 3
    try:
        found = servicectl.service_status(layout, info)
    except OSError as exc:
        raise CliError(
            f"the cloud service (pid {info.get('pid')}) does not answer: {exc}; "
            "see its log or restart it (cloudlab down && cloudlab up)"
        ) from None
    found = {"running": True, "state": str(layout.root)} | found
    if args.json:
        print(json.dumps(found, indent=2, default=str))
        return 0
    print(f"cloud running: pid {found['pid']}, up {found['uptime_s']} s, endpoint {found['endpoint']}")
    print(f"state {layout.root}; region {found['region']}; hypervisor {found['hypervisor']}")
    for cluster in found["clusters"]:
        zone_state = cluster.get("state", "available")
        zone_state = zone_state if zone_state == "available" else zone_state.upper()
        print(
            f"cluster {cluster['name']} (zone {cluster['zone']} {zone_state}"
            f", network {cluster['network']}, scheduler {cluster['scheduler']}): {len(cluster['nodes'])} node(s)"
            + (f"; its own CC process at {cluster['cc_url']} (cloudlab cc)" if cluster.get("remote") else "")
        )
        for node in cluster["nodes"]:
            health = {"up": "alive", "dead": f"NOT ANSWERING ({node.get('last_error')})"}.get(
                node.get("state") or ("up" if node["alive"] else "dead"), node.get("state")
            )  # powered-off (POWERSAVE: registered, not polled) or waking
            proc = node.get("process")
            extra = f", pid {proc['pid']}, restarts {proc['restarts']}" if proc else ""
            print(
                f"  {node['name']}: {health}, {node['vcpus_free']}/{node['vcpus_total']} vCPU and "
                f"{node['memory_mb_free']}/{node['memory_mb_total']} MiB free, {node['instances']} instance(s), "
                f"accel {node.get('accel') or '-'}{extra}"
            )
        storage = cluster.get("storage")
        if storage:
            proc = storage.get("process") or {}
            state = "registered" if storage["registered"] else "NOT REGISTERED"
            running = f", pid {proc['pid']}, restarts {proc['restarts']}" if proc else ""
            held = (
                f", {storage['volumes']} volume(s), {storage['snapshots']} snapshot(s), {storage['exports']} export(s)"
                if "volumes" in storage
                else ""
            )
            print(f"  storage controller {storage['name']}: {state} at {storage.get('url') or '-'}{running}{held}")
        network = cluster.get("network_detail")
        if network:
            health = "healthy" if network["healthy"] else "NOT HEALTHY"
            profile = f" --vde-profile {network['vde_profile']}" if network.get("vde_profile") else ""
            print(
                f"  network {network['flavour']}{profile} ({health}): subnet {network['subnet']}, "
                f"underlay {network['underlay']}, outside namespace {network['namespaces']['outside']} "
                f"(cloudlab exec), VLANs {network['vlans'] or '-'}"
            )
            routers = network.get("vpc_routers") or {}
            if routers:
                public = network.get("vpc_public_ips") or {}
                print(f"    VPC routers: {len(routers)}; public addresses routed to them: {', '.join(public) or '-'}")
            edge = network.get("edge")
            if edge:
                behind = f"behind the NAT {edge['nat_namespace']}" if edge["behind_nat"] else "directly"
                print(f"    on the WAN between clusters ({edge['wan']}) at {edge['address']}, {behind}")
            for proc in network["processes"]:
                state = "running" if proc.get("alive") else "DEAD"
                if "connected" in proc:  # a cable's listening end: is its peer on the line?
                    state += ", peer connected" if proc["connected"] else ", NO PEER"
                print(f"    {proc['role']}: {state}, pid {proc.get('pid')}, restarts {proc.get('restarts', 0)}")
            for event in network["history"][-3:]:
                print(f"    {event}")
        for event in cluster.get("power_history", [])[-3:]:
            print(f"  power: {event}")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(found["instances"].items())) or "none"
    print(f"instances: {counts}")
    for vm in found.get("unknown_vms", []):
        print(
            f"  unknown VM {vm['instance_id']} on {vm['node']} ({vm['state']}): not in the cloud's records, left alone"
        )
    return 0


@command(
    "usage",
    help="accounting report from the ledger: instance, vCPU and GB hours, bytes",
    args=[
        arg("--user", help="only this user's usage"),
        arg("--since", metavar="T", help="window start: ISO date/time (UTC) or a duration ago (2h, 7d)"),
        arg("--until", metavar="T", help="window end (default now), as --since"),
        arg(
            "--by",
            choices=["user", "type", "day", "instance", "node"],
            default="user",
            help="grouping (default user); node: each node's powered-on hours (POWERSAVE)",
        ),
        arg("--csv", action="store_true", help="CSV on stdout (no total row)"),
    ],
)
def usage(args: argparse.Namespace) -> int:
    """The accounting report from the ledger, through the admin-only DescribeUsage action."""
    import botocore.exceptions

    from cloudlab.usage_frames import fetch_usage

    layout = state_layout(args)
    info, creds = servicectl.connection(layout, "admin")
    kwargs = {
        "endpoint_url": info["url"],
        "region_name": info["region"],
        "aws_access_key_id": creds["access_key"],
        "aws_secret_access_key": creds["secret_key"],
    }
    if args.by == "node":
        return _node_usage(kwargs, args)
    try:
        frame = fetch_usage(kwargs, user=args.user, since=args.since, until=args.until, by=args.by)
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        raise CliError(f"{error.get('Code')}: {error.get('Message')}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise CliError(f"the cloud's API at {info['url']} failed: {exc}") from None
    if args.csv:
        frame.to_csv(sys.stdout, index=False)
        return 0
    since, until = frame.attrs.get("since"), frame.attrs.get("until")
    window = f"{since:%Y-%m-%d %H:%M:%S}Z" if since is not None else "the beginning"
    window += f" to {until:%Y-%m-%d %H:%M:%S}Z" if until is not None else ""
    if frame.empty:
        print(f"no usage from {window}")
        return 0
    total = {args.by: "TOTAL"} | frame.attrs["total"]
    shown = frame.copy()
    shown.loc[len(shown)] = {k: total.get(k, "") for k in shown.columns}
    for column in ("instance_hours", "vcpu_hours", "gb_hours", "storage_gb_hours", "ebs_gb_hours"):
        shown[column] = shown[column].map(lambda v: f"{float(v):.3f}")
    print(f"usage by {args.by}, from {window} (billed: time in running)")
    print(shown.to_string(index=False))
    return 0


def _node_usage(kwargs: dict[str, str], args: argparse.Namespace) -> int:
    """``cloudlab usage --by node``: each node's powered-on and powered-off hours."""
    import botocore.exceptions

    from cloudlab.usage_frames import fetch_node_usage

    try:
        frame = fetch_node_usage(kwargs, since=args.since, until=args.until)
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        raise CliError(f"{error.get('Code')}: {error.get('Message')}") from None
    if args.csv:
        frame.to_csv(sys.stdout, index=False)
        return 0
    if frame.empty:
        print("no node has reported yet")
        return 0
    shown = frame.copy()
    for column in ("powered_on_hours", "powered_off_hours"):
        shown[column] = shown[column].map(lambda v: f"{float(v):.4f}")
    on, off = frame["powered_on_hours"].sum(), frame["powered_off_hours"].sum()
    print(f"node-hours: {on:.4f} h powered on, {off:.4f} h powered off (POWERSAVE's saving)")
    print(shown.to_string(index=False))
    return 0


@command(
    "env",
    help="print export lines for boto3 and the AWS CLI",
    args=[arg("--user", default="admin", help="whose credentials (default admin)")],
)
def env(args: argparse.Namespace) -> int:
    """Every user the cloud knows (``cloudlab user add``) gets its lines, from the cloud's own records: the
    key in ``credentials/NAME.json`` while it is active (the admin's), else the user's oldest active key."""
    layout = state_layout(args)
    info = servicectl.endpoint(layout)
    if info is None:
        raise CliError(f"cloud is not running (state {layout.root}); start it with: cloudlab up (or make lab)")
    with state_admin(layout, need_ca=False) as admin:
        user = admin.users.require(args.user)
        key = admin.active_key(user.name, create=False)
    if key is None:
        raise CliError(
            f"user {user.name} has no active access key: make one with 'cloudlab user keys create {user.name}'"
        )
    if not user.enabled:
        print(f"note: user {user.name} is disabled; enable it with: cloudlab user enable {user.name}", file=sys.stderr)
    print(f"export AWS_ENDPOINT_URL_EC2={info['url']}")
    if info.get("s3_url"):
        print(f"export AWS_ENDPOINT_URL_S3={info['s3_url']}")
    print(f"export AWS_ACCESS_KEY_ID={key.access_key}")
    print(f"export AWS_SECRET_ACCESS_KEY={key.secret_key}")
    print(f"export AWS_DEFAULT_REGION={info['region']}")
    print(f"export CLOUDLAB_STATE={layout.root}")
    return 0


@command(
    "serve",
    help="run the cloud in the foreground (what 'up' starts)",
    args=[arg("--verbose", action="store_true")],
)
def serve(args: argparse.Namespace) -> int:
    from cloudlab.service import run_service

    layout = state_layout(args)
    log_to_stderr(args.verbose)
    layout.pidfile.write_text(f"{os.getpid()}\n")
    return run_service(layout)
