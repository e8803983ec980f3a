"""The nightly regression check: identical runs raise no alarm, a planted regression is caught."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.regression import Thresholds, compare_runs, markdown_report, paired_bootstrap_ci
from storage.store import ResultStore

ROOT = Path(__file__).resolve().parent.parent


def _rows(run_id: str, scores: list[float], kv_bytes: int = 1000, seconds: float = 1.0) -> list[dict]:
    now = dt.datetime.now(dt.timezone.utc)
    return [
        {
            "model": "m", "method": "snapkv", "method_label": "snapkv", "budget_kind": "tokens", "budget": 64,
            "benchmark": "needle", "sample_id": f"s{index}", "score": score, "kv_bytes_kept": kv_bytes,
            "kv_bytes_full": 10_000, "prefill_s": seconds, "compression_s": 0.0, "decode_s": 0.0, "created_at": now,
        }
        for index, score in enumerate(scores)
    ]


def _store_with_runs(tmp_path, baseline_rows, candidate_rows) -> str:
    store = ResultStore(str(tmp_path))
    store.write_chunk("run-a", "c1", 0, baseline_rows)
    store.write_chunk("run-b", "c1", 0, candidate_rows)
    return str(tmp_path)


def test_identical_runs_raise_no_alarm(tmp_path):
    scores = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    root = _store_with_runs(tmp_path, _rows("run-a", scores), _rows("run-b", scores))
    [comparison] = compare_runs(root, "run-b", "run-a", Thresholds())
    assert (comparison.n, comparison.delta, comparison.ci_low, comparison.ci_high) == (6, 0.0, 0.0, 0.0)
    assert comparison.reasons == []


def test_score_drop_memory_and_latency_are_regressions(tmp_path):
    baseline = _rows("run-a", [1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    candidate = _rows("run-b", [0.0, 0.0, 1.0, 0.0, 0.0, 0.0], kv_bytes=1020, seconds=2.0)
    root = _store_with_runs(tmp_path, baseline, candidate)
    [comparison] = compare_runs(root, "run-b", "run-a", Thresholds())
    assert comparison.delta == pytest.approx(-4 / 6)
    assert comparison.ci_high < 0
    assert comparison.bytes_ratio == pytest.approx(1.02)
    assert comparison.latency_ratio == pytest.approx(2.0)
    assert [reason.split()[0] for reason in comparison.reasons] == ["score", "KV", "latency"]
    assert "| m | snapkv | 64 | needle | 6 |" in markdown_report("run-b", "run-a", [comparison])


def test_small_noisy_drop_is_not_significant(tmp_path):
    baseline = _rows("run-a", [1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    candidate = _rows("run-b", [0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    [comparison] = compare_runs(_store_with_runs(tmp_path, baseline, candidate), "run-b", "run-a", Thresholds())
    assert comparison.delta == pytest.approx(-1 / 6)
    assert comparison.ci_high > 0
    assert comparison.reasons == []


def test_paired_bootstrap_is_seeded():
    import numpy as np

    differences = np.array([0.0, -1.0, 0.5, -0.5])
    assert paired_bootstrap_ci(differences, 500, 3) == paired_bootstrap_ci(differences, 500, 3)


SUITE = {
    "models": ["smollm2-135m"],
    "methods": ["snapkv"],
    "budgets": [160],
    "benchmarks": [{"name": "needle", "num_samples": 6, "params": {"context_length": 600}}],
    "chunk_size": 6,
}


def _nightly(config: Path, faults: str = "") -> subprocess.CompletedProcess:
    environment = {**os.environ, "CAPKV_EVAL_FAULTS": faults}
    # Timing on a shared CI machine is too noisy for the latency rule; it is checked above.
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "nightly", "--config", str(config), "--latency-increase", "100"],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=1200,
    )


@pytest.mark.real_model
def test_planted_regression_caught_end_to_end(tmp_path):
    config = tmp_path / "suite.yaml"
    config.write_text(yaml.safe_dump({**SUITE, "store": str(tmp_path / "results")}))

    first = _nightly(config)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    assert "becomes the baseline" in first.stdout

    second = _nightly(config)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    assert "no regression in 1 keys" in second.stdout

    broken = _nightly(config, faults="invert-scores:snapkv")
    assert broken.returncode == 1, broken.stdout + broken.stderr[-3000:]
    assert "1 regression(s)" in broken.stdout
    report = broken.stderr[broken.stderr.index("# Nightly regression check"):]
    assert "| smollm2-135m | snapkv | 160 | needle | 6 |" in report
    print(report[:1500])
