"""Memory charts from the `memory` query.

Physical KV bytes and peak memory against the budget, and logical against physical compression.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.charts import (
    Chart,
    Row,
    axis_kinds,
    base_layout,
    budget_axis,
    budget_lines,
    budget_text,
    color_of,
    count_text,
    group_rows,
    method_colors,
    mib,
    number_text,
    reference_lines,
    rows_with_values,
    x_range,
)

MASKED_NOTE = "masks only: the tensors keep every token"


def memory_hover(row: Row) -> str:
    """Return the hover text of one memory row: kept and full KV bytes, peak memory and counts."""
    kept_mib = mib(row["mean_kv_bytes_kept"])
    full_mib = mib(row["mean_kv_bytes_full"])
    peak_mib = mib(row.get("mean_peak_memory_bytes"))
    masked = f"<br>{MASKED_NOTE}" if row.get("masked_only") else ""
    return (
        f"{row['method_label']}<br>budget {budget_text(row)}"
        f"<br>KV kept {number_text(kept_mib, 2)} MiB of {number_text(full_mib, 2)} MiB"
        f"<br>mean peak memory {number_text(peak_mib, 1)} MiB<br>{count_text(row)}{masked}"
    )


def memory_charts(memory: list[Row], colors: dict[str, str] | None = None) -> list[Chart]:
    """Return one chart per (model, budget kind): mean physical KV bytes kept and mean peak memory vs budget."""
    colors = colors or method_colors(row["method_label"] for row in memory)
    measured = rows_with_values(memory, "mean_kv_bytes_kept", "mean_peak_memory_bytes")
    charts = []
    for (model,), rows in group_rows(measured, "model").items():
        for axis_kind in axis_kinds(rows):
            budgets = x_range(rows, axis_kind)
            figure = make_subplots(rows=1, cols=2, subplot_titles=("KV cache kept (MiB)", "peak memory (MiB)"))
            panels = [lambda row: mib(row["mean_kv_bytes_kept"]), lambda row: mib(row["mean_peak_memory_bytes"])]
            for column, value in enumerate(panels, start=1):
                traces = budget_lines(rows, value, memory_hover, axis_kind, colors)
                traces += reference_lines(rows, value, memory_hover, budgets, colors)
                for trace in traces:
                    trace.showlegend = column == 1
                    figure.add_trace(trace, row=1, col=column)
                figure.update_xaxes(budget_axis(axis_kind, rows), row=1, col=column)
            title = f"physical KV cache and peak memory vs budget ({model})"
            base_layout(figure, title)
            figure.update_yaxes(title="MiB", row=1, col=1)
            charts.append((title, figure))
    return charts


def compression_hover(row: Row) -> str:
    """Return the hover text of one point of the logical vs physical compression chart."""
    masked = f"<br>{MASKED_NOTE}" if row.get("masked_only") else ""
    return (
        f"{row['method_label']}<br>budget {budget_text(row)}"
        f"<br>tokens kept / context {number_text(row['kept_tokens_ratio'])}"
        f"<br>KV bytes kept / full {number_text(row['kv_bytes_ratio'])}<br>{count_text(row)}{masked}"
    )


def compression_charts(memory: list[Row], colors: dict[str, str] | None = None) -> list[Chart]:
    """Return one chart per model of physical (bytes) against logical (tokens) compression.

    A method that frees what it drops lies on the diagonal. Methods that only mask tokens
    get an x marker and a '(masks only)' legend entry, because their bytes stay at 1.
    """
    colors = colors or method_colors(row["method_label"] for row in memory)
    measured = [row for row in memory if row["kept_tokens_ratio"] is not None and row["kv_bytes_ratio"] is not None]
    charts = []
    for (model,), rows in group_rows(measured, "model").items():
        figure = go.Figure()
        figure.add_trace(
            go.Scatter(
                x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "#999999"},
                name="bytes freed = tokens dropped", hoverinfo="skip",
            )
        )
        for (label, masked), method_rows in group_rows(rows, "method_label", "masked_only").items():
            figure.add_trace(
                go.Scatter(
                    x=[row["kept_tokens_ratio"] for row in method_rows],
                    y=[row["kv_bytes_ratio"] for row in method_rows],
                    mode="markers",
                    marker={"color": color_of(colors, label), "size": 10, "symbol": "x" if masked else "circle"},
                    name=f"{label} (masks only)" if masked else label,
                    text=[compression_hover(row) for row in method_rows],
                    hovertemplate="%{text}<extra></extra>",
                )
            )
        title = f"logical vs physical compression ({model})"
        base_layout(
            figure,
            title,
            xaxis={"title": "logical: kept_tokens / context_tokens", "range": [0, 1.05]},
            yaxis={"title": "physical: kv_bytes_kept / kv_bytes_full", "range": [0, 1.05]},
        )
        charts.append((title, figure))
    return charts


def masked_only_methods(memory: list[Row]) -> list[str]:
    """Return the sorted method labels that only masked tokens in some sample."""
    return sorted({row["method_label"] for row in memory if row.get("masked_only")})
