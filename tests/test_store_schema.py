"""Schemas and row validation: rows_to_table, conform_table and the schema documentation."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from storage.errors import SchemaError
from storage.layout import decode_partition_value, encode_partition_value
from storage.schema import (
    CELLS_SCHEMA,
    RUNS_SCHEMA,
    SAMPLES_SCHEMA,
    SCHEMA_VERSION,
    conform_table,
    rows_to_table,
)
from storage.sql import duckdb_type

NOW = dt.datetime(2026, 12, 4, 21, 30, tzinfo=dt.timezone.utc)
DOCS = Path(__file__).resolve().parent.parent / "docs" / "schema.md"


def minimal_sample(**overrides):
    row = {
        "run_id": "run-1",
        "cell_id": "c1",
        "chunk_index": 0,
        "model": "m",
        "method": "full",
        "method_label": "full",
        "budget_kind": "none",
        "benchmark": "needle",
        "sample_id": "s1",
        "created_at": NOW,
    }
    return {**row, **overrides}


def test_schema_column_counts():
    assert len(SAMPLES_SCHEMA) == 51
    assert len(CELLS_SCHEMA) == 23
    assert len(RUNS_SCHEMA) == 10
    assert SCHEMA_VERSION == 2


def test_rows_to_table_fills_missing():
    table = rows_to_table([minimal_sample(score=1, metrics={"f1": np.float32(0.5)})], SAMPLES_SCHEMA)
    row = table.to_pylist()[0]
    assert row["schema_version"] == SCHEMA_VERSION
    assert row["score"] == 1.0
    assert row["metrics"] == [("f1", 0.5)]
    assert row["prediction"] is None
    assert table.schema.equals(SAMPLES_SCHEMA)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scroe": 1.0}, "unknown column 'scroe' in row 0; did you mean 'score'?"),
        ({"score": "high"}, "invalid value for column 'score' in row 0: 'high' (str); expected a float"),
        ({"budget": 64.0}, "invalid value for column 'budget' in row 0: 64.0 (float); expected an int"),
        ({"query_aware": 1}, "invalid value for column 'query_aware' in row 0: 1 (int); expected a bool"),
        ({"chunk_index": 2**31}, "expected an int in [-2147483648, 2147483647]"),
        ({"budget_kind": "tok"}, "expected one of 'tokens', 'ratio', 'none'"),
        ({"phase": "generate"}, "expected one of 'prefill', 'decode'"),
        ({"method_params": "[1, 2]"}, "expected JSON object text"),
        ({"method_params": {"tau": 5}}, "expected a str"),
        ({"references": ["a", 1]}, "expected a list of str"),
        ({"kept_tokens_per_layer": [1.0, "x"]}, "expected a list of numbers"),
        ({"metrics": {"f1": "high"}}, "expected a dict of str to numbers"),
        ({"created_at": dt.datetime(2026, 1, 1)}, "expected a timezone-aware datetime"),
        ({"model": None}, "missing value for required column 'model' in row 0"),
        ({"schema_version": 1}, "expected 2, the only version this writer writes"),
    ],
)
def test_rows_to_table_rejects(overrides, message):
    with pytest.raises(SchemaError) as caught:
        rows_to_table([minimal_sample(**overrides)], SAMPLES_SCHEMA)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_rows_to_table_names_row_number():
    rows = [minimal_sample(), minimal_sample(), minimal_sample(score=[1.0])]
    with pytest.raises(SchemaError, match="in row 2"):
        rows_to_table(rows, SAMPLES_SCHEMA)


def test_cells_and_runs_rows():
    cell = {
        "run_id": "run-1", "cell_id": "c1", "model": "m", "method": "snapkv", "method_label": "snapkv",
        "budget_kind": "tokens", "budget": 64, "benchmark": "needle", "status": "running", "updated_at": NOW,
    }
    assert rows_to_table([cell], CELLS_SCHEMA).num_rows == 1
    run = {"run_id": "run-1", "status": "completed", "started_at": NOW, "package_versions": '{"duckdb": "2.0.1"}'}
    assert rows_to_table([run], RUNS_SCHEMA).column("status").to_pylist() == ["completed"]
    with pytest.raises(SchemaError, match="missing value for required column 'started_at'"):
        rows_to_table([{"run_id": "run-1", "status": "running"}], RUNS_SCHEMA)


def test_conform_table_adds_missing_columns():
    older = pa.table({"run_id": ["run-1"], "score": [0.5]})
    table = conform_table(older, SAMPLES_SCHEMA)
    assert table.column_names == SAMPLES_SCHEMA.names
    assert table.column("score").to_pylist() == [0.5]
    assert table.column("kl").to_pylist() == [None]


def test_conform_table_rejects_newer_columns():
    newer = pa.table({"run_id": ["run-1"], "attention_entropy": [0.5]})
    with pytest.raises(SchemaError, match="attention_entropy are unknown to schema version 2"):
        conform_table(newer, SAMPLES_SCHEMA)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("needle", "needle"),
        ("Qwen/Qwen2.5-0.5B", "Qwen%2FQwen2.5-0.5B"),
        ("7", "%37"),
        ("2026-01-01", "%32026-01-01"),
        ("-3", "%2D3"),
        ("..", "%2E."),
        ("inf", "%69nf"),
        ("a b", "a%20b"),
        ("ünï", "%C3%BCn%C3%AF"),
    ],
)
def test_partition_value_encoding(value, encoded):
    assert encode_partition_value(value) == encoded
    assert decode_partition_value(encoded) == value


def test_partition_value_rejects_empty():
    with pytest.raises(SchemaError, match="invalid partition value ''"):
        encode_partition_value("")


def documented_columns(section):
    text = DOCS.read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [(name, type_) for name, type_ in re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", body, flags=re.MULTILINE)]


@pytest.mark.parametrize(("section", "schema"), [("samples", SAMPLES_SCHEMA), ("cells", CELLS_SCHEMA), ("runs", RUNS_SCHEMA)])
def test_schema_doc_lists_every_column(section, schema):
    expected = [(field.name, duckdb_type(field.type)) for field in schema]
    assert documented_columns(section) == expected
