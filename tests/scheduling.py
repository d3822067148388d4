"""The order of the test files: the longest first, so that two xdist workers (``make test`` runs
``pytest -n 2 --dist loadfile``) end at about the same time.

With ``--dist loadfile`` each file runs whole on one worker (its module-scoped clouds are booted once), and a
worker that is nearly done is handed the next file of the collection. Handed out longest first, the files
fill the two workers evenly (the last ones to go are short); in the order of their names, a 3-minute file
handed out near the end would leave the other worker idle for minutes. ``--no-loadscope-reorder`` keeps
xdist from reordering the files by their number of tests.

The seconds per file come from ``tests/file_times.json``, written by ``pytest --record-file-times`` (setup,
call and teardown of every test, summed per file). A file missing there (a new one) counts as short and keeps
its place among the other short ones. Within a file the order is untouched.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

TIMES = Path(__file__).with_name("file_times.json")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-file-times",
        action="store_true",
        help=f"write the seconds each test file took to {TIMES.name} (the order of the next runs)",
    )


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _known_times() -> dict[str, float]:
    try:
        return {str(k): float(v) for k, v in json.loads(TIMES.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    times = _known_times()
    # sorted() is stable: files of equal (or unknown) time and the tests inside a file keep their order
    items[:] = sorted(items, key=lambda item: -times.get(_file_of(item.nodeid), 0.0))


class FileTimes:
    """Sums the reported durations per file (on xdist's controller, the reports of every worker)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[_file_of(report.nodeid)] += report.duration

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if hasattr(session.config, "workerinput"):
            return  # a worker: the controller writes the file
        merged = _known_times() | {k: round(v, 1) for k, v in self.seconds.items()}
        TIMES.write_text(json.dumps(dict(sorted(merged.items(), key=lambda kv: -kv[1])), indent=1) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--record-file-times") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(FileTimes(), "file-times")
