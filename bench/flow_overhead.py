"""Measure what Prefect and Ray add over a plain loop, and throughput with 1 and 2 Ray actors.

The same cells (9 methods x 4 budgets on needle by default) run as two commands, each timed
from its start to its exit:

- the plain loop (`--plain-loop CONFIG`, a subprocess of this script): import the engine, load
  the model, call `workers.evaluate.evaluate_unit` on each work unit that
  `flows.matrix.plan_units` makes, and write what the flow writes: the run row, the cell rows,
  every cell's sample rows with `ResultStore.write_chunk`, and the run's dashboard;
- `capkv-eval run --config` with `num_actors: 1`, then with `num_actors: 2`, each into a fresh
  store. Its time covers Prefect's temporary API server, Ray's start, the actors' model loads,
  the same units and writes, and the shutdown of Prefect and Ray.

So the difference is what Prefect and Ray cost. With `--repeats N` the loop and the flow
commands run in turn N times, and the summary gives the median of the N overheads, because
one run's figure moves by several percent on a shared machine.

With `--services` each flow command runs once more against a Prefect server and a Ray head that
the script starts on 127.0.0.1 beforehand, as a deployment has them, so the command starts
neither.

With `--idle-services` the plain loop command runs once more while that Prefect server and Ray
head run beside it with nothing to do. The loop then pays only for sharing the machine with the
services' processes, which poll and wake up many times a second. Where the actor's torch threads
take every core, that cost is a lower bound on the overhead of any run through Prefect and Ray.

The overhead is the flow command's time minus the plain loop command's time. Each flow run's
log splits its time into start (until the flow logs its work units), units (until the last
unit's progress line) and finish (until the command exits).

Throughput is (cell, sample) pairs per second. Peak RSS per actor is the maximum of the
`peak_memory_bytes` column over the run's rows. That column is the writing actor's resident-set
high-water mark. Rows do not name their actor, so with 2 actors the figure is the larger of the two.

    .venv/bin/python -u bench/flow_overhead.py --samples 2 12 --actors 1 2 --repeats 3
    .venv/bin/python -u bench/flow_overhead.py --samples 12 --actors 1 --repeats 2 --services --idle-services
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["streaming_llm", "snapkv", "tova", "knorm", "keydiff", "expected_attention", "capkv", "random", "adakv"]
UNITS_PLANNED = re.compile(r"\d+ work units to run")
UNIT_DONE = re.compile(r"cells \d+/\d+ complete, samples")
# How the summary names each kind of flow run: a temporary Prefect server and Ray, running
# services, and running services compared with the loop timed beside them.
MODE_LABELS = {None: "", "services": ", running services",
               "beside": ", running services, against the loop beside them"}


@dataclass
class Timed:
    seconds: float
    pairs: int
    detail: dict


def run_config(args, num_samples: int, num_actors: int, store: str) -> dict:
    return {
        "models": [args.model],
        "methods": args.methods,
        "budgets": args.budgets,
        "benchmarks": [{"name": "needle", "num_samples": num_samples,
                        "params": {"context_length": args.context_length}}],
        "max_new_tokens": args.max_new_tokens,
        "chunk_size": args.chunk_size,
        "num_actors": num_actors,
        "store": store,
    }


def plain_loop(config_path: str) -> int:
    """Run the plain loop command and print its phase times as JSON.

    It writes what the flow writes: the run row (running, then completed), a pending and then a
    completed row per cell, every cell's sample rows per work unit, and the run's dashboard.
    """
    started = time.perf_counter()
    from dashboards.report import build_dashboard
    from flows import provenance, records
    from flows.config import load_config
    from flows.matrix import expand_cells, plan_units
    from storage.store import ResultStore
    from workers.evaluate import evaluate_unit
    from workers.models import load_model

    config = load_config(config_path)
    imported = time.perf_counter()
    loaded = load_model(config.models[0], dtype=config.dtype)
    model_loaded = time.perf_counter()
    store = ResultStore(config.store)
    run_id, run_started = provenance.new_run_id(), records.utcnow()
    cells = expand_cells(config)
    store.write_run(records.run_row(run_id, config, "running", run_started))
    for cell in cells:
        store.write_cell(records.cell_row(run_id, cell, "pending"))
    pairs = 0
    units_started = time.perf_counter()
    for unit in plan_units(config, cells, run_id):
        rows_by_cell = evaluate_unit(loaded, unit)
        for cell in unit.cells:
            store.write_chunk(unit.run_id, cell.cell_id, unit.chunk_index, rows_by_cell[cell.cell_id])
            pairs += len(rows_by_cell[cell.cell_id])
    units_finished = time.perf_counter()
    for cell in cells:
        store.write_cell(records.cell_row(run_id, cell, "completed"))
    store.write_run(records.run_row(run_id, config, "completed", run_started, records.utcnow()))
    build_dashboard(config.store, Path(config.store) / "dashboards" / f"{run_id}.html", run_ids=[run_id])
    finished = time.perf_counter()
    print(json.dumps({"pairs": pairs, "import_s": imported - started, "load_s": model_loaded - imported,
                      "loop_s": finished - model_loaded, "units_s": units_finished - units_started}))
    return 0


def time_plain_loop(args, num_samples: int, workdir: Path, repeat: int, beside_services: bool = False) -> Timed:
    where = "-beside-services" if beside_services else ""
    name = f"plain-{num_samples}{where}-{repeat}"
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(run_config(args, num_samples, 1, str(workdir / name))))
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, __file__, "--plain-loop", str(config_path)],
                               capture_output=True, text=True, cwd=ROOT, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"the plain loop failed with exit code {completed.returncode}:\n{completed.stderr[-3000:]}")
    detail = json.loads(completed.stdout.strip().splitlines()[-1])
    return Timed(seconds, detail["pairs"], detail)


def time_flow(args, num_samples: int, num_actors: int, workdir: Path, repeat: int,
              environment: dict | None = None) -> Timed:
    """Time `capkv-eval run` and split its time by the first lines of its log that mark each phase."""
    from storage.sql import connect

    name = f"flow-{num_samples}-{num_actors}{'-services' if environment else ''}-{repeat}"
    store = workdir / name
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(run_config(args, num_samples, num_actors, str(store))))
    command = [str(Path(sys.executable).parent / "capkv-eval"), "run", "--config", str(config_path)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                               env=environment)
    planned_at = last_unit_at = None
    log = []
    for line in process.stdout:
        log.append(line)
        if planned_at is None and UNITS_PLANNED.search(line):
            planned_at = time.perf_counter() - started
        if UNIT_DONE.search(line):
            last_unit_at = time.perf_counter() - started
    process.wait()
    seconds = time.perf_counter() - started
    if process.returncode != 0 or planned_at is None or last_unit_at is None:
        raise RuntimeError(f"capkv-eval run with {num_actors} actors failed with exit code "
                           f"{process.returncode}:\n{''.join(log)[-3000:]}")
    connection = connect(str(store))
    pairs, peak = connection.execute("SELECT count(*), max(peak_memory_bytes) FROM samples").fetchone()
    detail = {"start_s": planned_at, "units_s": last_unit_at - planned_at, "finish_s": seconds - last_unit_at,
              "peak_rss_bytes": int(peak or 0)}
    return Timed(seconds, int(pairs), detail)


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def running_services(workdir: Path):
    """Start a Prefect server and a Ray head on 127.0.0.1, yield the environment that points runs at them, stop both."""
    from flows.server import free_port, start_server, stop, wait_until_healthy
    from workers.ray_runtime import configure_ray_environment

    configure_ray_environment()
    prefect_port, ray_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{prefect_port}/api"
    environment = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "RAY_ADDRESS": f"127.0.0.1:{ray_port}"}
    processes = [start_server(port=prefect_port, environment=environment,
                              log_file=open(workdir / "prefect-server.log", "w"))]
    processes.append(subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address=127.0.0.1",
         f"--port={ray_port}", f"--num-cpus={os.cpu_count()}", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir=/tmp/capkv-ray-{ray_port}", "--block"],
        stdout=open(workdir / "ray-head.log", "w"), stderr=subprocess.STDOUT,
    ))
    try:
        wait_until_healthy(api_url, processes[0])
        deadline = time.monotonic() + 120
        while not _port_open(ray_port):
            if time.monotonic() > deadline or processes[1].poll() is not None:
                head_log = (workdir / "ray-head.log").read_text()[-2000:]
                raise RuntimeError(f"the Ray head exited or did not open port {ray_port} within 120 s; its log:\n{head_log}")
            time.sleep(1)
        yield environment
    finally:
        for process in processes:
            stop(process, descendants=True)


def _spread(values: list[float], unit: str) -> str:
    """Format the median, then the minimum to maximum, as +1.2% or 1.012x."""
    pattern = "{:+.1f}%" if unit == "%" else "{:.3f}x"
    return (f"{pattern.format(statistics.median(values))} ({pattern.format(min(values))} to "
            f"{pattern.format(max(values))})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="bundled model name, folder or hub id")
    parser.add_argument("--methods", nargs="+", default=METHODS, help="methods (one cell per method and budget)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256, 512], help="tokens kept per KV head")
    parser.add_argument("--samples", type=int, nargs="+", default=[2, 12],
                        help="needle samples per cell; the whole comparison runs once per count")
    parser.add_argument("--context-length", type=int, default=1000, help="needle context length in tokens")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="maximum answer tokens")
    parser.add_argument("--chunk-size", type=int, default=1, help="samples per work unit (units are spread over actors)")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2], help="actor counts to run through the flow")
    parser.add_argument("--services", action="store_true",
                        help="also run each flow command against a Prefect server and a Ray head started beforehand")
    parser.add_argument("--idle-services", action="store_true",
                        help="also run the plain loop command while a Prefect server and a Ray head run idle beside it")
    parser.add_argument("--repeats", type=int, default=1,
                        help="number of times the loop and the flow commands run, in turn")
    parser.add_argument("--plain-loop", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_loop:
        return plain_loop(args.plain_loop)

    cells = len(args.methods) * len(args.budgets)
    print(f"{cells} cells on needle samples of {args.context_length} tokens, max {args.max_new_tokens} new tokens, "
          f"chunk size {args.chunk_size}, {args.repeats} repeat(s); load average {os.getloadavg()[0]:.2f}", flush=True)
    runs = [(num_actors, None) for num_actors in args.actors]
    if args.services:
        runs += [(num_actors, "services") for num_actors in args.actors]
    overheads: dict[tuple, list[float]] = {}
    units_ratios: dict[tuple, list[float]] = {}
    beside_overheads: dict[int, list[float]] = {}
    beside_ratios: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="capkv-flow-bench-") as workdir:
        for num_samples in args.samples:
            for repeat in range(args.repeats):
                plain = time_plain_loop(args, num_samples, Path(workdir), repeat)
                loop = plain.detail
                print(f"{num_samples} samples, repeat {repeat + 1}, plain loop command: {plain.pairs} pairs in "
                      f"{plain.seconds:.1f} s (imports {loop['import_s']:.1f} s, model load {loop['load_s']:.1f} s, "
                      f"units {loop['units_s']:.1f} s, rest of the loop {loop['loop_s'] - loop['units_s']:.1f} s) -> "
                      f"{plain.pairs / plain.seconds:.3f} pairs/s; load average {os.getloadavg()[0]:.2f}", flush=True)
                beside = None
                if args.idle_services:
                    with running_services(Path(workdir)):
                        beside = time_plain_loop(args, num_samples, Path(workdir), repeat, beside_services=True)
                    ratio = beside.detail["units_s"] / loop["units_s"]
                    beside_ratios.setdefault(num_samples, []).append(ratio)
                    beside_overheads.setdefault(num_samples, []).append(100 * (beside.seconds - plain.seconds) / plain.seconds)
                    print(f"{num_samples} samples, repeat {repeat + 1}, plain loop command beside idle services: "
                          f"{beside.pairs} pairs in {beside.seconds:.1f} s (units {beside.detail['units_s']:.1f} s, "
                          f"{ratio:.3f}x the loop's alone); {beside.seconds - plain.seconds:+.1f} s "
                          f"({beside_overheads[num_samples][-1]:+.1f}%) against the loop alone; load average "
                          f"{os.getloadavg()[0]:.2f}", flush=True)
                for num_actors, mode in runs:
                    if mode is None:
                        flow = time_flow(args, num_samples, num_actors, Path(workdir), repeat)
                    else:
                        with running_services(Path(workdir)) as environment:
                            flow = time_flow(args, num_samples, num_actors, Path(workdir), repeat, environment)
                    phases = flow.detail
                    overhead = flow.seconds - plain.seconds
                    key = (num_samples, num_actors, mode)
                    overheads.setdefault(key, []).append(100 * overhead / plain.seconds)
                    units_ratios.setdefault(key, []).append(phases["units_s"] / loop["units_s"])
                    if mode and beside is not None:
                        key_beside = (num_samples, num_actors, "beside")
                        overheads.setdefault(key_beside, []).append(100 * (flow.seconds - beside.seconds) / beside.seconds)
                        units_ratios.setdefault(key_beside, []).append(phases["units_s"] / beside.detail["units_s"])
                    against = " against a running Prefect server and Ray head" if mode else ""
                    print(f"{num_samples} samples, repeat {repeat + 1}, capkv-eval run{against}, {num_actors} actor(s): "
                          f"{flow.pairs} pairs in {flow.seconds:.1f} s (start {phases['start_s']:.1f} s, units "
                          f"{phases['units_s']:.1f} s, finish {phases['finish_s']:.1f} s) -> "
                          f"{flow.pairs / flow.seconds:.3f} pairs/s; {overhead:+.1f} s "
                          f"({100 * overhead / plain.seconds:+.1f}%) against the plain loop; units phase "
                          f"{units_ratios[key][-1]:.3f}x the loop's; peak RSS per actor "
                          f"{phases['peak_rss_bytes'] / 2**20:,.0f} MiB; load average {os.getloadavg()[0]:.2f}", flush=True)
    print("summary over repeats (median, min, max):")
    for num_samples, values in beside_overheads.items():
        ratios = beside_ratios[num_samples]
        print(f"  {num_samples} samples, plain loop beside idle services: {_spread(values, '%')} against the loop "
              f"alone, units phase {_spread(ratios, 'x')} the loop's alone", flush=True)
    for (num_samples, num_actors, mode), values in overheads.items():
        ratios = units_ratios[(num_samples, num_actors, mode)]
        print(f"  {num_samples} samples, {num_actors} actor(s){MODE_LABELS[mode]}: overhead {_spread(values, '%')}, "
              f"units phase {_spread(ratios, 'x')} the loop's", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
