"""Memory-fidelity Pareto charts from the `pareto` query: score and KL against physical KV bytes kept."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.charts import (
    Chart,
    Row,
    base_layout,
    budget_text,
    color_of,
    count_text,
    group_rows,
    method_colors,
    mib,
    number_text,
    rows_with_values,
)

FRONTIER_COLOR = "#111111"
# (query column of the fidelity value, its frontier flag, panel title).
PANELS = (
    ("mean_score", "on_score_frontier", "mean score (higher is better)"),
    ("mean_kl", "on_kl_frontier", "mean KL(full || compressed) (lower is better)"),
)


def pareto_hover(row: Row) -> str:
    """Return the hover text of one Pareto point."""
    flags = [name for name, flag in (("score", "on_score_frontier"), ("KL", "on_kl_frontier")) if row.get(flag)]
    frontier = f"<br>on the {' and '.join(flags)} frontier" if flags else ""
    masked = "<br>masks only: the tensors keep every token" if row.get("masked_only") else ""
    return (
        f"{row['method_label']}<br>budget {budget_text(row)}"
        f"<br>KV kept {number_text(mib(row['mean_kv_bytes_kept']), 2)} MiB"
        f"<br>mean score {number_text(row['mean_score'])}<br>mean KL {number_text(row['mean_kl'], 4)}"
        f"<br>{count_text(row)}{frontier}{masked}"
    )


def pareto_charts(points: list[Row], colors: dict[str, str] | None = None) -> list[Chart]:
    """Return one chart per (model, benchmark): score and KL against MiB kept, the frontier drawn as a line.

    Scores of different benchmarks are not comparable, so each benchmark gets its own frontier.
    """
    colors = colors or method_colors(row["method_label"] for row in points)
    fidelity = rows_with_values(points, "mean_score", "mean_kl")
    measured = [row for row in fidelity if row["mean_kv_bytes_kept"] is not None]
    charts = []
    for (model, benchmark), rows in group_rows(measured, "model", "benchmark").items():
        figure = make_subplots(rows=1, cols=2, subplot_titles=[title for _, _, title in PANELS])
        for column, (value, flag, _) in enumerate(PANELS, start=1):
            for trace in _method_points(rows, value, colors):
                trace.showlegend = column == 1
                figure.add_trace(trace, row=1, col=column)
            figure.add_trace(_frontier_line(rows, value, flag, show_legend=column == 1), row=1, col=column)
            figure.update_xaxes(title="mean KV cache kept (MiB)", row=1, col=column)
        title = f"{benchmark}: memory-fidelity Pareto ({model})"
        base_layout(figure, title)
        charts.append((title, figure))
    return charts


def _method_points(rows: list[Row], value: str, colors: dict[str, str]) -> list[go.Scatter]:
    traces = []
    for (label,), method_rows in group_rows(rows, "method_label").items():
        plotted = [row for row in method_rows if row[value] is not None and row["mean_kv_bytes_kept"] is not None]
        if not plotted:
            continue
        traces.append(
            go.Scatter(
                x=[mib(row["mean_kv_bytes_kept"]) for row in plotted],
                y=[row[value] for row in plotted],
                mode="markers",
                marker={"color": color_of(colors, label), "size": 9},
                name=label,
                legendgroup=label,
                text=[pareto_hover(row) for row in plotted],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    return traces


def _frontier_line(rows: list[Row], value: str, flag: str, show_legend: bool) -> go.Scatter:
    frontier = sorted((row for row in rows if row.get(flag)), key=lambda row: row["mean_kv_bytes_kept"])
    return go.Scatter(
        x=[mib(row["mean_kv_bytes_kept"]) for row in frontier],
        y=[row[value] for row in frontier],
        mode="lines+markers",
        line={"color": FRONTIER_COLOR, "width": 1.5},
        marker={"size": 14, "symbol": "circle-open", "color": FRONTIER_COLOR, "line": {"width": 2}},
        name="Pareto frontier",
        legendgroup="Pareto frontier",
        showlegend=show_legend,
        hoverinfo="skip",
    )
