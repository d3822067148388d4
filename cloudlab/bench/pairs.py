"""The pair benchmarks a notebook or the benchmark panel asks for: iperf3 and ping between two instances.

Either two running instances the experimenter picked on a connected cloud (:func:`benchmark_pair`), or a
fresh pair per network flavour, each in a short-lived cloud of its own (:func:`benchmark_fresh_pairs`).
Both measure through ``cloudlab.bench.network.run_paths``, so the rows (and ``summarise``, ``ratios``
and the charts) are those of the command-line benchmark. They live here rather than in the client so
that the client stays the thin boto3 layer it is, and nothing the client imports pulls in benchmarks.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from cloudlab.bench.cloudpaths import KIND_OF_FLAVOUR, cloud_vms
from cloudlab.bench.handmade import PathUnderTest
from cloudlab.bench.network import run_paths
from cloudlab.client import Cloud
from cloudlab.reach import instance_remote

OnRun = Callable[[int, int, dict[str, Any]], None]


def check_settings(duration_s: float, streams: int, repeats: int) -> None:
    """A ValueError that says which setting is wrong (before any instance or cloud is touched)."""
    if not duration_s or duration_s <= 0:
        raise ValueError(f"duration must be positive, not {duration_s!r}")
    if not isinstance(streams, int) or streams < 1:
        raise ValueError(f"streams must be at least 1, not {streams!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats!r}")


def benchmark_pair(
    cloud: Cloud,
    server: str,
    client: str,
    *,
    duration_s: float = 3,
    streams: int = 1,
    repeats: int = 3,
    ping_count: int = 5,
    progress: bool = True,
    on_run: OnRun | None = None,
) -> pd.DataFrame:
    """iperf3 throughput and ping RTT from ``client`` to ``server`` (two running instances of ``cloud``,
    reached over SSH), ``repeats`` times: one row per run, the columns of ``run_paths``.

    ``on_run(done, total, row)`` is called after every run. Needs a cloud with ``--network vde|direct``.
    """
    check_settings(duration_s, streams, repeats)
    if str(server) == str(client):
        raise ValueError("pick two different instances (server and client are the same)")
    flavour = cloud.network_flavour()
    if flavour == "none":
        raise RuntimeError("this cloud has no network (--network none): restart it with cloudlab up --network direct")
    ids = [str.__str__(server), str.__str__(client)]
    remotes = [instance_remote(cloud, i) for i in ids]
    for remote in remotes:
        remote.wait_ready(60)
    path = PathUnderTest(
        kind=KIND_OF_FLAVOUR.get(flavour, f"vm-{flavour}"),
        label=f"cloudlab --network {flavour}: {ids[1]} -> {ids[0]}",
        built_by="cloudlab",
        server=remotes[0],
        client=remotes[1],
        server_address=remotes[0].address,
        extra={"instances": ids},
    )
    return run_paths(
        [contextlib.nullcontext(path)],
        repeats=repeats,
        duration_s=duration_s,
        streams=streams,
        ping_count=ping_count,
        progress=progress,
        on_run=on_run,
    )


def benchmark_fresh_pairs(
    flavours: Iterable[str] = ("direct", "vde"),
    *,
    duration_s: float = 3,
    streams: int = 1,
    repeats: int = 3,
    ping_count: int = 5,
    progress: bool = True,
    on_run: OnRun | None = None,
) -> pd.DataFrame:
    """For each flavour, a fresh short-lived cloud with two instances (``cloudpaths.cloud_vms``), measured
    like :func:`benchmark_pair`; the clouds are stopped afterwards."""
    check_settings(duration_s, streams, repeats)
    flavours = list(flavours)
    if not flavours:
        raise ValueError("pick at least one network flavour (direct, vde)")
    unknown = [f for f in flavours if f not in KIND_OF_FLAVOUR]
    if unknown:
        raise ValueError(f"unknown network flavour(s) {unknown}: choose from {sorted(KIND_OF_FLAVOUR)}")
    return run_paths(
        [functools.partial(cloud_vms, flavour) for flavour in flavours],
        repeats=repeats,
        duration_s=duration_s,
        streams=streams,
        ping_count=ping_count,
        progress=progress,
        on_run=on_run,
    )
