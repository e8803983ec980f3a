"""The temporary Prefect API server that `capkv-eval run` and `nightly` start when no API is configured."""

from __future__ import annotations

import json
import os
import urllib.request

import psutil
import pytest

from flows import cli
from flows.server import TemporaryApiServer


@pytest.fixture
def prefect_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return tmp_path / "prefect-home"


def test_server_on_loopback_at_lower_priority(prefect_home):
    server = TemporaryApiServer()
    try:
        server.wait_until_ready(timeout_s=90)
        with urllib.request.urlopen(f"{server.api_url}/health", timeout=5) as response:
            assert json.loads(response.read()) is True
        process = psutil.Process(server.process.pid)
        assert process.nice() == os.nice(0) + TemporaryApiServer.NICENESS
        listening = {(c.laddr.ip, c.laddr.port) for c in process.net_connections(kind="inet") if c.status == "LISTEN"}
        assert listening == {("127.0.0.1", server.port)}
        assert (prefect_home / "prefect.db").exists()
    finally:
        server.stop()
    assert server.process.poll() is not None
    assert not psutil.pid_exists(server.process.pid) or psutil.Process(server.process.pid).status() == "zombie"


def test_wait_reports_exited_server(prefect_home):
    server = TemporaryApiServer()
    server.stop()
    with pytest.raises(RuntimeError, match=r"Prefect server exited with status"):
        server.wait_until_ready(timeout_s=5)


def test_no_server_with_api_url(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    with cli._temporary_api_server() as server:
        assert server is None


def test_no_server_when_ephemeral_mode_off(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "false")
    with cli._temporary_api_server() as server:
        assert server is None


def test_server_stopped_when_command_fails(prefect_home):
    with pytest.raises(ValueError, match="config rejected"):
        with cli._temporary_api_server() as server:
            pid = server.process.pid
            raise ValueError("config rejected")
    assert server.process.poll() is not None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_server_stopped_when_profile_names_api(prefect_home):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with cli._temporary_api_server() as server:
        with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
            with cli._prefect_api(server):
                assert server.process.poll() is not None  # stopped before the flow would run
