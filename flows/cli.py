"""The `capkv-eval` command line: run evaluations, query the store, list methods and benchmarks."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import shlex
import sys

# Prefect reads its settings at import time: no analytics, and time for the first start of a
# temporary API server on a slow machine (the command's own server waits as long).
_PREFECT_ENVIRONMENT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class UsageError(Exception):
    """An error the CLI prints as one line before exiting with status 2."""


def _configure_environment() -> None:
    for key, value in _PREFECT_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    from workers.ray_runtime import configure_ray_environment

    configure_ray_environment()


def _command_run(args) -> int:
    with _temporary_api_server() as server:
        from flows.config import load_config, parse_config

        config = load_config(args.config)
        if args.store:
            config = parse_config({**config.model_dump(), "store": args.store})

        from storage.store import ResultStore

        actors_config = config
        if args.resume:
            # Checked here because starting the flow takes seconds. The flow checks again.
            actors_config = parse_config(json.loads(ResultStore(config.store).read_run(args.resume)["config"]))
        _start_actors_early(config.store, actors_config)

        from flows.evaluate import evaluate

        _drop_tracebacks_of_input_errors()
        with _prefect_api(server):
            summary = evaluate(config, resume=args.resume)
    print(f"run {summary['run_id']} {summary['status']}: {summary['cells']} cells")
    print(f"results:   {summary['store']}")
    if summary["dashboard"]:
        print(f"dashboard: {summary['dashboard']}")
    print(f'query:     {_own_command()} sql --store {shlex.quote(summary["store"])} "SELECT * FROM samples LIMIT 5"')
    return 0 if summary["status"] == "completed" else 1


def _own_command() -> str:
    """Return the path this command was called by (`.venv/bin/capkv-eval` under make), so a printed hint runs as shown."""
    called = sys.argv[0]
    return shlex.quote(called) if os.path.basename(called) == "capkv-eval" else "capkv-eval"


@contextlib.contextmanager
def _temporary_api_server():
    """Start a temporary Prefect API server now, unless PREFECT_API_URL names one, and stop it on exit.

    Starting it before the config check lets it boot while this process imports the engine.
    """
    from flows.server import TemporaryApiServer

    ephemeral_allowed = os.environ.get("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true").lower() not in (
        "0", "false", "no", "off")
    server = TemporaryApiServer() if ephemeral_allowed and not os.environ.get("PREFECT_API_URL") else None
    try:
        yield server
    finally:
        if server is not None:
            server.stop()


@contextlib.contextmanager
def _prefect_api(server):
    """Point Prefect at `server` while the flow runs, unless Prefect's profile names an API server."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if server is None or get_current_settings().api.url:
        if server is not None:
            server.stop()  # the profile's API server is used, so this one is not needed
        yield
        return
    server.wait_until_ready(float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]))
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield
    finally:
        # Prefect sends events and log lines from background threads, which would otherwise
        # empty their queues at exit, after the server has stopped. They send them now.
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        EventsWorker.drain_all(timeout=10)
        APILogWorker.drain_all(timeout=10)


def _start_actors_early(store_root: str, config) -> None:
    """Check that the store is writable, then start Ray and the actors of `config`.

    The models load while Prefect starts. This process runs one flow, so Ray shuts down as
    soon as the flow has stopped its actors. A resumed run passes its stored config but the
    store given on the command line.
    """
    from storage.store import ResultStore
    from workers import pool

    ResultStore(store_root).check_writable()
    pool.start_early(pool.ActorSpec.of(config), shut_down_ray=True)


def _command_sql(args) -> int:
    from storage.sql import run_query

    print(run_query(args.store, args.query, output=args.format, allow_writes=args.allow_writes,
                    params=dict(args.param or [])))
    return 0


def _command_methods(args) -> int:
    from capkv.methods import list_methods, method_classes, method_parameters

    classes = method_classes()
    for name in list_methods():
        params = ", ".join(f"{key}={value!r}" for key, value in method_parameters(name).items()) or "no parameters"
        summary = (classes[name].__doc__ or "").strip().splitlines()[0]
        print(f"{name:<16} {params}\n{'':<16} {summary}")
    return 0


def _command_benchmarks(args) -> int:
    from benchmarks import describe_benchmarks, format_description

    for description in describe_benchmarks():
        print("\n".join(format_description(description)))
    return 0


def _command_report(args) -> int:
    if args.compare:
        if args.run_ids:
            raise UsageError("give either RUN_ID arguments or --compare RUN_A RUN_B, not both")
        from dashboards.compare import build_comparison

        run_a, run_b = args.compare
        path = build_comparison(args.store, args.output, run_a, run_b)
        print(f"comparison: {path}")
        return 0

    from dashboards.report import build_dashboard

    _check_runs_exist(args.store, args.run_ids)
    try:
        path = build_dashboard(args.store, args.output, run_ids=args.run_ids or None)
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"cannot write the dashboard to {args.output}: {reason}; choose another --output") from None
    print(f"dashboard: {path}")
    return 0


def _check_runs_exist(store_root: str, run_ids: list[str]) -> None:
    """Raise UnknownRunError, which lists the known run ids, for a run with neither a run row nor samples."""
    from storage.store import ResultStore

    store = ResultStore(store_root)
    for run_id in run_ids:
        if not store.run_exists(run_id) and not store.completed_chunks(run_id):
            store.read_run(run_id)


def _command_compact(args) -> int:
    from storage.store import ResultStore

    result = ResultStore(args.store).compact(args.run_id)
    print(result)
    return 0


def _command_nightly(args) -> int:
    with _temporary_api_server() as server:
        from flows.config import load_config
        from flows.nightly import default_suite, nightly_regression
        from flows.regression import Thresholds

        suite = load_config(args.config) if args.config else default_suite()
        if args.store:
            suite = suite.model_copy(update={"store": args.store})
        _start_actors_early(suite.store, suite)
        thresholds = Thresholds(
            score_drop=args.score_drop, kv_bytes_increase=args.kv_bytes_increase,
            latency_increase=args.latency_increase,
        )
        _drop_tracebacks_of_input_errors()
        with _prefect_api(server):
            state = nightly_regression(suite, baseline_run_id=args.baseline, thresholds=thresholds, return_state=True)
    print(f"nightly regression check {state.name}: {state.message}")
    return 1 if state.is_failed() else 0


def _command_server(args) -> int:
    from flows.server import serve

    return serve(port=args.port)


def _input_error_types() -> tuple[type[BaseException], ...]:
    from benchmarks import BenchmarkError
    from capkv.methods import MethodError
    from flows.config import ConfigError
    from storage.errors import StoreError
    from workers.models import ModelError

    return (UsageError, ConfigError, MethodError, BenchmarkError, ModelError, StoreError)


class _InputErrorTracebackFilter(logging.Filter):
    """Strip the traceback from Prefect's log record of a flow or task that raised an input error.

    The CLI prints such an error as one line, and the traceback only points into our own
    checks. Other exceptions keep their traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], _input_error_types()):
            record.exc_info = None
            record.exc_text = None
        return True


def _drop_tracebacks_of_input_errors() -> None:
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _InputErrorTracebackFilter) for existing in logger.filters):
            logger.addFilter(_InputErrorTracebackFilter())


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"invalid --param {text!r}; expected NAME=VALUE")
    key, value = text.split("=", 1)
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="capkv-eval", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run an evaluation (the default matrix without --config)")
    run.add_argument("--config", help="YAML run config; fields as in flows/config.py RunConfig")
    run.add_argument("--resume", metavar="RUN_ID", help="finish an interrupted run, skipping stored chunks")
    run.add_argument("--store", help="result store root: a folder or a pyarrow filesystem URI (default: results)")
    run.set_defaults(handler=_command_run)

    sql = commands.add_parser("sql", help="run SQL or a named query over the result store")
    sql.add_argument("query", help="SQL text, or the name of a query in dashboards/queries (e.g. leaderboard)")
    sql.add_argument("--store", default="results", help="result store root (default: results)")
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    sql.add_argument("--param", action="append", type=_key_value, help="named query parameter NAME=VALUE")
    sql.add_argument("--allow-writes", action="store_true", help="allow statements that write (off by default)")
    sql.set_defaults(handler=_command_sql)

    methods = commands.add_parser("methods", help="list eviction methods with their parameters")
    methods.set_defaults(handler=_command_methods)

    benchmarks = commands.add_parser("benchmarks", help="list benchmarks")
    benchmarks.set_defaults(handler=_command_benchmarks)

    report = commands.add_parser("report", help="build the HTML dashboard for runs in the store")
    report.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="runs to include (default: the latest run)")
    report.add_argument("--store", default="results", help="result store root (default: results)")
    report.add_argument("--output", default="results/dashboard.html", help="HTML file to write")
    report.add_argument(
        "--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
        help="write a page of the per-cell score changes from run RUN_A to run RUN_B instead of the dashboard",
    )
    report.set_defaults(handler=_command_report)

    nightly = commands.add_parser("nightly", help="run the regression suite and compare it with the last nightly")
    nightly.add_argument("--config", help="suite config (default: flows/configs/nightly.yaml)")
    nightly.add_argument("--store", help="result store root (default: the suite's)")
    nightly.add_argument("--baseline", metavar="RUN_ID", help="compare with this run instead of the last nightly")
    nightly.add_argument("--score-drop", type=float, default=0.05,
                         help="mean score drop that counts when significant at 95%% (default: 0.05)")
    nightly.add_argument("--kv-bytes-increase", type=float, default=0.01,
                         help="relative rise of physical KV bytes that counts (default: 0.01)")
    nightly.add_argument("--latency-increase", type=float, default=0.5,
                         help="relative rise of prefill+compression+decode time that counts (default: 0.5)")
    nightly.set_defaults(handler=_command_nightly)

    server = commands.add_parser("server", help="start a Prefect server on 127.0.0.1, deploy, run a worker")
    server.add_argument("--port", type=int, default=4200, help="server port (default: 4200)")
    server.set_defaults(handler=_command_server)

    store = commands.add_parser("store", help="maintain the result store")
    store_commands = store.add_subparsers(dest="store_command", required=True)
    compact = store_commands.add_parser("compact", help="merge a finished run's small files")
    compact.add_argument("run_id", metavar="RUN_ID")
    compact.add_argument("--store", default="results", help="result store root (default: results)")
    compact.set_defaults(handler=_command_compact)
    return parser


def main(argv: list[str] | None = None) -> int:
    _configure_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise
    args = build_parser().parse_args(argv)

    try:
        return args.handler(args)
    except _input_error_types() as error:
        print(f"capkv-eval: {error}", file=sys.stderr)
        return 2


def entry() -> None:
    """Run the `capkv-eval` program: main(), then end the process without Python's teardown.

    The exit handlers still run first: they stop the local Ray instance. What Python would do
    after them, releasing the objects of torch, transformers, Prefect and Ray one by one,
    takes about 2 seconds and has nothing left to release.
    """
    status = [1]  # the exit status of a main() that raised
    atexit.register(_end_process, status)  # registered before any handler of Prefect or Ray, so it runs last
    try:
        status[0] = main()
    except SystemExit as error:  # argparse's usage errors and --help
        status[0] = error.code if isinstance(error.code, int) else int(error.code is not None)
        raise
    except KeyboardInterrupt:
        status[0] = 130
        raise
    sys.exit(status[0])


def _end_process(status: list[int]) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status[0])


if __name__ == "__main__":
    entry()
