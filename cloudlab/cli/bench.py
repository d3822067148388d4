"""Benchmarks: ``bench network``, ``bench s3``, ``bench storage`` and ``bench notebook`` (CSV, JSON, charts).

Each hands its options to the benchmark's own ``main`` in :mod:`cloudlab.bench`, which is also runnable as
``python -m cloudlab.bench.NAME``; ``bench notebook`` passes all its words on unparsed (papermill's
``-p KEY VALUE`` and its own ``--help``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cloudlab.cli.common import make_folder
from cloudlab.cli.registry import arg, command, group
from cloudlab.processes import interrupt_on_sigterm

group("bench", help="benchmarks (results as CSV, JSON and charts)", state=False)


@command(
    "bench network",
    help="instance to instance on cloudlab's direct and vde networks against the same paths built by hand, "
    "and VDE cable transports",
    state=False,
    args=[
        arg("--output", default="results", help="folder for CSV, JSON and PNG (default results/)"),
        arg("--repeats", type=int, default=3, help="runs per path (default 3)"),
        arg("--duration", type=float, default=3, help="seconds per iperf3 run (default 3)"),
        arg("--streams", type=int, default=1, help="parallel TCP streams (default 1)"),
        arg("--transports", default="unix,tcp,ssh,udp", help="cable transports (unix,tcp,ssh,udp,vxvde)"),
        arg("--no-cloud", action="store_true", help="only the hand-built paths"),
        arg("--no-vms", action="store_true", help="only namespaces and cables (no VMs)"),
        arg("--variants", action="store_true", help="also vde_plug2tap and ptp taps (ways to shrink VDE's cost)"),
        arg(
            "--vde-only",
            action="store_true",
            help="only VM to VM: cloudlab direct, vde --vde-profile fast and classic, each beside its hand-built twin"
            " (the VDE penalty of both profiles)",
        ),
        arg(
            "--vpc-only",
            action="store_true",
            help="only one VPC's pair within a cluster, across two clusters (through a NAT) and that path by hand",
        ),
        arg(
            "--vpc-profiles",
            default="fast,classic",
            help="VDE profiles the VPC pairs run on, each within and across clusters (default fast,classic)",
        ),
    ],
)
def bench_network(args: argparse.Namespace) -> int:
    interrupt_on_sigterm()  # a killed benchmark still tears down what it built
    from cloudlab.bench.network import main as network_main

    make_folder("the results", Path(args.output))
    argv = ["--output", args.output, "--repeats", str(args.repeats), "--duration", str(args.duration),
            "--streams", str(args.streams), "--transports", args.transports, "--chart"]  # fmt: skip
    argv += ["--no-cloud"] * args.no_cloud + ["--no-vms"] * args.no_vms + ["--variants"] * args.variants
    argv += ["--vpc-only"] * args.vpc_only + ["--vde-only"] * args.vde_only + ["--vpc-profiles", args.vpc_profiles]
    return network_main(argv)


@command(
    "bench s3",
    help="Walrus (S3) PUT/GET/LIST beside moto's S3 server and a plain copy",
    state=False,
    args=[
        arg("--output", default="results", help="folder for CSV and JSON (default results/)"),
        arg("--sizes", default="4KiB,1MiB,64MiB,1GiB", help="object sizes (default all four)"),
        arg("--keys", default="10000,100000", help="listing sizes (default 10000,100000)"),
        arg("--clients", default="1,8", help="concurrent clients (default 1,8)"),
        arg("--scale", type=float, default=1.0, help="multiply the bytes moved per size (0.1 for a quick look)"),
    ],
)
def bench_s3(args: argparse.Namespace) -> int:
    interrupt_on_sigterm()  # a killed benchmark still tears down what it built
    from cloudlab.bench.s3 import main as s3_main

    make_folder("the results", Path(args.output))
    return s3_main(["--output", args.output, "--sizes", args.sizes, "--keys", args.keys, "--clients", args.clients,
                    "--scale", str(args.scale)])  # fmt: skip


@command(
    "bench storage",
    help="fio in cloudlab-debian on a cloudlab volume, the root disk and a volume exported and attached by hand "
    "(qemu-nbd + QEMU); boots to SSH and cloud-init against booting by hand; snapshot and restore times",
    state=False,
    args=[
        arg("--output", default="results", help="folder for CSV and JSON (default results/)"),
        arg("--repeats", type=int, default=3, help="fio rounds per target (default 3)"),
        arg("--fio-runtime", type=float, default=10, help="seconds per fio job (default 10)"),
        arg("--fio-size", type=int, default=256, help="MiB each fio job works over (default 256)"),
        arg("--boot-repeats", type=int, default=5, help="boots per side, cloud and by hand (default 5)"),
        arg("--snapshot-sizes", default="1,8", help="GiB of the volumes snapshotted and restored (default 1,8)"),
        arg("--fill", type=float, default=0.25, help="share of each volume the guest writes before its snapshot"),
        arg("--quick", action="store_true", help="the smallest run with every figure (1 round, 1 boot, 1 GiB)"),
    ],
)
def bench_storage(args: argparse.Namespace) -> int:
    interrupt_on_sigterm()  # a killed benchmark still tears down what it built
    from cloudlab.bench.storage import main as storage_main

    make_folder("the results", Path(args.output))
    argv = ["--output", args.output, "--repeats", str(args.repeats), "--fio-runtime", str(args.fio_runtime),
            "--fio-size", str(args.fio_size), "--boot-repeats", str(args.boot_repeats),
            "--snapshot-sizes", args.snapshot_sizes, "--fill", str(args.fill)]  # fmt: skip
    return storage_main(argv + ["--quick"] * args.quick)


@command(
    "bench notebook",
    help="run a notebook headless with papermill (-p key value ..., --sweep key=v1,v2 ...); see --help",
    state=False,
    passthrough="rest",
    add_help=False,
)
def bench_notebook(args: argparse.Namespace) -> int:
    interrupt_on_sigterm()  # a killed benchmark still tears down what it built
    from cloudlab.bench.notebooks import main as notebook_main

    if getattr(args, "state", None):  # ``cloudlab --state DIR bench notebook ...``: the notebook finds it so
        os.environ["CLOUDLAB_STATE"] = str(Path(args.state).resolve())
    return notebook_main(args.rest)
