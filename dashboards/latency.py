"""Latency charts from the `latency` query: prefill and compression seconds, decode tokens per second."""

from __future__ import annotations

from plotly.subplots import make_subplots

from dashboards.charts import (
    Chart,
    Row,
    axis_kinds,
    base_layout,
    budget_axis,
    budget_lines,
    budget_text,
    count_text,
    group_rows,
    method_colors,
    number_text,
    reference_lines,
    rows_with_values,
    x_range,
)

# (query column, panel title).
PANELS = (
    ("mean_prefill_s", "prefill (s)"),
    ("mean_compression_s", "compression (s)"),
    ("decode_tokens_per_s", "decode (tokens/s)"),
)


def latency_hover(row: Row) -> str:
    """Return the hover text of one latency row."""
    return (
        f"{row['method_label']}<br>budget {budget_text(row)}"
        f"<br>prefill {number_text(row['mean_prefill_s'], 4)} s"
        f"<br>compression {number_text(row['mean_compression_s'], 4)} s"
        f"<br>decode {number_text(row['decode_tokens_per_s'], 1)} tokens/s<br>{count_text(row)}"
    )


def latency_charts(latency: list[Row], colors: dict[str, str] | None = None) -> list[Chart]:
    """Return one chart per (model, budget kind) with a panel per latency measure against the budget."""
    colors = colors or method_colors(row["method_label"] for row in latency)
    timed = rows_with_values(latency, *(name for name, _ in PANELS))
    charts = []
    for (model,), rows in group_rows(timed, "model").items():
        for axis_kind in axis_kinds(rows):
            budgets = x_range(rows, axis_kind)
            figure = make_subplots(rows=1, cols=len(PANELS), subplot_titles=[title for _, title in PANELS])
            for column, (name, _) in enumerate(PANELS, start=1):
                value = _column_getter(name)
                traces = budget_lines(rows, value, latency_hover, axis_kind, colors)
                traces += reference_lines(rows, value, latency_hover, budgets, colors)
                for trace in traces:
                    trace.showlegend = column == 1
                    figure.add_trace(trace, row=1, col=column)
                figure.update_xaxes(budget_axis(axis_kind, rows), row=1, col=column)
            title = f"latency vs budget ({model})"
            charts.append((title, base_layout(figure, title)))
    return charts


def _column_getter(name: str):
    return lambda row: row[name]
