"""HTML dashboard: self-contained page, sections, chart count, summary table, run selection and empty states."""

from __future__ import annotations

import datetime as dt
import html
import re

import pytest

from dashboards.demo import write_demo_store
from dashboards.report import build_dashboard, latest_run_ids
from storage.store import ResultStore
from storage.synthetic import synthetic_cells, synthetic_run_row, synthetic_sample_row

OLD_RUN = "run-20261203T213000-aaaaaa"
NEW_RUN = "run-20261204T213000-bbbbbb"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SECTION_IDS = ["score", "memory", "pareto", "latency", "needle", "tasks", "nightly", "capacity", "samples"]


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


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return root, write_demo_store(root)


@pytest.fixture(scope="module")
def demo_page(demo_store, tmp_path_factory):
    root, run_ids = demo_store
    path = build_dashboard(root, tmp_path_factory.mktemp("demo-out") / "dashboard.html", run_ids=[run_ids[-1]])
    return path.read_text(encoding="utf-8")


def summary_cell(page, header):
    match = re.search(rf"<tr><th>{header}</th><td>(.*?)</td></tr>", page)
    assert match is not None, f"no summary row {header!r}"
    return match.group(1)


def section(page, anchor):
    match = re.search(rf'<section class="dashboard-section" id="{anchor}">(.*?)</section>', page, re.DOTALL)
    assert match is not None, f"no section {anchor!r}"
    return match.group(1)


def chart_titles(text):
    return [html.unescape(title) for title in re.findall(r'<div class="chart" data-title="(.*?)">', text)]


def declared_charts(page):
    return int(re.search(r'<body data-chart-count="(\d+)">', page).group(1))


def test_dashboard_is_self_contained(latest_page):
    assert "<script src=" not in latest_page
    assert "https://" not in section(latest_page, "score")
    assert latest_page.count("* plotly.js v") == 1
    assert len(latest_page) > 1_000_000


def test_dashboard_sections_in_order(latest_page):
    anchors = re.findall(r'<section class="dashboard-section" id="(\w+)">', latest_page)
    assert anchors == SECTION_IDS
    for anchor in SECTION_IDS:
        assert f'<a href="#{anchor}">' in latest_page


def test_dashboard_chart_count(latest_page):
    assert declared_charts(latest_page) == 9
    assert latest_page.count('class="plotly-graph-div"') == 9
    assert chart_titles(latest_page) == [
        f"needle: score vs budget ({MODEL})",
        f"squad: score vs budget ({MODEL})",
        f"physical KV cache and peak memory vs budget ({MODEL})",
        f"logical vs physical compression ({MODEL})",
        f"needle: memory-fidelity Pareto ({MODEL})",
        f"squad: memory-fidelity Pareto ({MODEL})",
        f"latency vs budget ({MODEL})",
        f"needle: capacity against fidelity ({MODEL})",
        f"squad: capacity against fidelity ({MODEL})",
    ]


def test_dashboard_empty_sections_explain(latest_page):
    # The synthetic rows have no grid sample ids, one task per benchmark and no nightly label.
    assert "No needle grid samples" in section(latest_page, "needle")
    assert "two or more values in the task column" in section(latest_page, "tasks")
    assert '"label": "nightly"' in html.unescape(section(latest_page, "nightly"))
    for anchor in ("score", "memory", "pareto", "latency", "capacity", "samples"):
        assert 'class="empty"' not in section(latest_page, anchor), anchor


def test_dashboard_summary_latest_run(latest_page):
    assert summary_cell(latest_page, "runs") == f"{NEW_RUN} (completed, started 2026-12-04 21:30 UTC)"
    assert OLD_RUN not in latest_page
    assert summary_cell(latest_page, "models") == MODEL
    # 10 cells x 6 samples, one failed sample per cell.
    assert summary_cell(latest_page, "samples") == "60"
    assert summary_cell(latest_page, "errors") == "10"


def test_dashboard_drilldown_cells(latest_page):
    samples = section(latest_page, "samples")
    options = re.findall(r'<option value="\d+">(.*?)</option>', samples)
    assert len(options) == 10
    assert options[0] == f"{MODEL} | needle | capkv(tau=5) @ 64 (6 of 6 samples)"
    assert 'id="drilldown-data"' in samples


def test_dashboard_selected_runs(two_runs, tmp_path):
    page = build_dashboard(two_runs, tmp_path / "both.html", run_ids=[NEW_RUN, OLD_RUN]).read_text()
    runs = summary_cell(page, "runs")
    assert runs.index(OLD_RUN) < runs.index(NEW_RUN)
    assert summary_cell(page, "samples") == "120"


def test_dashboard_rejects_str_run_ids(two_runs, tmp_path):
    with pytest.raises(TypeError, match="list of run ids"):
        build_dashboard(two_runs, tmp_path / "x.html", run_ids=NEW_RUN)


def test_dashboard_empty_store(tmp_path):
    page = build_dashboard(tmp_path / "empty", tmp_path / "empty.html").read_text()
    assert summary_cell(page, "samples") == "0"
    assert summary_cell(page, "runs") == "none"
    assert declared_charts(page) == 0
    assert "plotly.js v" not in page
    for anchor in SECTION_IDS:
        assert 'class="empty"' in section(page, anchor), anchor


def test_dashboard_only_failed_samples(tmp_path):
    store = ResultStore(tmp_path / "store")
    store.write_run(synthetic_run_row(NEW_RUN))
    for cell in synthetic_cells([MODEL], ["capkv"], [64], ["needle"]):
        rows = [synthetic_sample_row(NEW_RUN, cell, 0, i, error=True) for i in range(3)]
        store.write_chunk(NEW_RUN, cell.cell_id, 0, rows)
    page = build_dashboard(tmp_path / "store", tmp_path / "failed.html").read_text()
    assert summary_cell(page, "errors") == "6"
    # Failed samples have no score, KV bytes or timings to draw, but the drill-down lists them.
    for anchor in ("score", "memory", "pareto", "latency"):
        assert 'class="empty"' in section(page, anchor), anchor
    assert 'class="empty"' not in section(page, "samples")


def test_latest_run_prefers_started_at(tmp_path):
    store = ResultStore(tmp_path)
    # The lexically greater id started earlier, so started_at decides.
    store.write_run(synthetic_run_row("run-b", started_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)))
    store.write_run(synthetic_run_row("run-a", started_at=dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)))
    assert latest_run_ids(store) == ["run-a"]
    assert latest_run_ids(ResultStore(tmp_path / "empty")) == []


def test_demo_dashboard_fills_every_section(demo_page):
    for anchor in SECTION_IDS:
        assert 'class="empty"' not in section(demo_page, anchor), anchor
    assert declared_charts(demo_page) == demo_page.count('class="plotly-graph-div"')
    # Three benchmarks, four budgeted methods and the full cache.
    assert len(chart_titles(section(demo_page, "needle"))) == 5
    assert len(chart_titles(section(demo_page, "tasks"))) == 3
    assert "only mask tokens, so their KV bytes do not drop: knorm(masked)." in section(demo_page, "memory")


def test_demo_nightly_section_reads_every_nightly_run(demo_store, demo_page):
    _, run_ids = demo_store
    nightly = section(demo_page, "nightly")
    assert len(chart_titles(nightly)) == 3
    assert f"Regressions: {run_ids[2]} (B) against {run_ids[1]} (A)" in nightly
    assert "1 of 39 keys regressed." in nightly
    regressed = re.findall(r'<tr class="regressed">(.*?)</tr>', nightly)
    assert len(regressed) == 1
    assert "<td>ruler</td><td>capkv(tau=5)</td><td>1024</td>" in regressed[0]
    # The older runs appear only in the nightly section, not in the summary.
    assert run_ids[0] not in summary_cell(demo_page, "runs")
