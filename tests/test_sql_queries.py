"""Named queries: values checked against hand-computed results on tiny stores."""

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
    """A minimal valid sample row. The cell id is derived from method, budget and benchmark."""
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


def write(root, rows, chunk_index=0):
    store = ResultStore(root)
    by_cell: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        by_cell.setdefault((row["run_id"], row["cell_id"]), []).append(row)
    for (run_id, cell_id), cell_rows in by_cell.items():
        store.write_chunk(run_id, cell_id, chunk_index, cell_rows)


def records(root, name, **params):
    return json.loads(run_query(root, name, params=params or None, output="json"))


def test_leaderboard_tiny_case(tmp_path):
    write(tmp_path, [sample("a", 1.0), sample("b", 0.0), sample("c", 0.5), sample("d", None, error="OOM")])
    (row,) = records(tmp_path, "leaderboard")
    assert (row["model"], row["method_label"], row["budget"], row["benchmark"]) == ("tiny-model", "capkv", 64, "needle")
    assert row["n"] == 3
    assert row["errors"] == 1
    assert row["mean_score"] == pytest.approx(0.5)
    assert 0.0 <= row["ci_low"] < row["mean_score"] < row["ci_high"] <= 1.0


def test_leaderboard_groups_by_budget(tmp_path):
    write(
        tmp_path,
        [
            sample("a", 1.0, budget=64),
            sample("b", 0.0, budget=64),
            sample("a", 1.0, budget=128),
            sample("a", 0.25, method="full", budget=None),
            sample("b", 0.75, method="full", budget=None),
        ],
    )
    rows = records(tmp_path, "leaderboard")
    summary = [(row["method_label"], row["budget"], row["n"], row["mean_score"]) for row in rows]
    assert summary == [("capkv", 64, 2, 0.5), ("capkv", 128, 1, 1.0), ("full", None, 2, 0.5)]


def test_leaderboard_interval_deterministic(tmp_path):
    scores = [(i * 37 % 101) / 100 for i in range(60)]
    write(tmp_path, [sample(f"s{i:03d}", score) for i, score in enumerate(scores)])
    first = records(tmp_path, "leaderboard")
    second = records(tmp_path, "leaderboard")
    assert first == second
    (row,) = first
    assert row["mean_score"] == pytest.approx(sum(scores) / len(scores))
    assert row["ci_low"] < row["mean_score"] < row["ci_high"]


def test_leaderboard_interval_width(tmp_path):
    # 400 binary scores with mean 0.5: the normal approximation gives a 95% half-width of
    # 1.96 * sqrt(0.25 / 400) = 0.049, which the bootstrap should match within sampling noise.
    write(tmp_path, [sample(f"s{i:03d}", float(i % 2)) for i in range(400)])
    (row,) = records(tmp_path, "leaderboard")
    assert row["mean_score"] == pytest.approx(0.5)
    assert row["ci_high"] - row["mean_score"] == pytest.approx(0.049, abs=0.008)
    assert row["mean_score"] - row["ci_low"] == pytest.approx(0.049, abs=0.008)


def test_leaderboard_constant_scores(tmp_path):
    write(tmp_path, [sample(f"s{i}", 0.75) for i in range(30)])
    (row,) = records(tmp_path, "leaderboard")
    assert (row["ci_low"], row["mean_score"], row["ci_high"]) == (0.75, 0.75, 0.75)


def test_leaderboard_only_errors(tmp_path):
    write(tmp_path, [sample("a", None, error="timeout"), sample("b", None, error="timeout")])
    (row,) = records(tmp_path, "leaderboard")
    assert (row["n"], row["errors"], row["mean_score"], row["ci_low"], row["ci_high"]) == (0, 2, None, None, None)


def test_memory_hand_computed(tmp_path):
    write(
        tmp_path,
        [
            sample("a", 1.0, kv_bytes_full=100, kv_bytes_kept=10, kept_tokens=8.0, context_tokens=80,
                   peak_memory_bytes=1000),
            sample("b", 1.0, kv_bytes_full=300, kv_bytes_kept=30, kept_tokens=8.0, context_tokens=240,
                   peak_memory_bytes=3000),
            sample("c", None, error="OOM", kv_bytes_full=10_000, kv_bytes_kept=10_000, peak_memory_bytes=99_999),
        ],
    )
    (row,) = records(tmp_path, "memory")
    assert (row["n"], row["errors"]) == (2, 1)
    assert row["mean_kv_bytes_full"] == 200
    assert row["mean_kv_bytes_kept"] == 20
    assert row["kv_bytes_ratio"] == pytest.approx(0.1)
    assert row["mean_kept_tokens"] == 8
    assert row["kept_tokens_ratio"] == pytest.approx(16 / 320)
    assert row["max_peak_memory_bytes"] == 3000
    assert row["mean_peak_memory_bytes"] == 2000


def test_diff_runs(tmp_path):
    write(
        tmp_path,
        [
            sample("a", 1.0, run_id="run-a", prediction="12345"),
            sample("b", 0.0, run_id="run-a", prediction="00000"),
            sample("only-a", 1.0, run_id="run-a"),
            sample("a", 0.0, run_id="run-b", prediction="99999"),
            sample("b", 0.0, run_id="run-b", prediction="00000"),
            sample("only-b", 0.5, run_id="run-b"),
        ],
    )
    rows = records(tmp_path, "diff_runs", run_a="run-a", run_b="run-b")
    by_sample = {row["sample_id"]: row for row in rows}
    assert rows[0]["sample_id"] == "a"
    assert (by_sample["a"]["score_a"], by_sample["a"]["score_b"], by_sample["a"]["delta"]) == (1.0, 0.0, -1.0)
    assert (by_sample["a"]["prediction_a"], by_sample["a"]["prediction_b"]) == ("12345", "99999")
    assert by_sample["b"]["delta"] == 0.0
    assert (by_sample["only-a"]["score_b"], by_sample["only-a"]["delta"]) == (None, None)
    assert (by_sample["only-b"]["score_a"], by_sample["only-b"]["score_b"]) == (None, 0.5)
    assert len(rows) == 4


def test_diff_runs_matches_full_method(tmp_path):
    write(
        tmp_path,
        [
            sample("a", 0.5, run_id="run-a", method="full", budget=None),
            sample("a", 1.0, run_id="run-b", method="full", budget=None),
        ],
    )
    (row,) = records(tmp_path, "diff_runs", run_a="run-a", run_b="run-b")
    assert (row["method_label"], row["budget"], row["delta"]) == ("full", None, 0.5)


def test_needle_by_budget(tmp_path):
    write(
        tmp_path,
        [
            sample("a", 1.0, budget=64),
            sample("b", 0.0, budget=64),
            sample("c", 1.0, budget=64),
            sample("d", None, budget=64, error="OOM"),
            sample("a", 1.0, budget=128),
            sample("a", 0.0, budget=64, benchmark="squad"),
        ],
    )
    rows = records(tmp_path, "needle_by_budget")
    summary = [(row["method_label"], row["budget"], row["n"], row["errors"]) for row in rows]
    assert summary == [("capkv", 64, 3, 1), ("capkv", 128, 1, 0)]
    assert math.isclose(rows[0]["mean_score"], 2 / 3)
