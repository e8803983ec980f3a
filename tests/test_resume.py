"""Kill a run mid-way, resume it, and check that every (cell, sample) row exists exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from storage.sql import connect
from storage.store import ResultStore

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).resolve().parent.parent
MATRIX = {
    "models": ["smollm2-135m"],
    "methods": ["full", "streaming_llm", "snapkv"],
    "budgets": [64],
    "benchmarks": [{"name": "needle", "num_samples": 4, "params": {"context_length": 500}}],
    "chunk_size": 1,
}


def _start(arguments: list[str]) -> subprocess.Popen:
    # A new session, so that killing its process group also kills the Ray processes it started.
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *arguments], cwd=ROOT, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_kill_and_resume_exact_counts(tmp_path):
    store_root = tmp_path / "results"
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump({**MATRIX, "store": str(store_root)}))
    store = ResultStore(str(store_root))

    first = _start(["run", "--config", str(config_path)])
    deadline = time.monotonic() + 600
    chunks_before_kill = 0
    while time.monotonic() < deadline and first.poll() is None:
        run_ids = store.run_ids() if store_root.exists() else []
        if run_ids:
            chunks_before_kill = len(store.completed_chunks(run_ids[0]))
            if chunks_before_kill >= 3:  # at least one full chunk of the three cells
                break
        time.sleep(0.5)
    assert first.poll() is None, "the run finished before it could be killed"
    # Ray workers and Prefect's temporary server start sessions of their own, so kill every
    # descendant by pid as well as the process group.
    descendants = psutil.Process(first.pid).children(recursive=True)
    os.killpg(first.pid, signal.SIGKILL)
    for process in descendants:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    first.wait(timeout=60)

    run_id = store.run_ids()[0]
    written_at_kill = len(store.completed_chunks(run_id))
    assert 3 <= written_at_kill < 12

    resumed = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--resume", run_id, "--store", str(store_root)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"({written_at_kill} chunks already stored)" in resumed.stderr + resumed.stdout

    connection = connect(str(store_root))
    total, distinct = connection.execute(
        "SELECT count(*), count(DISTINCT (cell_id, sample_id)) FROM samples"
    ).fetchall()[0]
    assert (total, distinct) == (12, 12)  # 3 cells x 4 samples, each once
    assert connection.execute("SELECT status FROM runs").fetchall() == [("completed",)]
    print(f"killed after {written_at_kill} of 12 (cell, chunk) files; after resume {total} rows, {distinct} distinct")
