"""Per-sample drill-down table from the `sample_drilldown` query, filtered in the page by a cell select.

The rows travel as JSON inside the page, and a small inline script fills the table for the
selected cell, so the table needs no network. Text from the store is set with textContent,
never parsed as HTML.
"""

from __future__ import annotations

import html
import json
import math

from dashboards.charts import Row, budget_text

# Rows per (model, benchmark, method, budget) that the page carries. Larger cells are cut.
SAMPLES_PER_CELL = 200
COLUMNS = ("task", "sample_id", "prediction", "references", "score", "KL", "top-1 agreement", "error")
# Columns of COLUMNS holding free text, which wraps instead of widening the table.
TEXT_COLUMNS = (2, 3, 7)

DRILLDOWN_SCRIPT = """
(function () {
  var data = JSON.parse(document.getElementById("drilldown-data").textContent);
  var select = document.getElementById("drilldown-cell");
  var errorsOnly = document.getElementById("drilldown-errors");
  var body = document.getElementById("drilldown-body");
  var note = document.getElementById("drilldown-note");
  var textColumns = %(text_columns)s;
  function format(value, column) {
    if (value === null) { return ""; }
    if (typeof value !== "number") { return String(value); }
    if (column === 4) { return value.toFixed(3); }
    if (column === 5 || column === 6) { return value.toFixed(4); }
    return String(value);
  }
  function render() {
    var cell = data[Number(select.value)];
    var displayed = 0;
    body.replaceChildren();
    cell.rows.forEach(function (row) {
      if (errorsOnly.checked && row[7] === null) { return; }
      var line = document.createElement("tr");
      row.forEach(function (value, column) {
        var item = document.createElement("td");
        item.textContent = format(value, column);
        if (textColumns.indexOf(column) >= 0) { item.className = "text"; }
        line.appendChild(item);
      });
      body.appendChild(line);
      displayed += 1;
    });
    note.textContent = displayed + " rows shown; the page holds " + cell.rows.length + " of the cell's " +
      cell.total + " samples.";
  }
  select.addEventListener("change", render);
  errorsOnly.addEventListener("change", render);
  render();
})();
"""


def drilldown_cells(rows: list[Row]) -> list[dict]:
    """Return one entry per (model, benchmark, method, budget), in query order: label, sample total and table rows."""
    keys = ("model", "benchmark", "method_label", "budget_kind", "budget", "budget_ratio")
    grouped: dict[tuple, list[Row]] = {}
    for row in rows:
        grouped.setdefault(tuple(row[key] for key in keys), []).append(row)
    cells = []
    for cell_rows in grouped.values():
        first = cell_rows[0]
        label = f"{first['model']} | {first['benchmark']} | {first['method_label']} @ {budget_text(first)}"
        table = [
            [
                row["task"], row["sample_id"], row["prediction"], " | ".join(row["references"] or []),
                _finite(row["score"]), _finite(row["kl"]), _finite(row["top1_agreement"]), row["error"],
            ]
            for row in cell_rows
        ]
        cells.append({"label": label, "total": first["cell_samples"], "rows": table})
    return cells


def _finite(value: float | None) -> float | str | None:
    """Return `value`, or its text ('nan', 'inf') when it is not finite, because JSON has no such numbers."""
    if value is not None and not math.isfinite(value):
        return str(value)
    return value


def script_json(value: object) -> str:
    """Return JSON that is safe inside a <script> element: '<', '>' and '&' are written as escapes."""
    text = json.dumps(value, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def drilldown_html(rows: list[Row]) -> str:
    """Return the drill-down controls, the empty table, its rows as JSON and the script that fills it."""
    cells = drilldown_cells(rows)
    if not cells:
        return ""
    options = "\n".join(
        f'<option value="{index}">{html.escape(cell["label"])} ({len(cell["rows"])} of {cell["total"]} samples)'
        "</option>"
        for index, cell in enumerate(cells)
    )
    headers = "".join(f"<th>{html.escape(name)}</th>" for name in COLUMNS)
    script = DRILLDOWN_SCRIPT % {"text_columns": json.dumps(list(TEXT_COLUMNS))}
    return "\n".join(
        [
            '<div class="drilldown-controls">',
            '<label for="drilldown-cell">cell</label>',
            f'<select id="drilldown-cell">\n{options}\n</select>',
            '<label><input type="checkbox" id="drilldown-errors"> failed samples only</label>',
            "</div>",
            '<p id="drilldown-note"></p>',
            '<div class="drilldown-scroll">',
            f'<table id="drilldown-table">\n<thead><tr>{headers}</tr></thead>\n<tbody id="drilldown-body"></tbody>\n'
            "</table>",
            "</div>",
            f'<script type="application/json" id="drilldown-data">{script_json(cells)}</script>',
            f"<script>{script}</script>",
        ]
    )
