"""The controllers on a host: ``nc`` (a node controller), ``sc`` (a cluster's storage controller),
``node-credentials`` (what a node on another host needs) and ``accel`` (whether KVM works here)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cloudlab.cli.common import (
    CliError,
    controller_url,
    hypervisor,
    identity_name,
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
    from cloudlab.security.ca import CertificateAuthority, validate_name

    layout = state_layout(args)
    if not (layout.pki / "ca.key").exists():
        raise CliError(f"no cloud CA in {layout.pki}: start the cloud once with 'cloudlab up'")
    try:
        validate_name(args.name)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    out = make_folder("the node's credentials", Path(args.out))  # before a certificate is issued for nothing
    identity = CertificateAuthority.load_or_create(layout.pki).identity(args.name, "nc")
    crt, key = out / f"nc-{args.name}.crt", out / f"nc-{args.name}.key"

    def write() -> None:
        shutil.copyfile(layout.pki / "ca.crt", out / "ca.crt")
        crt.write_bytes(identity.certificate_pem)
        key.touch(mode=0o600)  # the private key is never readable by others, not even while it is copied
        key.chmod(0o600)
        shutil.copyfile(identity.key_path or layout.pki / f"nc-{args.name}.key", key)

    writing("the node's credentials", out, write)
    print(f"wrote {out}/ca.crt, {crt.name} and {key.name}; on the new host run:")
    print(f"  cloudlab nc --name {args.name} --cc CC_URL --pki {out} --listen 0.0.0.0")
    return 0


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
