"""The temporary Prefect API server that `capkv-eval run` and `nightly` start when no API is configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def test_concurrent_servers_on_fresh_home(prefect_home):
    # All three migrate the same new database file. Without the lock, one of two servers started
    # together exited with status 3 in 1 of 2 tries.
    servers = [TemporaryApiServer() for _ in range(3)]
    try:
        for server in servers:
            server.wait_until_ready(timeout_s=120)
    finally:
        for server in servers:
            server.stop()
    assert (prefect_home / "prefect.db").exists()
    assert (prefect_home / "capkv-migration.lock").exists()


def _migrate_in_new_process(timeout_s: float) -> subprocess.CompletedProcess:
    """Run `migrate_database` in a fresh interpreter, which reads PREFECT_HOME from the environment."""
    code = f"from flows.temporary_server import migrate_database; migrate_database(timeout_s={timeout_s})"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_migration_waits_for_the_lock(prefect_home):
    from flows.temporary_server import MIGRATION_LOCK

    prefect_home.mkdir(parents=True)
    # Another process holds the lock, as a second command's server would.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, filelock; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
         "print('held', flush=True); sys.stdin.read()", str(prefect_home / MIGRATION_LOCK)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        blocked = _migrate_in_new_process(timeout_s=1.0)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert blocked.returncode == 1
    assert "timed out after 1 s waiting for" in blocked.stderr
    assert MIGRATION_LOCK in blocked.stderr
    assert not (prefect_home / "prefect.db").exists()

    released = _migrate_in_new_process(timeout_s=1.0)
    assert released.returncode == 0, released.stderr
    assert (prefect_home / "prefect.db").exists()
