"""Faults with real processes: a killed actor, NaN logits in one sample, a cell out of memory."""

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
    "methods": ["full", "snapkv"],
    "budgets": [64],
    "benchmarks": [{"name": "needle", "num_samples": 4, "params": {"context_length": 400}}],
    "chunk_size": 1,
}


def _config(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**MATRIX, "store": str(tmp_path / "results"), **overrides}))
    return path


def _counts(store: Path) -> tuple[int, int]:
    return connect(str(store)).execute(
        "SELECT count(*), count(DISTINCT (cell_id, sample_id)) FROM samples"
    ).fetchall()[0]


def test_killed_actor_is_restarted_and_run_completes(tmp_path):
    config = _config(tmp_path)
    store = ResultStore(str(tmp_path / "results"))
    run = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--config", str(config)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and time.monotonic() < deadline and run.poll() is None:
        run_ids = store.run_ids() if (tmp_path / "results").exists() else []
        if run_ids and store.completed_chunks(run_ids[0]):
            for process in psutil.Process(run.pid).children(recursive=True):
                if "ModelWorker" in " ".join(process.cmdline()):
                    process.send_signal(signal.SIGKILL)
                    killed = process.pid
                    break
        time.sleep(0.3)
    try:
        output, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert killed is not None, "no ModelWorker process was found to kill"
    assert run.returncode == 0, output[-4000:]
    assert _counts(tmp_path / "results") == (8, 8)  # 2 cells x 4 samples, each once
    print(f"killed actor pid {killed}; run completed with {_counts(tmp_path / 'results')} (rows, distinct)")


def test_out_of_memory_cell_fails_alone(tmp_path):
    config = _config(tmp_path, benchmarks=[{"name": "needle", "num_samples": 2, "params": {"context_length": 400}}],
                     chunk_size=2)
    result = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--config", str(config)], cwd=ROOT,
                            env={**os.environ, "CAPKV_EVAL_FAULTS": "oom:snapkv"}, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    connection = connect(str(tmp_path / "results"))
    cells = connection.execute("SELECT method, status, error FROM cells ORDER BY method").fetchall()
    assert cells[0] == ("full", "completed", None)
    assert cells[1][:2] == ("snapkv", "failed")
    assert cells[1][2] == "MemoryError: simulated out-of-memory in snapkv@64 needle on smollm2-135m"
    rows = connection.execute(
        "SELECT method, count(*), count(error), count(prediction) FROM samples GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert rows == [("full", 2, 0, 2), ("snapkv", 2, 2, 0)]
    assert connection.execute("SELECT status FROM runs").fetchall() == [("failed",)]


def test_nan_logits_give_an_error_row(smollm2, monkeypatch):
    from flows.config import parse_config
    from flows.matrix import expand_cells, plan_units
    from workers.evaluate import evaluate_unit

    config = parse_config({**MATRIX, "benchmarks": [{"name": "needle", "num_samples": 2,
                                                      "params": {"context_length": 400}}], "chunk_size": 2})
    unit = plan_units(config, expand_cells(config), "run-test")[0]
    monkeypatch.setenv("CAPKV_EVAL_FAULTS", "nan-logits:needle-400-0001")

    results = evaluate_unit(smollm2, unit)

    for rows in results.values():
        assert [row["sample_id"] for row in rows] == ["needle-400-0000", "needle-400-0001"]
        assert rows[0].get("error") is None
        assert rows[0]["prediction"]
        assert rows[1]["error"] == "FloatingPointError: prefill of sample needle-400-0001 produced non-finite logits"
        assert "prediction" not in rows[1]
