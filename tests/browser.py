"""A real JupyterLab and a headless Chromium for browser tests.

JupyterLab is the venv's ``jupyter lab``, started as a subprocess on 127.0.0.1 with a free port and a
random token, in its own temp config/settings/workspace folders (so a user's JupyterLab settings or
saved workspace never change what the test sees). The browser is Debian's ``chromium`` driven by
Selenium through Debian's ``chromium-driver`` (the two packages have the same version, and nothing
is downloaded: Selenium Manager is bypassed by naming both binaries).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cloudlab.waiting import wait_until

T = TypeVar("T")

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/lib/chromium/chromium")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def _first_existing(candidates: tuple[str, ...], name: str) -> str | None:
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(name)


def chromium_binary() -> str | None:
    return _first_existing(CHROMIUM_CANDIDATES, "chromium")


def chromedriver_binary() -> str | None:
    return _first_existing(CHROMEDRIVER_CANDIDATES, "chromedriver")


def browser_requirements() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make test installs the dev extras)"
    if chromium_binary() is None:
        return "Debian's chromium is not installed (make test installs it: apt-get install chromium)"
    if chromedriver_binary() is None:
        return "Debian's chromium-driver is not installed (make test installs it: apt-get install chromium-driver)"
    return None


class _NotYet(Exception):
    """The probe raised (a stale element, a server still starting): poll again."""


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, interval_s: float = 0.25) -> T:
    """Poll ``probe`` (``wait_until``) until it returns something truthy; a TimeoutError naming ``what``
    and the last error after ``timeout_s``. An AssertionError in the probe fails at once."""

    def attempt() -> T | None:
        try:
            return probe()
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - any other error means "not yet"
            raise _NotYet(repr(exc)) from exc

    return wait_until(attempt, timeout_s, what=what, interval_s=interval_s, ignore=(_NotYet,))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------------------------- JupyterLab


@dataclass
class Lab:
    url: str  # http://127.0.0.1:PORT
    token: str
    root: Path
    log: Path
    process: subprocess.Popen

    def page(self, notebook: str) -> str:
        return f"{self.url}/lab/tree/{notebook}?token={self.token}"

    def api(self, path: str) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _lab_settings(settings_dir: Path) -> None:
    """User settings that keep pop-ups out of the way: no news toast, no update check."""
    notification = settings_dir / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True, exist_ok=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))


@contextmanager
def jupyter_lab(root: Path, work: Path, env: dict[str, str] | None = None, timeout_s: float = 90) -> Iterator[Lab]:
    """A JupyterLab serving ``root``; stopped (its whole process group, kernels included) on exit."""
    import secrets

    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    token = secrets.token_hex(16)
    settings = work / "lab-settings"
    _lab_settings(settings)
    lab_env = dict(os.environ)
    lab_env.update(
        {
            "JUPYTER_CONFIG_DIR": str(work / "jupyter-config"),
            "JUPYTER_RUNTIME_DIR": str(work / "jupyter-runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(work / "lab-workspaces"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    lab_env.update(env or {})
    jupyter = Path(sys.executable).with_name("jupyter")
    command = [
        str(jupyter) if jupyter.exists() else "jupyter",
        "lab",
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = work / "jupyterlab.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=root, env=lab_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    lab = Lab(f"http://127.0.0.1:{port}", token, root, log, process)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n{lab.log_tail()}")
            try:
                return "started" in lab.api("/api/status")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        try:
            wait_for("JupyterLab's /api/status", ready, timeout_s, interval_s=0.5)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{lab.log_tail()}") from None
        yield lab
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM then SIGKILL the process group that ``process`` leads (JupyterLab and its kernels)."""
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
    with suppress(ProcessLookupError):  # kernels live in the same group and may outlive the server by a moment
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(5)


# --------------------------------------------------------------------------------------------- Chromium


@contextmanager
def chromium(width: int = 1440, height: int = 1000) -> Iterator[Any]:
    """A headless Debian Chromium under Selenium; always quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary() or "chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",  # small /dev/shm in containers
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, saved on failure
    service = Service(executable_path=chromedriver_binary() or "chromedriver")
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            service.stop()


# --------------------------------------------------------------------------------------------- JupyterLab UI

# Lumino menu items carry the id of the command they run (and a label a user reads).
RUN_ALL = (("runmenu:run-all", "notebook:run-all-cells"), "Run All Cells")
RUN_ALL_ABOVE = (("notebook:run-all-above",), "Run All Above Selected Cell")
RUN_ALL_BELOW = (("notebook:run-all-below",), "Run Selected Cell and All Below")


def click(driver: Any, element: Any) -> None:
    """Click like a user, falling back to a DOM click if something (a toast) covers the element."""
    from selenium.common.exceptions import ElementClickInterceptedException

    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    try:
        element.click()
    except ElementClickInterceptedException:
        driver.execute_script("arguments[0].click();", element)


def wait_notebook_ready(driver: Any, lab: Lab, notebook: str, timeout_s: float = 90, kernel: str = "cloudlab") -> str:
    """Wait until ``notebook`` is shown with a connected, idle kernel (choosing ``kernel`` if JupyterLab asks).

    The toolbar alone is not enough: its indicator says "idle" before the kernel is even started, and a
    Run All at that moment silently runs nothing. So the server must also report the notebook's session
    with the kernel idle and the browser's websocket connected, for a full second. Returns the kernel's name.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    settled_polls = 0

    def session_kernel() -> dict[str, Any] | None:
        for session in lab.api("/api/sessions"):
            if session.get("path") == notebook and session.get("kernel"):
                return session["kernel"]
        return None

    def settled() -> str | None:
        nonlocal settled_polls
        for dialog in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog"):
            selects = dialog.find_elements(By.TAG_NAME, "select")
            if selects:  # "Select Kernel": the notebook names no kernelspec
                choice = Select(selects[0])
                for option in choice.options:
                    value = option.get_attribute("value") or ""
                    if kernel in value:
                        choice.select_by_value(value)
                        break
            buttons = dialog.find_elements(By.CSS_SELECTOR, "button.jp-mod-accept")
            if buttons:
                click(driver, buttons[-1])
            settled_polls = 0
            return None
        cells = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell")
        server = session_kernel()
        ready = (
            bool(cells)
            and server is not None
            and server.get("execution_state") == "idle"
            and server.get("connections", 0) >= 1
            and kernel_status(driver) == "idle"
        )
        settled_polls = settled_polls + 1 if ready else 0
        return server["name"] if settled_polls >= 3 and server else None

    return wait_for(f"{notebook} to open with a connected, idle kernel", settled, timeout_s, interval_s=0.5)


def kernel_status(driver: Any) -> str:
    """The kernel status the notebook toolbar shows (idle, busy, starting...), from its execution indicator."""
    from selenium.webdriver.common.by import By

    for indicator in driver.find_elements(
        By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status]"
    ):
        return (indicator.get_attribute("data-status") or "").lower()
    return ""


def run_menu(driver: Any, entry: tuple[tuple[str, ...], str] = RUN_ALL) -> None:
    """Click an entry of the Run menu (``RUN_ALL``, ``RUN_ALL_ABOVE``, ``RUN_ALL_BELOW``) as a user would."""
    from selenium.webdriver.common.by import By

    commands, label = entry

    def menu_item() -> Any:
        for item in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu .lm-Menu-item"):
            if (item.get_attribute("data-command") in commands or item.text.startswith(label)) and item.is_displayed():
                return item
        return None

    def open_run_menu() -> Any:
        item = menu_item()
        if item is None:  # the menu bar toggles: click "Run" only while its menu is closed
            for bar_item in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item"):
                if bar_item.text.strip() == "Run":
                    click(driver, bar_item)
                    time.sleep(0.3)
            item = menu_item()
        return item

    click(driver, wait_for(f"the Run menu's {label!r}", open_run_menu, 30, interval_s=0.5))


def cells(driver: Any) -> list[dict[str, Any]]:
    """The open notebook's cells as rendered: ``code`` (bool), ``prompt`` ("[ ]:", "[*]:", "[3]:"), ``source``."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell'))"
        ".map(c => ({code: c.classList.contains('jp-CodeCell'),"
        " prompt: ((c.querySelector('.jp-InputArea-prompt') || {}).textContent || '').trim(),"
        " source: (c.querySelector('.jp-InputArea-editor .cm-content') || {}).textContent || ''}));"
    )


def prompts(driver: Any, start: int = 0, stop: int | None = None) -> list[str]:
    """The prompts of the non-empty code cells among cells ``start:stop``."""
    return [cell["prompt"] for cell in cells(driver)[start:stop] if cell["code"] and cell["source"].strip()]


def cell_index(driver: Any, needle: str) -> int | None:
    """The index of the first code cell whose source contains ``needle``."""
    for index, cell in enumerate(cells(driver)):
        if cell["code"] and needle in cell["source"]:
            return index
    return None


def select_cell(driver: Any, index: int) -> None:
    """Select cell ``index`` by clicking its prompt area (command mode, as a user selects a cell)."""
    from selenium.webdriver.common.by import By

    element = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell")[index]
    click(driver, element.find_element(By.CSS_SELECTOR, ".jp-InputArea-prompt"))
    wait_for(f"cell {index} to be selected", lambda: "jp-mod-active" in (element.get_attribute("class") or ""), 10)


def run_cells(
    driver: Any,
    entry: tuple[tuple[str, ...], str] = RUN_ALL,
    start: int = 0,
    stop: int | None = None,
    timeout_s: float = 120,
    attempts: int = 3,
) -> None:
    """Run cells through the Run menu ``entry``, then wait until the code cells ``start:stop`` have all run
    (an error output fails at once). A Run sent while the kernel connection is still being set up runs
    nothing at all (the prompts do not change, the kernel stays idle): only then is it sent again."""
    for attempt in range(attempts):
        before = prompts(driver, start, stop)
        run_menu(driver, entry)
        try:
            wait_for(
                f"{entry[1]!r} to start",
                lambda before=before: prompts(driver, start, stop) != before or kernel_status(driver) == "busy",
                10,
            )
            break
        except TimeoutError:
            if attempt == attempts - 1 or kernel_status(driver) != "idle":
                raise
            print(f"{entry[1]!r} ran nothing (kernel not connected yet?); sending it again")

    def done() -> bool:
        errors = output_errors(driver)
        assert not errors, "a cell raised:\n" + "\n\n".join(errors)
        code = prompts(driver, start, stop)
        return bool(code) and all(re.fullmatch(r"\[\d+\]:", p) for p in code) and kernel_status(driver) == "idle"

    wait_for(f"cells {start}:{stop} to run", done, timeout_s, interval_s=0.5)


def output_errors(driver: Any) -> list[str]:
    """The tracebacks shown in the open notebook's outputs (stderr that is only a warning is not one)."""
    from selenium.webdriver.common.by import By

    outputs = driver.find_elements(
        By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output[data-mime-type*='stderr']"
    )
    texts = [output.text for output in outputs]
    return [text for text in texts if "Traceback" in text or re.search(r"^\w*(Error|Exception)\b", text, re.M)]


def widget_button(driver: Any, label: str) -> Any:
    """The rendered ipywidgets button whose text is ``label`` (None until it is on the page)."""
    from selenium.webdriver.common.by import By

    buttons = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) button.jupyter-button")
    for button in buttons:
        if button.text.strip().lower() == label.lower() and button.is_displayed():
            return button
    return None


def outputs_text(driver: Any) -> str:
    """The rendered text of every output area in the open notebook (table rows come out one per line)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll("
        "'.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output'))"
        ".map(e => e.innerText).join('\\n');"
    )


def rows_with(driver: Any, *needles: str) -> list[str]:
    """The rendered table rows (``<tr>`` in the notebook's outputs) whose text contains every one of ``needles``."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll("
        "'.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output tr')).map(e => e.innerText);"
    )
    return [row for row in rows if all(needle in row for needle in needles)]


def hide_left_sidebar(driver: Any) -> None:
    """Collapse the file browser so the notebook fills the screenshot (best effort)."""
    from selenium.webdriver.common.by import By

    for tab in driver.find_elements(By.CSS_SELECTOR, ".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current"):
        with suppress(Exception):
            click(driver, tab)


def scroll_to_text(driver: Any, text: str) -> None:
    """Scroll the notebook so the innermost output element containing ``text`` is in view (best effort)."""
    driver.execute_script(
        "const t = arguments[0];"
        "const all = Array.from(document.querySelectorAll("
        "'.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output *'));"
        "const hits = all.filter(e => e.innerText && e.innerText.includes(t));"
        "if (hits.length) hits[hits.length - 1].scrollIntoView({block: 'center'});",
        text,
    )


def save_failure(driver: Any, folder: Path, stem: str) -> None:
    """What the browser showed when a test failed: a screenshot, the page's HTML, the outputs' text and the
    browser's console."""
    for name, save in (
        (f"{stem}.png", lambda path: driver.save_screenshot(str(path))),
        (f"{stem}.html", lambda path: path.write_text(driver.page_source)),
        (f"{stem}-outputs.txt", lambda path: path.write_text(outputs_text(driver) or "")),
        (f"{stem}-console.json", lambda path: path.write_text(json.dumps(driver.get_log("browser"), indent=1))),
    ):
        try:
            save(folder / name)
        except Exception as exc:  # a dead browser must not hide the test's own failure
            print(f"could not save {name}: {exc!r}")
