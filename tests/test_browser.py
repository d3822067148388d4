"""The allocation notebook in a real browser: a JupyterLab started here, Debian's headless Chromium under
Selenium, ``allocate.ipynb`` run through the Run menu up to its widgets, its Launch button clicked, the
instance table watched until the new instance's row says ``running``, then the rest of the notebook run.

The cloud runs on libvirt's test driver, whose instances reach ``running`` at once: this test is about
the notebook's widgets in a browser, not about booting VMs (``test_notebooks.py`` boots real ones).
A screenshot is saved as a test artefact, on success and on failure, in
``test-artifacts/browser/`` (git-ignored), beside JupyterLab's log.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests import browser
from tests.clouds import RunningCloud

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
NOTEBOOK = "allocate.ipynb"
ARTIFACTS = REPO / "test-artifacts" / "browser"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(browser.browser_requirements() is not None, reason=str(browser.browser_requirements())),
]

RUN_CELLS_TIMEOUT_S = 120
RUNNING_TIMEOUT_S = 120


def browser_kernel() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    return "cloudlab" if "cloudlab" in KernelSpecManager().find_kernel_specs() else "python3"


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for stale in ARTIFACTS.glob("allocate*"):
        stale.unlink()
    return ARTIFACTS


@pytest.fixture
def test_cloud(cloud_factory: Any) -> RunningCloud:
    """A small cloud on libvirt's test driver (stopped by ``cloud_factory`` after the test)."""
    return cloud_factory("state", hypervisor="test:///default", nodes=2, node_vcpus=4, node_memory_mb=2048)


def test_launch_from_the_allocate_notebook_in_a_browser(
    test_cloud: RunningCloud, tmp_path: Path, artifacts: Path
) -> None:
    assert (NOTEBOOKS / NOTEBOOK).exists(), f"notebooks/{NOTEBOOK} is missing"

    # JupyterLab saves what it runs: serve a copy, so the repo's notebooks stay without outputs.
    root = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    ec2 = test_cloud.ec2()

    def instance_ids() -> set[str]:
        return {i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}

    env = {"CLOUDLAB_STATE": str(test_cloud.layout.root)}  # the kernels inherit it
    with browser.jupyter_lab(root, tmp_path / "lab", env=env) as lab, browser.chromium() as driver:
        started = time.monotonic()
        try:
            driver.get(lab.page(NOTEBOOK))
            kernel = browser.wait_notebook_ready(driver, lab, NOTEBOOK, timeout_s=90)
            assert kernel == browser_kernel(), f"{NOTEBOOK} runs on the {kernel!r} kernel"
            browser.hide_left_sidebar(driver)

            # Run the notebook up to the cell showing the instance table (its last cells do the same in code,
            # clean up and close the table), so the widgets are live for the click.
            table_cell = browser.wait_for(
                "the cell that shows InstanceTable", lambda: browser.cell_index(driver, "InstanceTable("), 30
            )
            rest = table_cell + 1 if table_cell + 1 < len(browser.cells(driver)) else None
            if rest is None:
                browser.run_cells(driver, browser.RUN_ALL, timeout_s=RUN_CELLS_TIMEOUT_S)
            else:
                browser.select_cell(driver, rest)
                browser.run_cells(driver, browser.RUN_ALL_ABOVE, stop=rest, timeout_s=RUN_CELLS_TIMEOUT_S)

            before = instance_ids()
            launch = browser.wait_for("the Launch button", lambda: browser.widget_button(driver, "Launch"), 30)
            browser.click(driver, launch)

            # The cloud side: the click started exactly one new instance (whatever its state yet).
            def launched() -> str | None:
                new = instance_ids() - before
                assert len(new) <= 1, f"one click launched {sorted(new)}"
                return next(iter(new), None)

            instance_id = browser.wait_for("the click to launch an instance", launched, 60, interval_s=0.5)

            # The browser side: the instance table shows that instance's row as running.
            browser.wait_for(
                f"the instance table to show {instance_id} running",
                lambda: browser.rows_with(driver, instance_id, "running"),
                RUNNING_TIMEOUT_S,
                interval_s=0.5,
            )
            browser.scroll_to_text(driver, instance_id)
            errors = browser.output_errors(driver)
            assert not errors, f"{NOTEBOOK} raised:\n" + "\n\n".join(errors)
            shot = artifacts / "allocate.png"
            driver.save_screenshot(str(shot))
            print(f"browser test: {instance_id} running after {time.monotonic() - started:.1f} s; screenshot {shot}")

            if rest is not None:  # and the rest of the notebook runs in the browser too
                browser.select_cell(driver, rest)
                browser.run_cells(driver, browser.RUN_ALL_BELOW, start=rest, timeout_s=RUN_CELLS_TIMEOUT_S)
        except BaseException:
            browser.save_failure(driver, artifacts, "allocate-failure")
            raise
        finally:
            if lab.log.exists():
                shutil.copyfile(lab.log, artifacts / "allocate-jupyterlab.log")
