"""Nightly trend charts from the `nightly_trend` query, and the choice of the two nightly runs to compare."""

from __future__ import annotations

import plotly.graph_objects as go

from dashboards.charts import (
    Chart,
    Row,
    base_layout,
    budget_text,
    budget_value,
    color_of,
    count_text,
    group_rows,
    method_colors,
    number_text,
    rows_with_values,
)

FINISHED_STATUSES = ("completed", "failed")
# Line styles that tell the budgets of one method apart, smallest budget first.
BUDGET_DASHES = ("solid", "dot", "dash", "longdash", "dashdot", "longdashdot")


def nightly_pair(nightly_runs: list[Row]) -> tuple[str, str] | None:
    """Return (baseline, candidate) run ids for the regression table, or None without two such runs.

    The candidate is the latest finished (completed or failed) nightly run, and the baseline
    the latest completed nightly run that started before it, as the nightly flow picks them.
    `nightly_runs` must be sorted by started_at, as the `nightly_runs` query returns them.
    """
    finished = [run for run in nightly_runs if run["status"] in FINISHED_STATUSES]
    if not finished:
        return None
    candidate = finished[-1]
    earlier = [
        run for run in finished[:-1] if run["status"] == "completed" and run["started_at"] <= candidate["started_at"]
    ]
    if not earlier:
        return None
    return earlier[-1]["run_id"], candidate["run_id"]


def trend_hover(row: Row) -> str:
    """Return the hover text of one nightly run's point."""
    started = row["started_at"].strftime("%Y-%m-%d %H:%M")
    return (
        f"{row['method_label']} @ {budget_text(row)}<br>{row['run_id']} ({row['status']}, started {started})"
        f"<br>mean score {number_text(row['mean_score'])}<br>{count_text(row)}"
    )


def trend_charts(trend: list[Row], colors: dict[str, str] | None = None) -> list[Chart]:
    """Return one chart per (model, benchmark): mean score per nightly run, a line per (method, budget)."""
    colors = colors or method_colors(row["method_label"] for row in trend)
    charts = []
    for (model, benchmark), rows in group_rows(trend, "model", "benchmark").items():
        if not rows_with_values(rows, "mean_score"):
            continue
        figure = go.Figure()
        for (label,), method_rows in group_rows(rows, "method_label").items():
            budgets = sorted({budget_value(row) for row in method_rows}, key=lambda value: (value is None, value or 0))
            for index, budget in enumerate(budgets):
                points = sorted(
                    (row for row in method_rows if budget_value(row) == budget), key=lambda row: row["started_at"]
                )
                figure.add_trace(
                    go.Scatter(
                        x=[row["started_at"] for row in points],
                        y=[row["mean_score"] for row in points],
                        mode="lines+markers",
                        name=f"{label} @ {budget_text(points[0])}",
                        line={"color": color_of(colors, label), "dash": BUDGET_DASHES[index % len(BUDGET_DASHES)]},
                        text=[trend_hover(row) for row in points],
                        hovertemplate="%{text}<extra></extra>",
                    )
                )
        title = f"{benchmark}: nightly mean score ({model})"
        base_layout(figure, title, xaxis={"title": "run start (UTC)"}, yaxis={"title": "mean score"})
        figure.update_layout(legend={"title": "method @ budget"})
        charts.append((title, figure))
    return charts
