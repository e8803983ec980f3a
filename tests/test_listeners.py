"""Security: listeners stay on loopback, no remote model code, no shell, and SQL is read-only by default."""

from __future__ import annotations

import ast
import contextlib
import ipaddress
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SOURCE_FOLDERS = ("capkv", "workers", "flows", "storage", "benchmarks", "dashboards")
TINY_RUN = {
    "models": ["smollm2-135m"],
    "methods": ["full", "snapkv"],
    "budgets": [64],
    "benchmarks": [{"name": "needle", "num_samples": 2, "params": {"context_length": 400}}],
}
# Ray names its session folder session_<date>_<time>_<microseconds>_<pid>, and every Ray process
# of that session carries the folder in its command line.
RAY_SESSION = re.compile(r"session_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_\d+_\d+")
POLL_INTERVAL_S = 0.3


def is_loopback(ip: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback such as ::ffff:127.0.0.1."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1"])
def test_loopback_addresses(ip):
    assert is_loopback(ip)


@pytest.mark.parametrize("ip", ["0.0.0.0", "::", "10.0.0.5", "::ffff:10.0.0.5", "::ffff:0.0.0.0"])
def test_other_addresses(ip):
    assert not is_loopback(ip)


def process_label(command: list[str]) -> str:
    """Name a process by its program, or by the script or module a Python interpreter runs."""
    if not command:
        return "?"
    program = Path(command[0]).name
    if not program.startswith("python"):
        return program
    for index, argument in enumerate(command[1:], start=1):
        if argument == "-m" and index + 1 < len(command):
            return f"python -m {command[index + 1]}"
        if argument.endswith(".py"):
            return f"python {Path(argument).parent.name}/{Path(argument).name}"
    return program


class ProcessTreeWatcher:
    """Record the listening sockets of a process, its descendants and its Ray session's processes.

    Every process ever seen stays tracked, so a Ray process whose parent exited (and which
    was reparented) is still followed, and so are its own children. Processes that carry
    the run's Ray session folder in their command line are added even when they were never
    seen in the tree.
    """

    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        self.tracked: dict[int, str] = {root_pid: "capkv-eval run"}
        self.sessions: set[str] = set()
        # (pid, protocol, ip, port) -> the process label first seen with that socket
        self.listeners: dict[tuple[int, str, str, int], str] = {}
        self.polls = 0

    def poll(self) -> None:
        self.polls += 1
        for pid in list(self.tracked):
            try:
                process = psutil.Process(pid)
                self._track(process)
                for child in process.children(recursive=True):
                    self._track(child)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if self.sessions:
            for process in psutil.process_iter(["pid", "cmdline"]):
                command = " ".join(process.info["cmdline"] or [])
                if any(session in command for session in self.sessions):
                    self._track(process)
        for pid in list(self.tracked):
            self._record_listeners(pid)

    def _track(self, process: psutil.Process) -> None:
        try:
            command = process.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        # Relabelled on every poll: a forked process shows its parent's command until it execs.
        if process.pid != self.root_pid:
            self.tracked[process.pid] = process_label(command)
        self.sessions.update(RAY_SESSION.findall(" ".join(command)))

    def _record_listeners(self, pid: int) -> None:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return
        for connection in connections:
            tcp_listening = connection.type == socket.SOCK_STREAM and connection.status == psutil.CONN_LISTEN
            udp_bound = connection.type == socket.SOCK_DGRAM and not connection.raddr
            if tcp_listening or udp_bound:
                protocol = "tcp" if tcp_listening else "udp"
                key = (pid, protocol, connection.laddr.ip, connection.laddr.port)
                self.listeners.setdefault(key, self.tracked[pid])


@pytest.mark.real_model
def test_run_listens_on_loopback_only(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY_RUN, "store": str(tmp_path / "results")}), encoding="utf-8")
    prefect_home = tmp_path / "prefect-home"
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "PREFECT_HOME": str(prefect_home)}
    environment.pop("PREFECT_API_URL", None)
    # A new session, so that the whole run can be stopped by its process group on a timeout.
    run = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--config", str(config)], cwd=ROOT, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    watcher = ProcessTreeWatcher(run.pid)
    deadline = time.monotonic() + 600
    try:
        while run.poll() is None and time.monotonic() < deadline:
            watcher.poll()
            time.sleep(POLL_INTERVAL_S)
        watcher.poll()  # processes that outlive the run, such as a Ray process still shutting down
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    output = run.communicate()[0]
    assert run.returncode == 0, output[-4000:]

    print(f"\n{len(watcher.tracked)} processes tracked over {watcher.polls} polls; Ray sessions {sorted(watcher.sessions)}")
    for (pid, protocol, ip, port), label in sorted(watcher.listeners.items()):
        print(f"  {protocol} {ip}:{port:<6} pid {pid:<7} {label}")
    assert watcher.sessions, "no Ray session was seen, so the Ray processes were not checked"
    assert watcher.listeners, "no listening socket was seen; the watcher did not work"
    exposed = [(key, label) for key, label in watcher.listeners.items() if not is_loopback(key[2])]
    assert exposed == []
    assert any("flows.temporary_server" in label for label in watcher.listeners.values()), (
        "the temporary Prefect server was not seen"
    )
    server_pids = [pid for pid, label in watcher.tracked.items() if "flows.temporary_server" in label]
    assert not [pid for pid in server_pids if psutil.pid_exists(pid)]

    # The temporary server recorded the flow run, one task run per work unit, and the run's log
    # lines before the command stopped it.
    from flows.config import parse_config
    from flows.matrix import expand_cells, plan_units

    run_config = parse_config({**TINY_RUN, "store": str(tmp_path / "results")})
    units = len(plan_units(run_config, expand_cells(run_config), "any-run-id"))
    with contextlib.closing(sqlite3.connect(prefect_home / "prefect.db")) as database:
        flow_runs = database.execute("SELECT id, state_type FROM flow_run").fetchall()
        assert [state for _, state in flow_runs] == ["COMPLETED"]
        task_states = database.execute("SELECT state_type FROM task_run WHERE flow_run_id = ?", (flow_runs[0][0],)).fetchall()
        assert task_states == [("COMPLETED",)] * units
        messages = [row[0] for row in database.execute("SELECT message FROM log WHERE flow_run_id = ?", (flow_runs[0][0],))]
    assert any(message.startswith("run run-") and " completed: results in " in message for message in messages)


# --- source checks -------------------------------------------------------------------------------


def source_files() -> list[Path]:
    return sorted(path for folder in SOURCE_FOLDERS for path in (ROOT / folder).rglob("*.py"))


def _is_false(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _call_name(node: ast.Call) -> str:
    return ast.unparse(node.func)


def test_source_folders_exist():
    assert len(source_files()) > 20


def test_no_trust_remote_code():
    offenders = []
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code" and not _is_false(node.value):
                offenders.append(f"{path.relative_to(ROOT)}:{node.value.lineno}")
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values):
                    if isinstance(key, ast.Constant) and key.value == "trust_remote_code" and not _is_false(value):
                        offenders.append(f"{path.relative_to(ROOT)}:{key.lineno}")
        if re.search(r"trust_remote_code\s*=\s*True", text):
            offenders.append(f"{path.relative_to(ROOT)}: text 'trust_remote_code=True'")
    assert offenders == []


SHELL_FUNCTIONS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}
SUBPROCESS_FUNCTIONS = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
                        "subprocess.check_output"}


def test_no_shell():
    offenders = []
    for path in source_files():
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT)
        if re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(", text):
            offenders.append(f"{where}: text match")
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            if name in SHELL_FUNCTIONS:
                offenders.append(f"{where}:{node.lineno} {name}")
            for keyword in node.keywords:
                if keyword.arg == "shell" and not _is_false(keyword.value):
                    offenders.append(f"{where}:{node.lineno} shell={ast.unparse(keyword.value)}")
            # A command given as one string is parsed by a shell when shell=True and is a smell without it.
            if name in SUBPROCESS_FUNCTIONS and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
                offenders.append(f"{where}:{node.lineno} {name} with a string command")
    assert offenders == []


# --- SQL -----------------------------------------------------------------------------------------


def test_sql_rejects_writes_without_flag(tmp_path):
    script = Path(sys.executable).parent / "capkv-eval"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]
    result = subprocess.run(
        [*command, "sql", "CREATE TABLE x AS SELECT 1", "--store", str(tmp_path / "results")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "capkv-eval: SQL error: CREATE statements are rejected on a read-only connection; "
        "pass allow_writes=True (the CLI flag --allow-writes) to run them"
    ]
    assert not (tmp_path / "results").exists()
