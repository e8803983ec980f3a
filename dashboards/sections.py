"""The sections of the dashboard, in page order, each built from the rows of its named queries.

Every section is always on the page. A section without data shows a note that says why,
so a reader can tell "no data" apart from "not built".
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from dashboards.capacity import capacity_charts
from dashboards.charts import Row, method_colors
from dashboards.deltas import delta_table, regressed_count
from dashboards.drilldown import SAMPLES_PER_CELL, drilldown_html
from dashboards.latency import latency_charts
from dashboards.memory import compression_charts, masked_only_methods, memory_charts
from dashboards.needle import needle_charts
from dashboards.nightly import trend_charts
from dashboards.page import Section
from dashboards.pareto import pareto_charts
from dashboards.score import score_charts
from dashboards.tasks import task_charts


@dataclass
class NightlyData:
    """Rows of the nightly queries over every nightly run, and the (baseline, candidate) pair compared."""

    runs: list[Row]
    trend: list[Row]
    pair: tuple[str, str] | None
    deltas: list[Row]


@dataclass
class DashboardData:
    """Rows of each named query over the selected runs, by query name."""

    leaderboard: list[Row]
    memory: list[Row]
    latency: list[Row]
    pareto: list[Row]
    needle_grid: list[Row]
    task_scores: list[Row]
    capacity: list[Row]
    capacity_spearman: list[Row]
    drilldown: list[Row]
    nightly: NightlyData = field(default_factory=lambda: NightlyData([], [], None, []))


def dashboard_sections(data: DashboardData) -> list[Section]:
    """Return every section of the dashboard in page order. One method has one color on every chart."""
    labels = [row["method_label"] for rows in (data.leaderboard, data.memory, data.nightly.trend) for row in rows]
    colors = method_colors(labels)
    return [
        Section(
            "score", "Score vs budget",
            "Mean score per method and budget on each benchmark. Bands are 95% bootstrap confidence intervals "
            "of the mean (1000 Poisson resamples). The dashed line is the full cache, which has no budget. "
            "Hover a point for its sample and error counts.",
            "No scored samples in the selected runs.",
            charts=score_charts(data.leaderboard, colors),
        ),
        _memory_section(data.memory, colors),
        Section(
            "pareto", "Memory-fidelity Pareto",
            "Mean score and mean KL(full || compressed) against the mean physical KV bytes kept, one point per "
            "method and budget, per model and benchmark. The black line joins the Pareto frontier: the points "
            "that no other point beats on both memory and fidelity.",
            "No samples with KV bytes in the selected runs.",
            charts=pareto_charts(data.pareto, colors),
        ),
        Section(
            "latency", "Latency",
            "Mean prefill and compression seconds per sample, and decode throughput as sum(tokens_generated) / "
            "sum(decode_s), over every benchmark of the model. Timings depend on the device of the run.",
            "No samples with timings in the selected runs.",
            charts=latency_charts(data.latency, colors),
        ),
        Section(
            "needle", "Needle in a haystack: depth x length",
            "Mean pass-key score for each needle depth and context length, one heatmap per budget. Length and "
            "depth come from the sample ids of the needle_grid benchmark.",
            "No needle grid samples in the selected runs. The needle_grid benchmark writes the context length "
            "and depth into its sample ids. The single-depth needle benchmark does not store each sample's depth, "
            "so it has no heatmap.",
            charts=needle_charts(data.needle_grid),
        ),
        Section(
            "tasks", "Score per task",
            "Mean score per task against the budget, for each benchmark whose samples span two or more tasks "
            "(the RULER-style suite and LongBench subsets). Hover a point for its sample count.",
            "No benchmark in the selected runs has two or more values in the task column.",
            charts=task_charts(data.task_scores, colors),
        ),
        _nightly_section(data.nightly, colors),
        _capacity_section(data, colors),
        Section(
            "samples", "Samples",
            f"Up to {SAMPLES_PER_CELL} samples of each cell, failed samples first, then the lowest scores. The "
            "prompt is not stored, so the table has no prompt excerpt. Choose a cell to fill the table.",
            "No samples in the selected runs.",
            html=drilldown_html(data.drilldown),
        ),
    ]


def _memory_section(memory: list[Row], colors: dict[str, str]) -> Section:
    masked = masked_only_methods(memory)
    masked_text = ""
    if masked:
        masked_text = f" Methods that only mask tokens, so their KV bytes do not drop: {', '.join(masked)}."
    elif memory:
        masked_text = " No method in these runs only masks tokens."
    return Section(
        "memory", "Memory",
        "Mean physical bytes of the KV cache kept after compression (the stored tensors' nbytes, padding "
        "included) and mean peak memory (CUDA peak allocated bytes on a GPU, process RSS high-water mark on a "
        "CPU), over every benchmark of the model. The second chart sets logical compression (kept_tokens / "
        "context_tokens) against physical compression (kv_bytes_kept / kv_bytes_full)." + masked_text,
        "No samples with memory measurements in the selected runs.",
        charts=memory_charts(memory, colors) + compression_charts(memory, colors),
    )


def _nightly_section(nightly: NightlyData, colors: dict[str, str]) -> Section:
    intro = (
        "Mean score of every run labelled nightly in the store, oldest first, whatever runs the rest of the "
        "page shows. The table compares the latest finished nightly run with the latest completed nightly run "
        "before it, on the samples both scored: paired 95% bootstrap intervals of the change, and the nightly "
        "flow's regression rules."
    )
    if nightly.pair is None:
        table = ""
        if nightly.runs:
            table = "<p>Fewer than two finished nightly runs, so there is no regression table yet.</p>"
    else:
        baseline, candidate = nightly.pair
        regressed = regressed_count(nightly.deltas)
        table = (
            f"<h3>Regressions: {html.escape(candidate)} (B) against {html.escape(baseline)} (A)</h3>\n"
            f"<p>{regressed} of {len(nightly.deltas)} keys regressed.</p>\n{delta_table(nightly.deltas)}"
        )
    return Section(
        "nightly", "Nightly trend and regressions", intro,
        'No run in the store has "label": "nightly" in its configuration.',
        charts=trend_charts(nightly.trend, colors),
        html=table,
    )


def _capacity_section(data: DashboardData, colors: dict[str, str]) -> Section:
    return Section(
        "capacity", "Capacity against fidelity",
        "Mean capacity of the kept cache (the information capacity that CapKV maximises) against mean score and "
        "mean KL, one point per method and budget. The Spearman coefficient in each panel title is computed "
        "over the individual samples, with ties given their average rank.",
        "No sample in the selected runs has a capacity value. Methods fill the capacity column only where it "
        "is measured.",
        charts=capacity_charts(data.capacity, data.capacity_spearman, colors),
    )
