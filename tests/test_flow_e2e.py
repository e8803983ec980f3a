"""The evaluate flow end to end on the real model: CLI -> Prefect -> Ray actor -> Parquet -> DuckDB."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.real_model

TINY_MATRIX = {
    "models": ["smollm2-135m"],
    "methods": ["full", "streaming_llm", "snapkv", "capkv"],
    "budgets": [64, 128],
    "benchmarks": [{"name": "needle", "num_samples": 3, "params": {"context_length": 600}}],
    "chunk_size": 2,
}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=environment, capture_output=True, text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    store = workdir / "results"
    config_path = workdir / "tiny.yaml"
    config_path.write_text(yaml.safe_dump({**TINY_MATRIX, "store": str(store)}))
    result = _cli("run", "--config", str(config_path), cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return store, result


def test_rows_in_store(finished_run):
    store, _ = finished_run
    from storage.sql import connect

    connection = connect(str(store))
    count, cells, samples = connection.execute(
        "SELECT count(*), count(DISTINCT cell_id), count(DISTINCT sample_id) FROM samples"
    ).fetchone()
    assert (count, cells, samples) == (7 * 3, 7, 3)  # full once + 3 methods x 2 budgets, 3 samples each
    duplicates = connection.execute(
        "SELECT count(*) FROM (SELECT cell_id, sample_id FROM samples GROUP BY ALL HAVING count(*) > 1)"
    ).fetchone()[0]
    assert duplicates == 0
    statuses = connection.execute("SELECT status, count(*) FROM cells GROUP BY ALL").fetchall()
    assert statuses == [("completed", 7)]
    assert connection.execute("SELECT status FROM runs").fetchall() == [("completed",)]


def test_memory_and_fidelity_columns(finished_run):
    store, _ = finished_run
    from storage.sql import connect

    rows = connect(str(store)).execute(
        "SELECT method, budget, kv_bytes_kept, kv_bytes_full, context_tokens, kept_tokens, kl, top1_agreement, error "
        "FROM samples"
    ).fetchall()
    for method, budget, kept_bytes, full_bytes, context_tokens, kept_tokens, kl, agreement, error in rows:
        assert error is None
        if method == "full":
            assert kept_bytes == full_bytes
            assert kl == 0.0
            assert agreement == 1.0
        else:
            assert kept_tokens == budget
            assert abs(kept_bytes / full_bytes - budget / context_tokens) < 1e-9


def test_full_cache_scores_on_needle(finished_run):
    store, _ = finished_run
    from storage.sql import connect

    score = connect(str(store)).execute("SELECT avg(score) FROM samples WHERE method = 'full'").fetchone()[0]
    assert score >= 2 / 3


def test_cli_prints_locations_and_dashboard(finished_run):
    store, result = finished_run
    assert f"results:   {store}" in result.stdout
    assert f'query:     capkv-eval sql --store {shlex.quote(str(store))} "SELECT * FROM samples LIMIT 5"' in result.stdout
    dashboard = Path(result.stdout.split("dashboard: ")[1].split()[0])
    html = dashboard.read_text()
    assert "plotly" in html.lower()
    assert '<script src="http' not in html


@pytest.mark.parametrize(("called", "printed"), [
    (".venv/bin/capkv-eval", ".venv/bin/capkv-eval"),
    ("/opt/my tools/bin/capkv-eval", "'/opt/my tools/bin/capkv-eval'"),
    ("/work/flows/cli.py", "capkv-eval"),  # python -m flows.cli
])
def test_query_hint_names_called_command(monkeypatch, called, printed):
    from flows.cli import _own_command

    monkeypatch.setattr(sys, "argv", [called, "run"])
    assert _own_command() == printed


def test_sql_command_prints_table(finished_run):
    store, _ = finished_run
    result = _cli("sql", "--store", str(store), "--format", "json",
                  "SELECT method, count(*) AS n FROM samples GROUP BY ALL ORDER BY ALL",
                  cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"method": "capkv", "n": 6}, {"method": "full", "n": 3}, {"method": "snapkv", "n": 6},
        {"method": "streaming_llm", "n": 6},
    ]
