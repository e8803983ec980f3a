"""Greedy decoding is deterministic: the same cells evaluated twice on one loaded model give identical rows."""

from __future__ import annotations

import pytest

from flows.config import parse_config
from flows.matrix import expand_cells, plan_units
from workers.evaluate import evaluate_unit

pytestmark = pytest.mark.real_model

CONFIG = {
    "models": ["smollm2-135m"],
    "methods": ["snapkv", "capkv"],
    "budgets": [64],
    "benchmarks": [{"name": "needle", "num_samples": 2, "params": {"context_length": 400}}],
}

# Every column that the model's computation produces; timings and memory peaks vary by design.
COMPARED_COLUMNS = (
    "sample_id", "prompt_hash", "context_tokens", "prediction", "score", "metrics", "tokens_generated",
    "kept_tokens", "kept_tokens_per_layer", "kv_bytes_kept", "kv_bytes_full", "kl", "top1_agreement", "capacity",
)


def test_same_cells_twice_identical(smollm2):
    config = parse_config(CONFIG)
    units = plan_units(config, expand_cells(config), "run-20261204T000000-dddddd")
    assert len(units) == 1  # both samples in one chunk (chunk_size 2)

    first = evaluate_unit(smollm2, units[0])
    second = evaluate_unit(smollm2, units[0])

    assert first.keys() == second.keys()
    assert len(first) == 2
    for cell_id, rows in first.items():
        assert len(rows) == 2
        for row, repeat in zip(rows, second[cell_id]):
            assert row.get("error") is None, row.get("error")
            assert row["prediction"], f"{row['method']} gave an empty prediction on {row['sample_id']}"
            for column in COMPARED_COLUMNS:
                assert row[column] == repeat[column], f"{row['method_label']} {row['sample_id']} {column}"
