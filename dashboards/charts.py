"""Shared pieces of the dashboard's Plotly figures: budget axes, grouping, method colors and lines.

Every chart builder takes rows of a named query as dicts and returns (title, figure)
pairs. Methods with a budget are drawn against it, with token and ratio budgets on
separate charts. A method without a budget (the full cache, `budget_kind` 'none') is
drawn as a dashed horizontal reference line across the budget axis.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import plotly.graph_objects as go

Row = dict[str, Any]
Chart = tuple[str, go.Figure]

MIB = 2**20
AXIS_TITLES = {"tokens": "budget (tokens kept per KV head)", "ratio": "budget (fraction of tokens kept)"}
# Plotly's D3 palette. The full cache keeps one dark grey on every chart.
PALETTE = ("#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#BCBD22", "#17BECF")
FULL_CACHE_COLOR = "#444444"
FIGURE_MARGIN = {"t": 60, "l": 70, "r": 20, "b": 60}


def rows_with_values(rows: Iterable[Row], *columns: str) -> list[Row]:
    """Return the rows where at least one of `columns` is not null."""
    return [row for row in rows if any(row[column] is not None for column in columns)]


def budget_value(row: Row) -> float | None:
    """Return the x value of a row: the token budget, the budget ratio, or None for an unbudgeted method."""
    if row["budget_kind"] == "tokens":
        return row["budget"]
    if row["budget_kind"] == "ratio":
        return row["budget_ratio"]
    return None


def budget_text(row: Row) -> str:
    """Return the budget as short text: '64', '0.25' or 'none'."""
    value = budget_value(row)
    return "none" if value is None else f"{value:g}"


def group_rows(rows: Iterable[Row], *keys: str) -> dict[tuple, list[Row]]:
    """Group rows by the values of `keys`, groups sorted by those values as text."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[key] for key in keys)].append(row)
    return dict(sorted(groups.items(), key=lambda item: tuple(str(part) for part in item[0])))


def axis_kinds(rows: list[Row]) -> list[str]:
    """Return the budget kinds that need their own budget axis, 'tokens' when only the full cache is present."""
    kinds = sorted({row["budget_kind"] for row in rows if row["budget_kind"] != "none"})
    return kinds or ["tokens"]


def x_range(rows: list[Row], axis_kind: str) -> tuple[float, float]:
    """Return (min, max) budget of `axis_kind`, or (0, 1) when no row has one."""
    values = [budget_value(row) for row in rows if row["budget_kind"] == axis_kind]
    values = [value for value in values if value is not None]
    if not values:
        return (0.0, 1.0)
    return (min(values), max(values))


def budget_axis(axis_kind: str, rows: list[Row]) -> dict[str, Any]:
    """Return the layout of a budget x axis with a tick at each budget of `axis_kind` in `rows`.

    Token budgets usually double per step, so their axis is logarithmic.
    """
    values = sorted({budget_value(row) for row in rows if row["budget_kind"] == axis_kind} - {None})
    log_axis = axis_kind == "tokens" and bool(values) and values[0] > 0
    axis: dict[str, Any] = {"title": AXIS_TITLES.get(axis_kind, "budget"), "type": "log" if log_axis else "linear"}
    if values:
        axis["tickvals"] = values
        axis["ticktext"] = [f"{value:g}" for value in values]
    return axis


def method_colors(labels: Iterable[str]) -> dict[str, str]:
    """Map method labels to colors, in sorted order, so one method has one color on every chart of a page."""
    colors = {}
    budgeted = sorted({label for label in labels if label != "full"})
    for index, label in enumerate(budgeted):
        colors[label] = PALETTE[index % len(PALETTE)]
    colors["full"] = FULL_CACHE_COLOR
    return colors


def color_of(colors: dict[str, str], label: str) -> str:
    """Return the color of `label`, falling back to the full-cache grey for a label the map lacks."""
    return colors.get(label, FULL_CACHE_COLOR)


def translucent(color: str, alpha: float) -> str:
    """Return `#RRGGBB` as an rgba() string with the given opacity."""
    red, green, blue = (int(color[index : index + 2], 16) for index in (1, 3, 5))
    return f"rgba({red}, {green}, {blue}, {alpha})"


def base_layout(figure: go.Figure, title: str, **layout: Any) -> go.Figure:
    """Apply the title, margins and hover mode that every dashboard figure shares."""
    figure.update_layout(title=title, hovermode="closest", margin=FIGURE_MARGIN, legend={"title": "method"}, **layout)
    return figure


def budget_lines(
    rows: list[Row],
    y: Callable[[Row], float | None],
    hover: Callable[[Row], str],
    axis_kind: str,
    colors: dict[str, str],
) -> list[go.Scatter]:
    """Return one solid line per method_label over its budgets of `axis_kind`."""
    budgeted = [row for row in rows if row["budget_kind"] == axis_kind]
    traces = []
    for (label,), method_rows in group_rows(budgeted, "method_label").items():
        method_rows = sorted(method_rows, key=budget_value)
        traces.append(
            go.Scatter(
                x=[budget_value(row) for row in method_rows],
                y=[y(row) for row in method_rows],
                mode="lines+markers",
                name=label,
                legendgroup=label,
                line={"color": color_of(colors, label)},
                text=[hover(row) for row in method_rows],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    return traces


def reference_lines(
    rows: list[Row],
    y: Callable[[Row], float | None],
    hover: Callable[[Row], str],
    budgets: tuple[float, float],
    colors: dict[str, str],
) -> list[go.Scatter]:
    """Return one dashed horizontal line per unbudgeted method (budget_kind 'none'), spanning `budgets`."""
    traces = []
    for row in rows:
        if row["budget_kind"] != "none":
            continue
        label = row["method_label"]
        traces.append(
            go.Scatter(
                x=list(budgets),
                y=[y(row), y(row)],
                mode="lines",
                line={"dash": "dash", "color": color_of(colors, label)},
                name=label,
                legendgroup=label,
                text=[hover(row)] * 2,
                hovertemplate="%{text}<extra></extra>",
            )
        )
    return traces


def count_text(row: Row) -> str:
    """Return 'n = 12 samples, 1 errors' for hover texts."""
    return f"n = {row['n']} samples, {row['errors']} errors"


def number_text(value: float | None, digits: int = 3) -> str:
    """Return `value` rounded to `digits` decimals, or 'n/a' for a missing value."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def mib(value: float | None) -> float | None:
    """Return bytes as MiB, keeping None."""
    return None if value is None else value / MIB
