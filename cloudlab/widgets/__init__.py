"""Notebook widgets (ipywidgets) over ``cloudlab.client``: a launcher, an instance table, a benchmark
panel, a usage dashboard and a bucket browser. Each is a plain object with a ``widget`` to display (``display(panel)``
works too) and methods and widget values that scripts and tests drive (``.value``, ``.click()``).
Their callbacks are thin: the work is done by the client, and a problem is shown in ``message``.
"""

from cloudlab.widgets.bench_panel import BenchmarkPanel
from cloudlab.widgets.buckets import BucketBrowser
from cloudlab.widgets.launcher import Launcher
from cloudlab.widgets.table import InstanceTable
from cloudlab.widgets.usage import UsageDashboard

__all__ = ["BenchmarkPanel", "BucketBrowser", "InstanceTable", "Launcher", "UsageDashboard"]
