"""The network benchmark: paths side by side, repeats with spread, results as a DataFrame.

Every path (hand-built baselines from ``cloudlab.bench.handmade`` and cloudlab's own, which yield
the same ``PathUnderTest``) is built once and measured ``repeats`` times: iperf3 throughput and
retransmits, ping RTT and loss, the machine's CPU. ``ratios`` compares paths (cloudlab against
hand-built, direct against VDE) with the spread taken from the repeats.

The VPC placements (``vpc_suite``, ``--vpc-only``): two instances of one VPC within one cluster and
across two clusters of a vde cloud (the second behind a NAT, over the cable it dialled), on each VDE
profile (``--vpc-profiles``, default fast and classic), beside the same cross-cluster path built by hand
(``cloudlab.bench.handcables``), so the cross-cluster cost of each profile is a ratio of two paths
measured in one run.

``python -m cloudlab.bench.network --output results`` runs the hand-built suite.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pandas as pd

from cloudlab.bench import handcables, handmade
from cloudlab.bench.handmade import PathUnderTest
from cloudlab.bench.measure import iperf, ping

PathSource = Callable[[], AbstractContextManager[PathUnderTest]] | AbstractContextManager[PathUnderTest]
METRICS = ("gbit_s", "retransmits", "rtt_ms", "host_cpu_pct")
COLUMNS = [
    "path",
    "label",
    "kind",
    "built_by",
    "repeat",
    "gbit_s",
    "retransmits",
    "rtt_ms",
    "rtt_mdev_ms",
    "loss_pct",
    "host_cpu_pct",
    "client_cpu_pct",
    "server_cpu_pct",
    "duration_s",
    "streams",
    "build_s",
    "load_1m",
    "error",
]


def path_id(path: PathUnderTest) -> str:
    return f"{path.built_by}:{path.kind}"


def source_name(source: PathSource) -> str:
    """What a failed path's row is called: the factory's name and its arguments (``cloud_vms(direct)``)."""
    if isinstance(source, functools.partial):
        args = [str(a) for a in source.args] + [f"{k}={v}" for k, v in source.keywords.items()]
        return f"{getattr(source.func, '__name__', 'path')}({', '.join(args)})"
    return getattr(source, "__name__", "") or type(source).__name__


def run_paths(
    paths: Iterable[PathSource],
    repeats: int = 3,
    duration_s: float = 3,
    streams: int = 1,
    progress: bool = True,
    ping_count: int = 5,
    on_run: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """One row per measured run. A path that cannot be built or measured gives a row with ``error``
    (and the benchmark goes on to the next path). ``on_run(done, total, row)`` is called after each
    run (or failed path), so that a widget can show progress."""
    from tqdm.auto import tqdm

    sources = list(paths)
    total = len(sources) * repeats
    rows: list[dict[str, Any]] = []
    load_start = os.getloadavg()
    bar = tqdm(total=total, desc="network paths", unit="run", disable=not progress)
    finished = 0

    def record(row: dict[str, Any], runs: int = 1) -> None:
        nonlocal finished
        rows.append(row)
        finished += runs
        bar.update(runs)
        if on_run is not None:
            on_run(finished, total, row)

    try:
        for index, source in enumerate(sources):
            name = source_name(source)
            started = time.monotonic()
            done = 0
            try:
                manager = source() if callable(source) else source
                with manager as path:
                    build_s = round(time.monotonic() - started, 2)
                    bar.set_postfix_str(path_id(path))
                    for repeat in range(repeats):
                        record(_measure(path, repeat, duration_s, streams, ping_count, build_s))
                        done += 1
            except Exception as exc:  # noqa: BLE001 - recorded in the results, not lost
                detail = f"{type(exc).__name__}: {exc}"
                print(f"[bench] path {index} ({name}) failed: {detail}", file=sys.stderr)
                traceback.print_exc(limit=3, file=sys.stderr)
                record(
                    {"path": f"?:{name or index}", "label": name, "repeat": done, "error": detail[:2000]},
                    repeats - done,
                )
    finally:
        bar.close()
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs.update(load_avg_start=load_start, repeats=repeats, duration_s=duration_s, streams=streams)
    return df


def _measure(
    path: PathUnderTest, repeat: int, duration_s: float, streams: int, ping_count: int, build_s: float
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "path": path_id(path),
        "label": path.label,
        "kind": path.kind,
        "built_by": path.built_by,
        "repeat": repeat,
        "build_s": build_s,
        "streams": streams,
        "load_1m": round(os.getloadavg()[0], 2),  # another workload on the machine skews every figure
    }
    try:
        rtt = ping(path.client, path.server_address, count=ping_count)
        row.update(rtt_ms=rtt["rtt_ms"], rtt_mdev_ms=rtt["rtt_mdev_ms"], loss_pct=rtt["loss_pct"])
        result = iperf(path.server, path.client, path.server_address, duration_s=duration_s, streams=streams)
        row.update(
            gbit_s=result["gbit_s"],
            retransmits=result["retransmits"],
            host_cpu_pct=result["cpu_host_pct"],
            client_cpu_pct=result["client_cpu_pct"],
            server_cpu_pct=result["server_cpu_pct"],
            duration_s=result["duration_s"],
        )
    except Exception as exc:  # noqa: BLE001 - one failed repeat is a row with an error
        row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    return row


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Median, min, max and stdev of each metric per path (failed runs left out; ``n`` counts the rest)."""
    ok = df[df["error"].isna()] if "error" in df else df
    if ok.empty:
        return pd.DataFrame()
    ok = ok.astype({m: float for m in METRICS if m in ok})
    grouped = ok.groupby(["path", "kind", "built_by"], sort=False)
    table = grouped[[m for m in METRICS if m in ok]].agg(["median", "min", "max", "std"])
    table.columns = [f"{metric}_{'stdev' if stat == 'std' else stat}" for metric, stat in table.columns]
    table.insert(0, "n", grouped.size())
    table.insert(1, "label", grouped["label"].first())
    return table.reset_index().round(4)


def default_pairs(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(name, numerator path, denominator path): cloudlab/hand per kind, and direct/VDE per builder."""
    present = set(df["path"].dropna())
    pairs = []
    for kind in sorted({p.split(":", 1)[1] for p in present}):
        if f"cloudlab:{kind}" in present and f"hand:{kind}" in present:
            pairs.append((f"cloudlab/hand {kind}", f"cloudlab:{kind}", f"hand:{kind}"))
    for builder in ("hand", "cloudlab"):
        for direct, vde in (("bridge", "vde"), ("vm-bridge", "vm-vde"), ("vm-bridge", FAST_KIND)):
            if f"{builder}:{direct}" in present and f"{builder}:{vde}" in present:
                pairs.append((f"VDE penalty {builder} {direct}/{vde}", f"{builder}:{direct}", f"{builder}:{vde}"))
    for name, num, den in PROFILE_PAIRS:
        if num in present and den in present:
            pairs.append((name, num, den))
    for name, num, den in VPC_PAIRS:
        if num in present and den in present:
            pairs.append((name, num, den))
    return pairs


#: cloudlab's vde profiles (cloudlab.cc.segments): the VDE penalty (direct ÷ vde, VM to VM) of each, and fast
#: against classic. Named so that a reader finds the figure the issue asks for.
FAST_KIND = "vm-vde-tap-vdeplug-switch-mtu9000"  # = cloudpaths.KIND_OF_PROFILE["fast"] (not imported: no cloud)
PROFILE_PAIRS = (
    ("VDE penalty --vde-profile fast (direct/vde)", "cloudlab:vm-bridge", f"cloudlab:{FAST_KIND}"),
    ("VDE penalty --vde-profile classic (direct/vde)", "cloudlab:vm-bridge", "cloudlab:vm-vde"),
    ("vde fast/classic", f"cloudlab:{FAST_KIND}", "cloudlab:vm-vde"),
)

#: The hand-built twin of each profile's cross-cluster path (``handcables.vms_vde_nat_cable``): classic's two
#: vde_switches at MTU 1500, fast's two vdeplug4 switches at MTU 9000, each with a TCP cable through a NAT.
HAND_NAT_CABLE = {"classic": "vm-vde-nat-cable", "fast": "vm-vde-nat-cable-vdeplug-switch-mtu9000"}
#: The VPC placements' ratios (kinds as ``cloudpaths.vpc_kind`` names them): what crossing clusters costs on each
#: profile, fast against classic across clusters, and each profile's cross-cluster path against its hand-built twin.
VPC_PAIRS = (
    *(
        (f"VPC cross-cluster/same-cluster --vde-profile {p}", f"cloudlab:vm-vpc-cross-cluster-{p}",
         f"cloudlab:vm-vpc-same-cluster-{p}")
        for p in ("fast", "classic")
    ),
    ("VPC cross-cluster fast/classic", "cloudlab:vm-vpc-cross-cluster-fast", "cloudlab:vm-vpc-cross-cluster-classic"),
    *(
        (f"VPC cross-cluster cloudlab/hand --vde-profile {p}", f"cloudlab:vm-vpc-cross-cluster-{p}",
         f"hand:{HAND_NAT_CABLE[p]}")
        for p in ("fast", "classic")
    ),
)  # fmt: skip
#: The VDE profiles the VPC placements run on by default (``--vpc-profiles``).
VPC_PROFILES = ("fast", "classic")


def ratios(
    df: pd.DataFrame, pairs: Iterable[tuple[str, str] | tuple[str, str, str]] | None = None, metric: str = "gbit_s"
) -> dict[str, dict[str, Any]]:
    """Ratio of medians of ``metric`` for each (numerator, denominator) pair of path ids, with the
    spread from the repeats: low = min(num)/max(den), high = max(num)/min(den)."""
    ok = df[df["error"].isna()] if "error" in df else df
    out: dict[str, dict[str, Any]] = {}
    for pair in default_pairs(df) if pairs is None else pairs:
        name, num, den = pair if len(pair) == 3 else (f"{pair[0]} / {pair[1]}", *pair)
        a = ok.loc[ok["path"] == num, metric].astype(float).dropna()
        b = ok.loc[ok["path"] == den, metric].astype(float).dropna()
        if a.empty or b.empty or b.median() == 0:
            out[name] = {"numerator": num, "denominator": den, "metric": metric, "ratio": None}
            continue
        out[name] = {
            "numerator": num,
            "denominator": den,
            "metric": metric,
            "ratio": round(a.median() / b.median(), 3),
            "low": round(a.min() / b.max(), 3) if b.max() else None,
            "high": round(a.max() / b.min(), 3) if b.min() else None,
            "n": [len(a), len(b)],
        }
    return out


def tool_versions() -> dict[str, str]:
    from cloudlab.bench.environment import _version

    return {
        "iperf3": _version(["iperf3", "--version"]),
        "vde_switch": _version(["vde_switch", "--version"]),
        "vde_plug": _version(["sh", "-c", "dpkg-query -W -f '${Version}' vdeplug 2>/dev/null || echo unknown"]),
        "ip": _version(["ip", "-V"]),
        "ssh": _version(["sh", "-c", "ssh -V 2>&1"]),
    }


def write_results(df: pd.DataFrame, out_dir: Path | str, name: str = "network") -> dict[str, Path]:
    """``bench-NAME-STAMP.csv`` (the runs), ``-summary.csv`` and ``.json`` (runs, summary, ratios,
    environment) under ``out_dir``."""
    from cloudlab.bench.environment import describe_environment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    files = {
        "csv": out / f"bench-{name}-{stamp}.csv",
        "summary_csv": out / f"bench-{name}-{stamp}-summary.csv",
        "json": out / f"bench-{name}-{stamp}.json",
    }
    summary = summarise(df)
    df.to_csv(files["csv"], index=False)
    summary.to_csv(files["summary_csv"], index=False)
    environment = describe_environment("tcg")
    environment["tools"] = tool_versions()
    environment["run"] = dict(df.attrs)  # load average when the runs started, repeats, duration
    document = {
        "environment": environment,
        "summary": json.loads(summary.to_json(orient="records")) if not summary.empty else [],
        "ratios": ratios(df),
        "rtt_ratios": ratios(df, metric="rtt_ms"),
        "runs": json.loads(df.to_json(orient="records")),
    }
    files["json"].write_text(json.dumps(document, indent=2, default=str) + "\n")
    return files


def handmade_suite(
    image: Any = None,
    include_vms: bool = True,
    transports: Iterable[str] = ("unix", "tcp", "ssh", "udp"),
    variants: bool = False,
) -> list[Callable[[], AbstractContextManager[PathUnderTest]]]:
    """Factories for the hand-built baselines, in the order they are measured (``variants``: also the
    ways of shrinking VDE's cost: the taps DESIGN.md's table lists (``vde_plug2tap``, ``ptp``), a longer
    datagram queue, vdeplug4's in-process switch, jumbo frames, and a tap instead of QEMU's vde back-end)."""
    suite: list[Callable[[], AbstractContextManager[PathUnderTest]]] = [
        handmade.namespaces_bridge,
        handmade.namespaces_vde,
    ]
    if variants:
        suite += [functools.partial(handmade.namespaces_vde, a) for a in ("vde_plug2tap", "ptp")]
        suite += [
            functools.partial(handmade.namespaces_vde, dgram_qlen=2048),
            functools.partial(handmade.namespaces_vde, switch="vdeplug-switch"),
            functools.partial(handmade.namespaces_vde, switch="vdeplug-switch", mtu=9000),
            functools.partial(handmade.namespaces_vde, "ptp", mtu=9000),
        ]
    suite += [functools.partial(handmade.cable_path, t) for t in transports]
    if include_vms:
        suite += [functools.partial(handmade.vms_bridge, image), functools.partial(handmade.vms_vde, image)]
        if variants:
            suite += [
                functools.partial(handmade.vms_vde, image, attach="tap"),
                functools.partial(handmade.vms_vde, image, switch="vdeplug-switch"),
                functools.partial(handmade.vms_vde, image, attach="tap", switch="vdeplug-switch", mtu=9000),
            ]
    return suite


def vpc_suite(
    image: Any = None, profiles: Iterable[str] = VPC_PROFILES
) -> list[Callable[[], AbstractContextManager[PathUnderTest]]]:
    """On each VDE profile of ``profiles`` in turn: cloudlab's VPC pair within one cluster, then across clusters
    (through the NAT), then that cross-cluster path built by hand in the profile's shape, measured one after the
    other (a drift in load hits them alike; every ratio but fast/classic is of neighbours)."""
    from cloudlab.bench.cloudpaths import cloud_vpc_pair

    suite: list[Callable[[], AbstractContextManager[PathUnderTest]]] = []
    for profile in profiles:
        if profile not in VPC_PROFILES:
            raise ValueError(f"unknown VDE profile {profile!r}: use {' or '.join(VPC_PROFILES)}")
        suite += [functools.partial(cloud_vpc_pair, p, vde_profile=profile) for p in ("same-cluster", "cross-cluster")]
        shape = {"switch": "vdeplug-switch", "mtu": 9000} if profile == "fast" else {}
        suite.append(functools.partial(handcables.vms_vde_nat_cable, image, **shape))
    return suite


def full_suite(
    hand: list[Callable[[], AbstractContextManager[PathUnderTest]]], vpc_profiles: Iterable[str] = VPC_PROFILES
) -> list[Callable[[], AbstractContextManager[PathUnderTest]]]:
    """cloudlab's direct flavour and both vde profiles, each measured right before the hand-built path of the
    same kind (so that a drift in the machine's load hits both sides of a ratio alike), then the remaining
    paths, then the VPC placements."""
    ordered = vm_suite(hand)
    return ordered + [f for f in hand if f not in ordered] + vpc_suite(profiles=vpc_profiles)


def _kind_of(factory: Any) -> str | None:
    """The kind a hand-built VM factory yields (None for other paths), from its arguments."""
    func, kw = getattr(factory, "func", None), getattr(factory, "keywords", {})
    if func is handmade.vms_bridge:
        return "vm-bridge"
    if func is handmade.vms_vde:
        if not kw:
            return "vm-vde"
        if kw == {"attach": "tap", "switch": "vdeplug-switch", "mtu": 9000}:
            return FAST_KIND
    return None


def vm_suite(
    hand: list[Callable[[], AbstractContextManager[PathUnderTest]]] | None = None, image: Any = None
) -> list[Callable[[], AbstractContextManager[PathUnderTest]]]:
    """VM to VM only: cloudlab direct, vde classic, vde fast, each right before its hand-built twin (from
    ``hand`` if it has one, else made here), the VDE penalty of both profiles in one run."""
    from cloudlab.bench.cloudpaths import cloud_vms

    twins = {
        "vm-bridge": functools.partial(handmade.vms_bridge, image),
        "vm-vde": functools.partial(handmade.vms_vde, image),
        FAST_KIND: functools.partial(handmade.vms_vde, image, attach="tap", switch="vdeplug-switch", mtu=9000),
    }
    for factory in hand or []:
        kind = _kind_of(factory)
        if kind in twins:
            twins[kind] = factory
    ordered: list[Callable[[], AbstractContextManager[PathUnderTest]]] = []
    for cloud, kind in (
        (functools.partial(cloud_vms, "direct"), "vm-bridge"),
        (functools.partial(cloud_vms, "vde", vde_profile="classic"), "vm-vde"),
        (functools.partial(cloud_vms, "vde", vde_profile="fast"), FAST_KIND),
    ):
        ordered += [cloud, twins[kind]]
    return ordered


def report_lines(summary: pd.DataFrame, pairs: dict[str, dict[str, Any]] | None = None) -> list[str]:
    width = max([22, *(len(str(p)) for p in summary["path"])]) if "path" in summary else 22
    lines = [f"{'path':{width}} {'Gbit/s (min–max)':>24} {'retr':>7} {'RTT ms':>8} {'CPU %':>6}"]
    for row in summary.itertuples():
        spread = f"{row.gbit_s_median:.3f} ({row.gbit_s_min:.3f}–{row.gbit_s_max:.3f})"
        lines.append(
            f"{row.path:{width}} {spread:>24} {row.retransmits_median:7.0f} {row.rtt_ms_median:8.3f} "
            f"{row.host_cpu_pct_median:6.1f}"
        )
    for name, r in (pairs or {}).items():
        if r.get("ratio") is not None:
            lines.append(f"{name}: x{r['ratio']} ({r['low']}–{r['high']})")
    return lines


def load_line(df: pd.DataFrame) -> str:
    """The machine's 1-minute load average over the runs: another workload skews every figure, so it is said."""
    load = pd.to_numeric(df.get("load_1m"), errors="coerce").dropna() if "load_1m" in df else pd.Series(dtype=float)
    start = df.attrs.get("load_avg_start")
    first = f"{start[0]:.2f}" if start else "?"
    if load.empty:
        return f"load average (1 min): {first} at the start"
    return (
        f"load average (1 min): {first} at the start, over the runs median {load.median():.2f} "
        f"({load.min():.2f}–{load.max():.2f}) on {os.cpu_count()} CPUs"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cloudlab.bench.network", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="results")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--no-vms", action="store_true")
    parser.add_argument("--no-cloud", action="store_true", help="only the hand-built paths (no cloudlab cloud)")
    parser.add_argument("--variants", action="store_true", help="also ways to shrink VDE's cost (taps, queue, MTU)")
    parser.add_argument("--transports", default="unix,tcp,ssh,udp")
    parser.add_argument("--chart", action="store_true", help="also write PNG charts")
    parser.add_argument("--vpc-only", action="store_true", help="only the VPC placements (same/cross-cluster, hand)")
    parser.add_argument(
        "--vpc-profiles", default=",".join(VPC_PROFILES), help="VDE profiles of the VPC placements (fast,classic)"
    )
    parser.add_argument(
        "--vde-only",
        action="store_true",
        help="only VM to VM: direct, vde fast and vde classic, each beside its hand-built twin (the VDE penalty)",
    )
    args = parser.parse_args(argv)
    transports = [t for t in args.transports.split(",") if t]
    suite = handmade_suite(include_vms=not args.no_vms, transports=transports, variants=args.variants)
    profiles = [p for p in args.vpc_profiles.split(",") if p]
    if args.vpc_only:
        suite = vpc_suite(profiles=profiles)
    elif args.vde_only:
        suite = vm_suite()
    elif not args.no_cloud and not args.no_vms:
        suite = full_suite(suite, profiles)
    df = run_paths(suite, repeats=args.repeats, duration_s=args.duration, streams=args.streams)
    files = write_results(df, args.output, "network")
    summary = summarise(df)
    if not summary.empty:
        print("\n".join(report_lines(summary, ratios(df))))
    print(load_line(df))
    if args.chart and not summary.empty:
        from cloudlab.bench.chart import rtt_chart, throughput_chart

        stem = files["json"].with_suffix("")
        files["throughput_png"] = throughput_chart(df, Path(f"{stem}-throughput.png"))
        files["rtt_png"] = rtt_chart(df, Path(f"{stem}-rtt.png"))
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0 if df["error"].isna().all() else 1


if __name__ == "__main__":
    sys.exit(main())
