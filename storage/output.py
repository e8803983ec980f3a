"""Text renderings of a DuckDB query result: an aligned table, CSV or JSON."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import decimal
import io
import json
import math
import uuid
from typing import Any

import duckdb

# Rows drawn by the "table" output. Beyond it DuckDB's renderer shows the first and last
# rows and states in its footer how many it left out.
MAX_TABLE_ROWS = 10_000
# Wide enough that DuckDB's renderer never drops columns to fit a terminal.
MAX_TABLE_WIDTH = 1_000_000


def render(relation: duckdb.DuckDBPyRelation, output: str) -> str:
    """Run `relation` and return its rows as "table", "csv" or "json" text, without a final newline."""
    if output == "table":
        return _to_table(relation)
    columns = relation.columns
    rows = relation.fetchall()
    if output == "csv":
        return _to_csv(columns, rows)
    return _to_json(columns, rows)


def _to_table(relation: duckdb.DuckDBPyRelation) -> str:
    """Draw the boxed table of DuckDB's shell. show() is the only public call that takes a width, and it prints."""
    # NOTE: redirect_stdout swaps sys.stdout for the whole process, so a thread printing
    # at the same moment would write into this table.
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        relation.show(max_width=MAX_TABLE_WIDTH, max_rows=MAX_TABLE_ROWS)
    return buffer.getvalue().rstrip("\n")


def _to_csv(columns: list[str], rows: list[tuple]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(value) for value in row])
    return buffer.getvalue().rstrip("\n")


def _csv_cell(value: Any) -> str:
    """Return a value as CSV text: nested values as JSON, null as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(_plain(value), ensure_ascii=False)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def _to_json(columns: list[str], rows: list[tuple]) -> str:
    records = [dict(zip(columns, (_plain(value) for value in row))) for row in rows]
    return json.dumps(records, ensure_ascii=False, allow_nan=False)


def _plain(value: Any) -> Any:
    """Convert a DuckDB result value to JSON-compatible Python. NaN and infinities become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
