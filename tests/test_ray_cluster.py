"""A run against an existing Ray cluster started with `ray start --head` on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.server import free_port, stop
from storage.sql import connect
from workers.ray_runtime import configure_ray_environment

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))


def test_run_against_ray_head(tmp_path):
    configure_ray_environment()
    port = free_port()
    temp_dir = Path("/tmp") / f"capkv-ray-{port}"  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}", "--block"],
        stdout=open(tmp_path / "ray-head.log", "w"), stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-2000:]
            time.sleep(1)

        store = tmp_path / "results"
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({
            "methods": ["full", "capkv"], "budgets": [64],
            "benchmarks": [{"name": "needle", "num_samples": 2, "params": {"context_length": 400}}],
            "store": str(store),
        }))
        result = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "--config", str(config)], cwd=ROOT,
            env={**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}, capture_output=True, text=True, timeout=900,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert f"connecting to Ray cluster at 127.0.0.1:{port}" in result.stderr
        rows = connect(str(store)).execute("SELECT count(*), count(DISTINCT cell_id) FROM samples").fetchall()
        assert rows == [(4, 2)]
    finally:
        stop(head, descendants=True)
