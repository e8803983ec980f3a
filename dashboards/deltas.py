"""Tables and charts of the `paired_deltas` query: per-key score change between two runs with its 95% CI."""

from __future__ import annotations

import plotly.graph_objects as go

from dashboards.charts import Chart, Row, budget_text, group_rows, number_text
from dashboards.page import html_table
from flows.regression import Thresholds

DELTA_HEADERS = (
    "model", "benchmark", "method", "budget", "pairs", "n A", "n B", "mean A", "mean B",
    "change B - A (95% CI)", "KV bytes B / A", "latency B / A", "regression",
)


def regression_reasons(row: Row, thresholds: Thresholds) -> list[str]:
    """Return why a key regressed from A to B, by the nightly flow's rules, or [] when it did not.

    A score regression is a mean drop larger than `thresholds.score_drop` whose 95% interval
    lies below zero. KV bytes and latency regress when their B / A ratio exceeds 1 plus the
    threshold.
    """
    reasons = []
    delta, high = row["delta"], row["ci_high"]
    if delta is not None and high is not None and delta < -thresholds.score_drop and high < 0:
        reasons.append(
            f"score {row['mean_a']:.3f} -> {row['mean_b']:.3f} (95% CI of change {row['ci_low']:+.3f}..{high:+.3f})"
        )
    if row["kv_bytes_ratio"] is not None and row["kv_bytes_ratio"] > 1 + thresholds.kv_bytes_increase:
        reasons.append(f"KV bytes x{row['kv_bytes_ratio']:.3f}")
    if row["latency_ratio"] is not None and row["latency_ratio"] > 1 + thresholds.latency_increase:
        reasons.append(f"latency x{row['latency_ratio']:.2f}")
    return reasons


def delta_table(deltas: list[Row], thresholds: Thresholds | None = None) -> str:
    """Return the HTML table of every key, regressed keys first and highlighted."""
    thresholds = thresholds or Thresholds()
    reasons = {id(row): regression_reasons(row, thresholds) for row in deltas}
    ordered = sorted(deltas, key=lambda row: not reasons[id(row)])
    cells = []
    for row in ordered:
        change = None
        if row["delta"] is not None:
            change = f"{row['delta']:+.3f} ({number_text(row['ci_low'])}..{number_text(row['ci_high'])})"
        cells.append(
            (
                row["model"], row["benchmark"], row["method_label"], budget_text(row),
                row["n"], row["n_a"], row["n_b"], _rounded(row["mean_a"]), _rounded(row["mean_b"]), change,
                _rounded(row["kv_bytes_ratio"]), _rounded(row["latency_ratio"]),
                "; ".join(reasons[id(row)]) or "no",
            )
        )
    classes = ["regressed" if reasons[id(row)] else "" for row in ordered]
    return html_table(DELTA_HEADERS, cells, classes)


def regressed_count(deltas: list[Row], thresholds: Thresholds | None = None) -> int:
    """Return how many keys regressed."""
    thresholds = thresholds or Thresholds()
    return sum(1 for row in deltas if regression_reasons(row, thresholds))


def delta_charts(deltas: list[Row]) -> list[Chart]:
    """Return one chart per (model, benchmark): each key's mean change with its 95% CI as a horizontal bar."""
    charts = []
    paired = [row for row in deltas if row["delta"] is not None]
    for (model, benchmark), rows in group_rows(paired, "model", "benchmark").items():
        labels = [f"{row['method_label']} @ {budget_text(row)}" for row in rows]
        figure = go.Figure(
            go.Scatter(
                x=[row["delta"] for row in rows],
                y=labels,
                mode="markers",
                marker={"size": 9, "color": ["#D62728" if _below_zero(row) else "#1F77B4" for row in rows]},
                error_x={
                    "type": "data",
                    "array": [_upper(row) for row in rows],
                    "arrayminus": [_lower(row) for row in rows],
                    "visible": True,
                },
                text=[_delta_hover(row) for row in rows],
                hovertemplate="%{text}<extra></extra>",
                showlegend=False,
            )
        )
        figure.add_vline(x=0, line={"dash": "dot", "color": "#666666"})
        title = f"{benchmark}: score change B - A with 95% CI ({model})"
        figure.update_layout(
            title=title,
            xaxis={"title": "mean paired change of score"},
            yaxis={"type": "category", "autorange": "reversed"},
            height=160 + 28 * len(rows),
            margin={"t": 60, "l": 200, "r": 20, "b": 60},
        )
        charts.append((title, figure))
    return charts


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _below_zero(row: Row) -> bool:
    return row["ci_high"] is not None and row["ci_high"] < 0


def _upper(row: Row) -> float:
    return 0.0 if row["ci_high"] is None else row["ci_high"] - row["delta"]


def _lower(row: Row) -> float:
    return 0.0 if row["ci_low"] is None else row["delta"] - row["ci_low"]


def _delta_hover(row: Row) -> str:
    return (
        f"{row['method_label']} @ {budget_text(row)}<br>mean A {number_text(row['mean_a'])}, "
        f"mean B {number_text(row['mean_b'])}<br>change {row['delta']:+.3f} "
        f"(95% CI {number_text(row['ci_low'])}..{number_text(row['ci_high'])})<br>{row['n']} paired samples"
    )
