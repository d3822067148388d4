"""The notebooks run headless through papermill with the project's kernelspec, against a real cloud
(this is the path of ``make demo`` and of the quickstart that ``make lab`` opens)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clouds import RunningCloud

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

pytestmark = pytest.mark.vm


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


@pytest.mark.parametrize(
    ("name", "parameters", "expected"),
    [
        ("demo.ipynb", {"count": 2}, ["final_state", "terminated", "node-01"]),
        ("quickstart.ipynb", {}, ["cloudlab-boot: ok", "terminated"]),
    ],
)
def test_notebook_runs_against_the_cloud(
    vm_cloud: RunningCloud,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    parameters: dict,
    expected: list[str],
) -> None:
    import papermill

    monkeypatch.setenv("CLOUDLAB_STATE", str(vm_cloud.layout.root))  # the kernel inherits it
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


def test_notebooks_are_committed_without_outputs() -> None:
    for notebook in sorted(NOTEBOOKS.rglob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, notebook
