"""Deployments on a real Prefect server on loopback: deploy, trigger adhoc-eval, run a worker once."""

from __future__ import annotations

import json
import subprocess

import pytest

from flows.server import PREFECT, deploy, free_port, server_environment, start_server, start_worker, stop, wait_until_healthy
from storage.sql import connect

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    environment = server_environment(api_url, {"PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false"})
    log_file = open(home / "server.log", "w")
    server = start_server(port=port, environment=environment, log_file=log_file)
    try:
        wait_until_healthy(api_url, server)
        yield environment, home
    finally:
        stop(server)
        log_file.close()


def _prefect(environment, *arguments) -> subprocess.CompletedProcess:
    return subprocess.run([PREFECT, *arguments], env=environment, capture_output=True, text=True, timeout=300)


def test_adhoc_deployment_runs_on_worker(prefect_server, tmp_path):
    environment, home = prefect_server
    deploy(environment)
    for name in ("evaluate/adhoc-eval", "nightly-regression/nightly-regression"):
        inspected = _prefect(environment, "deployment", "inspect", name)
        assert inspected.returncode == 0, inspected.stderr
    assert "'cron': '0 2 * * *'" in _prefect(environment, "deployment", "inspect",
                                             "nightly-regression/nightly-regression").stdout

    store = tmp_path / "results"
    config = {
        "models": ["smollm2-135m"],
        "methods": [{"name": "full"}, {"name": "snapkv"}],  # the form's schema takes objects
        "budgets": [64],
        "benchmarks": [{"name": "needle", "num_samples": 2, "params": {"context_length": 400}}],
        "store": str(store),
    }
    triggered = _prefect(environment, "deployment", "run", "evaluate/adhoc-eval", "--params",
                         json.dumps({"config": config}))
    assert triggered.returncode == 0, triggered.stderr

    with open(home / "worker.log", "w") as log_file:
        worker = start_worker(environment, run_once=True, log_file=log_file)
        try:
            worker.wait(timeout=900)
        finally:
            stop(worker)

    runs = _prefect(environment, "flow-run", "ls", "--flow-name", "evaluate", "--state", "COMPLETED").stdout
    worker_log = (home / "worker.log").read_text()[-3000:]
    assert "evaluate" in runs, runs + worker_log
    assert "COMPLETED" in runs, runs + worker_log
    print(runs)
    connection = connect(str(store))
    assert connection.execute("SELECT count(*), count(DISTINCT cell_id) FROM samples").fetchone() == (4, 2)


def test_invalid_parameters_rejected(prefect_server):
    environment, _ = prefect_server
    deploy(environment)
    bad = {"config": {"budgets": [0], "methods": [{"name": "full"}]}}
    result = _prefect(environment, "deployment", "run", "evaluate/adhoc-eval", "--params", json.dumps(bad))
    assert result.returncode != 0
    assert "budgets" in (result.stdout + result.stderr)
