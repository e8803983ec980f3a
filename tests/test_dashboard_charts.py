"""Dashboard chart builders and tables: traces, bands, frontiers, heatmaps and regression rules from hand-made rows."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from dashboards.capacity import capacity_charts
from dashboards.charts import method_colors
from dashboards.deltas import delta_charts, delta_table, regression_reasons
from dashboards.drilldown import drilldown_cells, drilldown_html, script_json
from dashboards.memory import compression_charts, memory_charts
from dashboards.needle import needle_charts
from dashboards.nightly import nightly_pair, trend_charts
from dashboards.pareto import pareto_charts
from dashboards.score import score_charts
from dashboards.tasks import task_charts
from flows.regression import Thresholds

MIB = 2**20


def key(label, kind, budget, **values):
    """Return a row of one (model m, benchmark needle, method, budget) with the given query columns."""
    return {"model": "m", "benchmark": "needle", "method_label": label, "budget_kind": kind, "budget": budget,
            "budget_ratio": None, **values}


LEADERBOARD_ROWS = [
    key(label, kind, budget, n=n, errors=0, mean_score=mean, ci_low=mean - 0.1, ci_high=mean + 0.05)
    for label, kind, budget, n, mean in [
        ("capkv", "tokens", 128, 10, 0.6),
        ("capkv", "tokens", 64, 10, 0.4),
        ("snapkv", "tokens", 64, 9, 0.3),
        ("full", "none", None, 12, 0.9),
    ]
]


def traces_by_name(figure):
    return {trace.name: trace for trace in figure.data}


def test_score_chart_lines_and_bands():
    ((title, figure),) = score_charts(LEADERBOARD_ROWS)
    assert title == "needle: score vs budget (m)"
    traces = traces_by_name(figure)
    assert list(traces["capkv"].x) == [64, 128]
    assert list(traces["capkv"].y) == [0.4, 0.6]
    assert traces["capkv"].line.dash is None
    # The band runs along ci_high left to right, then back along ci_low.
    band = traces["capkv 95% CI"]
    assert band.fill == "toself"
    assert list(band.x) == [64, 128, 128, 64]
    assert list(band.y) == pytest.approx([0.45, 0.65, 0.5, 0.3])
    assert band.showlegend is False


def test_score_chart_full_cache_dashed():
    ((_, figure),) = score_charts(LEADERBOARD_ROWS)
    traces = traces_by_name(figure)
    assert traces["full"].line.dash == "dash"
    assert list(traces["full"].x) == [64, 128]
    assert list(traces["full"].y) == [0.9, 0.9]
    assert list(traces["full 95% CI"].y) == pytest.approx([0.95, 0.95, 0.8, 0.8])
    assert "n = 12 samples" in traces["full"].text[0]
    assert "n = 9 samples" in traces["snapkv"].text[0]
    assert "95% CI [0.300, 0.450]" in traces["capkv"].text[0]


def test_score_chart_budget_axis():
    ((_, figure),) = score_charts(LEADERBOARD_ROWS)
    assert figure.layout.xaxis.type == "log"
    assert list(figure.layout.xaxis.tickvals) == [64, 128]


def test_score_chart_per_budget_kind():
    rows = LEADERBOARD_ROWS + [
        {**key("capkv", "ratio", None, n=5, errors=0, mean_score=0.5, ci_low=0.4, ci_high=0.6), "budget_ratio": 0.25}
    ]
    charts = score_charts(rows)
    assert len(charts) == 2
    ratio_figure = charts[0][1]
    assert ratio_figure.layout.xaxis.type == "linear"
    assert list(traces_by_name(ratio_figure)["capkv"].x) == [0.25]


def test_method_colors_stable():
    colors = method_colors(["snapkv", "full", "capkv", "snapkv"])
    assert colors == {"capkv": "#1F77B4", "snapkv": "#FF7F0E", "full": "#444444"}


MEMORY_ROWS = [
    key("capkv", "tokens", 64, n=5, errors=0, mean_kv_bytes_kept=2 * MIB, mean_kv_bytes_full=8 * MIB,
        mean_peak_memory_bytes=100 * MIB, kept_tokens_ratio=0.25, kv_bytes_ratio=0.25, masked_only=False),
    key("knorm", "tokens", 64, n=5, errors=0, mean_kv_bytes_kept=8 * MIB, mean_kv_bytes_full=8 * MIB,
        mean_peak_memory_bytes=110 * MIB, kept_tokens_ratio=0.25, kv_bytes_ratio=1.0, masked_only=True),
    key("full", "none", None, n=5, errors=1, mean_kv_bytes_kept=8 * MIB, mean_kv_bytes_full=8 * MIB,
        mean_peak_memory_bytes=120 * MIB, kept_tokens_ratio=1.0, kv_bytes_ratio=1.0, masked_only=False),
]


def test_memory_chart_panels():
    ((title, figure),) = memory_charts(MEMORY_ROWS)
    assert title == "physical KV cache and peak memory vs budget (m)"
    bytes_panel = {trace.name: trace for trace in figure.data if trace.xaxis == "x"}
    peak_panel = {trace.name: trace for trace in figure.data if trace.xaxis == "x2"}
    assert list(bytes_panel["capkv"].y) == [2.0]
    assert list(bytes_panel["full"].y) == [8.0, 8.0]
    assert bytes_panel["full"].line.dash == "dash"
    assert list(peak_panel["knorm"].y) == [110.0]
    assert peak_panel["knorm"].showlegend is False
    assert "KV kept 8.00 MiB of 8.00 MiB" in bytes_panel["full"].text[0]
    assert "masks only" in bytes_panel["knorm"].text[0]


def test_compression_chart_flags_masking():
    ((title, figure),) = compression_charts(MEMORY_ROWS)
    assert title == "logical vs physical compression (m)"
    traces = traces_by_name(figure)
    masked = traces["knorm (masks only)"]
    assert (list(masked.x), list(masked.y)) == ([0.25], [1.0])
    assert masked.marker.symbol == "x"
    assert traces["capkv"].marker.symbol == "circle"
    assert list(traces["bytes freed = tokens dropped"].x) == [0, 1]


def test_pareto_chart_frontier_line():
    points = [
        key("capkv", "tokens", 128, n=3, errors=0, mean_score=0.7, mean_kl=0.1, mean_kv_bytes_kept=4 * MIB,
            on_score_frontier=True, on_kl_frontier=True),
        key("capkv", "tokens", 64, n=3, errors=0, mean_score=0.5, mean_kl=0.3, mean_kv_bytes_kept=2 * MIB,
            on_score_frontier=True, on_kl_frontier=False),
        key("snapkv", "tokens", 64, n=3, errors=0, mean_score=0.4, mean_kl=0.2, mean_kv_bytes_kept=2 * MIB,
            on_score_frontier=False, on_kl_frontier=True),
    ]
    ((title, figure),) = pareto_charts(points)
    assert title == "needle: memory-fidelity Pareto (m)"
    frontiers = [trace for trace in figure.data if trace.name == "Pareto frontier"]
    score_line, kl_line = frontiers
    assert (list(score_line.x), list(score_line.y)) == ([2.0, 4.0], [0.5, 0.7])
    assert (list(kl_line.x), list(kl_line.y)) == ([2.0, 4.0], [0.2, 0.1])
    assert score_line.showlegend is True
    assert kl_line.showlegend is False


def test_needle_chart_grid():
    rows = [
        key("capkv", "tokens", budget, context_length=length, depth_percent=depth, n=1, errors=0, mean_score=score)
        for budget, length, depth, score in [
            (64, 1000, 0.0, 1.0), (64, 1000, 50.0, 0.0), (64, 2000, 0.0, 0.5),
            (256, 1000, 0.0, 1.0),
        ]
    ]
    ((title, figure),) = needle_charts(rows)
    assert title == "needle: capkv score by needle depth and context length (m)"
    small, large = figure.data
    assert list(small.x) == ["0", "50"]
    assert list(small.y) == ["1000", "2000"]
    # Grid point (2000, 50) was not run.
    assert [list(line) for line in small.z] == [[1.0, 0.0], [0.5, None]]
    assert small.text[1][1] == "not run"
    assert [annotation.text for annotation in figure.layout.annotations] == ["budget 64", "budget 256"]
    assert (small.showscale, large.showscale) == (False, True)


def test_task_chart_panels():
    rows = [
        {**key(label, kind, budget, n=2, errors=0, mean_score=score), "task": task}
        for task, label, kind, budget, score in [
            ("niah", "capkv", "tokens", 64, 0.5), ("niah", "full", "none", None, 1.0),
            ("vt", "capkv", "tokens", 64, 0.25), ("vt", "full", "none", None, 0.75),
            ("cwe", "capkv", "tokens", 64, 0.0), ("qa", "capkv", "tokens", 64, 0.1),
        ]
    ]
    ((title, figure),) = task_charts(rows)
    assert title == "needle: score per task vs budget (m)"
    assert [annotation.text for annotation in figure.layout.annotations] == ["cwe", "niah", "qa", "vt"]
    # Four panels in rows of three.
    assert figure.layout.height == 120 + 260 * 2
    legend_entries = [trace.name for trace in figure.data if trace.showlegend is not False]
    assert legend_entries == ["capkv"]
    vt_full = [trace for trace in figure.data if trace.name == "full" and trace.xaxis == "x4"]
    assert list(vt_full[0].y) == [0.75, 0.75]


def test_capacity_chart_prints_spearman():
    points = [key("capkv", "tokens", 64, n=4, mean_capacity=0.5, mean_score=0.6, mean_kl=0.2)]
    correlations = [{"model": "m", "benchmark": "needle", "n_score": 4, "spearman_score": 0.8, "n_kl": 3,
                     "spearman_kl": None}]
    ((title, figure),) = capacity_charts(points, correlations)
    assert title == "needle: capacity against fidelity (m)"
    titles = [annotation.text for annotation in figure.layout.annotations]
    assert titles == [
        "mean score: Spearman ρ = 0.80 over 4 samples",
        "mean KL(full || compressed): Spearman ρ undefined over 3 samples (fewer than 3 or constant)",
    ]


def test_capacity_chart_without_correlation_row():
    points = [key("capkv", "tokens", 64, n=1, mean_capacity=0.5, mean_score=0.6, mean_kl=None)]
    ((_, figure),) = capacity_charts(points, [])
    assert figure.layout.annotations[0].text == "mean score: Spearman ρ: no samples with both values"
    # No point has a KL value, so only the score panel has a trace.
    assert [trace.xaxis for trace in figure.data] == ["x"]


def run(run_id, status, day):
    return {"run_id": run_id, "status": status, "started_at": dt.datetime(2026, 12, day, tzinfo=dt.timezone.utc)}


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        ([], None),
        ([run("r1", "completed", 1)], None),
        ([run("r1", "completed", 1), run("r2", "completed", 2)], ("r1", "r2")),
        # A failed candidate is compared with the latest completed run before it.
        ([run("r1", "completed", 1), run("r2", "completed", 2), run("r3", "failed", 3)], ("r2", "r3")),
        # A failed run is never the baseline, and a running run is never the candidate.
        ([run("r1", "completed", 1), run("r2", "failed", 2), run("r3", "completed", 3)], ("r1", "r3")),
        ([run("r1", "completed", 1), run("r2", "completed", 2), run("r3", "running", 3)], ("r1", "r2")),
        ([run("r1", "failed", 1), run("r2", "completed", 2)], None),
    ],
)
def test_nightly_pair_choice(runs, expected):
    assert nightly_pair(runs) == expected


def test_trend_chart_line_per_budget():
    rows = [
        {**key(label, kind, budget, n=2, errors=0, mean_score=score), "run_id": run_id, "status": "completed",
         "started_at": dt.datetime(2026, 12, day, tzinfo=dt.timezone.utc)}
        for run_id, day, label, kind, budget, score in [
            ("r2", 2, "capkv", "tokens", 64, 0.5), ("r1", 1, "capkv", "tokens", 64, 0.25),
            ("r1", 1, "capkv", "tokens", 256, 0.75), ("r1", 1, "full", "none", None, 1.0),
        ]
    ]
    ((title, figure),) = trend_charts(rows)
    assert title == "needle: nightly mean score (m)"
    traces = traces_by_name(figure)
    assert list(traces) == ["capkv @ 64", "capkv @ 256", "full @ none"]
    assert list(traces["capkv @ 64"].y) == [0.25, 0.5]
    assert (traces["capkv @ 64"].line.dash, traces["capkv @ 256"].line.dash) == ("solid", "dot")


def delta_row(**values):
    row = key("capkv", "tokens", 64, n=10, n_a=10, n_b=10, mean_a=0.6, mean_b=0.5, delta=-0.1, ci_low=-0.2,
              ci_high=-0.01, kv_bytes_ratio=1.0, latency_ratio=1.0)
    return {**row, **values}


def test_regression_reasons_rules():
    thresholds = Thresholds()
    assert regression_reasons(delta_row(), thresholds) == ["score 0.600 -> 0.500 (95% CI of change -0.200..-0.010)"]
    # An interval that reaches zero is not significant, and a drop within the threshold is allowed.
    assert regression_reasons(delta_row(ci_high=0.02), thresholds) == []
    assert regression_reasons(delta_row(delta=-0.04), thresholds) == []
    assert regression_reasons(delta_row(delta=0.0, kv_bytes_ratio=1.02), thresholds) == ["KV bytes x1.020"]
    assert regression_reasons(delta_row(delta=0.0, latency_ratio=1.6), thresholds) == ["latency x1.60"]
    unpaired = delta_row(n=0, mean_a=None, mean_b=None, delta=None, ci_low=None, ci_high=None,
                         kv_bytes_ratio=None, latency_ratio=None)
    assert regression_reasons(unpaired, thresholds) == []


def test_delta_table_regressions_first():
    table = delta_table([delta_row(method_label="snapkv", delta=0.0, ci_low=-0.05, ci_high=0.05), delta_row()])
    rows = re.findall(r"<tr( class=\"regressed\")?>(.*?)</tr>", table)
    body = rows[1:]
    assert body[0][0] == ' class="regressed"'
    assert "<td>capkv</td>" in body[0][1]
    assert "-0.100 (-0.200..-0.010)" in body[0][1]
    assert body[1][0] == ""
    assert "<td>no</td>" in body[1][1]


def test_delta_chart_error_bars():
    ((title, figure),) = delta_charts([delta_row(), delta_row(method_label="full", budget_kind="none", budget=None,
                                                           delta=None, ci_low=None, ci_high=None)])
    assert title == "needle: score change B - A with 95% CI (m)"
    (trace,) = figure.data
    assert list(trace.y) == ["capkv @ 64"]
    assert list(trace.error_x.array) == pytest.approx([0.09])
    assert list(trace.error_x.arrayminus) == pytest.approx([0.1])
    assert list(trace.marker.color) == ["#D62728"]


def drilldown_row(**values):
    row = key("capkv", "tokens", 64, task="t", sample_id="s", prediction="p", references=["r1", "r2"], score=1.0,
              kl=0.5, top1_agreement=1.0, error=None, cell_samples=3)
    return {**row, **values}


def test_drilldown_cells_in_query_order():
    rows = [drilldown_row(), drilldown_row(budget=256, sample_id="t", kl=float("nan")), drilldown_row(sample_id="u")]
    first, second = drilldown_cells(rows)
    assert first["label"] == "m | needle | capkv @ 64"
    assert first["total"] == 3
    assert first["rows"] == [
        ["t", "s", "p", "r1 | r2", 1.0, 0.5, 1.0, None],
        ["t", "u", "p", "r1 | r2", 1.0, 0.5, 1.0, None],
    ]
    # Cells keep the query's order. Sorting as text would put budget 256 before 64.
    assert second["label"] == "m | needle | capkv @ 256"
    assert second["rows"][0][5] == "nan"


def test_drilldown_escapes_script_text():
    page = drilldown_html([drilldown_row(prediction="</script><b>&")])
    data = page.split('id="drilldown-data">')[1].split("</script>")[0]
    assert "<b>" not in data
    assert json.loads(data)[0]["rows"][0][2] == "</script><b>&"
    assert script_json("<>&") == '"\\u003c\\u003e\\u0026"'


def test_drilldown_empty():
    assert drilldown_html([]) == ""
