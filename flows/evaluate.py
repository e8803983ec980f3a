"""The evaluate flow: expand the matrix, run work units on Ray actors, store rows, build the dashboard."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE as NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows import provenance, records
from benchmarks import BenchmarkError
from flows.config import RunConfig, parse_config
from flows.matrix import chunk_count, expand_cells, plan_units
from flows.progress import RunProgress
from storage.store import ResultStore
from workers import pool
from workers.models import ModelError
from workers.units import CellSpec, WorkUnit


@dataclass
class RunSummary:
    run_id: str
    store: str
    dashboard: str | None
    cells: int
    samples_written: int
    status: str


@task(name="run-chunk", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def run_chunk(unit: WorkUnit, store_root: str, actor_slot: int) -> dict[str, str]:
    """Evaluate one work unit on an actor holding its model and write one file per cell.

    Returns the error of each cell whose every sample in this chunk failed. Writing the same
    (cell, chunk) again replaces the file, so a retried chunk never duplicates rows.
    """
    actors = pool.actors_for(unit.model)
    rows_by_cell = _run_on_actor(actors[actor_slot % len(actors)], unit)
    store = ResultStore(store_root)
    failed_cells = {}
    for cell in unit.cells:
        rows = rows_by_cell[cell.cell_id]
        store.write_chunk(unit.run_id, cell.cell_id, unit.chunk_index, rows)
        errors = [row["error"] for row in rows if row.get("error")]
        if errors and len(errors) == len(rows):
            failed_cells[cell.cell_id] = errors[0]
    return failed_cells


def _run_on_actor(actor, unit: WorkUnit, attempts: int = 6, wait_s: float = 5.0) -> dict[str, list[dict]]:
    """Run a unit on an actor, sending it again while Ray restarts an actor that died.

    Ray restarts a dead actor (max_restarts) but fails the calls in flight, and those sent while
    it reloads its model, with a RayActorError. After `attempts` failures the chunk fails and
    Prefect's task retries take over.
    """
    import ray
    from ray.exceptions import RayActorError

    attempt = 1
    while True:
        try:
            return ray.get(actor.run_unit.remote(unit))
        except RayActorError as error:
            if attempt >= attempts or pool.stopped():  # no retries once the run has stopped its actors
                raise
            delay = wait_s * attempt
            get_run_logger().warning(
                "actor for %s failed (%s); chunk %d of %s sent again in %.0f s (attempt %d of %d)",
                unit.model, type(error).__name__, unit.chunk_index, unit.benchmark, delay, attempt + 1, attempts,
            )
            time.sleep(delay)
            attempt += 1


def _start_actors(config: RunConfig, logger) -> None:
    """Take the run's actors (those started early for this config, or new ones) and wait until each has its model."""
    for model, actors in pool.acquire(pool.ActorSpec.of(config)).items():
        infos = [_remote_result(actor.describe.remote()) for actor in actors]
        logger.info("actor ready: %s (%s) on %s, %d thread(s) each, %d replica(s)", model, infos[0]["revision"],
                    infos[0]["device"], infos[0]["threads"], len(infos))


def _check_samples(config: RunConfig) -> None:
    """Load every benchmark's samples on an actor of each model, which tokenizes them, before anything is written."""
    for model in config.models:
        actor = pool.actors_for(model)[0]
        for spec in config.benchmarks:
            _remote_result(actor.check_samples.remote(spec.name, spec.params, spec.num_samples, config.seed))


def _remote_result(reference):
    """Return ray.get(reference), raising a remote ModelError or BenchmarkError itself.

    Ray's wrapper of a remote exception carries the remote traceback in its message, so
    these input errors are unwrapped to keep their one-line message.
    """
    import ray

    try:
        return ray.get(reference)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, (ModelError, BenchmarkError)):
            raise error.cause from None
        raise


def _absolute_root(root: str) -> str:
    """Local store paths become absolute so that workers and links do not depend on the cwd."""
    return root if "://" in root else str(Path(root).resolve())


def _summary_markdown(store_root: str, run_id: str, dashboard: str | None) -> str:
    from storage.sql import run_query

    table = run_query(
        store_root,
        f"SELECT method_label AS method, budget, benchmark, count(*) AS n, round(avg(score), 3) AS score, "
        f"round(avg(kv_bytes_kept) / avg(kv_bytes_full), 4) AS kv_ratio FROM samples "
        f"WHERE run_id = '{run_id}' GROUP BY ALL ORDER BY ALL",
        output="table",
    )
    link = f"\n\nDashboard: [{dashboard}](file://{dashboard})" if dashboard else ""
    return f"# Run {run_id}\n\n```\n{table}\n```{link}\n"


@flow(name="evaluate", task_runner=ThreadPoolTaskRunner(max_workers=4))
def evaluate(config: RunConfig = RunConfig(), resume: str | None = None) -> dict:
    """Run every cell of `config` (or finish run `resume`) and return a summary."""
    logger = get_run_logger()
    store_root = _absolute_root(config.store)
    store = ResultStore(store_root)
    try:
        if resume:
            stored = store.read_run(resume)  # raises a one-line error for an unknown run id
            config = parse_config(json.loads(stored["config"]))  # one-line ConfigError if it no longer validates
            run_id, started = resume, stored["started_at"]
        else:
            run_id, started = provenance.new_run_id(), records.utcnow()

        cells = expand_cells(config)
        done = store.completed_chunks(run_id) if resume else set()
        units = plan_units(config, cells, run_id, done)
        # Every input check runs before the first write, so a rejected run leaves no files in the store.
        store.check_writable()
        if units:
            _start_actors(config, logger)  # a model that does not load raises ModelError
            _check_samples(config)  # a data file or sample that cannot be evaluated raises BenchmarkError
        failed = _run_units(config, store, store_root, run_id, started, cells, units, done, logger)
    finally:
        pool.stop_all()  # also actors started early for a run that stopped before taking them over

    for cell in cells:
        status = "failed" if cell.cell_id in failed else "completed"
        store.write_cell(records.cell_row(run_id, cell, status, failed.get(cell.cell_id)))
    run_status = "failed" if failed else "completed"
    store.write_run(records.run_row(run_id, config, run_status, started, records.utcnow()))

    dashboard = _build_dashboard(config, store_root, run_id, logger)
    create_markdown_artifact(key="run-summary", markdown=_summary_markdown(store_root, run_id, dashboard),
                             description=f"capkv-eval run {run_id}")
    samples_written = sum(len(u.sample_indices) * len(u.cells) for u in units)
    logger.info("run %s %s: results in %s, dashboard %s", run_id, run_status, store_root, dashboard)
    return asdict(RunSummary(run_id, store_root, dashboard, len(cells), samples_written, run_status))


def _run_units(config: RunConfig, store: ResultStore, store_root: str, run_id: str, started: dt.datetime,
               cells: list[CellSpec], units: list[WorkUnit], done: set, logger) -> dict[str, str]:
    """Write the running run and its cells, run every unit on the actors and return the error of each failed cell."""
    store.write_run(records.run_row(run_id, config, "running", started))
    for cell in cells:
        status = "completed" if all((cell.cell_id, k) in done for k in range(chunk_count(cell, config.chunk_size))) else "pending"
        store.write_cell(records.cell_row(run_id, cell, status))

    total_samples = sum(b.num_samples for b in config.benchmarks) * len(config.models)
    progress = RunProgress(cells, {c.cell_id: chunk_count(c, config.chunk_size) for c in cells}, total_samples)
    progress.mark_existing(done)
    progress.samples_done = total_samples - sum(len(u.sample_indices) for u in units)
    logger.info("run %s: %d cells, %d work units to run (%d chunks already stored), store %s",
                run_id, len(cells), len(units), len(done), store_root)

    failed: dict[str, str] = {}
    progress_artifact = create_progress_artifact(
        100.0 * progress.samples_done / max(total_samples, 1), key="run-progress",
        description=f"samples done of {total_samples} in run {run_id}",
    )
    if not units:
        return failed
    chunk_task = run_chunk.with_options(retries=config.chunk_retries)
    futures = [(unit, chunk_task.submit(unit, store_root, index)) for index, unit in enumerate(units)]
    for unit, future in futures:
        try:
            for cell_id, reason in future.result().items():
                failed.setdefault(cell_id, reason)
        except Exception as error:  # one failed chunk must not stop the other cells
            logger.error("chunk %d of %s on %s failed: %s", unit.chunk_index, unit.benchmark, unit.model, error)
            for cell in unit.cells:
                failed.setdefault(cell.cell_id, f"{type(error).__name__}: {error}".splitlines()[0])
            continue
        logger.info(progress.record(unit))
        update_progress_artifact(progress_artifact, 100.0 * progress.samples_done / max(total_samples, 1))
    return failed


def _build_dashboard(config: RunConfig, store_root: str, run_id: str, logger) -> str | None:
    from dashboards.report import build_dashboard

    if config.dashboard:
        target = Path(config.dashboard)
    elif "://" in config.store:
        logger.info("store %s is remote: build the dashboard with `capkv-eval report`", config.store)
        return None
    else:
        target = Path(store_root) / "dashboards" / f"{run_id}.html"
    path = build_dashboard(store_root, target, run_ids=[run_id])
    return str(Path(path).resolve())
