"""DuckDB views over the result store (`samples`, `cells`, `runs`) and the query runner.

Local stores are read by DuckDB's own Parquet reader. Other pyarrow filesystems (S3, a
SubTreeFileSystem, ...) are registered with DuckDB through fsspec's ArrowFSWrapper
under the `capkvstore://` protocol, so DuckDB reads them through pyarrow.

Each view lists its files explicitly: a file whose Parquet footer does not read is left
out with a warning, and files replaced by a compacted file are hidden. The views are
built when the connection opens. Files written later show up on the next connect().
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import duckdb
import pyarrow as pa
from fsspec.implementations.arrow import ArrowFSWrapper

from storage.errors import QueryError, StoreError, StoreIOError
from storage.files import FileReport, visible_files
from storage.layout import StoreRoot, first_line, resolve_root
from storage.output import render
from storage.schema import CELLS_SCHEMA, RUNS_SCHEMA, SAMPLES_SCHEMA

REMOTE_PROTOCOL = "capkvstore"
VIEW_SCHEMAS = {"samples": SAMPLES_SCHEMA, "cells": CELLS_SCHEMA, "runs": RUNS_SCHEMA}
READ_ONLY_STATEMENT_TYPES = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})
OUTPUT_FORMATS = ("table", "csv", "json")
# Attempts at building the views when a listed file disappears in between.
VIEW_BUILD_ATTEMPTS = 3


class _StoreFileSystem(ArrowFSWrapper):
    """An fsspec view of a pyarrow filesystem, rooted at the store, that DuckDB reaches as capkvstore:///."""

    protocol = REMOTE_PROTOCOL


def connect(
    root: Any, read_only: bool = True, run_ids: Iterable[str] | None = None
) -> duckdb.DuckDBPyConnection:
    """Open an in-process DuckDB connection with the views samples, cells and runs over the store.

    `root` accepts what ResultStore accepts. `run_ids` limits every view to those runs.
    Views always have every column of the current schema. Files from an older schema
    version read with nulls in the newer columns, and an empty store gives empty views.

    With `read_only` (the default) the views live in a database opened read-only, and
    file access is limited to the listed Parquet files before the configuration is
    locked. CREATE TABLE, INSERT, COPY ... TO a new file, ATTACH, INSTALL and SET then
    fail. Temporary tables and views are still allowed because they live in memory.

    The views list their files once, here. A file deleted later, as compaction deletes
    its sources, makes queries fail with an I/O error until the next connect().
    """
    # NOTE: DuckDB lets `COPY ... TO '<one of the listed files>' (USE_TMP_FILE false)`
    # through, because allowed_paths does not separate reads from writes (DuckDB 2.0.1).
    # run_query rejects COPY statements before they reach DuckDB.
    store_root = resolve_root(root)
    if isinstance(run_ids, str):
        raise TypeError(f"run_ids must be a list of run ids, not the str {run_ids!r}")
    selected = None if run_ids is None else list(run_ids)

    last_error: duckdb.Error | None = None
    for _ in range(VIEW_BUILD_ATTEMPTS):
        sources = {table: _view_sources(store_root, table, selected) for table in VIEW_SCHEMAS}
        try:
            if read_only:
                return _connect_read_only(store_root, sources)
            return _connect_writable(store_root, sources)
        except duckdb.IOException as error:
            # A listed file can vanish before DuckDB opens it, when a compaction deletes
            # its sources, so the files are listed again.
            last_error = error
        except duckdb.Error as error:
            raise StoreError(f"cannot build the views over {store_root.display}: {first_line(error)}") from None
    raise StoreIOError(f"cannot build the views over {store_root.display}: {first_line(last_error)}")


def _connect_writable(root: StoreRoot, sources: dict[str, list[str]]) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(":memory:")
    try:
        connection.execute("SET enable_progress_bar = false")
        _register_filesystem(connection, root)
        _create_views(connection, sources)
    except BaseException:
        connection.close()
        raise
    return connection


def _connect_read_only(root: StoreRoot, sources: dict[str, list[str]]) -> duckdb.DuckDBPyConnection:
    # DuckDB cannot open an in-memory database read-only, so the views go into a
    # database file that is reopened read-only and then unlinked.
    directory = tempfile.mkdtemp(prefix="capkv-views-")
    database = os.path.join(directory, "store.duckdb")
    try:
        with duckdb.connect(database) as writer:
            _register_filesystem(writer, root)
            _create_views(writer, sources)
        connection = duckdb.connect(database, read_only=True)
    finally:
        # An open DuckDB file stays readable after unlinking on POSIX.
        # NOTE: on Windows the removal fails while the file is open and the folder stays behind.
        shutil.rmtree(directory, ignore_errors=True)

    # NOTE: with external access off DuckDB cannot spill to its temporary directory, so a
    # query that exceeds memory_limit fails instead of spilling. Pass read_only=False for those.
    _register_filesystem(connection, root)
    allowed = [path for paths in sources.values() for path in paths]
    connection.execute("SET allowed_paths = ?", [allowed])
    connection.execute("SET enable_external_access = false")
    connection.execute("SET enable_progress_bar = false")  # it would print into flow logs
    connection.execute("SET lock_configuration = true")
    return connection


def _view_sources(root: StoreRoot, table: str, run_ids: Iterable[str] | None) -> list[str]:
    """Return the paths or URIs DuckDB reads for one view: local absolute paths or capkvstore:/// URIs."""
    reports: list[FileReport] = visible_files(root, table, None if run_ids is None else list(run_ids))
    if root.is_local:
        return [root.path(report.path) for report in reports]
    return [f"{REMOTE_PROTOCOL}:///{report.path}" for report in reports]


def _register_filesystem(connection: duckdb.DuckDBPyConnection, root: StoreRoot) -> None:
    if root.is_local:
        return
    import pyarrow.fs as pafs

    rooted = pafs.SubTreeFileSystem(root.base, root.fs) if root.base else root.fs
    # skip_instance_cache: fsspec would otherwise hand back a wrapper of another store.
    connection.register_filesystem(_StoreFileSystem(rooted, skip_instance_cache=True))


def _create_views(connection: duckdb.DuckDBPyConnection, sources: dict[str, list[str]]) -> None:
    for table, schema in VIEW_SCHEMAS.items():
        connection.execute(f"CREATE VIEW {table} AS {view_query(schema, sources[table])}")


def view_query(schema: pa.Schema, paths: list[str]) -> str:
    """Return the SELECT behind one view: an empty typed row set, unioned by name with the files.

    The typed part fixes the columns and their types even when no file (or only files of
    an older schema version) exists. hive_types_autocast is off so that partition values
    are always text, whatever they look like.
    """
    typed = ", ".join(
        f"CAST(NULL AS {duckdb_type(field.type)}) AS {_quote_identifier(field.name)}" for field in schema
    )
    empty = f"SELECT {typed} WHERE false"
    if not paths:
        return empty
    listed = ", ".join(_quote_literal(path) for path in paths)
    scan = (
        f"SELECT * FROM read_parquet([{listed}], hive_partitioning = true, "
        "union_by_name = true, hive_types_autocast = false)"
    )
    return f"{empty} UNION ALL BY NAME {scan}"


def duckdb_type(arrow_type: pa.DataType) -> str:
    """Return the DuckDB SQL type that DuckDB reads a Parquet column of `arrow_type` as."""
    if pa.types.is_string(arrow_type):
        return "VARCHAR"
    if pa.types.is_int32(arrow_type):
        return "INTEGER"
    if pa.types.is_int64(arrow_type):
        return "BIGINT"
    if pa.types.is_float64(arrow_type):
        return "DOUBLE"
    if pa.types.is_boolean(arrow_type):
        return "BOOLEAN"
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP WITH TIME ZONE" if arrow_type.tz else "TIMESTAMP"
    if pa.types.is_map(arrow_type):
        return f"MAP({duckdb_type(arrow_type.key_type)}, {duckdb_type(arrow_type.item_type)})"
    if pa.types.is_list(arrow_type):
        return f"{duckdb_type(arrow_type.value_type)}[]"
    raise TypeError(f"no DuckDB type for Arrow type {arrow_type}")


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def named_queries() -> list[str]:
    """Return the names of the queries in dashboards/queries, sorted."""
    folder = resources.files("dashboards").joinpath("queries")
    return sorted(item.name[: -len(".sql")] for item in folder.iterdir() if item.name.endswith(".sql"))


def load_query(sql_or_name: str) -> str:
    """Return the SQL of a named query, or `sql_or_name` itself when it is SQL text.

    A single word is taken as a query name. Raises QueryError listing the known names
    when no such query exists.
    """
    text = sql_or_name.strip()
    if not text.replace("_", "").isalnum():
        return sql_or_name
    path = resources.files("dashboards").joinpath("queries", f"{text}.sql")
    if not path.is_file():
        raise QueryError(f"SQL error: unknown query {text!r}; known: {', '.join(named_queries())}")
    return path.read_text(encoding="utf-8")


def run_query(
    root: Any,
    sql_or_name: str,
    params: Mapping[str, Any] | None = None,
    output: str = "table",
    allow_writes: bool = False,
    run_ids: Iterable[str] | None = None,
) -> str:
    """Run SQL text or a named query against the store and return the result as text.

    `output` is "table" (an aligned text table), "csv" or "json" (a list of objects).
    `params` fills named parameters such as `$run_a`. Without `allow_writes`, statements
    other than SELECT and EXPLAIN are rejected. Statements separated by ';' run in order,
    and the result of the last one is returned. Every SQL failure raises QueryError with
    a one-line message that starts with 'SQL error:'.
    """
    if output not in OUTPUT_FORMATS:
        raise ValueError(f"invalid output {output!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    sql = load_query(sql_or_name)
    connection = connect(root, read_only=not allow_writes, run_ids=run_ids)
    try:
        return _execute(connection, sql, dict(params or {}), output, allow_writes)
    finally:
        connection.close()


def _execute(
    connection: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any], output: str, allow_writes: bool
) -> str:
    try:
        statements = connection.extract_statements(sql)
    except duckdb.Error as error:
        raise QueryError(f"SQL error: {first_line(error)}") from None
    if not statements:
        raise QueryError("SQL error: the query text contains no statement")
    if not allow_writes:
        for statement in statements:
            if statement.type not in READ_ONLY_STATEMENT_TYPES:
                kind = statement.type.name
                raise QueryError(
                    f"SQL error: {kind} statements are rejected on a read-only connection; "
                    "pass allow_writes=True (the CLI flag --allow-writes) to run them"
                )

    unknown = set(params) - {name for statement in statements for name in statement.named_parameters}
    if unknown:
        raise QueryError(f"SQL error: the query has no parameter named {', '.join(sorted(unknown))}")

    relation = None
    with _sql_errors():
        for statement in statements:
            used = {name: params[name] for name in statement.named_parameters if name in params}
            relation = connection.sql(statement.query, params=used or None)
        if relation is None:
            return ""
        return render(relation, output)


@contextlib.contextmanager
def _sql_errors():
    try:
        yield
    except duckdb.Error as error:
        raise QueryError(f"SQL error: {first_line(error)}") from None
