"""Two runs writing to one store at the same time, with DuckDB queries running during the writes."""

from __future__ import annotations

import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from storage.sql import connect

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, name: str, methods: list[str]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "methods": methods, "budgets": [64],
        "benchmarks": [{"name": "needle", "num_samples": 3, "params": {"context_length": 400}}],
        "chunk_size": 1, "store": str(tmp_path / "results"),
    }))
    return path


def test_two_runs_share_a_store(tmp_path):
    configs = [_config(tmp_path, "a", ["full", "snapkv"]), _config(tmp_path, "b", ["streaming_llm", "capkv"])]
    runs = [
        subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", str(config)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for config in configs
    ]

    queries = 0
    row_counts = []
    deadline = time.monotonic() + 1200
    while any(run.poll() is None for run in runs) and time.monotonic() < deadline:
        if (tmp_path / "results").exists():
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a skipped (partial or corrupt) file would warn
                connection = connect(str(tmp_path / "results"))
                row_counts.append(connection.execute("SELECT count(*) FROM samples").fetchall()[0][0])
                connection.close()
            queries += 1
        time.sleep(0.5)
    outputs = [run.communicate(timeout=60)[0] for run in runs]

    for run, output in zip(runs, outputs):
        assert run.returncode == 0, output[-3000:]
    assert queries > 0
    assert row_counts == sorted(row_counts)  # rows only ever appear, whole files at a time
    connection = connect(str(tmp_path / "results"))
    per_run = connection.execute(
        "SELECT run_id, count(*), count(DISTINCT (cell_id, sample_id)) FROM samples GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert [(count, distinct) for _, count, distinct in per_run] == [(6, 6), (6, 6)]
    assert connection.execute("SELECT count(*) FROM runs WHERE status = 'completed'").fetchall() == [(2,)]
    print(f"{queries} queries during the writes, row counts seen: {sorted(set(row_counts))}; per run {per_run}")
