"""Plotly figures built from the rows of the named queries (leaderboard, memory, needle_by_budget).

Each builder takes query rows as dicts and returns (title, figure) pairs. Methods with a
budget are drawn against it, with token and ratio budgets on separate charts. The uncompressed `full` method has no
budget, so it is drawn as a dashed horizontal line across the chart.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import plotly.graph_objects as go

Row = dict[str, Any]
Chart = tuple[str, go.Figure]

MIB = 2**20
AXIS_TITLES = {"tokens": "budget (tokens kept per KV head)", "ratio": "budget (fraction of tokens kept)"}


def budget_value(row: Row) -> float | None:
    """Return the x value of a row: the token budget, the budget ratio, or None for an unbudgeted method."""
    if row["budget_kind"] == "tokens":
        return row["budget"]
    if row["budget_kind"] == "ratio":
        return row["budget_ratio"]
    return None


def _group(rows: list[Row], *keys: str) -> dict[tuple, list[Row]]:
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[key] for key in keys)].append(row)
    return dict(sorted(groups.items(), key=lambda item: tuple(str(part) for part in item[0])))


def _budget_lines(
    rows: list[Row], y: Callable[[Row], float | None], hover: Callable[[Row], str], axis_kind: str
) -> list[go.Scatter]:
    """Return one solid line per method_label over its budgets of `axis_kind`."""
    budgeted = [row for row in rows if row["budget_kind"] == axis_kind]
    traces = []
    for (label,), method_rows in _group(budgeted, "method_label").items():
        method_rows = sorted(method_rows, key=budget_value)
        traces.append(
            go.Scatter(
                x=[budget_value(row) for row in method_rows],
                y=[y(row) for row in method_rows],
                mode="lines+markers",
                name=label,
                text=[hover(row) for row in method_rows],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    return traces


def _reference_lines(
    rows: list[Row], y: Callable[[Row], float | None], hover: Callable[[Row], str], x_range: tuple[float, float]
) -> list[go.Scatter]:
    """Return one dashed horizontal line per unbudgeted method (budget_kind 'none'), spanning `x_range`."""
    traces = []
    for row in rows:
        if row["budget_kind"] != "none":
            continue
        traces.append(
            go.Scatter(
                x=list(x_range),
                y=[y(row), y(row)],
                mode="lines",
                line={"dash": "dash"},
                name=row["method_label"],
                text=[hover(row)] * 2,
                hovertemplate="%{text}<extra></extra>",
            )
        )
    return traces


def _axis_kinds(rows: list[Row]) -> list[str]:
    kinds = sorted({row["budget_kind"] for row in rows if row["budget_kind"] != "none"})
    return kinds or ["tokens"]


def _x_range(rows: list[Row], axis_kind: str) -> tuple[float, float]:
    values = [budget_value(row) for row in rows if row["budget_kind"] == axis_kind]
    values = [value for value in values if value is not None]
    if not values:
        return (0.0, 1.0)
    return (min(values), max(values))


def _layout(figure: go.Figure, title: str, axis_kind: str, y_title: str, x_range: tuple[float, float]) -> go.Figure:
    # Token budgets usually double from step to step, so a log axis spaces them evenly.
    log_axis = axis_kind == "tokens" and x_range[0] > 0
    figure.update_layout(
        title=title,
        xaxis={"title": AXIS_TITLES.get(axis_kind, "budget"), "type": "log" if log_axis else "linear"},
        yaxis={"title": y_title},
        hovermode="closest",
        legend={"title": "method"},
        margin={"t": 60, "l": 70, "r": 20, "b": 60},
    )
    return figure


def _score_hover(row: Row) -> str:
    interval = ""
    if row.get("ci_low") is not None and row.get("ci_high") is not None:
        interval = f"<br>95% CI [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    mean = "n/a" if row["mean_score"] is None else f"{row['mean_score']:.3f}"
    budget = budget_value(row)
    budget_text = "none" if budget is None else f"{budget:g}"
    return (
        f"{row['method_label']}<br>budget {budget_text}<br>mean score {mean}{interval}"
        f"<br>n = {row['n']} samples, {row['errors']} errors"
    )


def score_charts(leaderboard: list[Row]) -> list[Chart]:
    """Return one score-vs-budget chart per (model, benchmark, budget kind), with 95% CI error bars."""
    charts = []
    for (model, benchmark), rows in _group(leaderboard, "model", "benchmark").items():
        for axis_kind in _axis_kinds(rows):
            x_range = _x_range(rows, axis_kind)
            figure = go.Figure()
            for trace in _budget_lines(rows, lambda row: row["mean_score"], _score_hover, axis_kind):
                _add_error_bars(trace, rows)
                figure.add_trace(trace)
            for trace in _reference_lines(rows, lambda row: row["mean_score"], _score_hover, x_range):
                figure.add_trace(trace)
            title = f"{benchmark}: score vs budget ({model})"
            charts.append((title, _layout(figure, title, axis_kind, "mean score", x_range)))
    return charts


def _add_error_bars(trace: go.Scatter, rows: list[Row]) -> None:
    by_point = {(row["method_label"], budget_value(row)): row for row in rows}
    upper, lower = [], []
    for x, y in zip(trace.x, trace.y):
        row = by_point[(trace.name, x)]
        has_interval = y is not None and row["ci_low"] is not None and row["ci_high"] is not None
        upper.append(row["ci_high"] - y if has_interval else 0.0)
        lower.append(y - row["ci_low"] if has_interval else 0.0)
    trace.error_y = {"type": "data", "array": upper, "arrayminus": lower, "visible": True}


def _memory_hover(row: Row) -> str:
    budget = budget_value(row)
    budget_text = "none" if budget is None else f"{budget:g}"
    kept_bytes = row["mean_kv_bytes_kept"]
    full_bytes = row["mean_kv_bytes_full"]
    kept_text = "n/a" if kept_bytes is None else f"{kept_bytes / MIB:.2f} MiB"
    full_text = "n/a" if full_bytes is None else f"{full_bytes / MIB:.2f} MiB"
    masked = "<br>masks only: memory not freed" if row.get("masked_only") else ""
    return (
        f"{row['method_label']}<br>budget {budget_text}<br>KV kept {kept_text} of {full_text}"
        f"<br>n = {row['n']} samples, {row['errors']} errors{masked}"
    )


def _kept_mib(row: Row) -> float | None:
    return None if row["mean_kv_bytes_kept"] is None else row["mean_kv_bytes_kept"] / MIB


def memory_charts(memory: list[Row]) -> list[Chart]:
    """Return one chart per (model, budget kind) of the mean physical KV-cache bytes kept vs budget."""
    charts = []
    for (model,), rows in _group(memory, "model").items():
        for axis_kind in _axis_kinds(rows):
            x_range = _x_range(rows, axis_kind)
            figure = go.Figure()
            figure.add_traces(_budget_lines(rows, _kept_mib, _memory_hover, axis_kind))
            figure.add_traces(_reference_lines(rows, _kept_mib, _memory_hover, x_range))
            title = f"physical KV cache kept vs budget ({model})"
            charts.append((title, _layout(figure, title, axis_kind, "mean KV cache kept (MiB)", x_range)))
    return charts


def needle_charts(needle: list[Row]) -> list[Chart]:
    """Return one heatmap per model of the needle benchmark's mean score, method by budget."""
    charts = []
    for (model,), rows in _group(needle, "model").items():
        columns = sorted({budget_value(row) for row in rows if budget_value(row) is not None})
        labels = [f"{value:g}" for value in columns] + (["none"] if any(budget_value(r) is None for r in rows) else [])
        methods = sorted({row["method_label"] for row in rows})
        cells = {(row["method_label"], _column_label(row)): row for row in rows}
        z = [[_cell_value(cells.get((method, label)), "mean_score") for label in labels] for method in methods]
        text = [[_needle_text(cells.get((method, label))) for label in labels] for method in methods]
        figure = go.Figure(
            go.Heatmap(
                x=labels, y=methods, z=z, text=text, zmin=0.0, zmax=1.0, colorscale="Viridis",
                hovertemplate="%{y} at budget %{x}<br>%{text}<extra></extra>",
                colorbar={"title": "mean score"},
            )
        )
        title = f"needle: mean score by method and budget ({model})"
        figure.update_layout(title=title, xaxis={"title": "budget", "type": "category"}, yaxis={"title": "method"})
        charts.append((title, figure))
    return charts


def _column_label(row: Row) -> str:
    value = budget_value(row)
    return "none" if value is None else f"{value:g}"


def _cell_value(row: Row | None, column: str) -> float | None:
    return None if row is None else row[column]


def _needle_text(row: Row | None) -> str:
    if row is None:
        return "not run"
    mean = "n/a" if row["mean_score"] is None else f"{row['mean_score']:.3f}"
    return f"mean score {mean}, n = {row['n']}, {row['errors']} errors"
