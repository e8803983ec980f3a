"""Arrow schemas of the three store tables (samples, cells, runs) and the row validation.

These schemas are the single definition of the store's columns: the writer validates
every row against them, the SQL views add their columns to every query result and
docs/schema.md describes them. Columns are only ever added. A new column bumps
SCHEMA_VERSION, and readers fill it with nulls for files written by older versions.
"""

from __future__ import annotations

import datetime as dt
import difflib
import functools
import json
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from storage.errors import SchemaError

# Version 2 added the decode-time eviction and sampling columns (phase and decode_interval in
# cells; decode_interval, num_generations, predictions, decode_compressions, max_cached_tokens in samples).
SCHEMA_VERSION = 2

TIMESTAMP = pa.timestamp("us", tz="UTC")

BUDGET_KINDS = ("tokens", "ratio", "none")
PHASES = ("prefill", "decode")
STATUSES = ("pending", "running", "completed", "failed")

# Columns whose text must parse as a JSON object.
JSON_COLUMNS = frozenset({"method_params", "config", "package_versions", "sample_metadata"})

# Columns restricted to a fixed set of values.
ALLOWED_VALUES = {
    "budget_kind": BUDGET_KINDS,
    "phase": PHASES,
    "status": STATUSES,
}


def _field(name: str, type_: pa.DataType, required: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=not required)


# Columns that identify a cell. The samples and cells tables both start with them.
_CELL_FIELDS = [
    _field("schema_version", pa.int32(), required=True),
    _field("run_id", pa.string(), required=True),
    _field("cell_id", pa.string(), required=True),
]

_CELL_DESCRIPTION_FIELDS = [
    _field("model", pa.string(), required=True),
    _field("model_revision", pa.string()),
    _field("method", pa.string(), required=True),
    _field("method_params", pa.string()),
    _field("method_label", pa.string(), required=True),
    _field("budget_kind", pa.string(), required=True),
    _field("budget", pa.int64()),
    _field("budget_ratio", pa.float64()),
    _field("benchmark", pa.string(), required=True),
    _field("benchmark_version", pa.string()),
]

SAMPLES_SCHEMA = pa.schema(
    [
        *_CELL_FIELDS,
        _field("chunk_index", pa.int32(), required=True),
        *_CELL_DESCRIPTION_FIELDS,
        _field("task", pa.string()),
        _field("query_aware", pa.bool_()),
        _field("chat_template", pa.bool_()),
        _field("truncation", pa.string()),
        _field("phase", pa.string()),
        _field("seed", pa.int64()),
        _field("sample_id", pa.string(), required=True),
        _field("sample_metadata", pa.string()),
        _field("prompt_hash", pa.string()),
        _field("context_tokens", pa.int64()),
        _field("question_tokens", pa.int64()),
        _field("truncated_tokens", pa.int64()),
        _field("kept_tokens", pa.float64()),
        _field("kept_tokens_total", pa.int64()),
        _field("kept_tokens_per_layer", pa.list_(pa.float64())),
        _field("prediction", pa.string()),
        _field("references", pa.list_(pa.string())),
        _field("score", pa.float64()),
        _field("metrics", pa.map_(pa.string(), pa.float64())),
        _field("kl", pa.float64()),
        _field("top1_agreement", pa.float64()),
        _field("capacity", pa.float64()),
        _field("kv_bytes_full", pa.int64()),
        _field("kv_bytes_kept", pa.int64()),
        _field("masked_only", pa.bool_()),
        _field("peak_memory_bytes", pa.int64()),
        _field("prefill_s", pa.float64()),
        _field("compression_s", pa.float64()),
        _field("decode_s", pa.float64()),
        _field("tokens_generated", pa.int64()),
        _field("error", pa.string()),
        _field("created_at", TIMESTAMP, required=True),
        _field("decode_interval", pa.int64()),
        _field("num_generations", pa.int64()),
        _field("predictions", pa.list_(pa.string())),
        _field("decode_compressions", pa.int64()),
        _field("max_cached_tokens", pa.int64()),
    ]
)

CELLS_SCHEMA = pa.schema(
    [
        *_CELL_FIELDS,
        *_CELL_DESCRIPTION_FIELDS,
        _field("query_aware", pa.bool_()),
        _field("chat_template", pa.bool_()),
        _field("seed", pa.int64()),
        _field("num_samples", pa.int64()),
        _field("status", pa.string(), required=True),
        _field("error", pa.string()),
        _field("config", pa.string()),
        _field("updated_at", TIMESTAMP, required=True),
        _field("phase", pa.string()),
        _field("decode_interval", pa.int64()),
    ]
)

RUNS_SCHEMA = pa.schema(
    [
        _field("schema_version", pa.int32(), required=True),
        _field("run_id", pa.string(), required=True),
        _field("status", pa.string(), required=True),
        _field("started_at", TIMESTAMP, required=True),
        _field("finished_at", TIMESTAMP),
        _field("config", pa.string()),
        _field("git_commit", pa.string()),
        _field("package_versions", pa.string()),
        _field("host", pa.string()),
        _field("device", pa.string()),
    ]
)

INT32_RANGE = (-(2**31), 2**31 - 1)
INT64_RANGE = (-(2**63), 2**63 - 1)


def _is_int(value: Any) -> bool:
    # numbers.Integral covers numpy integers. bool is an int subclass but not a valid count.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if _is_int(value):
        return INT64_RANGE[0] <= value <= INT64_RANGE[1]
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(bounds: tuple[int, int]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not _is_int(value):
            return "an int"
        if not bounds[0] <= value <= bounds[1]:
            return f"an int in [{bounds[0]}, {bounds[1]}]"
        return None

    return check


def _check_timestamp(value: Any) -> str | None:
    if not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        return "a timezone-aware datetime (for example datetime.now(timezone.utc))"
    return None


def _check_float_list(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(_is_number(item) for item in value):
        return "a list of numbers"
    return None


def _check_string_list(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        return "a list of str"
    return None


def _check_float_map(value: Any) -> str | None:
    if not isinstance(value, Mapping) or not all(
        isinstance(key, str) and _is_number(item) for key, item in value.items()
    ):
        return "a dict of str to numbers"
    return None


def _type_checker(type_: pa.DataType) -> Callable[[Any], str | None]:
    """Return a function that maps a value to None when it fits `type_`, else to the expected kind."""
    if pa.types.is_string(type_):
        return lambda value: None if isinstance(value, str) else "a str"
    if pa.types.is_int32(type_):
        return _check_int(INT32_RANGE)
    if pa.types.is_int64(type_):
        return _check_int(INT64_RANGE)
    if pa.types.is_float64(type_):
        return lambda value: None if _is_number(value) else "a float"
    if pa.types.is_boolean(type_):
        return lambda value: None if isinstance(value, (bool, np.bool_)) else "a bool"
    if pa.types.is_timestamp(type_):
        return _check_timestamp
    if pa.types.is_map(type_):
        return _check_float_map
    if pa.types.is_list(type_) and pa.types.is_string(type_.value_type):
        return _check_string_list
    if pa.types.is_list(type_):
        return _check_float_list
    raise TypeError(f"no validator for Arrow type {type_}")


def _check_allowed(allowed: tuple[str, ...]) -> Callable[[Any], str | None]:
    expected = "one of " + ", ".join(repr(item) for item in allowed)
    return lambda value: None if value in allowed else expected


def _check_json_object(value: str) -> str | None:
    expected = "JSON object text (for example json.dumps(params))"
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        return expected
    return None if isinstance(parsed, dict) else expected


def _check_schema_version(value: int) -> str | None:
    return None if value == SCHEMA_VERSION else f"{SCHEMA_VERSION}, the only version this writer writes"


@dataclass(frozen=True)
class _ColumnRule:
    name: str
    required: bool
    exact_type: type | None
    """A Python type that needs no further type check, for speed. None when every value needs check_type."""
    check_type: Callable[[Any], str | None]
    check_value: Callable[[Any], str | None] | None
    """An extra rule for values of the right type, such as an allowed set."""


def _value_rule(name: str) -> Callable[[Any], str | None] | None:
    if name in ALLOWED_VALUES:
        return _check_allowed(ALLOWED_VALUES[name])
    if name in JSON_COLUMNS:
        return _check_json_object
    if name == "schema_version":
        return _check_schema_version
    return None


@functools.cache
def _column_rules(schema: pa.Schema) -> tuple[tuple[_ColumnRule, ...], frozenset[str]]:
    exact_types = {pa.string(): str, pa.float64(): float, pa.bool_(): bool}
    rules = tuple(
        _ColumnRule(
            name=field.name,
            required=not field.nullable,
            exact_type=exact_types.get(field.type),
            check_type=_type_checker(field.type),
            check_value=_value_rule(field.name),
        )
        for field in schema
    )
    return rules, frozenset(schema.names)


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unknown_column_message(key: Any, row_number: int, schema: pa.Schema) -> str:
    close = difflib.get_close_matches(str(key), schema.names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "known columns: " + ", ".join(schema.names)
    return f"unknown column {key!r} in row {row_number}; {hint}"


def validate_row(row: Mapping[str, Any], schema: pa.Schema, row_number: int = 0) -> None:
    """Raise SchemaError unless every key of `row` is a column of `schema` with a value of its type.

    Missing keys count as null. A null in a required column, a value outside a column's
    allowed set (budget_kind, phase, status) and JSON columns that are not JSON object
    text are rejected too. The message names the row number, the column and the value.
    """
    rules, names = _column_rules(schema)
    for key in row:
        if key not in names:
            raise SchemaError(_unknown_column_message(key, row_number, schema))

    for rule in rules:
        value = row.get(rule.name)
        if value is None:
            if rule.required:
                raise SchemaError(f"missing value for required column {rule.name!r} in row {row_number}")
            continue
        expected = None if type(value) is rule.exact_type else rule.check_type(value)
        if expected is None and rule.check_value is not None:
            expected = rule.check_value(value)
        if expected is not None:
            raise SchemaError(
                f"invalid value for column {rule.name!r} in row {row_number}: "
                f"{_short_repr(value)} ({type(value).__name__}); expected {expected}"
            )


def rows_to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Validate plain-dict rows against `schema` and build an Arrow table.

    A missing optional key becomes null, and a missing schema_version becomes
    SCHEMA_VERSION. Raises SchemaError (a ValueError) that names the column and value
    on an unknown key, a value of the wrong type or a missing required value.
    """
    prepared = []
    for row_number, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise SchemaError(f"row {row_number} is a {type(row).__name__}; expected a dict of column values")
        if row.get("schema_version") is None and "schema_version" in schema.names:
            row = {**row, "schema_version": SCHEMA_VERSION}
        validate_row(row, schema, row_number)
        prepared.append(row)

    columns = {field.name: [row.get(field.name) for row in prepared] for field in schema}
    return pa.table(columns, schema=schema)


def conform_table(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return `table` with exactly the columns of `schema`, in its order and types.

    Columns missing from `table` (files from an older schema version) become nulls.
    Raises SchemaError when `table` has a column that `schema` does not know, which
    means that a newer version of this package wrote it.
    """
    unknown = [name for name in table.column_names if schema.get_field_index(name) < 0]
    if unknown:
        raise SchemaError(
            f"columns {', '.join(unknown)} are unknown to schema version {SCHEMA_VERSION}; "
            "upgrade capkv-eval to read files written by a newer version"
        )
    # Files from older versions may hold nulls where the current schema requires a value,
    # so a conformed table keeps every column nullable.
    nullable_schema = pa.schema([field.with_nullable(True) for field in schema])
    if _same_types(table.schema, nullable_schema):
        return pa.Table.from_arrays(table.columns, schema=nullable_schema)
    columns = []
    for field in nullable_schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=nullable_schema)


def _same_types(left: pa.Schema, right: pa.Schema) -> bool:
    return left.names == right.names and all(a.type == b.type for a, b in zip(left, right))
