"""The S3 benchmark's harness on a tiny load: every side (Walrus, moto, the plain copy, the loopback socket, the
null server) measured for every operation, size and client count, and the summary's ratios computed from those
rows (no time asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudlab.bench.s3 import main


@pytest.mark.slow
def test_bench_s3_harness(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--output", str(tmp_path), "--sizes", "4KiB,1MiB", "--keys", "1500", "--clients", "1,2",
                 "--scale", "0.02"])  # fmt: skip
    assert code == 0
    (result_file,) = tmp_path.glob("bench-s3-*.json")
    result = json.loads(result_file.read_text())
    sides = {(r["side"], r["op"], r["size"], r["clients"]) for r in result["rows"]}
    for side in ("walrus", "moto", "plain copy", "loopback socket", "null server"):
        for op in ("PUT", "GET"):
            for size in ("4KiB", "1MiB"):
                for clients in (1, 2):
                    assert (side, op, size, clients) in sides
    for side in ("walrus", "moto"):
        assert (side, "LIST", "1500 keys", 2) in sides
    summary = result["summary"]["GET 1MiB x2"]
    walrus = next(
        r for r in result["rows"] if (r["side"], r["op"], r["size"], r["clients"]) == ("walrus", "GET", "1MiB", 2)
    )
    assert summary["walrus"] == walrus["MBps"] and summary["ratio_to_moto"] == round(
        walrus["MBps"] / summary["moto"], 2
    )
    assert all(
        r["bytes"] == r["ops"] * (4096 if r["size"] == "4KiB" else 1024**2) for r in result["rows"] if r["op"] != "LIST"
    )
    wire = next(r for r in result["rows"] if (r["side"], r["op"], r["size"], r["clients"]) ==
                ("loopback socket", "GET", "1MiB", 2))  # fmt: skip
    assert summary["share_of_socket"] == round(walrus["MBps"] / wire["MBps"], 3)
    null = next(r for r in result["rows"] if (r["side"], r["op"], r["size"], r["clients"]) ==
                ("null server", "GET", "1MiB", 2))  # fmt: skip
    assert null["bytes"] == null["ops"] * 1024**2  # the client read every byte of the canned answers
    assert summary["share_of_null"] == round(walrus["MBps"] / null["MBps"], 3)
    assert summary["null_to_moto"] == round(null["MBps"] / summary["moto"], 2)
    assert "x moto" in capsys.readouterr().out
    assert not list(tmp_path.glob(".s3-work-*"))  # the stores were removed
