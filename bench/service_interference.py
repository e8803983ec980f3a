"""Measure how much an idle Prefect server and Ray slow the plain loop that shares the machine with them.

`capkv-eval run` starts a temporary Prefect API server and a local Ray next to its actors. This
script starts the same two, with the command's settings: `flows.server.TemporaryApiServer` and
`workers.ray_runtime.start_ray`. Beside them, a subprocess runs the plain loop of
`bench/flow_overhead.py` without its writes. It loads the model once, then calls
`workers.evaluate.evaluate_unit` on the same work units over and over and prints when each unit
starts and ends.

The services' processes then switch between states in blocks of `--block` seconds, in a new
random order every round:

- stopped: every service process is paused with SIGSTOP, so the loop has the cores to itself;
- running: the services run as they do during a flow;
- prefect-stopped, ray-stopped: only the Ray processes, or only the Prefect server, run;
- with `--priority`, nice-19 and sched-idle: the services run with every thread at nice 19, or
  under the SCHED_IDLE policy. Setting a thread back to nice 0 needs root (CAP_SYS_NICE).

This process stays Ray's driver, as the command does, and is never paused. A unit counts for the
state whose block contains all of it. Each state's mean unit time is compared
with the stopped state's, over all units and round by round, because the speed of these shared
cores drifts over minutes. Round by round, the summary gives the mean ratio and its standard error.

    .venv/bin/python -u bench/service_interference.py --block 8 --rounds 16 --states stopped running
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
STATES = ["stopped", "running", "prefect-stopped", "ray-stopped"]
PRIORITY_STATES = ["nice-19", "sched-idle"]
# A unit that starts this soon after a switch may have run partly under the previous state.
SETTLE_S = 0.3


def workload(config_path: str) -> int:
    """Load the model, then evaluate the config's work units in a loop and print each one's times."""
    from flows.config import load_config
    from flows.matrix import expand_cells, plan_units
    from workers.evaluate import evaluate_unit
    from workers.models import load_model

    config = load_config(config_path)
    loaded = load_model(config.models[0], dtype=config.dtype)
    units = plan_units(config, expand_cells(config), "interference")
    print("ready", flush=True)
    while True:
        for unit in units:
            started = time.monotonic()
            evaluate_unit(loaded, unit)
            print(f"unit {started:.4f} {time.monotonic():.4f}", flush=True)


def thread_ids(pids: list[int]) -> list[int]:
    """Return the ids of every thread of `pids`, read from /proc."""
    ids = []
    for pid in pids:
        ids += [int(path.rsplit("/", 1)[1]) for path in glob.glob(f"/proc/{pid}/task/*")]
    return ids


def set_priority(pids: list[int], niceness: int, idle: bool) -> None:
    """Set every thread of `pids` to `niceness` under SCHED_OTHER, or to SCHED_IDLE.

    Linux keeps both per thread, so setting them on the process id would change only its main thread.
    """
    for thread in thread_ids(pids):
        try:
            if idle:
                os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.sched_setscheduler(thread, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, thread, niceness)
        except ProcessLookupError:
            pass  # the thread ended


def enter_state(state: str, groups: dict[str, list[int]], priority: bool) -> None:
    every = groups["prefect"] + groups["ray"]
    paused = {"stopped": every, "prefect-stopped": groups["prefect"], "ray-stopped": groups["ray"]}.get(state, [])
    for pid in every:
        os.kill(pid, signal.SIGCONT)
    if priority:
        set_priority(every, 19 if state == "nice-19" else 0, idle=state == "sched-idle")
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)


def service_processes(exclude: int) -> dict[str, list[int]]:
    """Return the pids of this process's descendants: the Prefect server's and Ray's, without `exclude`."""
    import psutil

    groups = {"prefect": [], "ray": []}
    for child in psutil.Process().children(recursive=True):
        if child.pid == exclude:
            continue
        command = " ".join(child.cmdline())
        groups["prefect" if "prefect.server" in command else "ray"].append(child.pid)
    return groups


def summarise(states: list[str], timeline: list[tuple[str, float, float]], units: list[tuple[float, float]],
              rounds: int) -> None:
    def durations(start: float, end: float) -> list[float]:
        return [finish - begin for begin, finish in units if begin >= start + SETTLE_S and finish <= end]

    by_state = {state: [] for state in states}
    for state, start, end in timeline:
        by_state[state] += durations(start, end)
    if not all(by_state.values()):
        empty = ", ".join(state for state, values in by_state.items() if not values)
        raise SystemExit(f"no whole unit fell in any block of: {empty}; use a --block longer than one unit")
    baseline = statistics.mean(by_state["stopped"])
    print("state            units  mean s  median s  mean / stopped")
    for state in states:
        values = by_state[state]
        print(f"{state:<16} {len(values):5d}  {statistics.mean(values):6.3f}  {statistics.median(values):8.3f}  "
              f"{statistics.mean(values) / baseline:14.4f}")

    paired = {state: [] for state in states if state != "stopped"}
    for index in range(rounds):
        means = {}
        for state, start, end in timeline[index * len(states):(index + 1) * len(states)]:
            values = durations(start, end)
            if values:
                means[state] = statistics.mean(values)
        if "stopped" not in means:
            continue
        for state in paired:
            if state in means:
                paired[state].append(means[state] / means["stopped"])
    print("round by round, mean / stopped (mean +- standard error):")
    for state, ratios in paired.items():
        if len(ratios) < 2:
            print(f"  {state:<16} {len(ratios)} round(s) with units in both states, too few for an error")
            continue
        standard_error = statistics.stdev(ratios) / len(ratios) ** 0.5
        print(f"  {state:<16} {statistics.mean(ratios):.4f} +- {standard_error:.4f} over {len(ratios)} rounds")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--block", type=float, default=8.0, help="seconds in each state before the next")
    parser.add_argument("--rounds", type=int, default=18, help="number of rounds, each visiting every state once")
    parser.add_argument("--methods", nargs="+", default=["snapkv", "capkv"], help="methods in each work unit")
    parser.add_argument("--samples", type=int, default=3, help="needle samples (one work unit each)")
    parser.add_argument("--context-length", type=int, default=1000, help="needle context length in tokens")
    parser.add_argument("--states", nargs="+", choices=STATES + PRIORITY_STATES, default=STATES,
                        help="states to compare; stopped is always included")
    parser.add_argument("--priority", action="store_true", help="also run the services at nice 19 and SCHED_IDLE")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order of states within each round")
    parser.add_argument("--workload", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workload:
        return workload(args.workload)
    if args.priority and os.geteuid() != 0:
        parser.error("--priority needs root: a thread set to nice 19 goes back to nice 0 only with CAP_SYS_NICE")

    states = ["stopped"] + [state for state in args.states if state != "stopped"]
    if args.priority:
        states += [state for state in PRIORITY_STATES if state not in states]
    elif set(states) & set(PRIORITY_STATES):
        parser.error("the nice-19 and sched-idle states need --priority")
    from flows.cli import _configure_environment
    from flows.server import TemporaryApiServer, stop
    from workers.ray_runtime import start_ray

    _configure_environment()
    order = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="capkv-interference-") as workdir:
        config_path = Path(workdir) / "config.yaml"
        config_path.write_text(yaml.safe_dump({
            "models": ["smollm2-135m"], "methods": args.methods, "budgets": [128], "chunk_size": 1,
            "max_new_tokens": 8, "store": str(Path(workdir) / "unused"),
            "benchmarks": [{"name": "needle", "num_samples": args.samples,
                            "params": {"context_length": args.context_length}}],
        }))
        server = TemporaryApiServer()
        server.wait_until_ready(60)
        ray = start_ray()
        log_path = Path(workdir) / "units.txt"
        loop = subprocess.Popen([sys.executable, __file__, "--workload", str(config_path)], cwd=ROOT,
                                stdout=open(log_path, "w"), stderr=subprocess.DEVNULL)
        groups = service_processes(exclude=loop.pid)
        timeline = []
        try:
            while "ready" not in log_path.read_text():
                if loop.poll() is not None:
                    raise RuntimeError(f"the loop exited with code {loop.returncode} before its model loaded")
                time.sleep(0.5)
            print(f"services: 1 Prefect server, {len(groups['ray'])} Ray processes; states: {', '.join(states)}; "
                  f"{args.rounds} rounds of {args.block:.0f} s blocks; load average {os.getloadavg()[0]:.2f}",
                  flush=True)
            for _ in range(args.rounds):
                for state in order.sample(states, len(states)):
                    enter_state(state, groups, args.priority)
                    started = time.monotonic()
                    time.sleep(args.block)
                    timeline.append((state, started, time.monotonic()))
        finally:
            enter_state("running", groups, args.priority)
            stop(loop)
            server.stop()
            ray.shutdown()
        units = [tuple(map(float, line.split()[1:])) for line in log_path.read_text().splitlines()
                 if line.startswith("unit ")]
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    summarise(states, timeline, units, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
