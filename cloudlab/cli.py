"""``cloudlab``: run a cloud on this machine and look at it.

Every command has ``--help``; every failure is one line that says what to do, with exit status 1
(2 for a usage error, as argparse does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloudlab import control
from cloudlab.clc.quotas import RESOURCES, Quotas, quota_columns
from cloudlab.clc.regions import check_region
from cloudlab.config import DEFAULT_API_PORT, CloudConfig
from cloudlab.errors import CloudError
from cloudlab.paths import StateLayout, cache_dir, find_state_dir


class CliError(Exception):
    """An error for the user: printed as one line, exit status 1."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _region(text: str) -> str:
    try:
        return check_region(text)
    except CloudError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535; 0 picks a free one)")
    return value


def _controller_url(text: str) -> str:
    """A controller URL (``http://HOST:PORT``), checked before anything starts."""
    from cloudlab.rpc import parse_controller_url

    try:
        parse_controller_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _hypervisor(text: str) -> str:
    if not text.startswith(("qemu:///embed", "qemu:///system", "qemu:///session", "test://")):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a supported libvirt URI: use qemu:///embed (default), qemu:///system or test:///default"
        )
    return text


def _layout(args: argparse.Namespace) -> StateLayout:
    return StateLayout(find_state_dir(getattr(args, "state", None)))


# -- commands -----------------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    layout = _layout(args)
    config = CloudConfig.load(layout.config) if layout.config.exists() else CloudConfig()
    for option, attr in (
        ("hypervisor", "hypervisor"),
        ("nodes", "nodes"),
        ("network", "network"),
        ("scheduler", "scheduler"),
        ("port", "api_port"),
        ("accel", "accel"),
        ("node_vcpus", "node_vcpus"),
        ("node_memory", "node_memory_mb"),
        ("cc_listen", "cc_host"),
        ("subnet", "subnet"),
        ("underlay", "underlay"),
        ("nat_node", "nat_nodes"),
        ("cable", "cable"),
        ("region", "region"),
        ("launch", "launch"),
    ):
        value = getattr(args, option)
        if value is not None:
            setattr(config, attr, value)
    if config.network != "none" and control.endpoint(layout) is None:
        _check_network(layout, config)
    try:
        info = control.up(layout, config, timeout_s=args.timeout)
    except control.ControlError as exc:
        raise CliError(str(exc)) from None
    word = "already running" if info.get("already_running") else "up"
    print(f"cloud {word}: EC2 endpoint {info['url']} (state {layout.root})")
    print(f'use it with: eval "$(cloudlab --state {layout.root} env)"')
    return 0


def _check_network(layout: StateLayout, config: CloudConfig) -> None:
    """Refuse a network that cannot be built (overlaps, a missing tool, a bad layout) before starting anything."""
    from cloudlab.cc.network import ClusterNetwork
    from cloudlab.net import NetError

    if os.geteuid() != 0:
        raise CliError(f"the {config.network} network needs root (namespaces, taps, nftables): run as root")
    try:
        ClusterNetwork.for_cloud(config, layout).check(config.public_pool)
    except (NetError, ValueError) as exc:
        raise CliError(str(exc)) from None


def _outside_namespace(layout: StateLayout) -> str:
    from cloudlab.net import netns

    if control.endpoint(layout) is None:
        raise CliError(f"cloud is not running (state {layout.root}); start it with: cloudlab up --network vde")
    name = layout.outside_namespace
    if not netns.exists(name):
        raise CliError("this cloud has no network (started with --network none): restart it with --network vde|direct")
    return name


def cmd_exec(args: argparse.Namespace) -> int:
    from cloudlab.net import netns

    layout = _layout(args)
    config = CloudConfig.load(layout.config) if layout.config.exists() else CloudConfig()
    if args.cluster not in (None, config.cluster):
        raise CliError(f"no cluster {args.cluster!r}: this cloud has one cluster, {config.cluster}")
    command = [c for c in args.cmd if c != "--"] or [os.environ.get("SHELL", "/bin/sh")]
    argv = netns.command(_outside_namespace(layout), command)
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return 127  # not reached


def cmd_ssh(args: argparse.Namespace) -> int:
    from cloudlab.bench.workloads import WorkloadError, instance_remote
    from cloudlab.client import connect

    layout = _layout(args)
    _outside_namespace(layout)  # a running cloud with a network, or a one-line error
    try:
        remote = instance_remote(
            connect(str(layout.root)), args.instance_id, key=args.identity, public=args.public, user=args.user
        )
    except WorkloadError as exc:
        raise CliError(str(exc)) from None
    except Exception as exc:  # botocore's ClientError: a malformed or unknown id
        raise CliError(f"cannot find {args.instance_id}: {exc}") from None
    command = [c for c in args.cmd if c != "--"]
    # As ssh itself does, the words are joined with spaces for the remote shell; none: a login shell.
    argv = remote.argv(" ".join(command) if command else None)
    sys.stdout.flush()
    os.execvp(argv[0], argv)
    return 127  # not reached


def cmd_bench_network(args: argparse.Namespace) -> int:
    from cloudlab.bench.network import main as network_main

    argv = [
        "--output",
        args.output,
        "--repeats",
        str(args.repeats),
        "--duration",
        str(args.duration),
        "--streams",
        str(args.streams),
        "--transports",
        args.transports,
        "--chart",
    ]
    argv += ["--no-cloud"] * args.no_cloud + ["--no-vms"] * args.no_vms + ["--variants"] * args.variants
    return network_main(argv)


def cmd_bench_s3(args: argparse.Namespace) -> int:
    from cloudlab.bench.s3 import main as s3_main

    return s3_main(["--output", args.output, "--sizes", args.sizes, "--keys", args.keys, "--clients", args.clients,
                    "--scale", str(args.scale)])  # fmt: skip


def cmd_bench_notebook(args: argparse.Namespace) -> int:
    from cloudlab.bench.notebooks import main as notebook_main

    return notebook_main(args.rest)


def cmd_down(args: argparse.Namespace) -> int:
    layout = _layout(args)
    result = control.down(layout, timeout_s=args.timeout)
    if result["stopped"]:
        print(f"cloud stopped (state {layout.root})")
    else:
        print(f"cloud was not running (state {layout.root})")
    if result["swept_qemu"]:
        print(f"killed {len(result['swept_qemu'])} leftover QEMU process(es)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    layout = _layout(args)
    info = control.endpoint(layout)
    if info is None:
        if args.json:
            print(json.dumps({"running": False, "state": str(layout.root)}))
        else:
            print(f"cloud is not running (state {layout.root}); start it with: cloudlab up")
        return 3
    try:
        status = control.service_status(layout, info)
    except OSError as exc:
        raise CliError(
            f"the cloud service (pid {info.get('pid')}) does not answer: {exc}; "
            "see its log or restart it (cloudlab down && cloudlab up)"
        ) from None
    status = {"running": True, "state": str(layout.root)} | status
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    print(f"cloud running: pid {status['pid']}, up {status['uptime_s']} s, endpoint {status['endpoint']}")
    print(f"state {layout.root}; region {status['region']}; hypervisor {status['hypervisor']}")
    for cluster in status["clusters"]:
        print(
            f"cluster {cluster['name']} (zone {cluster['zone']}, network {cluster['network']}, "
            f"scheduler {cluster['scheduler']}): {len(cluster['nodes'])} node(s)"
        )
        for node in cluster["nodes"]:
            health = "alive" if node["alive"] else f"NOT ANSWERING ({node.get('last_error')})"
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
            print(
                f"  network {network['flavour']} ({health}): subnet {network['subnet']}, "
                f"underlay {network['underlay']}, outside namespace {network['namespaces']['outside']} "
                f"(cloudlab exec), VLANs {network['vlans'] or '-'}"
            )
            for proc in network["processes"]:
                state = "running" if proc.get("alive") else "DEAD"
                print(f"    {proc['role']}: {state}, pid {proc.get('pid')}, restarts {proc.get('restarts', 0)}")
            for event in network["history"][-3:]:
                print(f"    {event}")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(status["instances"].items())) or "none"
    print(f"instances: {counts}")
    for vm in status.get("unknown_vms", []):
        print(
            f"  unknown VM {vm['instance_id']} on {vm['node']} ({vm['state']}): not in the cloud's records, left alone"
        )
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    """The accounting report from the ledger, through the admin-only DescribeUsage action."""
    import botocore.exceptions

    from cloudlab.usage import fetch_usage

    layout = _layout(args)
    info, creds = control.connection(layout, "admin")
    kwargs = {
        "endpoint_url": info["url"],
        "region_name": info["region"],
        "aws_access_key_id": creds["access_key"],
        "aws_secret_access_key": creds["secret_key"],
    }
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


def cmd_env(args: argparse.Namespace) -> int:
    layout = _layout(args)
    info, creds = control.connection(layout, args.user)
    print(f"export AWS_ENDPOINT_URL_EC2={info['url']}")
    if info.get("s3_url"):
        print(f"export AWS_ENDPOINT_URL_S3={info['s3_url']}")
    print(f"export AWS_ACCESS_KEY_ID={creds['access_key']}")
    print(f"export AWS_SECRET_ACCESS_KEY={creds['secret_key']}")
    print(f"export AWS_DEFAULT_REGION={info['region']}")
    print(f"export CLOUDLAB_STATE={layout.root}")
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    from cloudlab.images.build import ImageBuildError, build_default_image
    from cloudlab.images.debian import IMAGE_NAME, build_debian_image

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"  {message}", file=sys.stderr)

    build = build_debian_image if args.name == "debian" else build_default_image
    try:
        built = build(force=args.force, progress=progress)
    except ImageBuildError as exc:
        raise CliError(str(exc)) from None
    verb = "built" if built.rebuilt else "up to date"
    if args.name == "debian":
        print(f"{IMAGE_NAME} {verb}: {built.kernel} + {built.ramdisk} + {built.disk}")
    else:
        print(f"default image {verb}: {built.kernel} + {built.ramdisk}")
    layout = _layout(args)
    if layout.database.exists():
        image, new = _register_default(layout, built, IMAGE_NAME if args.name == "debian" else None)
        print(f"registered as {image.image_id}" if new else f"registered already as {image.image_id}")
    return 0


def _register_default(layout: StateLayout, built: Any, name: str | None = None) -> Any:
    """Register a built image (the default one, or ``name`` with its root disk) in the cloud's records."""
    from cloudlab.clc.images import Images
    from cloudlab.clc.store import Store

    store = Store(layout.database)
    try:
        if name is None:
            return Images(store, layout.images).register_default(
                built.kernel, built.ramdisk, "admin", "cloudlab default image"
            )
        return Images(store, layout.images).register_default(
            built.kernel,
            built.ramdisk,
            "admin",
            "cloudlab Debian 12 on a copy-on-write root volume",
            name=name,
            disk=built.disk,
            digests=built.digests,
        )
    finally:
        store.close()


def cmd_image_list(args: argparse.Namespace) -> int:
    from cloudlab.clc.images import Images
    from cloudlab.clc.store import Store

    layout = _layout(args)
    if not layout.database.exists():
        raise CliError(f"no cloud in {layout.root}: start one with 'cloudlab up' (images are registered then)")
    store = Store(layout.database)
    try:
        images = Images(store, layout.images).list()
    finally:
        store.close()
    rows = [
        {
            "image_id": i.image_id,
            "name": i.name,
            "type": i.kind,
            "state": i.state,
            "owner": i.owner,
            "kernel": i.kernel_id or "",
            "ramdisk": i.ramdisk_id or "",
        }
        for i in images
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no images registered; build the default one with: cloudlab image build")
        return 0
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0]}
    print("  ".join(k.upper().ljust(w) for k, w in widths.items()))
    for row in rows:
        print("  ".join(str(row[k]).ljust(w) for k, w in widths.items()))
    return 0


def cmd_accel(args: argparse.Namespace) -> int:
    from cloudlab.images.cached import find_built_image
    from cloudlab.nc.accel import probe_accelerator

    built = find_built_image()
    if built is None:
        raise CliError("the KVM probe boots the default image, which is not built: run 'cloudlab image build'")
    accel = probe_accelerator(built.kernel, built.ramdisk, cache_file=cache_dir() / "accel.json")
    if not args.quiet:
        print(f"accelerator: {accel}")
    return 0


def cmd_node_credentials(args: argparse.Namespace) -> int:
    import shutil

    from cloudlab.security.ca import CertificateAuthority

    layout = _layout(args)
    if not (layout.pki / "ca.key").exists():
        raise CliError(f"no cloud CA in {layout.pki}: start the cloud once with 'cloudlab up'")
    try:
        identity = CertificateAuthority.load_or_create(layout.pki).identity(args.name, "nc")
    except ValueError as exc:
        raise CliError(str(exc)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(layout.pki / "ca.crt", out / "ca.crt")
    crt, key = out / f"nc-{args.name}.crt", out / f"nc-{args.name}.key"
    crt.write_bytes(identity.certificate_pem)
    shutil.copyfile(identity.key_path or layout.pki / f"nc-{args.name}.key", key)
    key.chmod(0o600)
    print(f"wrote {out}/ca.crt, {crt.name} and {key.name}; on the new host run:")
    print(f"  cloudlab nc --name {args.name} --cc CC_URL --pki {out} --listen 0.0.0.0")
    return 0


@contextlib.contextmanager
def _user_admin(layout: StateLayout) -> Iterator[Any]:
    """The cloud's users, straight from its state folder (works whether the cloud runs or not)."""
    from cloudlab.clc.store import Store
    from cloudlab.clc.users import Users
    from cloudlab.security.ca import CertificateAuthority

    if not layout.database.exists():
        raise CliError(f"no cloud in {layout.root}: start it once with 'cloudlab up' (users live in its state)")
    if not (layout.pki / "ca.key").exists():
        raise CliError(f"the cloud in {layout.root} has no CA ({layout.pki}/ca.key): start it once with 'cloudlab up'")
    store = Store(layout.database)
    try:
        yield Users(store, CertificateAuthority.load_or_create(layout.pki))
    finally:
        store.close()


def _print_table(rows: list[dict[str, Any]], empty: str) -> None:
    if not rows:
        print(empty)
        return
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in rows[0]}
    print("  ".join(k.upper().ljust(w) for k, w in widths.items()).rstrip())
    for row in rows:
        print("  ".join(str(row[k]).ljust(w) for k, w in widths.items()).rstrip())


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def cmd_user_add(args: argparse.Namespace) -> int:
    layout = _layout(args)
    with _user_admin(layout) as users:
        user = users.create(args.name, admin=args.admin)
        key = users.create_key(user.name)
    kind = "admin user" if user.is_admin else "user"
    print(f"{kind} {user.name} added: account {user.user_id}, access key {key.access_key}")
    print(
        f"its secret is in the bundle 'cloudlab creds {user.name}' writes (or make another: cloudlab user keys create)"
    )
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    layout = _layout(args)
    with _user_admin(layout) as users:
        counts = users.active_key_counts()
        quotas = Quotas(users.store)
        rows = [
            {
                "name": u.name,
                "account_id": u.user_id,
                "admin": u.is_admin,
                "enabled": u.enabled,
                "active_keys": counts.get(u.name, 0),
                **quota_columns(quotas.usage(u.name), quotas.of(u.name), as_text=not args.json),
            }
            for u in users.list()
        ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, "no users (the admin user is created by the first 'cloudlab up')")
    return 0


def cmd_user_quota(args: argparse.Namespace) -> int:
    """Set a user's quotas (``-1``: back to the default) and print them with what the user holds."""
    layout = _layout(args)
    wanted = {r: getattr(args, r) for r in RESOURCES if getattr(args, r) is not None}
    with _user_admin(layout) as users:
        users.require(args.name)
        quotas = Quotas(users.store)
        changes = {r: None if v < 0 else v for r, v in wanted.items()}
        limits = quotas.set(args.name, changes) if changes else quotas.of(args.name)
        usage = quotas.usage(args.name)
    print(f"user {args.name}: " + ", ".join(f"{r} {t}" for r, t in quota_columns(usage, limits).items()))
    return 0


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    layout = _layout(args)
    with _user_admin(layout) as users:
        before = users.require(args.name)
        users.set_enabled(args.name, enabled)
    word = "enabled" if enabled else "disabled"
    if before.enabled == enabled:
        print(f"user {args.name} was already {word}")
    elif enabled:
        print(f"user {args.name} enabled: its active keys work again")
    else:
        print(f"user {args.name} disabled: every request signed with its keys now fails with AuthFailure")
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    return _set_enabled(args, False)


def cmd_user_enable(args: argparse.Namespace) -> int:
    return _set_enabled(args, True)


def cmd_user_keys_create(args: argparse.Namespace) -> int:
    layout = _layout(args)
    with _user_admin(layout) as users:
        key = users.create_key(args.name)
    if args.json:
        print(json.dumps({"user": key.user_name, "access_key": key.access_key, "secret_key": key.secret_key}))
        return 0
    print(f"access key id:     {key.access_key}")
    print(f"secret access key: {key.secret_key}")
    print("keep the secret: this command shows it once")
    return 0


def cmd_user_keys_list(args: argparse.Namespace) -> int:
    layout = _layout(args)
    with _user_admin(layout) as users:
        records = users.key_records(args.name)
    rows = [{"access_key": k.access_key, "active": k.active, "created": _when(k.created)} for k in records]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, f"user {args.name} has no access keys: cloudlab user keys create {args.name}")
    return 0


def cmd_user_keys_delete(args: argparse.Namespace) -> int:
    from cloudlab.clc.users import ADMIN

    layout = _layout(args)
    with _user_admin(layout) as users:
        revoked = users.revoke_key(args.name, args.access_key)
        remaining = users.keys(args.name)
    if not revoked:
        print(f"access key {args.access_key} of user {args.name} was already revoked")
        return 0
    if args.name == ADMIN and remaining:
        _repoint_admin_credentials(layout, args.access_key, remaining[0])
    print(f"access key {args.access_key} of user {args.name} revoked: requests signed with it fail with AuthFailure")
    return 0


def _repoint_admin_credentials(layout: StateLayout, revoked: str, replacement: Any) -> None:
    """Keep ``credentials/admin.json`` (what ``cloudlab env`` and the notebooks use) on a working key."""
    path = layout.credentials / "admin.json"
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if current.get("access_key") == revoked:
        from cloudlab.service import write_credentials

        write_credentials(layout, replacement.user_name, replacement.access_key, replacement.secret_key)


def cmd_creds(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from cloudlab.credentials import usage_lines, write_bundle
    from cloudlab.security.ca import CertificateAuthority

    layout = _layout(args)
    with _user_admin(layout) as users:
        user = users.require(args.name)
        info = control.endpoint(layout)
        if info is None:
            raise CliError(
                f"the cloud is not running (state {layout.root}), so its endpoint URL is not known: "
                "start it with 'cloudlab up' and run this again"
            )
        keys = users.keys(user.name)
        key = keys[0] if keys else users.create_key(user.name)
        ca = CertificateAuthority.load_or_create(layout.pki)
        identity = ca.identity(user.name, "user")
        key_pem = identity.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        bundle = write_bundle(
            Path(args.out) if args.out else layout.credentials / user.name,
            user.name,
            endpoint_url=info["url"],
            s3_url=info.get("s3_url"),
            region=info["region"],
            access_key=key.access_key,
            secret_key=key.secret_key,
            certificate_pem=identity.certificate_pem,
            private_key_pem=key_pem,
            ca_pem=ca.ca_pem,
        )
    files = ", ".join(p.name for p in (bundle.certificate, bundle.private_key, bundle.ca_certificate))
    print(
        f"wrote the credentials of {user.name} (access key {key.access_key}) to {bundle.folder}: {files}, "
        "config, credentials, eucarc"
    )
    for line in usage_lines(bundle):
        print(f"  {line}")
    if not user.enabled:
        print(f"note: user {user.name} is disabled; enable it with: cloudlab user enable {user.name}", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from cloudlab.service import run_service

    layout = _layout(args)
    _log_to_stderr(args.verbose)
    layout.pidfile.write_text(f"{os.getpid()}\n")
    return run_service(layout)


def cmd_nc(args: argparse.Namespace) -> int:
    from cloudlab.nc.daemon import run_node

    layout = _layout(args)
    _log_to_stderr(args.verbose)
    uri = args.hypervisor or f"qemu:///embed?root={layout.libvirt_root(args.name)}"
    run_node(
        Path(args.pki) if args.pki else layout.pki,
        args.name,
        args.cc,
        uri,
        layout.node_dir(args.name),
        host=args.listen,
        port=args.port,
        vcpus=args.vcpus,
        memory_mb=args.memory,
        accel=args.accel,
        accel_cache=cache_dir() / "accel.json",
        advertise=args.advertise,
        launch=args.launch,
        template_nic=args.template_nic,
    )
    return 0


def cmd_sc(args: argparse.Namespace) -> int:
    from cloudlab.sc.daemon import run_storage

    layout = _layout(args)
    _log_to_stderr(args.verbose)
    run_storage(
        Path(args.pki) if args.pki else layout.pki,
        args.name,
        args.cc,
        Path(args.dir) if args.dir else layout.root / "sc" / args.name,
        host=args.listen,
        port=args.port,
        advertise=args.advertise,
    )
    return 0


def _log_to_stderr(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# -- parser ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="the cloud's state folder (default: $CLOUDLAB_STATE or the nearest .cloudlab/)",
    )
    parser = argparse.ArgumentParser(
        prog="cloudlab",
        parents=[state],
        description="A small, real, EC2-compatible private cloud on this machine: libvirt VMs, an EC2 Query API "
        "for boto3 and the AWS CLI, and a JupyterLab front end.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("up", parents=[state], help="start the cloud in the background (returns when its API answers)")
    p.add_argument(
        "--hypervisor",
        type=_hypervisor,
        metavar="URI",
        help="libvirt URI: qemu:///embed (default), qemu:///system or test:///default",
    )
    p.add_argument("--nodes", type=_positive, metavar="N", help="number of node controllers (default 1)")
    p.add_argument("--network", choices=["none", "vde", "direct"], help="cluster network flavour (default none)")
    p.add_argument("--scheduler", metavar="POLICY", help="GREEDY (default), ROUNDROBIN or module:Class")
    p.add_argument("--region", type=_region, metavar="NAME", help="the cloud's region name (default cloudlab-1)")
    p.add_argument(
        "--port", type=_port, metavar="PORT", help=f"EC2 endpoint port (default {DEFAULT_API_PORT}; 0 = any)"
    )
    p.add_argument("--accel", choices=["auto", "kvm", "tcg"], help="accelerator (default auto: probe KVM, else TCG)")
    p.add_argument("--launch", choices=["restore", "boot"], help="restore booted templates (default) or boot cold")
    p.add_argument("--node-vcpus", type=_positive, metavar="N", help="vCPUs each node offers")
    p.add_argument("--node-memory", type=_positive, metavar="MIB", help="memory (MiB) each node offers")
    p.add_argument(
        "--cc-listen",
        metavar="ADDR",
        help="address the cluster controller listens on for node controllers on other hosts (default 127.0.0.1)",
    )
    p.add_argument("--subnet", metavar="CIDR", help="instances' private range, a /24 per group (10.211.0.0/16)")
    p.add_argument(
        "--underlay", metavar="CIDR", help="range between the host namespaces (default auto: a free 10.253.N.0/24)"
    )
    p.add_argument(
        "--nat-node", action="append", metavar="NODE", help="put NODE's host behind a NAT (repeatable; vde only)"
    )
    p.add_argument("--cable", choices=["tcp", "unix"], help="VDE cable transport between hosts (default tcp)")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the API (default 90)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "exec",
        parents=[state],
        help="run a command in the cluster's outside namespace (instances' addresses are reachable there)",
    )
    p.add_argument("--cluster", default=None, help="cluster (default the only one)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...] (default a shell)")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("ssh", parents=[state], help="SSH to an instance from the cluster's outside namespace")
    p.add_argument("instance_id", metavar="INSTANCE_ID")
    p.add_argument("-i", dest="identity", metavar="KEY", help="private key (default the launch key pair's)")
    p.add_argument("--user", default="root", help="login (default root)")
    p.add_argument("--public", action="store_true", help="use the elastic address instead of the private one")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...] (default a login shell)")
    p.set_defaults(func=cmd_ssh)

    bench = sub.add_parser("bench", help="benchmarks (results as CSV, JSON and charts)")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="SUBCOMMAND", required=True)
    p = bench_sub.add_parser(
        "network",
        help="instance to instance on cloudlab's direct and vde networks against the same paths built by hand, "
        "and VDE cable transports",
    )
    p.add_argument("--output", default="results", help="folder for CSV, JSON and PNG (default results/)")
    p.add_argument("--repeats", type=int, default=3, help="runs per path (default 3)")
    p.add_argument("--duration", type=float, default=3, help="seconds per iperf3 run (default 3)")
    p.add_argument("--streams", type=int, default=1, help="parallel TCP streams (default 1)")
    p.add_argument("--transports", default="unix,tcp,ssh,udp", help="cable transports (unix,tcp,ssh,udp,vxvde)")
    p.add_argument("--no-cloud", action="store_true", help="only the hand-built paths")
    p.add_argument("--no-vms", action="store_true", help="only namespaces and cables (no VMs)")
    p.add_argument("--variants", action="store_true", help="also vde_plug2tap and ptp taps (ways to shrink VDE's cost)")
    p.set_defaults(func=cmd_bench_network)
    p = bench_sub.add_parser("s3", help="Walrus (S3) PUT/GET/LIST beside moto's S3 server and a plain copy")
    p.add_argument("--output", default="results", help="folder for CSV and JSON (default results/)")
    p.add_argument("--sizes", default="4KiB,1MiB,64MiB,1GiB", help="object sizes (default all four)")
    p.add_argument("--keys", default="10000,100000", help="listing sizes (default 10000,100000)")
    p.add_argument("--clients", default="1,8", help="concurrent clients (default 1,8)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the bytes moved per size (0.1 for a quick look)")
    p.set_defaults(func=cmd_bench_s3)
    p = bench_sub.add_parser(
        "notebook",
        help="run a notebook headless with papermill (-p key value ..., --sweep key=v1,v2 ...); see --help",
        add_help=False,
    )
    p.add_argument("rest", nargs=argparse.REMAINDER, help="NAME [-p KEY VALUE]... [--sweep K=V1,V2]... [--output DIR]")
    p.set_defaults(func=cmd_bench_notebook)

    p = sub.add_parser("down", parents=[state], help="terminate all instances and stop the cloud")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait before killing (default 90)")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", parents=[state], help="what runs: controllers, nodes, instances")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "usage", parents=[state], help="accounting report from the ledger: instance, vCPU and GB hours, bytes"
    )
    p.add_argument("--user", help="only this user's usage")
    p.add_argument("--since", metavar="T", help="window start: ISO date/time (UTC) or a duration ago (2h, 7d)")
    p.add_argument("--until", metavar="T", help="window end (default now), as --since")
    p.add_argument("--by", choices=["user", "type", "day", "instance"], default="user", help="grouping (default user)")
    p.add_argument("--csv", action="store_true", help="CSV on stdout (no total row)")
    p.set_defaults(func=cmd_usage)

    p = sub.add_parser("env", parents=[state], help="print export lines for boto3 and the AWS CLI")
    p.add_argument("--user", default="admin", help="whose credentials (default admin)")
    p.set_defaults(func=cmd_env)

    image = sub.add_parser("image", parents=[state], help="build and list machine images")
    image_sub = image.add_subparsers(dest="image_command", metavar="SUBCOMMAND", required=True)
    p = image_sub.add_parser(
        "build", parents=[state], help="build an image from Debian packages (cached); the default one is registered"
    )
    p.add_argument(
        "name",
        nargs="?",
        default="default",
        choices=["default", "debian"],
        help="default: busybox in RAM (cloudlab-default); debian: Debian 12 with cloud-init (cloudlab-debian)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if the cached image is current")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_image_build)
    p = image_sub.add_parser("list", parents=[state], help="list registered images")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_image_list)

    p = sub.add_parser(
        "accel", parents=[state], help="probe whether KVM works here (a short real boot, cached); else TCG"
    )
    p.add_argument("--quiet", action="store_true", help="print nothing")
    p.set_defaults(func=cmd_accel)

    p = sub.add_parser(
        "node-credentials", parents=[state], help="issue a node certificate and write what a node on another host needs"
    )
    p.add_argument("name", help="the new node's name")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write ca.crt and the node's cert/key to")
    p.set_defaults(func=cmd_node_credentials)

    user = sub.add_parser(
        "user",
        parents=[state],
        help="add, list, disable and enable users and manage their access keys (cloud up or down)",
        description="Users and their EC2 access keys, read and changed in the cloud's state folder: works whether "
        "the cloud runs or not (a running cloud sees every change at once).",
    )
    user_sub = user.add_subparsers(dest="user_command", metavar="SUBCOMMAND", required=True)
    p = user_sub.add_parser("add", parents=[state], help="add a user (certificate, account id, first access key)")
    p.add_argument("name", help="1-64 letters, digits, '.', '_' or '-'")
    p.add_argument("--admin", action="store_true", help="an administrator: sees and manages every user's resources")
    p.set_defaults(func=cmd_user_add)
    p = user_sub.add_parser("list", parents=[state], help="list users: account id, admin, enabled, active keys")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_user_list)
    p = user_sub.add_parser("quota", parents=[state], help="show or set a user's quotas (-1: the default)")
    p.add_argument("name", help="the user")
    for resource in RESOURCES:
        p.add_argument(f"--{resource}", type=int, metavar="N", help=f"at most N {RESOURCES[resource].noun} at once")
    p.set_defaults(func=cmd_user_quota)
    p = user_sub.add_parser("disable", parents=[state], help="disable a user: its keys fail with AuthFailure")
    p.add_argument("name", help="the user")
    p.set_defaults(func=cmd_user_disable)
    p = user_sub.add_parser("enable", parents=[state], help="enable a disabled user again")
    p.add_argument("name", help="the user")
    p.set_defaults(func=cmd_user_enable)
    keys = user_sub.add_parser("keys", parents=[state], help="a user's access keys: create, list, delete")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    p = keys_sub.add_parser("create", parents=[state], help="create an access key and print its secret (once)")
    p.add_argument("name", help="the user")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_user_keys_create)
    p = keys_sub.add_parser("list", parents=[state], help="list a user's access keys, revoked ones included")
    p.add_argument("name", help="the user")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_user_keys_list)
    p = keys_sub.add_parser("delete", parents=[state], help="revoke an access key (it then fails with AuthFailure)")
    p.add_argument("name", help="the user")
    p.add_argument("access_key", metavar="ACCESS_KEY_ID", help="the key to revoke (AKIA...)")
    p.set_defaults(func=cmd_user_keys_delete)

    p = sub.add_parser(
        "creds",
        parents=[state],
        help="write a user's credential bundle: certificate, key, AWS CLI/boto3 profile, eucarc",
        description="Write NAME.crt/NAME.key (the user's certificate from the cloud CA), cloud-ca.crt, an AWS "
        "config + credentials pair with the profile cloudlab-NAME, and a eucarc. Needs the cloud running (the "
        "files name its endpoint URL).",
    )
    p.add_argument("name", help="the user")
    p.add_argument("--out", metavar="DIR", help="folder to write to (default <state>/credentials/NAME/)")
    p.set_defaults(func=cmd_creds)

    p = sub.add_parser("serve", parents=[state], help="run the cloud in the foreground (what 'up' starts)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("nc", parents=[state], help="run a node controller that registers with a cluster controller")
    p.add_argument("--name", required=True, help="node name (its certificate is issued for it)")
    p.add_argument(
        "--cc", required=True, type=_controller_url, metavar="URL", help="the cluster controller, http://HOST:PORT"
    )
    p.add_argument("--hypervisor", type=_hypervisor, metavar="URI", help="libvirt URI (default embedded QEMU)")
    p.add_argument("--pki", metavar="DIR", help="folder with ca.crt and this node's certificate and key")
    p.add_argument("--listen", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=0, help="port to serve on (default any)")
    p.add_argument("--advertise", metavar="URL", help="URL the CC reaches this node at (behind a NAT: the forward)")
    p.add_argument("--vcpus", type=_positive, help="vCPUs to offer")
    p.add_argument("--memory", type=_positive, help="memory (MiB) to offer")
    p.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto")
    p.add_argument("--launch", choices=["restore", "boot"], default="restore", help="restore templates or boot cold")
    p.add_argument("--template-nic", action="store_true", help="build the start-up template with a NIC")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_nc)

    p = sub.add_parser("sc", parents=[state], help="run a storage controller that registers with a cluster controller")
    p.add_argument("--name", required=True, help="the cluster's name (its certificate is issued for it)")
    p.add_argument(
        "--cc", required=True, type=_controller_url, metavar="URL", help="the cluster controller, http://HOST:PORT"
    )
    p.add_argument("--pki", metavar="DIR", help="folder with ca.crt and this SC's certificate and key")
    p.add_argument("--dir", metavar="DIR", help="where volumes and snapshots are kept (default <state>/sc/NAME)")
    p.add_argument("--listen", default="127.0.0.1", help="address to serve messages and NBD on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=0, help="port for messages (default any)")
    p.add_argument("--advertise", metavar="URL", help="URL the CC reaches this SC at (behind a NAT: the forward)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_sc)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    at = next((i for i in range(len(argv) - 1) if argv[i : i + 2] == ["bench", "notebook"]), None)
    if at is not None and argv[:at] in ([], ["--state", *argv[1:2]]):
        # Its own parser (papermill-style -p KEY VALUE, --help); the notebook finds the cloud by CLOUDLAB_STATE.
        if at == 2:
            os.environ["CLOUDLAB_STATE"] = str(Path(argv[1]).resolve())
        args = argparse.Namespace(func=cmd_bench_notebook, rest=argv[at + 2 :])
    else:
        args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, CloudError, control.ControlError) as exc:
        message = exc.message if isinstance(exc, CloudError) else str(exc)
        print(f"cloudlab: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
