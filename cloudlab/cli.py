"""``cloudlab``: run a cloud on this machine and look at it.

Every command has ``--help``; every failure is one line that says what to do, with exit status 1
(2 for a usage error, as argparse does).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from cloudlab import control
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


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0-65535; 0 picks a free one)")
    return value


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
    ):
        value = getattr(args, option)
        if value is not None:
            setattr(config, attr, value)
    if config.network != "none":
        raise CliError(f"network flavour {config.network!r} is not available yet; use --network none")
    try:
        info = control.up(layout, config, timeout_s=args.timeout)
    except control.ControlError as exc:
        raise CliError(str(exc)) from None
    word = "already running" if info.get("already_running") else "up"
    print(f"cloud {word}: EC2 endpoint {info['url']} (state {layout.root})")
    print(f'use it with: eval "$(cloudlab --state {layout.root} env)"')
    return 0


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
        status = control.get_json(info["url"].rstrip("/") + "/_cloudlab/status")
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
    counts = ", ".join(f"{n} {s}" for s, n in sorted(status["instances"].items())) or "none"
    print(f"instances: {counts}")
    for vm in status.get("unknown_vms", []):
        print(
            f"  unknown VM {vm['instance_id']} on {vm['node']} ({vm['state']}): not in the cloud's records, left alone"
        )
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    layout = _layout(args)
    info, creds = control.connection(layout, args.user)
    print(f"export AWS_ENDPOINT_URL_EC2={info['url']}")
    print(f"export AWS_ACCESS_KEY_ID={creds['access_key']}")
    print(f"export AWS_SECRET_ACCESS_KEY={creds['secret_key']}")
    print(f"export AWS_DEFAULT_REGION={info['region']}")
    print(f"export CLOUDLAB_STATE={layout.root}")
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    from cloudlab.images.build import ImageBuildError, build_default_image

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"  {message}", file=sys.stderr)

    try:
        built = build_default_image(force=args.force, progress=progress)
    except ImageBuildError as exc:
        raise CliError(str(exc)) from None
    verb = "built" if built.rebuilt else "up to date"
    print(f"default image {verb}: {built.kernel} + {built.ramdisk}")
    layout = _layout(args)
    if layout.database.exists():
        image, new = _register_default(layout, built)
        print(f"registered as {image.image_id}" if new else f"registered already as {image.image_id}")
    return 0


def _register_default(layout: StateLayout, built: Any) -> Any:
    from cloudlab.clc.images import Images
    from cloudlab.clc.store import Store

    store = Store(layout.database)
    try:
        return Images(store, layout.images).register_default(
            built.kernel, built.ramdisk, "admin", "cloudlab default image"
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
    p.add_argument(
        "--port", type=_port, metavar="PORT", help=f"EC2 endpoint port (default {DEFAULT_API_PORT}; 0 = any)"
    )
    p.add_argument("--accel", choices=["auto", "kvm", "tcg"], help="accelerator (default auto: probe KVM, else TCG)")
    p.add_argument("--node-vcpus", type=_positive, metavar="N", help="vCPUs each node offers")
    p.add_argument("--node-memory", type=_positive, metavar="MIB", help="memory (MiB) each node offers")
    p.add_argument(
        "--cc-listen",
        metavar="ADDR",
        help="address the cluster controller listens on for node controllers on other hosts (default 127.0.0.1)",
    )
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the API (default 90)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", parents=[state], help="terminate all instances and stop the cloud")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait before killing (default 90)")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", parents=[state], help="what runs: controllers, nodes, instances")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("env", parents=[state], help="print export lines for boto3 and the AWS CLI")
    p.add_argument("--user", default="admin", help="whose credentials (default admin)")
    p.set_defaults(func=cmd_env)

    image = sub.add_parser("image", parents=[state], help="build and list machine images")
    image_sub = image.add_subparsers(dest="image_command", metavar="SUBCOMMAND", required=True)
    p = image_sub.add_parser(
        "build", parents=[state], help="build the default image from Debian packages (cached) and register it"
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

    p = sub.add_parser("serve", parents=[state], help="run the cloud in the foreground (what 'up' starts)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("nc", parents=[state], help="run a node controller that registers with a cluster controller")
    p.add_argument("--name", required=True, help="node name (its certificate is issued for it)")
    p.add_argument("--cc", required=True, metavar="URL", help="the cluster controller, http://HOST:PORT")
    p.add_argument("--hypervisor", type=_hypervisor, metavar="URI", help="libvirt URI (default embedded QEMU)")
    p.add_argument("--pki", metavar="DIR", help="folder with ca.crt and this node's certificate and key")
    p.add_argument("--listen", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=0, help="port to serve on (default any)")
    p.add_argument("--vcpus", type=_positive, help="vCPUs to offer")
    p.add_argument("--memory", type=_positive, help="memory (MiB) to offer")
    p.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_nc)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
