"""Dashboards in headless Chromium: no console or page errors, every declared chart drawn, a working drill-down.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install chromium`) and Playwright's
Python package. The screenshots go to test-output/, which git ignores.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dashboards.compare import build_comparison
from dashboards.demo import write_demo_store
from dashboards.report import build_dashboard
from dashboards.screenshot import CHROMIUM_PATH, browser_page, check_page, open_dashboard

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM_PATH).exists(),
    reason=f"no Chromium at {CHROMIUM_PATH}; install it with `apt-get install chromium` to run the browser tests",
)

OUTPUT = Path(__file__).resolve().parents[1] / "test-output"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return root, write_demo_store(root)


@pytest.fixture(scope="module")
def demo_html(demo_store, tmp_path_factory):
    root, run_ids = demo_store
    return build_dashboard(root, tmp_path_factory.mktemp("html") / "dashboard.html", run_ids=[run_ids[-1]])


def test_browser_dashboard_renders_every_chart(demo_html):
    png = OUTPUT / "dashboard.png"
    png.unlink(missing_ok=True)
    check = check_page(demo_html, png)
    assert check.console_errors == []
    assert check.page_errors == []
    assert check.blocked_requests == []
    # Charts of the demo: score 3, memory 2, Pareto 3, latency 1, needle 5, tasks 3, nightly 3, capacity 3.
    assert check.charts_declared == 23
    assert check.charts_rendered == check.charts_declared
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size > 100_000


def test_browser_drilldown_filters(demo_html):
    with browser_page() as (page, check):
        open_dashboard(page, check, demo_html)
        body = page.locator("#drilldown-body tr")
        note = page.locator("#drilldown-note")
        # The first cell is capkv at budget 64 on longbench: 30 samples, and the page holds all of them.
        assert "longbench | capkv(tau=5) @ 64" in page.locator("#drilldown-cell option").first.text_content()
        assert body.count() == 30
        assert note.text_content() == "30 rows shown; the page holds 30 of the cell's 30 samples."

        page.locator("#drilldown-errors").check()
        failed = body.count()
        assert failed == len(re.findall("RuntimeError: demo failure", page.locator("#drilldown-body").inner_text()))
        assert failed < 30

        page.locator("#drilldown-errors").uncheck()
        options = page.locator("#drilldown-cell option")
        last = options.count() - 1
        page.locator("#drilldown-cell").select_option(str(last))
        assert "ruler | streaming_llm @ 1024" in options.nth(last).text_content()
        assert body.count() == 30
        assert page.locator("#drilldown-body tr").first.locator("td").nth(1).text_content().startswith(
            ("common_words", "niah_single_number", "variable_tracking")
        )
    assert check.console_errors == []
    assert check.page_errors == []


def test_browser_empty_dashboard(tmp_path):
    html_path = build_dashboard(tmp_path / "empty-store", tmp_path / "empty.html")
    check = check_page(html_path, OUTPUT / "dashboard-empty.png")
    assert check.problems == []
    assert check.charts_declared == 0


def test_browser_comparison_page(demo_store, tmp_path):
    root, run_ids = demo_store
    html_path = build_comparison(root, tmp_path / "compare.html", run_ids[1], run_ids[2])
    check = check_page(html_path, OUTPUT / "comparison.png")
    assert check.problems == []
    assert check.charts_declared == 3
