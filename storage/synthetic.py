"""Synthetic but schema-valid result rows, for tests and the store benchmark.

Scores rise with the budget and the `full` method scores highest, so dashboards built
from these rows have the shape of a real run. Every value is a pure function of its
inputs, so the same arguments always give the same rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from storage.schema import SCHEMA_VERSION

# Bytes of K and V per token for a small model: 30 layers x 3 KV heads x 64 dims x 2 (K, V) x 2 bytes (bf16).
KV_BYTES_PER_TOKEN = 30 * 3 * 64 * 2 * 2
NUM_LAYERS = 30
CREATED_AT = dt.datetime(2026, 12, 4, 21, 30, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class SyntheticCell:
    """One (model, method, budget, benchmark) combination."""

    model: str
    method: str
    method_label: str
    budget: int | None
    benchmark: str

    @property
    def cell_id(self) -> str:
        key = f"{self.model}|{self.method_label}|{self.budget}|{self.benchmark}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def budget_kind(self) -> str:
        return "none" if self.budget is None else "tokens"


def synthetic_cells(
    models: list[str], methods: list[str], budgets: list[int], benchmarks: list[str]
) -> list[SyntheticCell]:
    """Return the cells of a matrix: every method at every budget, plus one `full` cell per (model, benchmark)."""
    cells = []
    for model in models:
        for benchmark in benchmarks:
            cells.append(SyntheticCell(model, "full", "full", None, benchmark))
            for method in methods:
                for budget in budgets:
                    label = f"{method}(tau=5)" if method == "capkv" else method
                    cells.append(SyntheticCell(model, method, label, budget, benchmark))
    return cells


def _expected_score(cell: SyntheticCell, context_tokens: int) -> float:
    if cell.budget is None:
        return 0.95
    kept_fraction = min(1.0, cell.budget / context_tokens)
    method_bonus = {"capkv": 0.1, "snapkv": 0.05}.get(cell.method, 0.0)
    return min(0.95, 0.2 + 0.6 * kept_fraction + method_bonus)


def synthetic_sample_row(
    run_id: str, cell: SyntheticCell, chunk_index: int, sample_index: int, error: bool = False
) -> dict[str, Any]:
    """Return one sample row of `cell`. With `error`, the row is a failed sample with no score."""
    rng = random.Random(f"{cell.cell_id}:{sample_index}")
    context_tokens = rng.choice([1024, 2048, 4096])
    kept_tokens = context_tokens if cell.budget is None else min(cell.budget, context_tokens)
    score = 1.0 if rng.random() < _expected_score(cell, context_tokens) else 0.0
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "cell_id": cell.cell_id,
        "chunk_index": chunk_index,
        "model": cell.model,
        "model_revision": "main",
        "method": cell.method,
        "method_params": json.dumps({"tau": 5} if cell.method == "capkv" else {}),
        "method_label": cell.method_label,
        "budget_kind": cell.budget_kind,
        "budget": cell.budget,
        "benchmark": cell.benchmark,
        "benchmark_version": "1",
        "task": cell.benchmark,
        "query_aware": False,
        "chat_template": True,
        "truncation": "middle",
        "phase": "prefill",
        "seed": 0,
        "sample_id": f"{cell.benchmark}-{sample_index:06d}",
        "prompt_hash": hashlib.sha256(f"{cell.benchmark}:{sample_index}".encode()).hexdigest()[:16],
        "context_tokens": context_tokens,
        "question_tokens": 24,
        "truncated_tokens": 0,
        "kept_tokens": float(kept_tokens),
        "kept_tokens_total": kept_tokens * NUM_LAYERS * 3,
        "kept_tokens_per_layer": [float(kept_tokens)] * 4,
        "prediction": None if error else f"{rng.randrange(10**5):05d}",
        "references": [f"{sample_index:05d}"],
        "score": None if error else score,
        "metrics": None if error else {"exact_match": score, "f1": score},
        "kl": None if error or cell.budget is None else rng.random() * 0.1,
        "top1_agreement": None if error else 1.0 - rng.random() * 0.05,
        "capacity": rng.random(),
        "kv_bytes_full": context_tokens * KV_BYTES_PER_TOKEN,
        "kv_bytes_kept": kept_tokens * KV_BYTES_PER_TOKEN,
        "masked_only": False,
        "peak_memory_bytes": 300_000_000 + context_tokens * KV_BYTES_PER_TOKEN,
        "prefill_s": context_tokens / 2800,
        "compression_s": 0.0 if cell.budget is None else 0.01,
        "decode_s": 0.3,
        "tokens_generated": 6,
        "error": "RuntimeError: synthetic failure" if error else None,
        "created_at": CREATED_AT,
    }


def synthetic_cell_row(run_id: str, cell: SyntheticCell, num_samples: int, status: str = "completed") -> dict[str, Any]:
    """Return the cells-table row of `cell`."""
    return {
        "run_id": run_id,
        "cell_id": cell.cell_id,
        "model": cell.model,
        "method": cell.method,
        "method_label": cell.method_label,
        "budget_kind": cell.budget_kind,
        "budget": cell.budget,
        "benchmark": cell.benchmark,
        "num_samples": num_samples,
        "status": status,
        "config": json.dumps({"model": cell.model, "method": cell.method_label, "budget": cell.budget}),
        "updated_at": CREATED_AT,
    }


def synthetic_run_row(run_id: str, status: str = "completed", started_at: dt.datetime = CREATED_AT) -> dict[str, Any]:
    """Return the runs-table row of a synthetic run."""
    return {
        "run_id": run_id,
        "status": status,
        "started_at": started_at,
        "finished_at": None if status == "running" else started_at + dt.timedelta(minutes=5),
        "config": json.dumps({"synthetic": True}),
        "git_commit": "0" * 40,
        "package_versions": json.dumps({"duckdb": "2.0.1"}),
        "host": "localhost",
        "device": "cpu",
    }
