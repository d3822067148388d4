#!/usr/bin/env python3
"""Check what `make demo` printed, not only that it exited 0: the executed demo notebook.

`make demo` runs notebooks/demo.ipynb through papermill into results/demo.ipynb. Its last cell prints
a table of instance, node, boot seconds and final state. This reads that table back and checks that
it has one row per launched instance (the notebook's `count`), each with an EC2-style instance id, a
node, a positive boot time within the notebook's timeout, and the final state `terminated`, and
that no cell raised. Standard library only: it runs with whatever python3 the machine has.

Usage: check-demo-output.py results/demo.ipynb   (exit 0 and a summary line, or 1 and the reason)
"""

from __future__ import annotations

import ast
import json
import re
import sys

COLUMNS = ["instance_id", "node", "boot_seconds", "final_state"]
INSTANCE_ID = re.compile(r"^i-[0-9a-f]{17}$")


def _parameters(cells: list[dict]) -> dict[str, object]:
    """The notebook's parameters: the `parameters` cell, overridden by papermill's injected one."""
    found: dict[str, object] = {}
    for tag in ("parameters", "injected-parameters"):
        for cell in cells:
            if tag in cell.get("metadata", {}).get("tags", []):
                for node in ast.parse("".join(cell["source"])).body:
                    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                        found[node.targets[0].id] = ast.literal_eval(node.value)
    return found


def check(path: str) -> str:
    """Return a one-line summary of a good table; raise ValueError naming what is wrong."""
    try:
        with open(path, encoding="utf-8") as handle:
            notebook = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the executed notebook {path}: {exc}") from exc
    cells = [c for c in notebook.get("cells", []) if c.get("cell_type") == "code"]
    for cell in cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                raise ValueError(f"a cell raised {output.get('ename')}: {output.get('evalue')}")
    params = _parameters(cells)
    count, timeout_s = int(params.get("count", 0)), float(params.get("timeout_s", 0))
    if count < 1 or timeout_s <= 0:
        raise ValueError(f"the notebook's parameters lack count/timeout_s: {params}")
    text = "".join("".join(o.get("text", "")) for o in cells[-1].get("outputs", []) if o.get("output_type") == "stream")
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != COLUMNS:
        raise ValueError(f"the last cell printed no table with columns {' '.join(COLUMNS)}: {text!r}")
    rows = lines[1:]
    if len(rows) != count:
        raise ValueError(f"the table has {len(rows)} rows for {count} instances: {text!r}")
    boots = []
    for row in rows:
        if len(row) != len(COLUMNS):
            raise ValueError(f"row {row} does not have the {len(COLUMNS)} columns")
        instance_id, node, boot, state = row
        if not INSTANCE_ID.match(instance_id):
            raise ValueError(f"{instance_id!r} is not an instance id")
        if node in ("", "None", "NaN"):
            raise ValueError(f"{instance_id} has no node")
        try:
            seconds = float(boot)
        except ValueError:
            raise ValueError(f"{instance_id} has no boot time ({boot!r})") from None
        if not 0 < seconds <= timeout_s:
            raise ValueError(f"{instance_id} booted in {seconds} s, outside (0, {timeout_s}]")
        if state != "terminated":
            raise ValueError(f"{instance_id} ended {state!r}, not 'terminated'")
        boots.append(seconds)
    if len({row[0] for row in rows}) != count:
        raise ValueError("an instance id is listed twice")
    return f"{count} instances booted in {', '.join(f'{b:g}' for b in boots)} s and ended terminated"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        summary = check(argv[1])
    except ValueError as exc:
        print(f"demo output: {exc}", file=sys.stderr)
        return 1
    print(f"demo output: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
