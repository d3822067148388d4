"""The scale benchmark in its smallest form: every figure it reports is measured and every check it makes runs."""

from __future__ import annotations

import math
from pathlib import Path

from cloudlab.bench.__main__ import scale_report_lines
from cloudlab.bench.scale import run_scale_benchmark
from cloudlab.bench.scale_growth import growth_chart, growth_exponents, growth_rows, superlinear


def test_scale_report_of_two_zones_with_churn() -> None:
    report = run_scale_benchmark(instances=60, nodes=6, clusters=2, describe_repeats=2, churn=120)
    assert (report["instances"], report["nodes"], report["clusters"]) == (60, 6, 2)
    assert report["all_running_s"] >= report["run_requests_accepted_s"] > 0
    assert report["resident_mb_idle_cloud"] > 0 and report["resident_mb_all_running"] > 0
    # the nodes answer heartbeats, idle and loaded, so there is message traffic both times
    assert report["message_bytes_per_s_idle"] > 0 and report["message_bytes_per_s_all_running"] > 0
    for key in ("describe_server_ms", "describe_filtered_ms", "describe_paged_ms", "describe_sql_floor_ms"):
        assert report[key]["n"] == 2 and report[key]["median"] > 0
    assert report["churn_launches"] == 120 and report["after_churn"]["describe_server_ms"]["n"] == 2
    assert report["ratio_describe_after_churn"] > 0
    lines = "\n".join(scale_report_lines(report, None))
    assert "60 instances, 6 test nodes, 2 zones" in lines and "after 120 launches and terminations" in lines


def test_growth_table_exponents_and_chart(tmp_path: Path) -> None:
    frame, largest = growth_rows((20, 40), instances_per_node=10, clusters=2, describe_repeats=1)
    assert list(frame["instances"]) == [20, 40] and list(frame["nodes"]) == [2, 4]
    assert largest["instances"] == 40 and "after_churn" not in largest
    exponents = growth_exponents(frame)
    assert len(exponents) == 1 and (exponents.iloc[0]["from"], exponents.iloc[0]["to"]) == (20, 40)
    assert all(math.isfinite(exponents.iloc[0][cost]) for cost in ("all_running_s", "describe_ms", "resident_mb"))
    assert all(isinstance(sentence, str) for sentence in superlinear(exponents))
    chart = growth_chart(frame, tmp_path / "growth.png")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_superlinear_names_the_cost_that_grew_faster() -> None:
    import pandas as pd

    frame = pd.DataFrame(
        [
            {"instances": 1000, "all_running_s": 1.0, "describe_ms": 10.0, "message_kb_per_s": 5, "resident_mb": 100},
            {"instances": 2000, "all_running_s": 2.0, "describe_ms": 40.0, "message_kb_per_s": 10, "resident_mb": 200},
        ]
    )
    exponents = growth_exponents(frame)
    assert exponents.iloc[0]["all_running_s"] == 1.0 and exponents.iloc[0]["describe_ms"] == 2.0
    [sentence] = superlinear(exponents)
    assert sentence.startswith("DescribeInstances of all") and "exponent 2.0 from 1,000 to 2,000" in sentence
