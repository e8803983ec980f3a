"""Score vs budget per benchmark, from the `leaderboard` query: a line per method with its 95% CI band."""

from __future__ import annotations

import plotly.graph_objects as go

from dashboards.charts import (
    Chart,
    Row,
    axis_kinds,
    base_layout,
    budget_axis,
    budget_lines,
    budget_text,
    budget_value,
    color_of,
    count_text,
    group_rows,
    method_colors,
    number_text,
    reference_lines,
    rows_with_values,
    translucent,
    x_range,
)

BAND_OPACITY = 0.15


def score_hover(row: Row) -> str:
    """Return the hover text of one leaderboard row: mean, interval and sample count."""
    interval = ""
    if row.get("ci_low") is not None and row.get("ci_high") is not None:
        interval = f"<br>95% CI [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    return (
        f"{row['method_label']}<br>budget {budget_text(row)}<br>mean score {number_text(row['mean_score'])}"
        f"{interval}<br>{count_text(row)}"
    )


def score_charts(leaderboard: list[Row], colors: dict[str, str] | None = None) -> list[Chart]:
    """Return one score-vs-budget chart per (model, benchmark, budget kind) with bootstrap 95% CI bands."""
    colors = colors or method_colors(row["method_label"] for row in leaderboard)
    charts = []
    for (model, benchmark), rows in group_rows(leaderboard, "model", "benchmark").items():
        if not rows_with_values(rows, "mean_score"):
            continue
        for axis_kind in axis_kinds(rows):
            budgets = x_range(rows, axis_kind)
            figure = go.Figure()
            figure.add_traces(_budget_bands(rows, axis_kind, colors))
            figure.add_traces(_full_cache_bands(rows, budgets, colors))
            figure.add_traces(budget_lines(rows, lambda row: row["mean_score"], score_hover, axis_kind, colors))
            figure.add_traces(reference_lines(rows, lambda row: row["mean_score"], score_hover, budgets, colors))
            title = f"{benchmark}: score vs budget ({model})"
            base_layout(figure, title, xaxis=budget_axis(axis_kind, rows), yaxis={"title": "mean score"})
            charts.append((title, figure))
    return charts


def _has_interval(row: Row) -> bool:
    return row.get("ci_low") is not None and row.get("ci_high") is not None


def _band(x: list[float], low: list[float], high: list[float], label: str, colors: dict[str, str]) -> go.Scatter:
    """Return a filled polygon from `high` left to right and back along `low`."""
    return go.Scatter(
        x=x + x[::-1],
        y=high + low[::-1],
        fill="toself",
        fillcolor=translucent(color_of(colors, label), BAND_OPACITY),
        line={"width": 0},
        mode="lines",
        name=f"{label} 95% CI",
        legendgroup=label,
        showlegend=False,
        hoverinfo="skip",
    )


def _budget_bands(rows: list[Row], axis_kind: str, colors: dict[str, str]) -> list[go.Scatter]:
    budgeted = [row for row in rows if row["budget_kind"] == axis_kind and _has_interval(row)]
    bands = []
    for (label,), method_rows in group_rows(budgeted, "method_label").items():
        method_rows = sorted(method_rows, key=budget_value)
        x = [budget_value(row) for row in method_rows]
        bands.append(_band(x, [row["ci_low"] for row in method_rows], [row["ci_high"] for row in method_rows],
                           label, colors))
    return bands


def _full_cache_bands(rows: list[Row], budgets: tuple[float, float], colors: dict[str, str]) -> list[go.Scatter]:
    bands = []
    for row in rows:
        if row["budget_kind"] == "none" and _has_interval(row):
            x = list(budgets)
            bands.append(_band(x, [row["ci_low"]] * 2, [row["ci_high"]] * 2, row["method_label"], colors))
    return bands
