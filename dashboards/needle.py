"""Needle heatmaps from the `needle_grid` query: mean score by context length and needle depth."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.charts import Chart, Row, budget_text, budget_value, group_rows, rows_with_values

COLOR_SCALE = "Viridis"


def needle_hover(row: Row | None) -> str:
    """Return the hover text of one heatmap cell, 'not run' when the grid point has no samples."""
    if row is None:
        return "not run"
    mean = "n/a" if row["mean_score"] is None else f"{row['mean_score']:.3f}"
    return f"mean score {mean}, n = {row['n']}, {row['errors']} errors"


def needle_charts(grid: list[Row]) -> list[Chart]:
    """Return one chart per (model, benchmark, method): a depth x length heatmap per budget, side by side."""
    charts = []
    for (model, benchmark, label), rows in group_rows(grid, "model", "benchmark", "method_label").items():
        if not rows_with_values(rows, "mean_score"):
            continue
        by_budget = _by_budget(rows)
        titles = [f"budget {budget}" for budget in by_budget]
        figure = make_subplots(rows=1, cols=len(by_budget), subplot_titles=titles, shared_yaxes=True)
        for column, budget_rows in enumerate(by_budget.values(), start=1):
            figure.add_trace(_heatmap(budget_rows, show_scale=column == len(by_budget)), row=1, col=column)
            figure.update_xaxes(title="needle depth (%)", type="category", row=1, col=column)
        figure.update_yaxes(title="context length (tokens)", type="category", row=1, col=1)
        title = f"{benchmark}: {label} score by needle depth and context length ({model})"
        figure.update_layout(title=title, margin={"t": 80, "l": 90, "r": 20, "b": 60})
        charts.append((title, figure))
    return charts


def _by_budget(rows: list[Row]) -> dict[str, list[Row]]:
    """Group rows by budget text, budgets in increasing order and 'none' last."""
    ordered = sorted(rows, key=lambda row: (budget_value(row) is None, budget_value(row) or 0))
    groups: dict[str, list[Row]] = {}
    for row in ordered:
        groups.setdefault(budget_text(row), []).append(row)
    return groups


def _heatmap(rows: list[Row], show_scale: bool) -> go.Heatmap:
    depths = sorted({row["depth_percent"] for row in rows})
    lengths = sorted({row["context_length"] for row in rows})
    cells = {(row["context_length"], row["depth_percent"]): row for row in rows}
    z = [[_mean(cells.get((length, depth))) for depth in depths] for length in lengths]
    text = [[needle_hover(cells.get((length, depth))) for depth in depths] for length in lengths]
    return go.Heatmap(
        x=[f"{depth:g}" for depth in depths],
        y=[str(length) for length in lengths],
        z=z,
        text=text,
        zmin=0.0,
        zmax=1.0,
        colorscale=COLOR_SCALE,
        showscale=show_scale,
        colorbar={"title": "mean score"},
        hovertemplate="length %{y}, depth %{x}%<br>%{text}<extra></extra>",
    )


def _mean(row: Row | None) -> float | None:
    return None if row is None else row["mean_score"]
