"""HTML assembly of a dashboard page: sections of charts and tables, Plotly's JavaScript inlined once.

The page declares its number of charts in `<body data-chart-count="N">`, so a browser
check can compare it with the charts that rendered.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import plotly.graph_objects as go
import plotly.offline

from dashboards.charts import Chart

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin-bottom: 16px; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.regressed td { background: #fde2e1; }
nav ul { columns: 3; list-style: none; padding-left: 0; }
section.dashboard-section { margin: 32px 0; border-top: 2px solid #ddd; }
div.chart { margin-bottom: 24px; }
p.intro { max-width: 900px; }
p.empty { color: #8a5a00; background: #fff6e0; padding: 8px 12px; max-width: 900px; }
div.drilldown-controls { margin: 8px 0; }
div.drilldown-scroll { max-height: 600px; overflow: auto; }
td.text { max-width: 420px; white-space: pre-wrap; word-break: break-word; }
"""

# Plotly client options: no Plotly logo in the mode bar, and charts resize with the window.
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
DEFAULT_CHART_HEIGHT_PX = 450


@dataclass
class Section:
    """One titled part of a dashboard: charts, trusted HTML (tables) built by this package, or an empty-state note."""

    anchor: str
    title: str
    intro: str
    empty_note: str
    charts: list[Chart] = field(default_factory=list)
    html: str = ""

    @property
    def is_empty(self) -> bool:
        return not self.charts and not self.html


def render_page(title: str, summary_html: str, sections: Sequence[Section]) -> str:
    """Return the whole HTML page. Plotly's JavaScript is inlined in the head when any chart is present."""
    chart_count = sum(len(section.charts) for section in sections)
    plotly_script = f"<script>{plotly.offline.get_plotlyjs()}</script>" if chart_count else ""
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{PAGE_STYLE}</style>",
            plotly_script,
            "</head>",
            f'<body data-chart-count="{chart_count}">',
            f"<h1>{html.escape(title)}</h1>",
            f"<p>Generated {generated}.</p>",
            summary_html,
            _contents(sections),
            *(_section_html(section) for section in sections),
            "</body>",
            "</html>",
        ]
    )


def _contents(sections: Sequence[Section]) -> str:
    items = "\n".join(
        f'<li><a href="#{section.anchor}">{html.escape(section.title)}</a></li>' for section in sections
    )
    return f"<nav>\n<ul>\n{items}\n</ul>\n</nav>"


def _section_html(section: Section) -> str:
    parts = [
        f'<section class="dashboard-section" id="{section.anchor}">',
        f"<h2>{html.escape(section.title)}</h2>",
        f'<p class="intro">{html.escape(section.intro)}</p>',
    ]
    if section.is_empty:
        parts.append(f'<p class="empty">{html.escape(section.empty_note)}</p>')
    parts.extend(chart_html(title, figure) for title, figure in section.charts)
    if section.html:
        parts.append(section.html)
    parts.append("</section>")
    return "\n".join(parts)


def chart_html(title: str, figure: go.Figure) -> str:
    """Return one chart as a div whose data-title is the chart title. The page head must carry Plotly's JavaScript.

    The figure draws its own title, so the page adds no heading above it.
    """
    height = figure.layout.height or DEFAULT_CHART_HEIGHT_PX
    body = figure.to_html(
        full_html=False, include_plotlyjs=False, config=PLOTLY_CONFIG, default_height=f"{height}px"
    )
    return f'<div class="chart" data-title="{html.escape(title)}">\n{body}\n</div>'


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], row_classes: Iterable[str] | None = None) -> str:
    """Return an HTML table. Cell values are escaped, and int and float cells are right-aligned."""
    classes = list(row_classes) if row_classes is not None else None
    head = "".join(f"<th>{html.escape(header)}</th>" for header in headers)
    body = []
    for index, row in enumerate(rows):
        cells = "".join(_cell_html(value) for value in row)
        row_class = f' class="{classes[index]}"' if classes and classes[index] else ""
        body.append(f"<tr{row_class}>{cells}</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def _cell_html(value: Any) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="number">{html.escape(str(value))}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def summary_table(run_ids: Sequence[str], runs: Sequence[dict[str, Any]], counts: dict[str, Any]) -> str:
    """Return the run summary table: selected runs with status and start time, models, samples and errors."""
    by_id = {run["run_id"]: run for run in runs}
    run_lines = []
    for run_id in run_ids:
        run = by_id.get(run_id)
        if run is None:
            details = "no run row"
        else:
            started = run["started_at"].astimezone(dt.timezone.utc)
            details = f"{run['status']}, started {started:%Y-%m-%d %H:%M} UTC"
        run_lines.append(f"{html.escape(run_id)} ({html.escape(details)})")
    rows = [
        ("runs", "<br>".join(run_lines) or "none"),
        ("models", ", ".join(html.escape(model) for model in counts["models"] or []) or "none"),
        ("samples", f"{counts['samples']:,}"),
        ("errors", f"{counts['errors']:,}"),
    ]
    body = "\n".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    return f'<table class="summary">\n{body}\n</table>'
