"""Write a synthetic result store and time the leaderboard query before and after compaction.

    .venv/bin/python bench/make_synthetic_store.py --rows 100000

Rows go through ResultStore.write_chunk, one file per (cell, chunk), the way an
evaluation run writes them. The script then times two queries, each including
connect(): the `leaderboard` named query (bootstrap intervals, CPU-bound) and a plain
scan that averages the score per cell (dominated by opening files). It compacts the
run and times both again. Without --root the store goes to a temporary folder that is
deleted at the end.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.files import list_data_files  # noqa: E402
from storage.sql import connect, load_query  # noqa: E402
from storage.store import ResultStore  # noqa: E402
from storage.synthetic import (  # noqa: E402
    synthetic_cell_row,
    synthetic_cells,
    synthetic_run_row,
    synthetic_sample_row,
)

RUN_ID = "run-20261204T213000-bench0"
MODELS = ["HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct"]
METHODS = ["capkv", "snapkv", "streaming_llm", "knorm"]
BUDGETS = [64, 128, 256, 512, 1024]
BENCHMARKS = ["needle", "longbench_qasper", "ruler_vt", "squad"]
SCAN_QUERY = "SELECT cell_id, avg(score) AS mean_score, count(*) AS n FROM samples GROUP BY cell_id"
# One failed sample in this many, so the error handling is part of the timing.
ERROR_EVERY = 97


def write_store(store: ResultStore, rows: int, chunk_size: int) -> tuple[int, int]:
    """Write about `rows` sample rows and return (rows written, cells)."""
    cells = synthetic_cells(MODELS, METHODS, BUDGETS, BENCHMARKS)
    per_cell = math.ceil(rows / len(cells))
    store.write_run(synthetic_run_row(RUN_ID, status="running"))
    written = 0
    for cell in cells:
        count = min(per_cell, rows - written)
        if count <= 0:
            break
        for chunk_index, start in enumerate(range(0, count, chunk_size)):
            indices = range(start, min(start + chunk_size, count))
            chunk = [synthetic_sample_row(RUN_ID, cell, chunk_index, i, error=i % ERROR_EVERY == 0) for i in indices]
            store.write_chunk(RUN_ID, cell.cell_id, chunk_index, chunk)
        store.write_cell(synthetic_cell_row(RUN_ID, cell, count))
        written += count
    store.write_run(synthetic_run_row(RUN_ID, status="completed"))
    return written, len(cells)


def time_query(root: str, sql: str) -> tuple[float, int]:
    """Return (seconds, result rows) for connect() plus one query."""
    start = time.perf_counter()
    connection = connect(root)
    result = connection.sql(sql).fetchall()
    connection.close()
    return time.perf_counter() - start, len(result)


def count_sample_files(store: ResultStore) -> int:
    return len(list_data_files(store.root, "samples"))


def measure(label: str, root: str, store: ResultStore) -> None:
    files = count_sample_files(store)
    leaderboard_s, groups = time_query(root, load_query("leaderboard"))
    scan_s, cells = time_query(root, SCAN_QUERY)
    print(
        f"{label}: {files} sample files; leaderboard {leaderboard_s:.2f} s ({groups} rows); "
        f"per-cell scan {scan_s:.2f} s ({cells} rows)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="sample rows to write (default 1,000,000)")
    parser.add_argument("--chunk-size", type=int, default=50, help="sample rows per (cell, chunk) file (default 50)")
    parser.add_argument("--root", help="store folder to write (default: a temporary folder, deleted at the end)")
    args = parser.parse_args(argv)

    root = args.root or tempfile.mkdtemp(prefix="capkv-bench-")
    store = ResultStore(root)
    try:
        start = time.perf_counter()
        written, cells = write_store(store, args.rows, args.chunk_size)
        print(f"wrote {written} rows in {cells} cells to {root} in {time.perf_counter() - start:.1f} s")

        measure("before compaction", root, store)
        start = time.perf_counter()
        result = store.compact(RUN_ID)
        print(
            f"compacted {result.files_before} files into {result.files_after} "
            f"({result.rows} rows) in {time.perf_counter() - start:.1f} s"
        )
        measure("after compaction", root, store)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
