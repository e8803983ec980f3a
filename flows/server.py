"""A local Prefect server on 127.0.0.1 with the project's work pool, deployments and a worker."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

WORK_POOL = "capkv-process"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))


def server_environment(api_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    environment = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "true"),
        "CAPKV_EVAL_HOME": str(PROJECT_ROOT),
        "COLUMNS": "250",  # Prefect's tables cut long names to the terminal width otherwise
    }
    environment.update(extra or {})
    return environment


def start_server(host: str = "127.0.0.1", port: int = 4200, environment: dict[str, str] | None = None,
                 log_file=None) -> subprocess.Popen:
    """Start `prefect server start` bound to `host` (loopback by default) and return the process."""
    return subprocess.Popen(
        [PREFECT, "server", "start", "--host", host, "--port", str(port)],
        env=environment, stdout=log_file or subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(api_url: str, process: subprocess.Popen, timeout_s: float = 120.0, poll_s: float = 1.0) -> None:
    """Return when the server at `api_url` reports healthy. Raise if `process` exits or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Prefect server exited with status {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(poll_s)
    raise TimeoutError(f"Prefect server at {api_url} was not healthy after {timeout_s:.0f} s")


class TemporaryApiServer:
    """A Prefect API server on 127.0.0.1 for one command, like the one Prefect starts itself when no API is set.

    Prefect starts its own temporary server only when the flow first calls the API, after
    importing the server code into the calling process. Started here at the command's start,
    the server boots in its own process while the command checks its config and starts Ray,
    and the command never imports the server code. It runs at a lower CPU priority than the
    model actors, and it is stopped when the command ends.
    """

    # What Prefect sets for its own temporary server: no UI, and only the services meant for
    # temporary servers (task-run recording, events, automations), so no scheduler or late-run loop.
    ENVIRONMENT = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    NICENESS = 10

    def __init__(self) -> None:
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flows.temporary_server", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, **self.ENVIRONMENT}, preexec_fn=self._lower_priority_and_follow_parent,
        )
        log.info("starting a temporary Prefect API server on http://127.0.0.1:%d, stopped when this command ends",
                 self.port)

    @classmethod
    def _lower_priority_and_follow_parent(cls) -> None:
        """Lower the server's CPU priority before it starts and, on Linux, have it stopped when the command dies."""
        os.nice(cls.NICENESS)
        if sys.platform == "linux":
            import ctypes
            import signal

            set_parent_death_signal = 1  # PR_SET_PDEATHSIG
            ctypes.CDLL(None, use_errno=True).prctl(set_parent_death_signal, signal.SIGTERM)

    def wait_until_ready(self, timeout_s: float) -> None:
        """Return when the health endpoint responds. Raise if the server exits or times out after `timeout_s`."""
        wait_until_healthy(self.api_url, self.process, timeout_s, poll_s=0.1)

    def stop(self) -> None:
        stop(self.process, timeout_s=5.0)


def _prefect(arguments: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [PREFECT, *arguments], env=environment, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"`prefect {' '.join(arguments)}` failed: {(result.stderr or result.stdout)[-2000:]}")
    return result


def deploy(environment: dict[str, str]) -> None:
    """Create the process work pool if missing, then deploy every deployment in prefect.yaml."""
    existing = subprocess.run(
        [PREFECT, "work-pool", "inspect", WORK_POOL], env=environment, capture_output=True, text=True, timeout=120,
    )
    if existing.returncode != 0:
        _prefect(["work-pool", "create", WORK_POOL, "--type", "process"], environment)
    _prefect(["--no-prompt", "deploy", "--all"], environment)


def start_worker(environment: dict[str, str], run_once: bool = False, log_file=None) -> subprocess.Popen:
    arguments = [PREFECT, "worker", "start", "--pool", WORK_POOL, "--type", "process"]
    if run_once:
        arguments.append("--run-once")
    return subprocess.Popen(arguments, env=environment, cwd=PROJECT_ROOT, stdout=log_file or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen, timeout_s: float = 30.0, descendants: bool = False) -> None:
    """Terminate a process we started, by its pid, and wait for it.

    With `descendants`, also kill every process it started that is still running afterwards,
    as `ray start --block` leaves its GCS, raylet and agents behind.
    """
    import psutil

    children = psutil.Process(process.pid).children(recursive=True) if descendants and process.poll() is None else []
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def serve(port: int = 4200) -> int:
    """Run server, pool, deployments and a worker until interrupted; stop both on exit."""
    api_url = f"http://127.0.0.1:{port}/api"
    environment = server_environment(api_url)
    server = start_server(port=port, environment=environment)
    worker = None
    try:
        wait_until_healthy(api_url, server)
        deploy(environment)
        print(f"Prefect UI: http://127.0.0.1:{port}  (API {api_url}); work pool {WORK_POOL}; Ctrl-C stops")
        worker = start_worker(environment, log_file=sys.stdout)
        return worker.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if worker is not None:
            stop(worker)
        stop(server)
