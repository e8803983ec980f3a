"""Comparison page of two runs: per-cell paired changes, regression rows and the per-sample table."""

from __future__ import annotations

import datetime as dt
import html
import re

import pytest

from dashboards.compare import build_comparison
from storage.errors import UnknownRunError
from storage.store import ResultStore

CREATED_AT = dt.datetime(2026, 12, 4, 21, 30, tzinfo=dt.timezone.utc)


def sample(run_id, sample_id, score, method="capkv", budget=64, error=None, prediction=None):
    return {
        "run_id": run_id, "cell_id": f"{method}-{budget}", "model": "m", "method": method, "method_label": method,
        "budget_kind": "tokens", "budget": budget, "benchmark": "needle", "sample_id": sample_id,
        "score": None if error else score, "error": error, "prediction": prediction, "created_at": CREATED_AT,
        "kv_bytes_kept": 100, "prefill_s": 1.0, "compression_s": 0.0, "decode_s": 1.0,
    }


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    store = ResultStore(root)
    for run_id, day in (("run-a", 3), ("run-b", 4)):
        store.write_run({"run_id": run_id, "status": "completed",
                         "started_at": dt.datetime(2026, 12, day, tzinfo=dt.timezone.utc)})
    # capkv drops from 1.0 to 0.0 on every one of 12 samples, snapkv is unchanged.
    before = [sample("run-a", f"s{i:02d}", 1.0, prediction="12345") for i in range(12)]
    after = [sample("run-b", f"s{i:02d}", 0.0, prediction="<b>99</b>") for i in range(12)]
    store.write_chunk("run-a", "capkv-64", 0, before)
    store.write_chunk("run-b", "capkv-64", 0, after)
    store.write_chunk("run-a", "snapkv-64", 0, [sample("run-a", "s00", 0.5, method="snapkv")])
    store.write_chunk("run-b", "snapkv-64", 0, [sample("run-b", "s00", 0.5, method="snapkv")])
    return root


@pytest.fixture(scope="module")
def comparison_page(store_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("out") / "compare.html"
    return build_comparison(store_root, path, "run-a", "run-b").read_text(encoding="utf-8")


def section(page, anchor):
    match = re.search(rf'<section class="dashboard-section" id="{anchor}">(.*?)</section>', page, re.DOTALL)
    assert match is not None, f"no section {anchor!r}"
    return match.group(1)


def test_comparison_title_and_charts(comparison_page):
    assert "<title>capkv-eval comparison: run-b (B) against run-a (A)</title>" in comparison_page
    assert '<body data-chart-count="1">' in comparison_page
    titles = re.findall(r'<div class="chart" data-title="(.*?)">', comparison_page)
    assert [html.unescape(title) for title in titles] == ["needle: score change B - A with 95% CI (m)"]


def test_comparison_cell_table(comparison_page):
    cells = section(comparison_page, "cells")
    assert "1 of 2 cells regressed." in cells
    (regressed,) = re.findall(r'<tr class="regressed">(.*?)</tr>', cells)
    assert "<td>capkv</td><td>64</td>" in regressed
    # Every pair changes by exactly -1, so the interval is the point.
    assert "-1.000 (-1.000..-1.000)" in regressed
    assert "score 1.000 -&gt; 0.000" in regressed
    assert "<td>snapkv</td><td>64</td>" in cells
    assert "+0.000 (0.000..0.000)" in cells


def test_comparison_sample_table(comparison_page):
    samples = section(comparison_page, "samples")
    assert "The 13 samples with the largest score change of 13" in samples
    assert samples.count("<td>capkv</td>") == 12
    assert "&lt;b&gt;99&lt;/b&gt;" in samples
    assert "<b>99</b>" not in samples


def test_comparison_unknown_run(store_root, tmp_path):
    with pytest.raises(UnknownRunError, match="run 'run-c' has no samples .* known runs: run-a, run-b"):
        build_comparison(store_root, tmp_path / "x.html", "run-a", "run-c")
