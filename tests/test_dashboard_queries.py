"""Dashboard queries: values checked against hand-computed results on tiny stores."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest

from storage.sql import run_query
from storage.store import ResultStore

RUN = "run-20261204T213000-ab12cd"
CREATED_AT = dt.datetime(2026, 12, 4, 21, 30, tzinfo=dt.timezone.utc)


def sample(sample_id, score, *, run_id=RUN, method="capkv", budget=64, benchmark="needle", error=None, **extra):
    """Return a minimal valid sample row. The cell id is derived from method, budget and benchmark."""
    return {
        "run_id": run_id,
        "cell_id": f"{method}-{budget}-{benchmark}",
        "model": "tiny-model",
        "method": method,
        "method_label": method,
        "budget_kind": "none" if budget is None else "tokens",
        "budget": budget,
        "benchmark": benchmark,
        "sample_id": sample_id,
        "score": None if error else score,
        "error": error,
        "created_at": CREATED_AT,
        **extra,
    }


def write(root, rows):
    store = ResultStore(root)
    by_cell: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_cell.setdefault((row["run_id"], row["cell_id"]), []).append(row)
    for (run_id, cell_id), cell_rows in by_cell.items():
        store.write_chunk(run_id, cell_id, 0, cell_rows)


def write_run_row(root, run_id, started_at, label=None, status="completed"):
    config = json.dumps({"label": label} if label else {"models": ["tiny-model"]})
    ResultStore(root).write_run({"run_id": run_id, "status": status, "started_at": started_at, "config": config})


def records(root, name, **params):
    return json.loads(run_query(root, name, params=params or None, output="json"))


def by_method_budget(rows):
    return {(row["method_label"], row["budget"]): row for row in rows}


def test_latency_means_and_decode_rate(tmp_path):
    write(
        tmp_path,
        [
            sample("a", 1.0, prefill_s=1.0, compression_s=0.1, tokens_generated=10, decode_s=1.0),
            sample("b", 1.0, prefill_s=3.0, compression_s=0.3, tokens_generated=30, decode_s=2.0),
            # decode_s = 0 stays out of the decode rate but counts in the other means.
            sample("c", 1.0, prefill_s=2.0, compression_s=0.2, tokens_generated=5, decode_s=0.0),
            sample("d", None, error="OOM", prefill_s=100.0, compression_s=9.0, tokens_generated=1, decode_s=1.0),
        ],
    )
    (row,) = records(tmp_path, "latency")
    assert (row["n"], row["errors"]) == (3, 1)
    assert row["mean_prefill_s"] == pytest.approx(2.0)
    assert row["mean_compression_s"] == pytest.approx(0.2)
    assert row["mean_decode_s"] == pytest.approx(1.0)
    assert row["decode_tokens_per_s"] == pytest.approx(40 / 3)


PARETO_POINTS = [
    # (method, budget, scores, kv_bytes_kept, kl): two samples per point, same bytes and KL.
    ("full", None, (0.9, 0.9), 1000, 0.0),
    ("capkv", 64, (0.5, 0.7), 100, 0.2),
    ("snapkv", 64, (0.5, 0.5), 100, 0.1),
    ("capkv", 128, (0.5, 0.6), 200, 0.15),
    ("streaming_llm", 32, (0.3, 0.3), 50, 0.5),
    ("knorm", 64, (1.0, 0.9), 1000, 0.3),
]


def test_pareto_frontier_membership(tmp_path):
    rows = []
    for method, budget, scores, kept_bytes, kl in PARETO_POINTS:
        for index, score in enumerate(scores):
            rows.append(
                sample(f"s{index}", score, method=method, budget=budget, benchmark="squad",
                       kv_bytes_kept=kept_bytes, kv_bytes_full=1000, kl=kl, masked_only=method == "knorm")
            )
    rows.append(sample("failed", None, error="OOM", benchmark="squad", kv_bytes_kept=1, kl=0.0))
    write(tmp_path, rows)
    points = by_method_budget(records(tmp_path, "pareto"))

    assert points[("capkv", 64)]["mean_score"] == pytest.approx(0.6)
    assert points[("capkv", 64)]["mean_kv_bytes_kept"] == 100
    assert (points[("capkv", 64)]["n"], points[("capkv", 64)]["errors"]) == (2, 1)
    assert points[("knorm", 64)]["masked_only"] is True
    score_frontier = {key for key, row in points.items() if row["on_score_frontier"]}
    kl_frontier = {key for key, row in points.items() if row["on_kl_frontier"]}
    # knorm masks only, so it keeps full bytes, and its higher score pushes the full cache off the score frontier.
    assert score_frontier == {("streaming_llm", 32), ("capkv", 64), ("knorm", 64)}
    assert kl_frontier == {("streaming_llm", 32), ("snapkv", 64), ("full", None)}


def test_pareto_frontier_per_benchmark(tmp_path):
    write(
        tmp_path,
        [
            sample("a", 0.9, benchmark="needle", kv_bytes_kept=100, kl=0.1),
            sample("a", 0.1, method="snapkv", benchmark="squad", kv_bytes_kept=500, kl=0.9),
        ],
    )
    rows = records(tmp_path, "pareto")
    assert [(row["benchmark"], row["on_score_frontier"], row["on_kl_frontier"]) for row in rows] == [
        ("needle", True, True),
        ("squad", True, True),
    ]


def test_pareto_point_without_kl(tmp_path):
    write(tmp_path, [sample("a", 0.5, kv_bytes_kept=100, kl=None)])
    (row,) = records(tmp_path, "pareto")
    assert row["on_score_frontier"] is True
    assert row["on_kl_frontier"] is None


def test_needle_grid_parses_sample_ids(tmp_path):
    write(
        tmp_path,
        [
            sample("needle_grid-1000-0-0", 1.0, benchmark="needle_grid"),
            sample("needle_grid-1000-0-1", 0.0, benchmark="needle_grid"),
            sample("needle_grid-1000-50-0", 1.0, benchmark="needle_grid"),
            sample("needle_grid-2000-12.5-0", 0.0, benchmark="needle_grid"),
            sample("needle_grid-2000-12.5-1", None, benchmark="needle_grid", error="OOM"),
            # The single-depth needle benchmark's ids carry no depth, so they stay out.
            sample("needle-2000-0003", 1.0, benchmark="needle"),
        ],
    )
    rows = records(tmp_path, "needle_grid")
    columns = ("context_length", "depth_percent", "n", "errors", "mean_score")
    summary = [tuple(row[column] for column in columns) for row in rows]
    assert summary == [(1000, 0.0, 2, 0, 0.5), (1000, 50.0, 1, 0, 1.0), (2000, 12.5, 1, 1, 0.0)]
    assert {row["benchmark"] for row in rows} == {"needle_grid"}


def test_task_scores_multi_task_benchmarks_only(tmp_path):
    write(
        tmp_path,
        [
            sample("a1", 1.0, benchmark="ruler", task="niah"),
            sample("a2", 0.0, benchmark="ruler", task="niah"),
            sample("b1", 0.25, benchmark="ruler", task="vt"),
            sample("b2", None, benchmark="ruler", task="vt", error="OOM"),
            sample("c1", 1.0, benchmark="squad", task="squad"),
        ],
    )
    rows = records(tmp_path, "task_scores")
    summary = [(row["benchmark"], row["task"], row["n"], row["errors"], row["mean_score"]) for row in rows]
    assert summary == [("ruler", "niah", 2, 0, 0.5), ("ruler", "vt", 1, 1, 0.25)]


def test_capacity_spearman_hand_computed(tmp_path):
    write(
        tmp_path,
        [
            # No ties: d = (0, 1, 1, 0), so rho = 1 - 6 * 2 / (4 * 15) = 0.8. KL falls as capacity rises: rho = -1.
            sample("a", 1.0, benchmark="needle", capacity=1.0, kl=4.0),
            sample("b", 3.0, benchmark="needle", capacity=2.0, kl=3.0),
            sample("c", 2.0, benchmark="needle", capacity=3.0, kl=2.0),
            sample("d", 4.0, benchmark="needle", capacity=4.0, kl=1.0),
            sample("e", None, benchmark="needle", capacity=0.0, kl=9.0, error="OOM"),
            # Tied capacities share rank 2.5: Pearson of (1, 2.5, 2.5, 4) and (1, 2, 3, 4) is sqrt(0.9).
            sample("a", 1.0, benchmark="squad", capacity=1.0),
            sample("b", 2.0, benchmark="squad", capacity=2.0),
            sample("c", 3.0, benchmark="squad", capacity=2.0),
            sample("d", 4.0, benchmark="squad", capacity=3.0),
            # Two samples are too few for a coefficient.
            sample("a", 1.0, benchmark="tiny", capacity=1.0, kl=1.0),
            sample("b", 2.0, benchmark="tiny", capacity=2.0, kl=2.0),
            # A constant score has no rank correlation.
            sample("a", 1.0, benchmark="flat", capacity=1.0),
            sample("b", 1.0, benchmark="flat", capacity=2.0),
            sample("c", 1.0, benchmark="flat", capacity=3.0),
        ],
    )
    rows = {row["benchmark"]: row for row in records(tmp_path, "capacity_spearman")}
    assert rows["needle"]["n_score"] == 4
    assert rows["needle"]["spearman_score"] == pytest.approx(0.8)
    assert rows["needle"]["spearman_kl"] == pytest.approx(-1.0)
    assert rows["squad"]["spearman_score"] == pytest.approx(math.sqrt(0.9))
    assert (rows["squad"]["n_kl"], rows["squad"]["spearman_kl"]) == (0, None)
    assert (rows["tiny"]["n_score"], rows["tiny"]["spearman_score"]) == (2, None)
    assert (rows["flat"]["n_score"], rows["flat"]["spearman_score"]) == (3, None)


def test_capacity_points_means(tmp_path):
    write(
        tmp_path,
        [
            sample("a", 1.0, capacity=0.2, kl=0.1),
            sample("b", 0.0, capacity=0.4, kl=0.3),
            sample("c", 1.0, capacity=None, kl=5.0),
            sample("a", 1.0, method="snapkv", capacity=None),
        ],
    )
    (row,) = records(tmp_path, "capacity")
    assert (row["method_label"], row["n"]) == ("capkv", 2)
    assert row["mean_capacity"] == pytest.approx(0.3)
    assert row["mean_score"] == pytest.approx(0.5)
    assert row["mean_kl"] == pytest.approx(0.2)


def test_nightly_runs_and_trend(tmp_path):
    day = dt.timedelta(days=1)
    write_run_row(tmp_path, "run-late", CREATED_AT + day, label="nightly")
    write_run_row(tmp_path, "run-early", CREATED_AT, label="nightly")
    write_run_row(tmp_path, "run-manual", CREATED_AT + 2 * day)
    write(
        tmp_path,
        [
            sample("a", 1.0, run_id="run-early"),
            sample("b", 0.0, run_id="run-early"),
            sample("a", 1.0, run_id="run-late"),
            sample("b", 0.5, run_id="run-late"),
            sample("a", 0.0, run_id="run-manual"),
        ],
    )
    runs = records(tmp_path, "nightly_runs")
    assert [run["run_id"] for run in runs] == ["run-early", "run-late"]
    trend = records(tmp_path, "nightly_trend")
    assert [(row["run_id"], row["n"], row["mean_score"]) for row in trend] == [
        ("run-early", 2, 0.5),
        ("run-late", 2, 0.75),
    ]


def paired_rows():
    rows = []
    a_scores, b_scores = [1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]
    for index, (score_a, score_b) in enumerate(zip(a_scores, b_scores)):
        timing_a = {"prefill_s": 1.0, "compression_s": 0.0, "decode_s": 1.0, "kv_bytes_kept": 100}
        timing_b = {"prefill_s": 2.0, "compression_s": 0.0, "decode_s": 1.0, "kv_bytes_kept": 110}
        rows.append(sample(f"s{index}", score_a, run_id="run-a", **timing_a))
        rows.append(sample(f"s{index}", score_b, run_id="run-b", **timing_b))
    # Samples without a pair: one only in A, one failed in B.
    rows.append(sample("only-a", 1.0, run_id="run-a"))
    rows.append(sample("failed-b", None, run_id="run-b", error="OOM"))
    rows.append(sample("failed-b", 0.0, run_id="run-a"))
    # Every pair changes by exactly +0.25.
    for index, score_a in enumerate([0.5, 0.25, 0.75]):
        rows.append(sample(f"t{index}", score_a, run_id="run-a", method="snapkv"))
        rows.append(sample(f"t{index}", score_a + 0.25, run_id="run-b", method="snapkv"))
    # A cell that only run B has.
    rows.append(sample("u", 0.5, run_id="run-b", method="streaming_llm", budget=32))
    return rows


def test_paired_deltas_hand_computed(tmp_path):
    write(tmp_path, paired_rows())
    rows = by_method_budget(records(tmp_path, "paired_deltas", run_a="run-a", run_b="run-b"))
    capkv = rows[("capkv", 64)]
    assert (capkv["n"], capkv["n_a"], capkv["n_b"]) == (4, 6, 4)
    assert (capkv["mean_a"], capkv["mean_b"], capkv["delta"]) == (0.5, 1.0, 0.5)
    assert 0.0 <= capkv["ci_low"] < 0.5 < capkv["ci_high"] <= 1.0
    assert capkv["kv_bytes_ratio"] == pytest.approx(1.1)
    assert capkv["latency_ratio"] == pytest.approx(1.5)

    snapkv = rows[("snapkv", 64)]
    assert snapkv["n"] == 3
    assert snapkv["delta"] == pytest.approx(0.25)
    assert (snapkv["ci_low"], snapkv["ci_high"]) == (0.25, 0.25)

    only_b = rows[("streaming_llm", 32)]
    assert (only_b["n"], only_b["n_a"], only_b["n_b"]) == (0, 0, 1)
    assert (only_b["delta"], only_b["ci_low"], only_b["ci_high"]) == (None, None, None)
    assert len(rows) == 3


def test_paired_deltas_deterministic(tmp_path):
    write(tmp_path, paired_rows())
    first = records(tmp_path, "paired_deltas", run_a="run-a", run_b="run-b")
    second = records(tmp_path, "paired_deltas", run_a="run-a", run_b="run-b")
    assert first == second


def test_sample_drilldown_order_and_limit(tmp_path):
    write(
        tmp_path,
        [
            sample("high", 0.9, prediction="12345", references=["12345"]),
            sample("low", 0.1, prediction="1", references=["12345", "54321"], kl=0.5),
            sample("mid", 0.5),
            sample("failed", None, error="OOM"),
            sample("other", 1.0, method="snapkv"),
        ],
    )
    rows = records(tmp_path, "sample_drilldown", limit_per_cell=2)
    assert [(row["method_label"], row["sample_id"]) for row in rows] == [
        ("capkv", "failed"),
        ("capkv", "low"),
        ("snapkv", "other"),
    ]
    assert [row["cell_samples"] for row in rows] == [4, 4, 1]
    assert rows[1]["references"] == ["12345", "54321"]
    assert rows[1]["kl"] == 0.5
    assert rows[0]["error"] == "OOM"
