"""Two runs side by side: per-cell score changes with paired 95% CIs, and the samples that changed most."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dashboards.charts import budget_text
from dashboards.deltas import delta_charts, delta_table, regressed_count
from dashboards.page import Section, html_table, render_page, summary_table
from dashboards.report import query_rows, write_page
from storage.errors import UnknownRunError
from storage.sql import connect, load_query
from storage.store import ResultStore

# Rows of the per-sample table, largest change first.
CHANGED_SAMPLES_SHOWN = 200
SAMPLE_HEADERS = ("model", "benchmark", "method", "budget", "sample_id", "score A", "score B", "change",
                  "prediction A", "prediction B", "error A", "error B")


def build_comparison(root: Any, out_path: str | os.PathLike, run_a: str, run_b: str) -> Path:
    """Write a page comparing run `run_b` with run `run_a` to `out_path` and return its path.

    Cells pair on (model, benchmark, method_label, budget) and samples on sample_id within a
    cell. Each cell's change is the mean of score B - score A over the samples that both
    runs scored, with a paired bootstrap 95% CI. Raises UnknownRunError when a run has no
    samples in the store.
    """
    store = ResultStore(root)
    connection = connect(store.root, run_ids=[run_a, run_b])
    try:
        sample_counts = dict(connection.execute("SELECT run_id, count(*) FROM samples GROUP BY run_id").fetchall())
        for run_id in (run_a, run_b):
            if not sample_counts.get(run_id):
                raise UnknownRunError(
                    f"run {run_id!r} has no samples in {store.root.display}; "
                    f"known runs: {', '.join(store.run_ids()) or 'none'}"
                )
        counts = query_rows(
            connection,
            "SELECT count(*) AS samples, count(error) AS errors, "
            "list(DISTINCT model ORDER BY model) AS models FROM samples",
        )[0]
        runs = query_rows(connection, "SELECT run_id, status, started_at FROM runs ORDER BY started_at, run_id")
        deltas = query_rows(connection, load_query("paired_deltas"), {"run_a": run_a, "run_b": run_b})
        changed = query_rows(connection, load_query("diff_runs"), {"run_a": run_a, "run_b": run_b})
    finally:
        connection.close()

    sections = comparison_sections(run_a, run_b, deltas, changed[:CHANGED_SAMPLES_SHOWN], len(changed))
    title = f"capkv-eval comparison: {run_b} (B) against {run_a} (A)"
    return write_page(render_page(title, summary_table([run_a, run_b], runs, counts), sections), out_path)


def comparison_sections(
    run_a: str, run_b: str, deltas: list[dict], changed: list[dict], changed_total: int
) -> list[Section]:
    """Return the sections of the comparison page: per-cell changes, then per-sample changes."""
    regressed = regressed_count(deltas)
    cells = Section(
        "cells", "Score change per cell",
        f"Run A is {run_a} and run B is {run_b}. Each point is the mean of score B - score A over the samples "
        "that both runs scored in that (model, benchmark, method, budget), with a paired 95% bootstrap "
        "interval (1000 Poisson resamples). Red points have an interval below zero. The table also gives the "
        f"KV-byte and latency ratios and applies the nightly flow's regression rules: {regressed} of "
        f"{len(deltas)} cells regressed.",
        "The two runs share no cell.",
        charts=delta_charts(deltas),
        html=delta_table(deltas) if deltas else "",
    )
    samples = Section(
        "samples", "Samples that changed most",
        f"The {len(changed)} samples with the largest score change of {changed_total} in either run, matched on "
        "(model, benchmark, method, budget, sample_id). A sample that only one run has shows empty cells on the "
        "other side.",
        "Neither run has samples.",
        html=html_table(SAMPLE_HEADERS, [_sample_cells(row) for row in changed]) if changed else "",
    )
    return [cells, samples]


def _sample_cells(row: dict) -> tuple:
    return (
        row["model"], row["benchmark"], row["method_label"], budget_text(row), row["sample_id"],
        row["score_a"], row["score_b"], None if row["delta"] is None else round(row["delta"], 3),
        row["prediction_a"], row["prediction_b"], row["error_a"], row["error_b"],
    )
