"""The package's shape, checked from its source: no import cycle, the core below the faces, small modules.

Imports are read with ``ast`` (never executed), deferred ones inside functions included: a local import
hides a cycle from Python's loader, not from a reader. The one exception is a package whose
``__init__`` loads its own submodules so that they register themselves (``api/actions``, the S3
operations): the registry pattern DESIGN.md holds up, where the package is the registry.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "cloudlab"
CORE = ("clc", "cc", "nc", "net", "security", "images")
FACES = ("api", "cli", "client", "widgets", "bench")


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under ``root`` (a package directory)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the modules of the same package it imports (at module level or in a function)."""
    known = modules(root)

    def resolve(name: str) -> str | None:  # the longest known module that ``name`` is or lies in
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == root.name}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                if source.split(".")[0] != root.name:
                    continue
                for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                    member = f"{source}.{alias.name}"
                    targets.add(member if member in known else resolve(source))
        is_package = path.name == "__init__.py"
        graph[name] = {t for t in targets if t and t != name and not (is_package and t.startswith(name + "."))}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def area(module: str) -> str:
    """``cloudlab.clc.cloud`` → ``clc``; ``cloudlab.client`` → ``client``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_checks_see_a_cycle_and_a_layering_breach(tmp_path: Path) -> None:
    """The checks below must be able to fail: a small package with a cycle hidden in a function."""
    package = tmp_path / "cloudlab"
    (package / "net").mkdir(parents=True)
    (package / "actions").mkdir()
    (package / "__init__.py").write_text("")
    (package / "net" / "__init__.py").write_text("")
    (package / "net" / "links.py").write_text("from cloudlab.net import netns\n")
    (package / "net" / "netns.py").write_text("def create():\n    from cloudlab.net import links\n")
    (package / "client.py").write_text("from . import bench\n")
    (package / "bench.py").write_text("import cloudlab.client\n")
    (package / "actions" / "__init__.py").write_text("def load():\n    from cloudlab.actions import a\n")
    (package / "actions" / "a.py").write_text("from cloudlab.actions import load\n")
    (package / "nc.py").write_text("from cloudlab.client import x\n")
    graph = import_graph(package)
    assert sorted(cycles(graph)) == [
        ["cloudlab.bench", "cloudlab.client"],
        ["cloudlab.net.links", "cloudlab.net.netns"],
    ]
    assert graph["cloudlab.nc"] == {"cloudlab.client"}
    assert graph["cloudlab.actions"] == set()  # a registry loading its own plugins is no cycle


def test_no_import_cycle_in_cloudlab() -> None:
    assert cycles(import_graph(ROOT)) == []


def test_the_core_imports_no_face() -> None:
    graph = import_graph(ROOT)
    assert set(CORE) <= {area(m) for m in graph} and set(FACES) <= {area(m) for m in graph}
    breaches = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if area(module) in CORE
        for target in targets
        if area(target) in FACES
    )
    assert breaches == []


MAX_LINES = 600
#: Modules another piece of work is splitting right now (the CLI becomes a package, issue 9).


def test_no_module_is_over_600_lines() -> None:
    sizes = {str(p.relative_to(ROOT.parent)): len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert too_long == {}, f"split these along their seams (at most {MAX_LINES} lines each): {too_long}"
