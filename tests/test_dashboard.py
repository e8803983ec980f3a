"""HTML dashboard: self-contained page, chart count, summary table, run selection and chart contents."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from dashboards.charts import memory_charts, score_charts
from dashboards.report import build_dashboard, latest_run_ids
from storage.store import ResultStore
from storage.synthetic import synthetic_cells, synthetic_run_row, synthetic_sample_row

OLD_RUN = "run-20261203T213000-aaaaaa"
NEW_RUN = "run-20261204T213000-bbbbbb"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def write_run(store, run_id, started_at, samples_per_cell=6):
    store.write_run(synthetic_run_row(run_id, started_at=started_at))
    for cell in synthetic_cells([MODEL], ["capkv", "snapkv"], [64, 256], ["needle", "squad"]):
        rows = [
            synthetic_sample_row(run_id, cell, 0, i, error=i == samples_per_cell - 1) for i in range(samples_per_cell)
        ]
        store.write_chunk(run_id, cell.cell_id, 0, rows)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    store = ResultStore(root)
    write_run(store, OLD_RUN, dt.datetime(2026, 12, 3, 21, 30, tzinfo=dt.timezone.utc))
    write_run(store, NEW_RUN, dt.datetime(2026, 12, 4, 21, 30, tzinfo=dt.timezone.utc))
    return root


@pytest.fixture(scope="module")
def latest_page(two_runs, tmp_path_factory):
    path = build_dashboard(two_runs, tmp_path_factory.mktemp("out") / "nested" / "dashboard.html")
    return path.read_text(encoding="utf-8")


def summary_cell(page, header):
    match = re.search(rf"<tr><th>{header}</th><td>(.*?)</td></tr>", page)
    assert match is not None, f"no summary row {header!r}"
    return match.group(1)


def test_dashboard_is_self_contained(latest_page):
    assert '<script src="http' not in latest_page
    assert "<script src=" not in latest_page
    assert latest_page.count("* plotly.js v") == 1
    assert len(latest_page) > 1_000_000


def test_dashboard_chart_count(latest_page):
    # Score vs budget for needle and squad, KV bytes for the one model, the needle heatmap.
    assert latest_page.count('class="plotly-graph-div"') == 4
    titles = re.findall(r"<h2>(.*?)</h2>", latest_page)
    assert titles == [
        f"needle: score vs budget ({MODEL})",
        f"squad: score vs budget ({MODEL})",
        f"physical KV cache kept vs budget ({MODEL})",
        f"needle: mean score by method and budget ({MODEL})",
    ]


def test_dashboard_summary_latest_run(latest_page):
    assert summary_cell(latest_page, "runs") == f"{NEW_RUN} (completed, started 2026-12-04 21:30 UTC)"
    assert OLD_RUN not in latest_page
    assert summary_cell(latest_page, "models") == MODEL
    # 10 cells x 6 samples, one failed sample per cell.
    assert summary_cell(latest_page, "samples") == "60"
    assert summary_cell(latest_page, "errors") == "10"


def test_dashboard_selected_runs(two_runs, tmp_path):
    page = build_dashboard(two_runs, tmp_path / "both.html", run_ids=[NEW_RUN, OLD_RUN]).read_text()
    runs = summary_cell(page, "runs")
    assert runs.index(OLD_RUN) < runs.index(NEW_RUN)
    assert summary_cell(page, "samples") == "120"


def test_dashboard_empty_store(tmp_path):
    page = build_dashboard(tmp_path / "empty", tmp_path / "empty.html").read_text()
    assert "nothing to chart" in page
    assert summary_cell(page, "samples") == "0"
    assert summary_cell(page, "runs") == "none"


def test_latest_run_prefers_started_at(tmp_path):
    store = ResultStore(tmp_path)
    # The lexically greater id started earlier, so started_at decides.
    store.write_run(synthetic_run_row("run-b", started_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)))
    store.write_run(synthetic_run_row("run-a", started_at=dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)))
    assert latest_run_ids(store) == ["run-a"]
    assert latest_run_ids(ResultStore(tmp_path / "empty")) == []


LEADERBOARD_ROWS = [
    {"model": "m", "benchmark": "needle", "method_label": label, "budget_kind": kind, "budget": budget,
     "budget_ratio": None, "n": n, "errors": 0, "mean_score": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.05}
    for label, kind, budget, n, mean in [
        ("capkv", "tokens", 128, 10, 0.6),
        ("capkv", "tokens", 64, 10, 0.4),
        ("snapkv", "tokens", 64, 9, 0.3),
        ("full", "none", None, 12, 0.9),
    ]
]


def test_score_chart_traces():
    ((title, figure),) = score_charts(LEADERBOARD_ROWS)
    assert title == "needle: score vs budget (m)"
    traces = {trace.name: trace for trace in figure.data}
    assert list(traces["capkv"].x) == [64, 128]
    assert list(traces["capkv"].y) == [0.4, 0.6]
    assert list(traces["capkv"].error_y.array) == pytest.approx([0.05, 0.05])
    assert list(traces["capkv"].error_y.arrayminus) == pytest.approx([0.1, 0.1])
    assert traces["capkv"].line.dash is None
    assert traces["full"].line.dash == "dash"
    assert list(traces["full"].x) == [64, 128]
    assert list(traces["full"].y) == [0.9, 0.9]
    assert "n = 12 samples" in traces["full"].text[0]
    assert "n = 9 samples" in traces["snapkv"].text[0]
    assert figure.layout.xaxis.type == "log"


def test_memory_chart_traces():
    rows = [
        {"model": "m", "method_label": "capkv", "budget_kind": "tokens", "budget": 64, "budget_ratio": None,
         "n": 5, "errors": 0, "mean_kv_bytes_kept": 2 * 2**20, "mean_kv_bytes_full": 8 * 2**20, "masked_only": False},
        {"model": "m", "method_label": "full", "budget_kind": "none", "budget": None, "budget_ratio": None,
         "n": 5, "errors": 1, "mean_kv_bytes_kept": 8 * 2**20, "mean_kv_bytes_full": 8 * 2**20, "masked_only": False},
    ]
    ((_, figure),) = memory_charts(rows)
    traces = {trace.name: trace for trace in figure.data}
    assert list(traces["capkv"].y) == [2.0]
    assert list(traces["full"].y) == [8.0, 8.0]
    assert traces["full"].line.dash == "dash"
    assert "KV kept 8.00 MiB of 8.00 MiB" in traces["full"].text[0]
