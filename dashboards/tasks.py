"""Per-task small multiples from the `task_scores` query: one score-vs-budget panel per task."""

from __future__ import annotations

import math

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

PANEL_COLUMNS = 3
PANEL_HEIGHT_PX = 260


def task_hover(row: Row) -> str:
    """Return the hover text of one task point."""
    return (
        f"{row['task']}: {row['method_label']}<br>budget {budget_text(row)}"
        f"<br>mean score {number_text(row['mean_score'])}<br>{count_text(row)}"
    )


def task_charts(task_scores: list[Row], colors: dict[str, str] | None = None) -> list[Chart]:
    """Return one chart per (model, benchmark, budget kind) with a score-vs-budget panel per task."""
    colors = colors or method_colors(row["method_label"] for row in task_scores)
    charts = []
    for (model, benchmark), rows in group_rows(task_scores, "model", "benchmark").items():
        if not rows_with_values(rows, "mean_score"):
            continue
        by_task = group_rows(rows, "task")
        columns = min(PANEL_COLUMNS, len(by_task))
        panel_rows = math.ceil(len(by_task) / columns)
        for axis_kind in axis_kinds(rows):
            budgets = x_range(rows, axis_kind)
            figure = make_subplots(
                rows=panel_rows, cols=columns, subplot_titles=[task for (task,) in by_task],
                vertical_spacing=0.5 / panel_rows, shared_yaxes="all",
            )
            for index, task_rows in enumerate(by_task.values()):
                position = {"row": index // columns + 1, "col": index % columns + 1}
                traces = budget_lines(task_rows, _mean_score, task_hover, axis_kind, colors)
                traces += reference_lines(task_rows, _mean_score, task_hover, budgets, colors)
                for trace in traces:
                    trace.showlegend = index == 0
                    figure.add_trace(trace, **position)
                axis = budget_axis(axis_kind, rows)
                if position["row"] < panel_rows:
                    axis["title"] = None
                figure.update_xaxes(axis, **position)
            title = f"{benchmark}: score per task vs budget ({model})"
            base_layout(figure, title, height=120 + PANEL_HEIGHT_PX * panel_rows)
            charts.append((title, figure))
    return charts


def _mean_score(row: Row) -> float | None:
    return row["mean_score"]
