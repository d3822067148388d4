"""The controllers on a host: ``nc`` (a node controller), ``sc`` (a cluster's storage controller), ``cc`` (a
cluster controller of its own), ``node-credentials`` and ``cluster-credentials`` (what a node or a cluster
on another host needs) and ``accel`` (whether KVM works here)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cloudlab.cli.common import (
    CliError,
    controller_url,
    hypervisor,
    identity_name,
    listen_address,
    log_to_stderr,
    make_folder,
    port,
    positive,
    state_layout,
    writing,
)
from cloudlab.cli.registry import arg, command
from cloudlab.paths import cache_dir


@command(
    "accel",
    help="probe whether KVM works here (a short real boot, cached); else TCG",
    args=[arg("--quiet", action="store_true", help="print nothing")],
)
def accel(args: argparse.Namespace) -> int:
    from cloudlab.images.cached import find_built_image
    from cloudlab.nc.accel import probe_accelerator

    built = find_built_image()
    if built is None:
        raise CliError("the KVM probe boots the default image, which is not built: run 'cloudlab image build'")
    found = probe_accelerator(built.kernel, built.ramdisk, cache_file=cache_dir() / "accel.json")
    if not args.quiet:
        print(f"accelerator: {found}")
    return 0


@command(
    "node-credentials",
    help="issue a node certificate and write what a node on another host needs",
    args=[
        arg("name", help="the new node's name"),
        arg("--out", required=True, metavar="DIR", help="folder to write ca.crt and the node's cert/key to"),
    ],
)
def node_credentials(args: argparse.Namespace) -> int:
    out = _issue_credentials(args, args.name, "nc", "the node's credentials")
    print(f"  cloudlab nc --name {args.name} --cc CC_URL --pki {out} --listen 0.0.0.0")
    return 0


@command(
    "cluster-credentials",
    help="issue a cluster controller certificate and write what a cluster on another host needs",
    args=[
        arg("name", help="the new cluster's name (cluster2, ...)"),
        arg("--out", required=True, metavar="DIR", help="folder to write ca.crt and the CC's cert/key to"),
    ],
)
def cluster_credentials(args: argparse.Namespace) -> int:
    from cloudlab.cc.daemon import cc_identity_name

    out = _issue_credentials(args, cc_identity_name(args.name), "cc", "the cluster's credentials")
    print(
        f"  cloudlab cc --name {args.name} --clc CLC_URL --pki {out} --listen 0.0.0.0:PORT --advertise http://HOST:PORT"
    )
    print("and for each of its nodes: cloudlab node-credentials NODE --out DIR (the same way as for any node)")
    return 0


def _issue_credentials(args: argparse.Namespace, name: str, role: str, what: str) -> Path:
    """Issue ``role``/``name``'s certificate from the cloud's CA and write it with its key and ``ca.crt`` to
    ``--out`` (the key never readable by others); print what was written. Returns the folder."""
    from cloudlab.security.ca import CertificateAuthority, validate_name

    layout = state_layout(args)
    if not (layout.pki / "ca.key").exists():
        raise CliError(f"no cloud CA in {layout.pki}: start the cloud once with 'cloudlab up'")
    try:
        validate_name(name)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    out = make_folder(what, Path(args.out))  # before a certificate is issued for nothing
    identity = CertificateAuthority.load_or_create(layout.pki).identity(name, role)
    crt, key = out / f"{role}-{name}.crt", out / f"{role}-{name}.key"

    def write() -> None:
        shutil.copyfile(layout.pki / "ca.crt", out / "ca.crt")
        crt.write_bytes(identity.certificate_pem)
        key.touch(mode=0o600)  # the private key is never readable by others, not even while it is copied
        key.chmod(0o600)
        shutil.copyfile(identity.key_path or layout.pki / f"{role}-{name}.key", key)

    writing(what, out, write)
    print(f"wrote {out}/ca.crt, {crt.name} and {key.name}; on the new host run:")
    return out


CC_URL = arg("--cc", required=True, type=controller_url, metavar="URL", help="the cluster controller, http://HOST:PORT")


@command(
    "nc",
    help="run a node controller that registers with a cluster controller",
    args=[
        arg("--name", required=True, type=identity_name, help="node name (its certificate is issued for it)"),
        CC_URL,
        arg("--hypervisor", type=hypervisor, metavar="URI", help="libvirt URI (default embedded QEMU)"),
        arg("--pki", metavar="DIR", help="folder with ca.crt and this node's certificate and key"),
        arg("--listen", default="127.0.0.1", help="address to serve on (default 127.0.0.1)"),
        arg("--port", type=port, default=0, help="port to serve on (default any)"),
        arg(
            "--advertise",
            type=controller_url,
            metavar="URL",
            help="URL the CC reaches this node at (behind a NAT: the forward)",
        ),
        arg("--vcpus", type=positive, help="vCPUs to offer"),
        arg("--memory", type=positive, help="memory (MiB) to offer"),
        arg("--accel", choices=["auto", "kvm", "tcg"], default="auto"),
        arg("--launch", choices=["restore", "boot"], default="restore", help="restore templates or boot cold"),
        arg("--template-nic", action="store_true", help="build the start-up template with a NIC"),
        arg(
            "--template-nic-mtu",
            type=int,
            default=0,
            metavar="MTU",
            help="that NIC's MTU (the fast VDE profile's 9000; default 0: the usual 1500)",
        ),
        arg("--wake-s", type=float, metavar="S", help="a wake's boot time when POWERSAVE powered it down (2)"),
        arg("--verbose", action="store_true"),
    ],
)
def nc(args: argparse.Namespace) -> int:
    from cloudlab.nc.daemon import run_node

    layout = state_layout(args)  # (--name and the URLs are checked by the parser: no folder is made for a bad one)
    log_to_stderr(args.verbose)
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
        template_nic_mtu=args.template_nic_mtu,
        wake_s=args.wake_s,
    )
    return 0


@command(
    "sc",
    help="run a storage controller that registers with a cluster controller",
    args=[
        arg("--name", required=True, type=identity_name, help="the cluster's name (its certificate is issued for it)"),
        CC_URL,
        arg("--pki", metavar="DIR", help="folder with ca.crt and this SC's certificate and key"),
        arg("--dir", metavar="DIR", help="where volumes and snapshots are kept (default <state>/sc/NAME)"),
        arg("--listen", default="127.0.0.1", help="address to serve messages and NBD on (default 127.0.0.1)"),
        arg("--port", type=port, default=0, help="port for messages (default any)"),
        arg(
            "--advertise",
            type=controller_url,
            metavar="URL",
            help="URL the CC reaches this SC at (behind a NAT: the forward)",
        ),
        arg("--verbose", action="store_true"),
    ],
)
def sc(args: argparse.Namespace) -> int:
    from cloudlab.sc.daemon import run_storage

    layout = state_layout(args)
    log_to_stderr(args.verbose)
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


@command(
    "cc",
    help="run a cluster controller (its own availability zone) that registers with the cloud controller",
    description=(
        "Run the cluster controller of one cluster as a process of its own, maybe on another host. It registers"
        " with the cloud controller (the 'clc_url' of 'cloudlab status --json') over signed HTTP, again every few"
        " seconds; the CLC gives its cluster a zone and places instances there. Its nodes run 'cloudlab nc --cc"
        " URL' and its storage controller 'cloudlab sc --cc URL' with this CC's URL. Credentials for another host:"
        " 'cloudlab cluster-credentials NAME --out DIR' on the cloud's host. Started again on the same"
        " --listen address after a crash, it is found again by the CLC and by its nodes."
    ),
    args=[
        arg("--name", required=True, type=identity_name, help="the cluster's name (its certificate is cc-NAME)"),
        arg("--clc", required=True, type=controller_url, metavar="URL", help="the cloud controller, http://HOST:PORT"),
        arg("--pki", metavar="DIR", help="folder with ca.crt and this CC's certificate and key"),
        arg(
            "--listen",
            type=listen_address,
            default=("127.0.0.1", 0),
            metavar="HOST[:PORT]",
            help="address to serve on (default 127.0.0.1, any port; give a port to be found again after a restart)",
        ),
        arg("--advertise", type=controller_url, metavar="URL", help="URL the CLC and the nodes reach this CC at"),
        arg(
            "--network",
            choices=["none"],
            default="none",
            help="the cluster's network: only none for a CC of its own so far (vde, direct: inside 'cloudlab up')",
        ),
        arg("--scheduler", default="GREEDY", help="node policy: GREEDY, ROUNDROBIN, POWERSAVE or module:Class"),
        arg("--heartbeat-s", type=float, default=1.0, metavar="S", help="how often nodes are asked for reports (1)"),
        arg("--verbose", action="store_true"),
    ],
)
def cc(args: argparse.Namespace) -> int:
    from cloudlab.cc.daemon import run_cluster
    from cloudlab.cc.scheduler import load_policy

    layout = state_layout(args)
    log_to_stderr(args.verbose)
    try:
        load_policy(args.scheduler)
    except (ValueError, ImportError) as exc:
        raise CliError(f"--scheduler: {exc}") from None
    host, listen_port = args.listen
    run_cluster(
        Path(args.pki) if args.pki else layout.pki,
        args.name,
        args.clc,
        host=host,
        port=listen_port,
        advertise=args.advertise,
        policy=args.scheduler,
        heartbeat_s=args.heartbeat_s,
    )
    return 0
