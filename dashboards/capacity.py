"""Capacity charts from the `capacity` and `capacity_spearman` queries: capacity against score and KL."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.charts import (
    Chart,
    Row,
    base_layout,
    budget_text,
    color_of,
    group_rows,
    method_colors,
    number_text,
)

# (query column of the y value, Spearman column, its sample count column, y axis title).
PANELS = (
    ("mean_score", "spearman_score", "n_score", "mean score"),
    ("mean_kl", "spearman_kl", "n_kl", "mean KL(full || compressed)"),
)


def spearman_text(correlation: Row | None, column: str, count: str) -> str:
    """Return 'Spearman ρ = 0.42 over 120 samples', or why there is no coefficient."""
    if correlation is None or correlation[count] == 0:
        return "Spearman ρ: no samples with both values"
    if correlation[column] is None:
        return f"Spearman ρ undefined over {correlation[count]} samples (fewer than 3 or constant)"
    return f"Spearman ρ = {correlation[column]:.2f} over {correlation[count]} samples"


def capacity_hover(row: Row) -> str:
    """Return the hover text of one capacity point."""
    return (
        f"{row['method_label']}<br>budget {budget_text(row)}<br>mean capacity {number_text(row['mean_capacity'])}"
        f"<br>mean score {number_text(row['mean_score'])}<br>mean KL {number_text(row['mean_kl'], 4)}"
        f"<br>n = {row['n']} samples"
    )


def capacity_charts(points: list[Row], correlations: list[Row], colors: dict[str, str] | None = None) -> list[Chart]:
    """Return one chart per (model, benchmark): mean score and mean KL against mean capacity per method and budget.

    Each point is the mean of one (method, budget). The Spearman coefficient in each panel
    title is computed over the individual samples, not over the plotted means.
    """
    colors = colors or method_colors(row["method_label"] for row in points)
    by_key = {(row["model"], row["benchmark"]): row for row in correlations}
    charts = []
    for (model, benchmark), rows in group_rows(points, "model", "benchmark").items():
        correlation = by_key.get((model, benchmark))
        titles = [f"{axis}: {spearman_text(correlation, rho, count)}" for _, rho, count, axis in PANELS]
        figure = make_subplots(rows=1, cols=2, subplot_titles=titles)
        for column, (value, _, _, axis) in enumerate(PANELS, start=1):
            for trace in _method_points(rows, value, colors):
                trace.showlegend = column == 1
                figure.add_trace(trace, row=1, col=column)
            figure.update_xaxes(title="mean capacity of the kept cache", row=1, col=column)
            figure.update_yaxes(title=axis, row=1, col=column)
        title = f"{benchmark}: capacity against fidelity ({model})"
        charts.append((title, base_layout(figure, title)))
    return charts


def _method_points(rows: list[Row], value: str, colors: dict[str, str]) -> list[go.Scatter]:
    traces = []
    for (label,), method_rows in group_rows(rows, "method_label").items():
        plotted = [row for row in method_rows if row[value] is not None and row["mean_capacity"] is not None]
        if not plotted:
            continue
        traces.append(
            go.Scatter(
                x=[row["mean_capacity"] for row in plotted],
                y=[row[value] for row in plotted],
                mode="markers",
                marker={"color": color_of(colors, label), "size": 9},
                name=label,
                legendgroup=label,
                text=[capacity_hover(row) for row in plotted],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    return traces
