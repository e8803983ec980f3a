"""Measure what Prefect and Ray add over a plain loop, and throughput with 1 and 2 Ray actors.

The same cells (9 methods x 4 budgets on needle by default) run three ways:

- a plain loop: the model loaded in this process and `workers.evaluate.evaluate_unit` called on
  each work unit that `flows.matrix.plan_units` makes;
- `capkv-eval run --config` with `num_actors: 1`, and again with `num_actors: 2`, each into a fresh
  store. The wall time covers the whole command: Prefect's ephemeral server, Ray start, the
  actors' model loads, the cells, the store writes and the dashboard.

Throughput is (cell, sample) pairs per second. Peak RSS per actor is the maximum of the
`peak_memory_bytes` column over the run's rows. That column is the writing actor's resident-set
high-water mark. Rows do not name their actor, so with 2 actors the figure is the larger of the two.

    .venv/bin/python bench/flow_overhead.py --samples 2 --context-length 1000 --max-new-tokens 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["streaming_llm", "snapkv", "tova", "knorm", "keydiff", "expected_attention", "capkv", "random", "adakv"]


def run_config(args, num_actors: int, store: str) -> dict:
    return {
        "models": [args.model],
        "methods": args.methods,
        "budgets": args.budgets,
        "benchmarks": [{"name": "needle", "num_samples": args.samples,
                        "params": {"context_length": args.context_length}}],
        "max_new_tokens": args.max_new_tokens,
        "chunk_size": args.chunk_size,
        "num_actors": num_actors,
        "store": store,
    }


def run_plain_loop(args) -> tuple[float, int, float]:
    """Return (seconds, pairs, model load seconds) for evaluate_unit called in a loop in this process."""
    from flows.config import parse_config
    from flows.matrix import expand_cells, plan_units
    from workers.evaluate import evaluate_unit
    from workers.models import load_model

    config = parse_config(run_config(args, 1, "unused"))
    load_started = time.perf_counter()
    loaded = load_model(args.model, dtype=config.dtype)
    load_seconds = time.perf_counter() - load_started
    units = plan_units(config, expand_cells(config), run_id="plain-loop")
    started = time.perf_counter()
    pairs = 0
    for unit in units:
        rows = evaluate_unit(loaded, unit)
        pairs += sum(len(cell_rows) for cell_rows in rows.values())
    return time.perf_counter() - started, pairs, load_seconds


def run_flow(args, num_actors: int, workdir: Path) -> tuple[float, int, int]:
    """Return (seconds, pairs, max peak_memory_bytes) for `capkv-eval run` with `num_actors` actors."""
    from storage.sql import connect

    store = workdir / f"store-{num_actors}"
    config_path = workdir / f"run-{num_actors}.yaml"
    config_path.write_text(yaml.safe_dump(run_config(args, num_actors, str(store))), encoding="utf-8")
    command = [str(Path(sys.executable).parent / "capkv-eval"), "run", "--config", str(config_path)]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"capkv-eval run with {num_actors} actors failed with exit code "
                           f"{completed.returncode}:\n{completed.stderr[-3000:]}")
    connection = connect(str(store))
    pairs, peak = connection.execute("SELECT count(*), max(peak_memory_bytes) FROM samples").fetchone()
    return seconds, int(pairs), int(peak or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="bundled model name, folder or hub id")
    parser.add_argument("--methods", nargs="+", default=METHODS, help="methods (one cell per method and budget)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256, 512], help="tokens kept per KV head")
    parser.add_argument("--samples", type=int, default=2, help="needle samples per cell")
    parser.add_argument("--context-length", type=int, default=1000, help="needle context length in tokens")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="maximum answer tokens")
    parser.add_argument("--chunk-size", type=int, default=1, help="samples per work unit (units are spread over actors)")
    parser.add_argument("--actors", type=int, nargs="*", default=[1, 2], help="actor counts to run through the flow")
    args = parser.parse_args()

    cells = len(args.methods) * len(args.budgets)
    print(f"{cells} cells x {args.samples} needle samples at {args.context_length} tokens, "
          f"max {args.max_new_tokens} new tokens, chunk size {args.chunk_size}; load average {os.getloadavg()[0]:.2f}",
          flush=True)
    plain_seconds, pairs, load_seconds = run_plain_loop(args)
    plain_rate = pairs / plain_seconds
    print(f"plain loop: {pairs} pairs in {plain_seconds:.1f} s (+ {load_seconds:.1f} s model load) -> "
          f"{plain_rate:.3f} pairs/s; load average {os.getloadavg()[0]:.2f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="capkv-flow-bench-") as workdir:
        for num_actors in args.actors:
            seconds, flow_pairs, peak = run_flow(args, num_actors, Path(workdir))
            rate = flow_pairs / seconds
            overhead = seconds - plain_seconds - load_seconds
            print(f"capkv-eval run, {num_actors} actor(s): {flow_pairs} pairs in {seconds:.1f} s -> {rate:.3f} pairs/s "
                  f"({rate / plain_rate:.2f}x the plain loop; {overhead:+.1f} s beyond loop + one model load); "
                  f"peak RSS per actor {peak / 2**20:,.0f} MiB; load average {os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
