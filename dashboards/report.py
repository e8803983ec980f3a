"""The HTML dashboard: one self-contained file with a run summary and the charts of the named queries."""

from __future__ import annotations

import datetime as dt
import html
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
import plotly.graph_objects as go
import pyarrow.fs as pafs

from dashboards.charts import Chart, memory_charts, needle_charts, score_charts
from storage.layout import decode_partition_value
from storage.sql import connect, load_query
from storage.store import ResultStore

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
table.summary { border-collapse: collapse; margin-bottom: 24px; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
section.chart { margin-bottom: 32px; }
"""

# Plotly client options: no Plotly logo in the mode bar, and charts resize with the window.
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


def build_dashboard(root: Any, out_path: str | os.PathLike, run_ids: Iterable[str] | None = None) -> Path:
    """Write the dashboard of `run_ids` to `out_path` as one HTML file and return its path.

    Without `run_ids` the dashboard shows the latest run only: the run with the latest
    started_at in the runs table, or, when the store has no run rows, the greatest run id
    among the sample partitions. Pooling every run would mix code versions and count a
    sample once per run.

    The page contains a summary table, one score-vs-budget chart per (model, benchmark),
    one KV-bytes-vs-budget chart per model and, when the needle benchmark is present, one
    heatmap per model. Token and ratio budgets get separate charts. Plotly's JavaScript is
    inlined, so the file opens without network access.
    """
    if isinstance(run_ids, str):
        raise TypeError(f"run_ids must be a list of run ids, not the str {run_ids!r}")
    store = ResultStore(root)
    selected = sorted(run_ids) if run_ids is not None else latest_run_ids(store)
    connection = connect(store.root, run_ids=selected)
    try:
        summary = _summary(connection, selected)
        leaderboard = query_rows(connection, load_query("leaderboard"))
        memory = query_rows(connection, load_query("memory"))
        needle = query_rows(connection, load_query("needle_by_budget"))
    finally:
        connection.close()

    charts = score_charts(leaderboard) + memory_charts(memory) + needle_charts(needle)
    page = render_page(summary, charts)
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


def query_rows(connection: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    """Run `sql` and return its rows as dicts."""
    relation = connection.sql(sql)
    columns = relation.columns
    return [dict(zip(columns, row)) for row in relation.fetchall()]


def _summary(connection: duckdb.DuckDBPyConnection, run_ids: list[str]) -> dict[str, Any]:
    counts = query_rows(
        connection,
        "SELECT count(*) AS samples, count(error) AS errors, "
        "list(DISTINCT model ORDER BY model) AS models FROM samples",
    )[0]
    runs = query_rows(connection, "SELECT run_id, status, started_at, git_commit FROM runs ORDER BY started_at, run_id")
    return {"run_ids": run_ids, "runs": runs, **counts}


def render_page(summary: dict[str, Any], charts: list[Chart]) -> str:
    """Return the whole HTML page. The first chart carries Plotly's JavaScript, the others reuse it."""
    sections = []
    for index, (title, figure) in enumerate(charts):
        sections.append(_chart_section(title, figure, include_plotlyjs=index == 0))
    if not charts:
        sections.append("<p>No samples in the selected runs, so there is nothing to chart.</p>")
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            "<title>capkv-eval dashboard</title>",
            f"<style>{PAGE_STYLE}</style>",
            "</head>",
            "<body>",
            "<h1>capkv-eval dashboard</h1>",
            f"<p>Generated {generated}.</p>",
            _summary_table(summary),
            *sections,
            "</body>",
            "</html>",
        ]
    )


def _chart_section(title: str, figure: go.Figure, include_plotlyjs: bool) -> str:
    body = figure.to_html(full_html=False, include_plotlyjs=include_plotlyjs, config=PLOTLY_CONFIG)
    return f'<section class="chart">\n<h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _summary_table(summary: dict[str, Any]) -> str:
    runs = {run["run_id"]: run for run in summary["runs"]}
    run_lines = []
    for run_id in summary["run_ids"]:
        run = runs.get(run_id)
        if run is None:
            details = "no run row"
        else:
            started = run["started_at"].astimezone(dt.timezone.utc)
            details = f"{run['status']}, started {started:%Y-%m-%d %H:%M} UTC"
        run_lines.append(f"{html.escape(run_id)} ({html.escape(details)})")
    rows = [
        ("runs", "<br>".join(run_lines) or "none"),
        ("models", ", ".join(html.escape(model) for model in summary["models"] or []) or "none"),
        ("samples", f"{summary['samples']:,}"),
        ("errors", f"{summary['errors']:,}"),
    ]
    body = "\n".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return f'<table class="summary">\n{body}\n</table>'
