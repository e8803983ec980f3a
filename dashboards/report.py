"""The HTML dashboard: one self-contained file with a run summary and a section per view of the results.

`build_dashboard` runs the named queries of dashboards/queries over the selected runs,
plus the nightly queries over every nightly run in the store, and writes the page that
dashboards/sections.py lays out.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.fs as pafs

from dashboards.drilldown import SAMPLES_PER_CELL
from dashboards.nightly import nightly_pair
from dashboards.page import render_page, summary_table
from dashboards.sections import DashboardData, NightlyData, dashboard_sections
from storage.errors import StoreError
from storage.layout import decode_partition_value
from storage.sql import connect, load_query
from storage.store import ResultStore

log = logging.getLogger(__name__)

# The label that flows/nightly.py gives its runs. Importing it from there would import Prefect.
NIGHTLY_LABEL = "nightly"
RUN_QUERIES = ("leaderboard", "memory", "latency", "pareto", "needle_grid", "task_scores", "capacity",
               "capacity_spearman")


def build_dashboard(root: Any, out_path: str | os.PathLike, run_ids: Iterable[str] | None = None) -> Path:
    """Write the dashboard of `run_ids` to `out_path` as one HTML file and return its path.

    Without `run_ids` the dashboard shows the latest run only: the run with the latest
    started_at in the runs table, or, when the store has no run rows, the greatest run id
    among the sample partitions. Pooling every run would mix code versions and count a
    sample once per run. The nightly section reads every run labelled nightly in the
    store, whatever `run_ids` selects. Plotly's JavaScript is inlined, so the file opens
    without network access.
    """
    if isinstance(run_ids, str):
        raise TypeError(f"run_ids must be a list of run ids, not the str {run_ids!r}")
    store = ResultStore(root)
    selected = sorted(run_ids) if run_ids is not None else latest_run_ids(store)
    connection = connect(store.root, run_ids=selected)
    try:
        counts, runs = _summary(connection)
        results = {name: query_rows(connection, load_query(name)) for name in RUN_QUERIES}
        drilldown = query_rows(
            connection, load_query("sample_drilldown"), {"limit_per_cell": SAMPLES_PER_CELL}
        )
    finally:
        connection.close()

    data = DashboardData(**results, drilldown=drilldown, nightly=nightly_data(store))
    page = render_page("capkv-eval dashboard", summary_table(selected, runs, counts), dashboard_sections(data))
    return write_page(page, out_path)


def write_page(page: str, out_path: str | os.PathLike) -> Path:
    """Write `page` to `out_path`, creating its folder, and return the path."""
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def latest_run_ids(store: ResultStore) -> list[str]:
    """Return [the latest run id], or [] for a store without runs."""
    run_ids = [run_id for run_id in store.run_ids() if store.run_exists(run_id)]
    if run_ids:
        started = {run_id: store.read_run(run_id)["started_at"] for run_id in run_ids}
        return [max(run_ids, key=lambda run_id: (started[run_id], run_id))]
    sample_runs = _sample_run_ids(store)
    return [max(sample_runs)] if sample_runs else []


def _sample_run_ids(store: ResultStore) -> list[str]:
    selector = pafs.FileSelector(store.root.path("samples"), recursive=False, allow_not_found=True)
    prefix = "run_id="
    return [
        decode_partition_value(info.base_name[len(prefix) :])
        for info in store.root.fs.get_file_info(selector)
        if info.type == pafs.FileType.Directory and info.base_name.startswith(prefix)
    ]


def query_rows(
    connection: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Run `sql` with its named `params` and return its rows as dicts."""
    relation = connection.sql(sql, params=dict(params) if params else None)
    columns = relation.columns
    return [dict(zip(columns, row)) for row in relation.fetchall()]


def _summary(connection: duckdb.DuckDBPyConnection) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    counts = query_rows(
        connection,
        "SELECT count(*) AS samples, count(error) AS errors, "
        "list(DISTINCT model ORDER BY model) AS models FROM samples",
    )[0]
    runs = query_rows(connection, "SELECT run_id, status, started_at, git_commit FROM runs ORDER BY started_at, run_id")
    return counts, runs


def nightly_run_ids(store: ResultStore) -> list[str]:
    """Return the ids of the runs whose configuration has "label": "nightly".

    A run whose row cannot be read is skipped with a warning, so one damaged run file
    does not stop the dashboard.
    """
    # NOTE: this reads every run row of the store, one small file per run. The views of
    # connect() cannot be limited to the runs table alone, and listing every sample file
    # of every run would cost more.
    labelled = []
    for run_id in store.run_ids():
        try:
            config = store.read_run(run_id)["config"]
        except StoreError as error:
            log.warning("nightly section: skipping run %s: %s", run_id, error)
            continue
        try:
            label = json.loads(config).get("label") if config else None
        except (json.JSONDecodeError, AttributeError):
            log.warning("nightly section: run %s has a config that is not a JSON object", run_id)
            continue
        if label == NIGHTLY_LABEL:
            labelled.append(run_id)
    return labelled


def nightly_data(store: ResultStore) -> NightlyData:
    """Run the nightly queries over the nightly runs: runs, trend and the deltas of the latest pair."""
    run_ids = nightly_run_ids(store)
    if not run_ids:
        return NightlyData(runs=[], trend=[], pair=None, deltas=[])
    connection = connect(store.root, run_ids=run_ids)
    try:
        runs = query_rows(connection, load_query("nightly_runs"))
        trend = query_rows(connection, load_query("nightly_trend"))
        pair = nightly_pair(runs)
        deltas = []
        if pair is not None:
            deltas = query_rows(connection, load_query("paired_deltas"), {"run_a": pair[0], "run_b": pair[1]})
    finally:
        connection.close()
    return NightlyData(runs=runs, trend=trend, pair=pair, deltas=deltas)
