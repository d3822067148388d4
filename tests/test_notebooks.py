"""The notebooks run headless through papermill and nbval with the project's kernelspec, against a real cloud
(this is the path of ``make demo``, of the quickstart that ``make lab`` opens and of
``cloudlab bench notebook``); the structural checks (outputs stripped, parameters cells) and the runner's
helpers need no VM."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from cloudlab import servicectl
from cloudlab.bench import notebooks as nbrun
from tests.clouds import RunningCloud, start_cloud, vm_requirements

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL_NOTEBOOKS = sorted(p for p in NOTEBOOKS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
EXPECTED = {
    "quickstart.ipynb",
    "demo.ipynb",
    "allocate.ipynb",
    "vde-vs-direct.ipynb",
    "accounting.ipynb",
    "storage.ipynb",
    "assignments/scheduler-policy.ipynb",
    "assignments/network-penalty.ipynb",
}


def kernel_name() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    return "cloudlab" if "cloudlab" in KernelSpecManager().find_kernel_specs() else "python3"


def outputs_text(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    texts = []
    for cell in cells:
        for output in cell.get("outputs", []):
            texts.append("".join(output.get("text", "")))
            texts.append("".join(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text())["cells"]


# -- structure (no VM) -----------------------------------------------------------------------------------------
def test_every_notebook_of_the_issue_is_there() -> None:
    assert {str(p.relative_to(NOTEBOOKS)) for p in ALL_NOTEBOOKS} >= EXPECTED


def test_notebooks_are_committed_without_outputs() -> None:
    for notebook in ALL_NOTEBOOKS:
        for cell in cells(notebook):
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, notebook


@pytest.mark.parametrize("notebook", ALL_NOTEBOOKS, ids=lambda p: str(p.relative_to(NOTEBOOKS)))
def test_notebook_has_one_parameters_cell_and_the_cloudlab_kernel(notebook: Path) -> None:
    nb = json.loads(notebook.read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{notebook.name}: {len(tagged)} cells tagged parameters"
    assert tagged[0]["cell_type"] == "code"
    assert nb["metadata"]["kernelspec"]["name"] == "cloudlab"


def test_vde_vs_direct_parameters_are_the_issues() -> None:
    params = nbrun.notebook_parameters("vde-vs-direct")
    assert list(params) == ["flavours", "placement", "duration_s", "streams", "repeats", "instance_type", "output_dir",
                            "results_bucket"]  # fmt: skip
    assert ast.literal_eval(params["flavours"]) == ["direct", "vde"]
    assert ast.literal_eval(params["placement"]) == "same-cluster"


def test_widget_cells_are_tagged_for_nbval() -> None:
    for notebook in ALL_NOTEBOOKS:
        for cell in cells(notebook):
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and ("display(launcher)" in source or "display(dashboard)" in source):
                assert "nbval-ignore-output" in cell["metadata"].get("tags", []), (notebook, source[:60])


# -- the runner's helpers (no VM) ------------------------------------------------------------------------------
def test_parameter_values_parse_as_yaml_literals() -> None:
    assert nbrun.parse_value("3") == 3
    assert nbrun.parse_value("2.5") == 2.5
    assert nbrun.parse_value("true") is True
    assert nbrun.parse_value('["direct"]') == ["direct"]
    assert nbrun.parse_value("[direct, vde]") == ["direct", "vde"]
    assert nbrun.parse_value("vde") == "vde"
    assert nbrun.parse_value("") == ""
    assert nbrun.parse_sweep("streams=1,2") == ("streams", [1, 2])
    assert nbrun.parse_sweep('flavours=[["direct"], ["vde"]]') == ("flavours", [["direct"], ["vde"]])
    assert nbrun.as_flavours("direct,vde") == ["direct", "vde"]
    with pytest.raises(ValueError):
        nbrun.as_flavours(["bridge"])


def test_find_notebook_by_short_name() -> None:
    assert nbrun.find_notebook("vde-vs-direct") == NOTEBOOKS / "vde-vs-direct.ipynb"
    assert nbrun.find_notebook("network-penalty") == NOTEBOOKS / "assignments" / "network-penalty.ipynb"
    assert nbrun.find_notebook("assignments/scheduler-policy.ipynb").name == "scheduler-policy.ipynb"
    with pytest.raises(FileNotFoundError):
        nbrun.find_notebook("nope")


def test_main_help_lists_the_notebooks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        nbrun.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--sweep" in text and "vde-vs-direct" in text and "assignments/scheduler-policy" in text


def test_conclusion_names_the_faster_flavour_with_spread() -> None:
    results = pd.DataFrame(
        [
            {"flavour": f, "repeat": r, "gbit_s": g, "retransmits": 0, "rtt_ms": t, "host_cpu_pct": 90.0}
            for f, r, g, t in [
                ("direct", 0, 1.0, 0.5),
                ("direct", 1, 0.8, 0.7),
                ("vde", 0, 0.2, 1.0),
                ("vde", 1, 0.25, 1.4),
            ]
        ]
    )
    text = nbrun.conclusion(results)
    assert "**direct** is faster: 4.00×" in text  # medians 0.9 / 0.225
    assert "between 3.20× and 5.00×" in text and "do not overlap" in text
    summary = nbrun.flavour_summary(results)
    assert list(summary["flavour"]) == ["direct", "vde"] and list(summary["n"]) == [2, 2]
    assert "Only one flavour" in nbrun.conclusion(results[results.flavour == "vde"])


def test_scheduler_assignment_runs_without_vms(tmp_path: Path) -> None:
    """The assignment's simulation, checks and comparison (the real-CC section is left to the nbval run)."""
    output = nbrun.run_notebook(
        "assignments/scheduler-policy",
        {"nodes": 20, "instances": 300, "real_run": False},
        tmp_path,
    )
    text = outputs_text(output)
    assert "VALID: STUDENT passes all" in text
    assert "OVERCOMMIT" in text and "DICE" in text
    comparison = pd.read_csv(tmp_path / "comparison.csv", index_col="policy")
    assert list(comparison.index) == ["GREEDY", "ROUNDROBIN", "STUDENT"]
    assert comparison.loc["ROUNDROBIN", "nodes used"] >= comparison.loc["GREEDY", "nodes used"]
    assert (tmp_path / "packing-spread.png").stat().st_size > 0


# -- against real clouds (VMs) ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab_cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCloud]:
    """The cloud ``make lab`` starts: one node on the embedded QEMU driver, ``--network direct``."""
    reason = vm_requirements()
    if reason:
        pytest.skip(reason)
    cloud = start_cloud(tmp_path_factory.mktemp("lab") / "state", network="direct")
    yield cloud
    servicectl.down(cloud.layout)


@pytest.mark.vm
@pytest.mark.parametrize(
    ("name", "parameters", "expected"),
    [
        ("demo.ipynb", {"count": 2}, ["final_state", "terminated", "node-01"]),
        ("quickstart.ipynb", {}, ["cloudlab-boot: ok", "terminated", "Linux"]),
        (
            "storage.ipynb",
            {"dataset_mib": 4},
            [
                "is /dev/vdb in the guest",
                "read back: identical",
                "/dev/sdg=vol-",
                "create volume from snapshot",
                "volumes left: 0",
            ],
        ),
    ],
)
def test_notebook_runs_against_the_cloud(
    lab_cloud: RunningCloud,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    parameters: dict,
    expected: list[str],
) -> None:
    import papermill

    monkeypatch.setenv("CLOUDLAB_STATE", str(lab_cloud.layout.root))  # the kernel inherits it
    output = tmp_path / name
    papermill.execute_notebook(
        str(NOTEBOOKS / name),
        str(output),
        parameters=parameters,
        kernel_name=kernel_name(),
        cwd=str(NOTEBOOKS),
        progress_bar=False,
    )
    text = outputs_text(output)
    for needle in expected:
        assert needle in text, f"{needle!r} not in the outputs of {name}"


#: nbval runs the notebooks as committed, except for these parameters, injected as papermill would, to keep
#: ``make test`` short: one short-lived cloud for vde-vs-direct (the sweep below measures both flavours), and
#: network-penalty analysing a results.csv instead of measuring again (its measuring call is vde-vs-direct's).
NBVAL_PARAMETERS = {
    "vde-vs-direct.ipynb": {"flavours": ["vde"], "repeats": 1, "duration_s": 1},
    "assignments/network-penalty.ipynb": {"results_csv": "sample-results.csv"},
}
SAMPLE_RESULTS = """flavour,repeat,gbit_s,retransmits,rtt_ms,host_cpu_pct
direct,0,0.73,0,0.61,90.4
direct,1,0.60,0,0.58,90.1
vde,0,0.059,52,1.3,100.0
vde,1,0.097,39,1.1,100.0
"""


@pytest.mark.vm
def test_nbval_runs_every_notebook(lab_cloud: RunningCloud, tmp_path: Path) -> None:
    """``pytest --nbval-lax`` over a copy of notebooks/ (so their files land in tmp_path), against the lab cloud."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    copy = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, copy, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (copy / "assignments" / "sample-results.csv").write_text(SAMPLE_RESULTS)
    for relative, parameters in NBVAL_PARAMETERS.items():
        nb = load_notebook_node(str(copy / relative))  # as papermill reads it (every cell gets its tags list)
        nbformat.write(parameterize_notebook(nb, parameters, kernel_name="cloudlab"), copy / relative)
    env = os.environ | {"CLOUDLAB_STATE": str(lab_cloud.layout.root)}
    command = [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", "--rootdir", str(copy)]
    command += ["--nbval-kernel-name", "cloudlab", str(copy)]
    done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert "failed" not in done.stdout.splitlines()[-1], done.stdout[-3000:]
    ran = {str(p.relative_to(copy)) for p in copy.rglob("*.ipynb")}
    assert ran >= EXPECTED
    assert (tmp_path / "results" / "vde-vs-direct" / "results.csv").is_file()  # ../results from notebooks/


@pytest.mark.vm
def test_vde_vs_direct_with_papermill_and_a_sweep(tmp_path: Path) -> None:
    """Two papermill runs of vde-vs-direct with non-default parameters, one per flavour, as a sweep: each run's
    output files, then the combined CSV and chart."""
    reason = vm_requirements()
    if reason:
        pytest.skip(reason)
    combined = nbrun.sweep(
        "vde-vs-direct",
        {"flavours": [["direct"], ["vde"]]},
        tmp_path,
        {"repeats": 2, "duration_s": 1, "streams": 2},
        progress=False,
    )
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert list(runs["status"]) == ["ok", "ok"], runs.to_string()
    for run_dir, flavour in zip(sorted(tmp_path.glob("run-*")), ["direct", "vde"], strict=True):
        results = pd.read_csv(run_dir / "results.csv")
        assert list(results.columns) == ["flavour", "repeat", "gbit_s", "retransmits", "rtt_ms", "host_cpu_pct"]
        assert list(results["flavour"]) == [flavour, flavour] and list(results["repeat"]) == [0, 1]
        assert (results["gbit_s"] > 0).all() and (results["rtt_ms"] > 0).all()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert {"parameters", "summary", "ratios", "conclusion", "runs", "environment"} <= set(summary)
        assert summary["parameters"] == {
            "flavours": [flavour],
            "duration_s": 1,
            "streams": 2,
            "repeats": 2,
            "instance_type": "t2.micro",
            "placement": "same-cluster",
        }
        assert summary["conclusion"].startswith("Only one flavour was measured")
        for png in ("gbit_s.png", "rtt_ms.png", "host_cpu_pct.png", "vde-vs-direct.png"):
            assert (run_dir / png).stat().st_size > 1000, png
        assert (run_dir / "vde-vs-direct.ipynb").is_file()
    on_disk = pd.read_csv(tmp_path / "combined.csv")
    assert len(on_disk) == len(combined) == 4
    assert list(on_disk.columns[:3]) == ["run", "flavours", "flavour"]
    assert set(on_disk["flavours"]) == {'["direct"]', '["vde"]'}
    assert (tmp_path / "combined.png").stat().st_size > 1000


@pytest.mark.vm
@pytest.mark.slow
def test_vde_vs_direct_across_clusters(tmp_path: Path) -> None:
    """``placement: cross-cluster`` in its quickest form: a direct cloud of two clusters refuses one VPC in two
    zones (EC2's error, kept in summary.json), a vde cloud carries it through a NAT, measured against the same
    VPC pair within one cluster, and the conclusion says so from the figures."""
    from tests.clouds import network_requirements

    reason = network_requirements()
    if reason:
        pytest.skip(reason)
    parameters = {"placement": "cross-cluster", "repeats": 1, "duration_s": 1}
    nbrun.run_notebook("vde-vs-direct", parameters, tmp_path)
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results["flavour"]) == ["vde same-cluster", "vde cross-cluster"]
    assert (results["gbit_s"] > 0).all() and (results["rtt_ms"] > 0).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    refusal = summary["refusal"]
    assert refusal["code"] == "InvalidParameterValue" and "keeps a VPC in one cluster" in refusal["message"]
    cost = summary["ratios"]["throughput_cross_over_same"]
    by = results.set_index("flavour")["gbit_s"]
    assert cost["ratio"] == pytest.approx(by["vde cross-cluster"] / by["vde same-cluster"], abs=2e-3)
    assert summary["conclusion"].startswith("**direct** refuses a VPC across clusters")
    assert f"{cost['ratio']:.2f}×" in summary["conclusion"]
    assert (tmp_path / "vde-vs-direct.png").stat().st_size > 1000
