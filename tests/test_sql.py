"""SQL layer: views over the store, corrupt files, older schema versions, read-only connections, run_query."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from storage import layout
from storage.errors import QueryError
from storage.files import CorruptFileWarning
from storage.schema import SAMPLES_SCHEMA
from storage.sql import connect, load_query, named_queries, run_query
from storage.store import ResultStore
from storage.synthetic import synthetic_cells, synthetic_run_row, synthetic_sample_row

RUN = "run-20261204T213000-ab12cd"
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def store_root(tmp_path):
    """A store with one run: 5 needle cells, 2 chunks of 4 samples each, one failed sample per chunk."""
    store = ResultStore(tmp_path)
    store.write_run(synthetic_run_row(RUN))
    for cell in synthetic_cells([MODEL], ["capkv", "snapkv"], [64, 128], ["needle"]):
        for chunk_index in range(2):
            rows = [
                synthetic_sample_row(RUN, cell, chunk_index, chunk_index * 4 + i, error=i == 0) for i in range(4)
            ]
            store.write_chunk(RUN, cell.cell_id, chunk_index, rows)
    return tmp_path


def scalar(connection, sql):
    return connection.sql(sql).fetchall()[0][0]


def test_views_count_rows(store_root):
    with connect(store_root) as connection:
        assert scalar(connection, "SELECT count(*) FROM samples") == 40
        assert scalar(connection, "SELECT count(error) FROM samples") == 10
        assert scalar(connection, "SELECT count(*) FROM runs") == 1
        assert scalar(connection, "SELECT count(*) FROM cells") == 0


def test_views_filter_run_ids(store_root):
    store = ResultStore(store_root)
    cell = synthetic_cells([MODEL], [], [], ["needle"])[0]
    store.write_chunk("run-other", cell.cell_id, 0, [synthetic_sample_row("run-other", cell, 0, 0)])
    with connect(store_root, run_ids=["run-other"]) as connection:
        assert connection.sql("SELECT run_id, count(*) FROM samples GROUP BY ALL").fetchall() == [("run-other", 1)]
    with connect(store_root) as connection:
        assert scalar(connection, "SELECT count(DISTINCT run_id) FROM samples") == 2


def test_empty_store_views(tmp_path):
    with connect(tmp_path / "never-written") as connection:
        assert scalar(connection, "SELECT count(*) FROM samples") == 0
        columns = connection.sql("DESCRIBE samples").fetchall()
        assert [column[0] for column in columns] == SAMPLES_SCHEMA.names
        types = {column[0]: column[1] for column in columns}
        assert types["metrics"] == "MAP(VARCHAR, DOUBLE)"
        assert types["created_at"] == "TIMESTAMP WITH TIME ZONE"
        assert types["kept_tokens_per_layer"] == "DOUBLE[]"
    assert run_query(tmp_path / "never-written", "leaderboard", output="json") == "[]"


def test_view_types_match_files(store_root):
    with connect(store_root) as connection:
        types = dict(connection.sql("SELECT column_name, column_type FROM (DESCRIBE samples)").fetchall())
    assert types["budget"] == "BIGINT"
    assert types["chunk_index"] == "INTEGER"
    assert types["references"] == "VARCHAR[]"
    assert types["model"] == "VARCHAR"


def test_older_schema_version_reads(store_root):
    # A file from a schema version without the capacity and kl columns.
    cell = synthetic_cells([MODEL], [], [], ["needle"])[0]
    old_schema = pa.schema([field for field in SAMPLES_SCHEMA if field.name not in ("capacity", "kl")])
    row = synthetic_sample_row("run-old", cell, 0, 0)
    table = pa.Table.from_pylist([{name: row.get(name) for name in old_schema.names}], schema=old_schema)
    directory = store_root / layout.samples_dir("run-old", MODEL, "needle")
    directory.mkdir(parents=True)
    pq.write_table(table, directory / layout.chunk_file_name(cell.cell_id, 0))

    with connect(store_root) as connection:
        old = connection.sql("SELECT capacity, kl, score FROM samples WHERE run_id = 'run-old'").fetchall()
        assert old == [(None, None, row["score"])]
        assert scalar(connection, "SELECT count(capacity) FROM samples") == 40


def test_corrupt_file_skipped_with_warning(store_root):
    cell = synthetic_cells([MODEL], ["capkv"], [64], ["needle"])[1]
    directory = store_root / layout.samples_dir(RUN, MODEL, "needle")
    garbage = directory / layout.chunk_file_name(cell.cell_id, 7)
    garbage.write_bytes(b"this is not parquet")
    truncated = directory / layout.chunk_file_name(cell.cell_id, 8)
    valid_bytes = (directory / layout.chunk_file_name(cell.cell_id, 0)).read_bytes()
    truncated.write_bytes(valid_bytes[: len(valid_bytes) // 2])

    with pytest.warns(CorruptFileWarning) as caught:
        connection = connect(store_root)
    messages = " ".join(str(warning.message) for warning in caught)
    assert str(garbage) in messages
    assert str(truncated) in messages
    assert scalar(connection, "SELECT count(*) FROM samples") == 40
    assert scalar(connection, "SELECT max(chunk_index) FROM samples") == 1
    connection.close()

    with pytest.warns(CorruptFileWarning):
        completed = ResultStore(store_root).completed_chunks(RUN)
    assert (cell.cell_id, 7) not in completed
    assert (cell.cell_id, 0) in completed


def test_subtree_root_queries(store_root):
    root = (pafs.SubTreeFileSystem(str(store_root), pafs.LocalFileSystem()), "")
    with connect(root) as connection:
        assert scalar(connection, "SELECT count(*) FROM samples") == 40
        assert connection.sql("SELECT DISTINCT model FROM samples").fetchall() == [(MODEL,)]
        assert scalar(connection, "SELECT status FROM runs") == "completed"
    assert json.loads(run_query(root, "leaderboard", output="json")) == json.loads(
        run_query(store_root, "leaderboard", output="json")
    )


def test_subtree_root_is_read_only(store_root):
    root = (pafs.SubTreeFileSystem(str(store_root), pafs.LocalFileSystem()), "")
    with connect(root) as connection:
        with pytest.raises(duckdb.Error):
            connection.sql("COPY (SELECT 1 AS a) TO 'capkvstore:///samples/extra.parquet' (FORMAT parquet)")
    assert not (store_root / "samples/extra.parquet").exists()


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE copied AS SELECT * FROM samples",
        "INSERT INTO samples SELECT * FROM samples",
        "ATTACH '{tmp}/other.duckdb' AS other",
        "COPY (SELECT * FROM samples) TO '{tmp}/out.csv'",
        "COPY (SELECT * FROM samples) TO '{store}/samples/out.parquet' (FORMAT parquet)",
        "SET enable_external_access = true",
    ],
)
def test_read_only_connection_rejects(store_root, tmp_path_factory, statement):
    scratch = tmp_path_factory.mktemp("scratch")
    sql = statement.format(tmp=scratch, store=store_root)
    with connect(store_root) as connection:
        with pytest.raises(duckdb.Error):
            connection.sql(sql)
        assert scalar(connection, "SELECT count(*) FROM samples") == 40
    assert list(scratch.iterdir()) == []
    assert not (store_root / "samples/out.parquet").exists()


def test_writable_connection_allows_writes(store_root, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("scratch")
    with connect(store_root, read_only=False) as connection:
        connection.sql("CREATE TABLE copied AS SELECT * FROM samples")
        connection.sql(f"COPY copied TO '{scratch}/out.csv'")
        assert scalar(connection, "SELECT count(*) FROM copied") == 40
    assert (scratch / "out.csv").is_file()


def test_run_query_rejects_writes(store_root, tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(QueryError) as caught:
        run_query(store_root, f"COPY (SELECT 1) TO '{target}'")
    assert str(caught.value) == (
        "SQL error: COPY statements are rejected on a read-only connection; pass allow_writes=True (the CLI flag --allow-writes) to run them"
    )
    assert not target.exists()
    run_query(store_root, f"COPY (SELECT 1 AS a) TO '{target}'", allow_writes=True)
    assert target.read_text().splitlines() == ["a", "1"]


@pytest.mark.parametrize(
    ("sql", "start"),
    [
        ("SELECT nope FROM samples", "SQL error: Binder Error: Referenced column \"nope\" not found"),
        ("SELEC 1", "SQL error: Parser Error: syntax error at or near \"SELEC\""),
        ("SELECT CAST('x' AS INTEGER)", "SQL error: Conversion Error:"),
    ],
)
def test_sql_error_is_one_line(store_root, sql, start):
    with pytest.raises(QueryError) as caught:
        run_query(store_root, sql)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(start)


def test_unknown_named_query(store_root):
    with pytest.raises(QueryError) as caught:
        run_query(store_root, "leaderbord")
    assert str(caught.value) == (
        "SQL error: unknown query 'leaderbord'; known: capacity, capacity_spearman, diff_runs, latency, leaderboard, memory, needle_by_budget, needle_grid, nightly_runs, nightly_trend, paired_deltas, pareto, sample_drilldown, task_scores"
    )


def test_named_queries_listed():
    assert named_queries() == [
        "capacity", "capacity_spearman", "diff_runs", "latency", "leaderboard", "memory", "needle_by_budget",
        "needle_grid", "nightly_runs", "nightly_trend", "paired_deltas", "pareto", "sample_drilldown", "task_scores",
    ]
    assert "bootstrap" in load_query("leaderboard")
    assert load_query("SELECT 1") == "SELECT 1"


def test_output_formats(store_root):
    sql = (
        "SELECT sample_id, score, metrics, [1.5, 2.0] AS pair, NULL AS nothing FROM samples "
        "WHERE error IS NULL ORDER BY cell_id, sample_id LIMIT 2"
    )
    records = json.loads(run_query(store_root, sql, output="json"))
    assert len(records) == 2
    assert set(records[0]) == {"sample_id", "score", "metrics", "pair", "nothing"}
    assert records[0]["metrics"] == {"exact_match": records[0]["score"], "f1": records[0]["score"]}
    assert records[0]["pair"] == [1.5, 2.0]
    assert records[0]["nothing"] is None

    lines = run_query(store_root, sql, output="csv").splitlines()
    assert lines[0] == "sample_id,score,metrics,pair,nothing"
    assert len(lines) == 3
    assert lines[1].startswith(f"{records[0]['sample_id']},{records[0]['score']},")
    assert lines[1].endswith(',"[1.5, 2.0]",')

    table = run_query(store_root, sql, output="table")
    assert "sample_id" in table
    assert records[1]["sample_id"] in table
    assert len({len(line) for line in table.splitlines()[:4]}) == 1
    assert not table.endswith("\n")

    with pytest.raises(ValueError, match="invalid output 'xml'"):
        run_query(store_root, sql, output="xml")


def test_named_query_parameters(store_root):
    text = run_query(store_root, "SELECT $name AS greeting", params={"name": "hello"}, output="json")
    assert json.loads(text) == [{"greeting": "hello"}]
    with pytest.raises(QueryError, match="SQL error: the query has no parameter named extra"):
        run_query(store_root, "SELECT $name AS greeting", params={"name": "x", "extra": 1})
    with pytest.raises(QueryError, match="run_b"):
        run_query(store_root, "diff_runs", params={"run_a": RUN})
