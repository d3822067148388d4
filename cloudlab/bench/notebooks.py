"""Run the notebooks headless (papermill, the project's ``cloudlab`` kernelspec), alone or as a sweep,
and the small helpers the network notebooks share.

``cloudlab bench notebook vde-vs-direct -p repeats 3 -p flavours '["vde"]'`` runs one notebook with
parameters (values are YAML/JSON literals, as papermill's ``-y``); ``--sweep streams=1,2 --sweep
flavours=direct,vde`` runs every combination, one output notebook per run (each with its own
``output_dir``), and writes ``combined.csv`` (every run's ``results.csv`` with the parameters as
columns) and ``combined.png``. ``python -m cloudlab.bench.notebooks`` is the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import itertools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
KERNELS_ROOT = Path(__file__).resolve().parents[2]  # holds kernels/cloudlab/kernel.json
KERNEL = "cloudlab"
#: The columns of a network notebook's ``results.csv``: one row per measured run.
RESULT_COLUMNS = ["flavour", "repeat", "gbit_s", "retransmits", "rtt_ms", "host_cpu_pct"]
METRICS = ["gbit_s", "retransmits", "rtt_ms", "host_cpu_pct"]
T = TypeVar("T")


# -- finding and running notebooks ----------------------------------------------------------------------
def available() -> list[str]:
    """Names of the runnable notebooks, relative to ``notebooks/`` and without ``.ipynb``."""
    return sorted(str(p.relative_to(NOTEBOOKS).with_suffix("")) for p in NOTEBOOKS.rglob("*.ipynb") if _listed(p))


def _listed(path: Path) -> bool:
    return ".ipynb_checkpoints" not in path.parts and not path.name.startswith(".")


def find_notebook(name: str | Path) -> Path:
    """``vde-vs-direct``, ``vde-vs-direct.ipynb``, ``assignments/network-penalty``, ``network-penalty``
    or a path to any notebook."""
    candidate = Path(name)
    if candidate.suffix != ".ipynb":
        candidate = candidate.with_name(candidate.name + ".ipynb")
    if candidate.is_file():
        return candidate.resolve()
    for base in (NOTEBOOKS, NOTEBOOKS / "assignments"):
        if (base / candidate).is_file():
            return (base / candidate).resolve()
    matches = [p for p in NOTEBOOKS.rglob(candidate.name) if _listed(p)]
    if len(matches) == 1:
        return matches[0].resolve()
    raise FileNotFoundError(f"no notebook {str(name)!r}; choose one of: {', '.join(available())}")


def notebook_parameters(notebook: Path | str) -> dict[str, Any]:
    """The notebook's ``parameters`` cell: name → default (as written in the cell)."""
    import papermill

    found = papermill.inspect_notebook(str(find_notebook(notebook)))
    return {name: spec.get("default") for name, spec in found.items()}


def _kernel_name() -> str:
    """``cloudlab``; when it is not installed, the repository's ``kernels/`` folder is put on JUPYTER_PATH."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL not in KernelSpecManager().find_kernel_specs() and (KERNELS_ROOT / "kernels" / KERNEL).is_dir():
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(KERNELS_ROOT), os.environ.get("JUPYTER_PATH")]))
    return KERNEL


def run_notebook(
    name: str | Path,
    parameters: dict[str, Any] | None = None,
    output_dir: Path | str = "results/notebooks",
    progress: bool = False,
    log_output: bool = False,
) -> Path:
    """Execute a notebook with papermill and the ``cloudlab`` kernel; returns the output notebook.

    The output notebook is ``output_dir/NAME.ipynb``. A notebook with an ``output_dir`` parameter
    writes its files beside it unless ``parameters`` says otherwise. The kernel runs in the
    notebook's own folder, as in JupyterLab (and nbval). A failing cell raises papermill's
    PapermillExecutionError after the output notebook (with the traceback) is written.
    """
    import papermill

    source = find_notebook(name)
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = dict(parameters or {})
    if "output_dir" in notebook_parameters(source) and "output_dir" not in params:
        params["output_dir"] = str(out)
    target = out / source.name
    papermill.execute_notebook(
        str(source),
        str(target),
        parameters=params,
        kernel_name=_kernel_name(),
        cwd=str(source.parent),
        progress_bar=progress,
        log_output=log_output,
    )
    return target


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:40] or "x"


def _column_value(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool) or value is None else json.dumps(value)


def sweep(
    name: str | Path,
    grid: dict[str, Sequence[Any]],
    output_dir: Path | str,
    parameters: dict[str, Any] | None = None,
    progress: bool = True,
    stop_on_error: bool = False,
) -> pd.DataFrame:
    """Run ``name`` once per combination of ``grid`` (on top of ``parameters``).

    Each run gets ``output_dir/run-NN-key-value.../`` with its output notebook and its own files;
    ``output_dir/combined.csv`` holds every run's ``results.csv`` rows with the swept parameters as
    columns (plus ``run`` and ``status``), ``output_dir/runs.csv`` one row per run, and
    ``output_dir/combined.png`` a chart when the results have a metric to draw. A run that fails is
    recorded (``status`` = the error) and the sweep goes on, unless ``stop_on_error``.
    """
    from tqdm.auto import tqdm

    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    keys = list(grid)
    combos = list(itertools.product(*(list(grid[k]) for k in keys)))
    frames: list[pd.DataFrame] = []
    runs: list[dict[str, Any]] = []
    bar = tqdm(combos, desc=f"sweep {Path(str(name)).stem}", unit="run", disable=not progress)
    for index, combo in enumerate(bar):
        values = dict(zip(keys, combo, strict=True))
        label = "-".join(f"{k}-{_slug(v)}" for k, v in values.items())
        run_dir = out / f"run-{index:02d}-{label}"[:120]
        bar.set_postfix_str(label)
        started = time.monotonic()
        status = "ok"
        try:
            notebook = run_notebook(name, {**(parameters or {}), **values, "output_dir": str(run_dir)}, run_dir)
        except Exception as exc:  # noqa: BLE001 - one failed run is a row, the sweep goes on
            status = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:500]
            notebook = run_dir / find_notebook(name).name
            if stop_on_error:
                raise
        columns = {k: _column_value(v) for k, v in values.items()}
        run = {"run": index, **columns, "status": status, "seconds": round(time.monotonic() - started, 1)}
        run["notebook"] = str(notebook)
        runs.append(run)
        results = run_dir / "results.csv"
        if results.is_file():
            frame = pd.read_csv(results)
            for key, value in reversed(list(columns.items())):
                frame.insert(0, key, value)
            frame.insert(0, "run", index)
            frame["status"] = status
            frames.append(frame)
        else:
            frames.append(pd.DataFrame([{"run": index, **columns, "status": status}]))
    bar.close()
    combined = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    combined.to_csv(out / "combined.csv", index=False)
    pd.DataFrame(runs).to_csv(out / "runs.csv", index=False)
    combined.attrs["runs"] = runs
    if "gbit_s" in combined and combined["gbit_s"].notna().any():
        sweep_chart(combined, keys, out / "combined.png")
    return combined


def sweep_chart(combined: pd.DataFrame, keys: Sequence[str], path_png: Path | str, metric: str = "gbit_s") -> Path:
    """Median ``metric`` per run (x: the swept values), one bar per flavour, error bars min–max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = combined.dropna(subset=[metric])
    label_keys = [k for k in keys if k != "flavours"] or list(keys)
    ok = ok.assign(label=ok[label_keys].astype(str).agg(", ".join, axis=1) if label_keys else "all")
    hue = "flavour" if "flavour" in ok else None
    groups = ["label", hue] if hue else ["label"]
    stats = ok.groupby(groups, sort=False)[metric].agg(["median", "min", "max"]).reset_index()
    labels = list(dict.fromkeys(stats["label"]))
    hues = list(dict.fromkeys(stats[hue])) if hue else [None]
    width = 0.8 / len(hues)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(labels) + 2), 4.5))
    for i, h in enumerate(hues):
        part = (stats[stats[hue] == h] if hue else stats).set_index("label").reindex(labels)
        xs = [x + (i - (len(hues) - 1) / 2) * width for x in range(len(labels))]
        errors = [(part["median"] - part["min"]).fillna(0), (part["max"] - part["median"]).fillna(0)]
        ax.bar(xs, part["median"], width, yerr=errors, capsize=3, label=h or metric)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_xlabel(", ".join(label_keys))
    ax.set_ylabel(f"{metric} (median, min–max)")
    ax.set_title(f"sweep over {', '.join(keys)}")
    ax.grid(axis="y", alpha=0.3)
    if hue:
        ax.legend(title="flavour")
    fig.tight_layout()
    path_png = Path(path_png)
    fig.savefig(path_png, dpi=120)
    plt.close(fig)
    return path_png


# -- the network notebooks' measurement and summary -------------------------------------------------------
def off_loop(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``function`` in a worker thread when this thread runs an asyncio loop (a Jupyter kernel does).

    Starting and stopping clouds uses pyroute2, whose IPRoute() refuses to open inside a running event
    loop ("This event loop is already running"); in a plain thread it works as in a script.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return function(*args, **kwargs)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cloudlab-notebook") as pool:
        return pool.submit(function, *args, **kwargs).result()


def as_flavours(flavours: str | Iterable[str]) -> list[str]:
    """``["direct", "vde"]``, ``"vde"`` or ``"direct,vde"`` → a checked list of flavours."""
    items = [f.strip() for f in flavours.split(",")] if isinstance(flavours, str) else [str(f) for f in flavours]
    items = [f for f in items if f]
    unknown = sorted(set(items) - {"direct", "vde"})
    if unknown or not items:
        raise ValueError(f"flavours must be a non-empty list of 'direct' and 'vde', not {flavours!r}")
    return list(dict.fromkeys(items))


def measure_flavours(
    flavours: Iterable[str],
    repeats: int = 2,
    duration_s: float = 2,
    streams: int = 1,
    instance_type: str = "t2.micro",
    progress: bool = True,
) -> pd.DataFrame:
    """For each flavour, a fresh cloud (``--network FLAVOUR``) with two instances, measured ``repeats``
    times VM to VM (``cloudlab.bench.cloudpaths.cloud_vms`` and ``cloudlab.bench.network.run_paths``).

    One row per run with :data:`RESULT_COLUMNS` first, then the benchmark's other columns (``error``
    says why a run has no figures)."""
    from cloudlab.bench.cloudpaths import cloud_vms
    from cloudlab.bench.network import run_paths

    frames = []
    for flavour in as_flavours(flavours):
        source = functools.partial(cloud_vms, flavour, instance_type=instance_type)
        runs = off_loop(run_paths, [source], repeats=repeats, duration_s=duration_s, streams=streams, progress=progress)
        frames.append(runs.assign(flavour=flavour))
    df = pd.concat(frames, ignore_index=True)
    return df[RESULT_COLUMNS + [c for c in df.columns if c not in RESULT_COLUMNS]]


def flavour_summary(results: pd.DataFrame) -> pd.DataFrame:
    """n, median, min, max and stdev of each metric per flavour (runs with an error left out)."""
    ok = results[results["error"].isna()] if "error" in results else results
    ok = ok.dropna(subset=["gbit_s"]).astype({m: float for m in METRICS})
    if ok.empty:
        return pd.DataFrame(columns=["flavour", "n"])
    grouped = ok.groupby("flavour", sort=False)
    table = grouped[METRICS].agg(["median", "min", "max", "std"])
    table.columns = [f"{metric}_{'stdev' if stat == 'std' else stat}" for metric, stat in table.columns]
    table.insert(0, "n", grouped.size())
    return table.reset_index().round(4)


def _ratio(results: pd.DataFrame, metric: str, num: str, den: str) -> dict[str, Any] | None:
    ok = results.dropna(subset=[metric])
    a = ok.loc[ok["flavour"] == num, metric].astype(float)
    b = ok.loc[ok["flavour"] == den, metric].astype(float)
    if a.empty or b.empty or b.median() == 0 or b.min() == 0:
        return None
    return {
        "ratio": round(a.median() / b.median(), 3),
        "low": round(a.min() / b.max(), 3),
        "high": round(a.max() / b.min(), 3),
        "n": [len(a), len(b)],
    }


def comparison(results: pd.DataFrame) -> dict[str, Any]:
    """direct against VDE: throughput, RTT and CPU ratios of medians, each with the spread over the
    repeats (low = worst case for the numerator, high = best)."""
    ok = results[results["error"].isna()] if "error" in results else results
    return {
        "throughput_direct_over_vde": _ratio(ok, "gbit_s", "direct", "vde"),
        "rtt_vde_over_direct": _ratio(ok, "rtt_ms", "vde", "direct"),
        "host_cpu_vde_over_direct": _ratio(ok, "host_cpu_pct", "vde", "direct"),
    }


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def conclusion(results: pd.DataFrame) -> str:
    """A few sentences, computed from the runs: which flavour is faster, by how much, with the spread."""
    summary = flavour_summary(results)
    if summary.empty:
        return "No run produced a measurement, so there is nothing to conclude (see the errors above)."
    rows = {r["flavour"]: r for r in summary.to_dict("records")}

    def describe(flavour: str) -> str:
        r = rows[flavour]
        return (
            f"{flavour} {_fmt(r['gbit_s_median'])} Gbit/s (min–max {_fmt(r['gbit_s_min'])}–{_fmt(r['gbit_s_max'])}, "
            f"n={r['n']}), RTT {_fmt(r['rtt_ms_median'])} ms, host CPU {_fmt(r['host_cpu_pct_median'])} %"
        )

    if not {"direct", "vde"} <= set(rows):
        return "Only one flavour was measured: " + "; ".join(describe(f) for f in rows) + ". No comparison."
    ratios = comparison(results)
    tp, rtt = ratios["throughput_direct_over_vde"], ratios["rtt_vde_over_direct"]
    d, v = rows["direct"], rows["vde"]
    faster, slower = ("direct", "vde") if d["gbit_s_median"] >= v["gbit_s_median"] else ("vde", "direct")
    lines = [f"Measured: {describe('direct')}; {describe('vde')}."]
    if tp is not None:
        factor = tp["ratio"] if faster == "direct" else 1 / tp["ratio"]
        low, high = (tp["low"], tp["high"]) if faster == "direct" else (1 / tp["high"], 1 / tp["low"])
        penalty = 100 * (1 - v["gbit_s_median"] / d["gbit_s_median"]) if d["gbit_s_median"] else math.nan
        lines.append(
            f"**{faster}** is faster: {factor:.2f}× the throughput of {slower} (between {low:.2f}× and {high:.2f}× "
            f"over the repeats), so VDE {'costs' if penalty >= 0 else 'gains'} {abs(penalty):.0f} % of the "
            f"direct flavour's throughput."
        )
        if d["gbit_s_min"] <= v["gbit_s_max"] and v["gbit_s_min"] <= d["gbit_s_max"]:
            lines.append("The two throughput ranges overlap: with these repeats the difference is not resolved.")
        else:
            lines.append("The ranges do not overlap: every direct run was on the same side of every VDE run.")
    if rtt is not None:
        lines.append(
            f"Round trips over VDE take {rtt['ratio']:.2f}× as long as direct ({rtt['low']:.2f}–{rtt['high']:.2f}×)."
        )
    return " ".join(lines)


# -- command line -------------------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A parameter value as a YAML/JSON literal (``3``, ``2.5``, ``true``, ``[direct, vde]``), else the text."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if value is None and text.strip() not in ("null", "~", "None") else value


def parse_sweep(spec: str) -> tuple[str, list[Any]]:
    """``key=v1,v2`` (each value a literal) or ``key=[v1, v2]`` (a YAML/JSON list of values)."""
    key, sep, values = spec.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise argparse.ArgumentTypeError(f"--sweep wants KEY=V1,V2,..., not {spec!r}")
    if values.strip().startswith("["):
        parsed = parse_value(values)
        if isinstance(parsed, list):
            return key.strip(), parsed
    return key.strip(), [parse_value(v) for v in values.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cloudlab bench notebook",
        description="Run a notebook headless with papermill and the cloudlab kernel, or a sweep of runs.",
        epilog=(
            "examples:\n"
            "  cloudlab bench notebook vde-vs-direct -p repeats 3 -p flavours '[vde]'\n"
            "  cloudlab bench notebook vde-vs-direct --sweep streams=1,2 --sweep flavours=direct,vde "
            "--output results/sweep\n"
            "  cloudlab bench notebook assignments/scheduler-policy -p nodes 50\n"
            "notebooks: " + ", ".join(available())
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", help="notebook name (e.g. vde-vs-direct) or path")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="a parameter; VALUE is a YAML/JSON literal (repeatable)",
    )
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        type=parse_sweep,
        metavar="KEY=V1,V2",
        help="run every combination of these values (repeatable); one output notebook per run",
    )
    parser.add_argument("--output", help="output folder (default results/notebooks/NAME-TIMESTAMP)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--log-output", action="store_true", help="stream the notebook's output (single runs)")
    args = parser.parse_args(argv)
    try:
        source = find_notebook(args.name)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    parameters = {key: parse_value(value) for key, value in args.parameter}
    known = notebook_parameters(source)
    unknown = sorted((set(parameters) | {k for k, _ in args.sweep}) - set(known))
    if unknown:
        print(f"warning: {source.name} has no parameter {', '.join(unknown)} (it has: {', '.join(known)})")
    stem = source.stem
    output = Path(args.output or f"results/notebooks/{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    started = time.monotonic()
    if args.sweep:
        grid = dict(args.sweep)
        combined = sweep(source, grid, output, parameters, progress=not args.no_progress)
        runs = pd.DataFrame(combined.attrs["runs"])
        print(runs.drop(columns=["notebook"]).to_string(index=False))
        print(f"combined: {output / 'combined.csv'} ({len(combined)} rows)")
        if (output / "combined.png").is_file():
            print(f"chart: {output / 'combined.png'}")
        print(f"{len(runs)} runs in {time.monotonic() - started:.0f} s")
        return 0 if (runs["status"] == "ok").all() else 1
    try:
        notebook = run_notebook(source, parameters, output, progress=not args.no_progress, log_output=args.log_output)
    except Exception as exc:  # noqa: BLE001 - the output notebook holds the traceback
        print(f"{source.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"output notebook: {output / source.name}", file=sys.stderr)
        return 1
    print(f"output notebook: {notebook}")
    for path in sorted(output.iterdir()):
        if path != notebook:
            print(f"  {path}")
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
