"""Write a small synthetic store that fills every dashboard section, for screenshots and browser tests.

    .venv/bin/python -m dashboards.demo results-demo --html results-demo/dashboard.html

The store holds three nightly runs of one model: a needle_grid benchmark (context length
x depth), a RULER-style suite and LongBench subsets with several tasks each, four
eviction methods at three token budgets plus the full cache, and one method that only
masks tokens. The numbers are invented but shaped like a real run: scores and capacity
rise with the fraction of the context kept, and KL falls with it. The latest run has a
planted score drop for capkv at budget 1024 on ruler, so the regression table has a row
to flag. Every value is a pure function of its inputs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from storage.schema import SCHEMA_VERSION
from storage.store import ResultStore
from storage.synthetic import KV_BYTES_PER_TOKEN, NUM_LAYERS

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUDGETS = (64, 256, 1024)
FIRST_RUN_START = dt.datetime(2026, 12, 2, 2, 0, tzinfo=dt.timezone.utc)
NIGHTLY_RUNS = 3
# Fraction of samples that fail with an error.
ERROR_RATE = 0.02


@dataclass(frozen=True)
class DemoMethod:
    """An eviction method of the demo: how well it picks tokens (0 to 0.3) and whether it only masks."""

    method: str
    label: str
    quality: float
    masked_only: bool = False


METHODS = (
    DemoMethod("capkv", "capkv(tau=5)", 0.3),
    DemoMethod("snapkv", "snapkv", 0.2),
    DemoMethod("streaming_llm", "streaming_llm", 0.0),
    DemoMethod("knorm", "knorm(masked)", 0.1, masked_only=True),
)
FULL = DemoMethod("full", "full", 0.3)


def demo_samples(benchmark: str) -> list[tuple[str, str, int, float]]:
    """Return (sample_id, task, context tokens, difficulty 0-1) of every sample of a demo benchmark."""
    if benchmark == "needle_grid":
        return [
            (f"needle_grid-{length}-{depth:g}-{repeat}", f"passkey@{length}", length, depth / 100)
            for length in (1000, 2000, 4000)
            for depth in (0.0, 25.0, 50.0, 75.0, 100.0)
            for repeat in range(2)
        ]
    tasks = {
        "ruler": ("niah_single_number", "variable_tracking", "common_words"),
        "longbench": ("qasper", "trec", "gov_report"),
    }[benchmark]
    return [
        (f"{task}-4096-{index:04d}", task, 4096 - 512 * (index % 3), 0.2 + 0.3 * position)
        for position, task in enumerate(tasks)
        for index in range(10)
    ]


def _success_probability(method: DemoMethod, budget: int | None, context: int, difficulty: float) -> float:
    if budget is None:
        return 0.95 - 0.2 * difficulty
    kept_fraction = min(1.0, budget / context)
    if method.method == "streaming_llm":
        # Keeps the first and the most recent tokens, so a late needle survives and a middle one does not.
        return 0.9 if difficulty >= 1 - kept_fraction else 0.1 + 0.5 * kept_fraction
    return max(0.02, min(0.95, 0.25 + 0.6 * kept_fraction + method.quality - 0.35 * difficulty))


def demo_row(run_index: int, run_id: str, method: DemoMethod, budget: int | None, benchmark: str,
             sample: tuple[str, str, int, float]) -> dict:
    """Return one sample row of the demo store."""
    sample_id, task, context, difficulty = sample
    rng = random.Random(f"{run_index}:{method.label}:{budget}:{benchmark}:{sample_id}")
    kept_tokens = context if budget is None else min(budget, context)
    kept_fraction = kept_tokens / context
    probability = _success_probability(method, budget, context, difficulty)
    if run_index == NIGHTLY_RUNS - 1 and method.method == "capkv" and budget == 1024 and benchmark == "ruler":
        probability *= 0.3
    failed = rng.random() < ERROR_RATE
    if benchmark == "longbench":
        score = max(0.0, min(1.0, probability + rng.gauss(0, 0.1)))
    else:
        score = 1.0 if rng.random() < probability else 0.0
    full_bytes = context * KV_BYTES_PER_TOKEN
    kept_bytes = full_bytes if method.masked_only else kept_tokens * KV_BYTES_PER_TOKEN
    return {
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "model": MODEL, "model_revision": "main",
        "method": method.method, "method_params": json.dumps({"tau": 5} if method.method == "capkv" else {}),
        "method_label": method.label, "budget_kind": "none" if budget is None else "tokens", "budget": budget,
        "benchmark": benchmark, "benchmark_version": "1", "task": task, "query_aware": False,
        "chat_template": True, "truncation": "middle", "phase": "prefill", "seed": 0, "sample_id": sample_id,
        "prompt_hash": hashlib.sha256(f"{benchmark}:{sample_id}".encode()).hexdigest()[:16],
        "context_tokens": context, "question_tokens": 24, "truncated_tokens": 0,
        "kept_tokens": float(kept_tokens), "kept_tokens_total": kept_tokens * NUM_LAYERS * 3,
        "kept_tokens_per_layer": [float(kept_tokens)] * NUM_LAYERS,
        "prediction": None if failed else f"{rng.randrange(10**5):05d}",
        "references": [f"{rng.randrange(10**5):05d}"],
        "score": None if failed else score,
        "metrics": None if failed else {"exact_match": score},
        "kl": None if failed else (1 - kept_fraction) * (0.6 - method.quality) * rng.uniform(0.5, 1.5),
        "top1_agreement": None if failed else 1 - (1 - kept_fraction) * rng.uniform(0.0, 0.3),
        "capacity": kept_fraction * (0.5 + method.quality) + rng.gauss(0, 0.05),
        "kv_bytes_full": full_bytes, "kv_bytes_kept": kept_bytes, "masked_only": method.masked_only,
        "peak_memory_bytes": 300_000_000 + full_bytes + kept_bytes,
        "prefill_s": context / 2800 * rng.uniform(0.95, 1.05),
        "compression_s": 0.0 if budget is None else 0.004 + 0.01 * method.quality,
        "decode_s": 6 / (40 + 30 * (1 - kept_fraction)), "tokens_generated": 6,
        "error": "RuntimeError: demo failure" if failed else None,
        "created_at": FIRST_RUN_START + dt.timedelta(days=run_index, minutes=20),
    }


def write_demo_store(root: str | Path) -> list[str]:
    """Write the demo store under `root` and return its run ids, oldest first."""
    store = ResultStore(root)
    run_ids = []
    for run_index in range(NIGHTLY_RUNS):
        started = FIRST_RUN_START + dt.timedelta(days=run_index)
        run_id = f"run-{started:%Y%m%dT%H%M%S}-demo{run_index:02d}"
        run_ids.append(run_id)
        _write_run(store, run_index, run_id, started)
    return run_ids


def _write_run(store: ResultStore, run_index: int, run_id: str, started: dt.datetime) -> None:
    cells = [(FULL, None)] + [(method, budget) for method in METHODS for budget in BUDGETS]
    for benchmark in ("needle_grid", "ruler", "longbench"):
        samples = demo_samples(benchmark)
        for method, budget in cells:
            cell_id = hashlib.sha256(f"{MODEL}|{method.label}|{budget}|{benchmark}".encode()).hexdigest()[:16]
            rows = [demo_row(run_index, run_id, method, budget, benchmark, sample) for sample in samples]
            store.write_chunk(run_id, cell_id, 0, rows)
    store.write_run(
        {
            "run_id": run_id, "status": "completed", "started_at": started,
            "finished_at": started + dt.timedelta(minutes=30),
            "config": json.dumps({"label": "nightly", "models": [MODEL]}),
            "git_commit": f"{run_index:040d}", "package_versions": json.dumps({"duckdb": "2.0.1"}),
            "host": "demo", "device": "cpu",
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the demo result store, and optionally its dashboard.")
    parser.add_argument("root", help="folder to write the store to")
    parser.add_argument("--html", help="also write the dashboard of the latest run to this HTML file")
    args = parser.parse_args(argv)
    run_ids = write_demo_store(args.root)
    print(f"demo store: {args.root} with runs {', '.join(run_ids)}")
    if args.html:
        from dashboards.report import build_dashboard

        print(f"dashboard: {build_dashboard(args.root, args.html, run_ids=[run_ids[-1]])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
