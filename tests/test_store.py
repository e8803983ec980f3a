"""ResultStore: atomic chunk writes, resume bookkeeping, remote roots, run lookup and compaction."""

from __future__ import annotations

import datetime as dt

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from storage import layout
from storage.errors import RunStateError, SchemaError, StoreIOError, UnknownRunError
from storage.files import list_data_files
from storage.sql import connect, run_query
from storage.store import ResultStore
from storage.synthetic import synthetic_cells, synthetic_run_row, synthetic_sample_row

RUN = "run-20261204T213000-ab12cd"
MODEL = "Qwen/Qwen2.5-0.5B"


def cells(benchmarks=("needle",), methods=("capkv", "snapkv"), budgets=(64, 128)):
    return synthetic_cells([MODEL], list(methods), list(budgets), list(benchmarks))


def chunk_rows(cell, chunk_index, size=5, run_id=RUN, errors=()):
    return [
        synthetic_sample_row(run_id, cell, chunk_index, chunk_index * size + i, error=i in errors)
        for i in range(size)
    ]


def all_files(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def sample_count(root):
    with connect(root) as connection:
        return connection.sql("SELECT count(*) FROM samples").fetchall()[0][0]


def scalar_count(connection, sql):
    return connection.sql(sql).fetchall()[0][0]


def test_write_chunk_exact_row_counts(tmp_path):
    store = ResultStore(tmp_path)
    cell_a, cell_b = cells()[:2]
    store.write_chunk(RUN, cell_a.cell_id, 0, chunk_rows(cell_a, 0, size=5))
    store.write_chunk(RUN, cell_a.cell_id, 1, chunk_rows(cell_a, 1, size=3))
    store.write_chunk(RUN, cell_b.cell_id, 0, chunk_rows(cell_b, 0, size=7))

    with connect(tmp_path) as connection:
        counts = connection.sql("SELECT cell_id, chunk_index, count(*) FROM samples GROUP BY ALL ORDER BY ALL").fetchall()
    expected = sorted([(cell_a.cell_id, 0, 5), (cell_a.cell_id, 1, 3), (cell_b.cell_id, 0, 7)])
    assert counts == expected


def test_write_chunk_path_layout(tmp_path):
    store = ResultStore(tmp_path)
    cell = cells()[0]
    relative = store.write_chunk(RUN, cell.cell_id, 3, chunk_rows(cell, 3))
    assert relative == (
        f"samples/run_id={RUN}/model=Qwen%2FQwen2.5-0.5B/benchmark=needle/cell-{cell.cell_id}-chunk-00003.parquet"
    )
    assert (tmp_path / relative).is_file()


def test_rewrite_chunk_replaces_rows(tmp_path):
    store = ResultStore(tmp_path)
    cell = cells()[0]
    store.write_chunk(RUN, cell.cell_id, 0, chunk_rows(cell, 0, size=5))
    rewritten = chunk_rows(cell, 0, size=4)
    for row in rewritten:
        row["prediction"] = "second attempt"
    store.write_chunk(RUN, cell.cell_id, 0, rewritten)

    with connect(tmp_path) as connection:
        rows = connection.sql("SELECT prediction FROM samples").fetchall()
    assert rows == [("second attempt",)] * 4
    assert len(list_data_files(store.root, "samples")) == 1


def test_crash_mid_write_leaves_nothing(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    cell = cells()[0]

    def crash(table, sink, **kwargs):
        sink.write(b"PAR1 half a file")
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.write_chunk(RUN, cell.cell_id, 0, chunk_rows(cell, 0))

    partition = tmp_path / layout.samples_dir(RUN, MODEL, "needle")
    assert list(partition.iterdir()) == []
    assert ResultStore(tmp_path).completed_chunks(RUN) == set()


def test_crash_during_rewrite_keeps_old_file(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    cell = cells()[0]
    store.write_chunk(RUN, cell.cell_id, 0, chunk_rows(cell, 0, size=5))
    before = all_files(tmp_path)

    def crash(table, sink, **kwargs):
        sink.write(b"PAR1")
        raise OSError("No space left on device")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(StoreIOError, match="No space left on device"):
        store.write_chunk(RUN, cell.cell_id, 0, chunk_rows(cell, 0, size=2))
    monkeypatch.undo()

    assert all_files(tmp_path) == before
    assert sample_count(tmp_path) == 5


def test_invalid_rows_write_nothing(tmp_path):
    store = ResultStore(tmp_path)
    cell = cells()[0]
    rows = chunk_rows(cell, 0)
    rows[2]["score"] = "high"
    with pytest.raises(SchemaError, match="'score' in row 2: 'high'"):
        store.write_chunk(RUN, cell.cell_id, 0, rows)
    assert not (tmp_path / "samples").exists()


def test_rows_must_match_write_identity(tmp_path):
    store = ResultStore(tmp_path)
    cell = cells()[0]
    with pytest.raises(SchemaError, match="run_id='run-other'"):
        store.write_chunk(RUN, cell.cell_id, 0, chunk_rows(cell, 0, run_id="run-other"))
    with pytest.raises(SchemaError, match="chunk_index=0"):
        store.write_chunk(RUN, cell.cell_id, 1, chunk_rows(cell, 0))


def test_rows_must_share_model_and_benchmark(tmp_path):
    store = ResultStore(tmp_path)
    cell = cells()[0]
    rows = chunk_rows(cell, 0)
    rows[1]["benchmark"] = "squad"
    with pytest.raises(SchemaError, match="2 values of 'benchmark'"):
        store.write_chunk(RUN, cell.cell_id, 0, rows)


def test_invalid_cell_id_rejected(tmp_path):
    store = ResultStore(tmp_path)
    cell = cells()[0]
    with pytest.raises(SchemaError, match="invalid cell_id '../escape'"):
        store.write_chunk(RUN, "../escape", 0, chunk_rows(cell, 0))


def test_completed_chunks_lists_pairs(tmp_path):
    store = ResultStore(tmp_path)
    cell_a, cell_b = cells()[:2]
    store.write_chunk(RUN, cell_a.cell_id, 0, chunk_rows(cell_a, 0))
    store.write_chunk(RUN, cell_a.cell_id, 2, chunk_rows(cell_a, 2))
    store.write_chunk(RUN, cell_b.cell_id, 1, chunk_rows(cell_b, 1))
    store.write_chunk("run-other", cell_b.cell_id, 5, chunk_rows(cell_b, 5, run_id="run-other"))

    assert store.completed_chunks(RUN) == {(cell_a.cell_id, 0), (cell_a.cell_id, 2), (cell_b.cell_id, 1)}
    assert store.completed_chunks("run-missing") == set()


def test_numeric_looking_partition_values(tmp_path):
    store = ResultStore(tmp_path)
    cell = synthetic_cells(["7"], ["capkv"], [64], ["2026-01-01"])[1]
    store.write_chunk("123", cell.cell_id, 0, chunk_rows(cell, 0, run_id="123"))

    with connect(tmp_path) as connection:
        row = connection.sql(
            "SELECT run_id, model, benchmark, typeof(run_id), typeof(model), typeof(benchmark) FROM samples LIMIT 1"
        ).fetchall()[0]
    assert row == ("123", "7", "2026-01-01", "VARCHAR", "VARCHAR", "VARCHAR")


def test_special_characters_in_model(tmp_path):
    store = ResultStore(tmp_path)
    model = "org/model+v1.5=a%b c ü"
    cell = synthetic_cells([model], ["capkv"], [64], ["needle"])[1]
    relative = store.write_chunk(RUN, cell.cell_id, 0, chunk_rows(cell, 0))
    assert "/model=org%2Fmodel%2Bv1.5%3Da%25b%20c%20%C3%BC/" in relative

    with connect(tmp_path) as connection:
        assert connection.sql("SELECT DISTINCT model FROM samples").fetchall() == [(model,)]
        assert scalar_count(connection, f"SELECT count(*) FROM samples WHERE model = '{model}'") == 5


def test_subtree_filesystem_root(tmp_path):
    filesystem = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    store = ResultStore((filesystem, ""))
    assert not store.root.is_local
    cell = cells()[0]
    store.write_run(synthetic_run_row(RUN, status="running"))
    store.write_chunk(RUN, cell.cell_id, 0, chunk_rows(cell, 0, size=5))
    store.write_chunk(RUN, cell.cell_id, 1, chunk_rows(cell, 1, size=2))

    assert store.completed_chunks(RUN) == {(cell.cell_id, 0), (cell.cell_id, 1)}
    assert store.read_run(RUN)["status"] == "running"
    assert store.run_ids() == [RUN]
    assert (tmp_path / layout.run_file(RUN)).is_file()

    with connect((filesystem, "")) as connection:
        rows = connection.sql("SELECT model, count(*) FROM samples GROUP BY model").fetchall()
    assert rows == [(MODEL, 7)]


def test_subtree_filesystem_base_path(tmp_path):
    store = ResultStore((pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), "nested/results"))
    store.write_run(synthetic_run_row(RUN))
    assert (tmp_path / "nested/results" / layout.run_file(RUN)).is_file()
    assert store.run_exists(RUN)


def test_file_uri_root(tmp_path):
    store = ResultStore(f"file://{tmp_path}")
    assert store.root.is_local
    store.write_run(synthetic_run_row(RUN))
    assert ResultStore(tmp_path).read_run(RUN)["run_id"] == RUN


def test_unknown_run_id_message(tmp_path):
    store = ResultStore(tmp_path)
    for run_id in ("run-a", "run-b", "run-c"):
        store.write_run(synthetic_run_row(run_id))
    with pytest.raises(UnknownRunError) as caught:
        store.read_run("run-x")
    assert str(caught.value) == "unknown run id 'run-x'; known: run-a, run-b, run-c"


def test_unknown_run_id_empty_store(tmp_path):
    with pytest.raises(UnknownRunError, match="has no runs"):
        ResultStore(tmp_path).read_run("run-x")


def test_write_run_replaces_status(tmp_path):
    store = ResultStore(tmp_path)
    store.write_run(synthetic_run_row(RUN, status="running"))
    store.write_run(synthetic_run_row(RUN, status="completed"))
    run = store.read_run(RUN)
    assert run["status"] == "completed"
    assert run["started_at"] == dt.datetime(2026, 12, 4, 21, 30, tzinfo=dt.timezone.utc)
    with connect(tmp_path) as connection:
        assert connection.sql("SELECT run_id, status FROM runs").fetchall() == [(RUN, "completed")]


def test_write_cell_status_transitions(tmp_path):
    from storage.synthetic import synthetic_cell_row

    store = ResultStore(tmp_path)
    cell = cells()[0]
    for status in ("pending", "running", "completed"):
        store.write_cell(synthetic_cell_row(RUN, cell, 10, status=status))
    assert [row["status"] for row in store.read_cells(RUN)] == ["completed"]
    with pytest.raises(SchemaError, match="expected one of 'pending', 'running', 'completed', 'failed'"):
        store.write_cell(synthetic_cell_row(RUN, cell, 10, status="done"))


def test_unwritable_root_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store root should be")
    store = ResultStore(blocker / "results")
    with pytest.raises(StoreIOError) as caught:
        store.write_run(synthetic_run_row(RUN))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"result store root '{blocker / 'results'}' is not writable:")


def write_finished_run(store, run_id=RUN, chunks=4, size=5, status="completed"):
    store.write_run(synthetic_run_row(run_id, status="running"))
    for cell in cells(benchmarks=("needle", "squad")):
        for chunk_index in range(chunks):
            store.write_chunk(run_id, cell.cell_id, chunk_index, chunk_rows(cell, chunk_index, size, run_id, errors={3}))
    store.write_run(synthetic_run_row(run_id, status=status))


ALL_ROWS = "SELECT * FROM samples ORDER BY cell_id, chunk_index, sample_id"


def snapshot(root):
    with connect(root) as connection:
        rows = connection.sql(ALL_ROWS).fetchall()
    return rows, run_query(root, "leaderboard", output="json")


def test_compact_keeps_results(tmp_path):
    store = ResultStore(tmp_path)
    write_finished_run(store)
    files_before = len(list_data_files(store.root, "samples"))
    chunks_before = store.completed_chunks(RUN)
    rows_before, leaderboard_before = snapshot(tmp_path)

    result = store.compact(RUN)

    rows_after, leaderboard_after = snapshot(tmp_path)
    assert files_before == 2 * 5 * 4
    assert (result.files_before, result.files_after, result.rows) == (40, 2, 200)
    assert len(list_data_files(store.root, "samples")) == 2
    assert len(rows_after) == 200
    assert rows_after == rows_before
    assert leaderboard_after == leaderboard_before
    assert store.completed_chunks(RUN) == chunks_before


def test_compact_rejects_unfinished_run(tmp_path):
    store = ResultStore(tmp_path)
    write_finished_run(store, chunks=1, status="running")
    with pytest.raises(RunStateError) as caught:
        store.compact(RUN)
    assert str(caught.value) == (
        f"cannot compact run '{RUN}': its status is 'running'; only completed or failed runs are compacted"
    )


def test_compacted_chunk_rewrite_rejected(tmp_path):
    store = ResultStore(tmp_path)
    write_finished_run(store, chunks=2)
    store.compact(RUN)
    cell = cells()[0]
    with pytest.raises(RunStateError, match="already compacted"):
        store.write_chunk(RUN, cell.cell_id, 1, chunk_rows(cell, 1))


def test_resume_after_compaction_adds_chunks(tmp_path):
    store = ResultStore(tmp_path)
    write_finished_run(store, chunks=2, status="failed")
    store.compact(RUN)
    cell = cells()[0]
    store.write_chunk(RUN, cell.cell_id, 2, chunk_rows(cell, 2))
    assert (cell.cell_id, 2) in store.completed_chunks(RUN)
    assert sample_count(tmp_path) == 2 * 5 * 2 * 5 + 5

    store.compact(RUN)
    assert sample_count(tmp_path) == 105
    assert len(list_data_files(store.root, "samples")) == 2
    assert len(store.completed_chunks(RUN)) == 2 * 5 * 2 + 1


def test_interrupted_compaction_hides_sources(tmp_path, monkeypatch):
    import storage.compact

    store = ResultStore(tmp_path)
    write_finished_run(store, chunks=2)
    rows_before, _ = snapshot(tmp_path)
    monkeypatch.setattr(storage.compact, "delete_replaced", lambda root, directory: 0)
    store.compact(RUN)
    monkeypatch.undo()

    # Both the sources and the compacted files exist, yet every row is read once.
    assert len(list_data_files(store.root, "samples")) == 2 * 5 * 2 + 2
    rows_during, _ = snapshot(tmp_path)
    assert rows_during == rows_before

    store.compact(RUN)
    assert len(list_data_files(store.root, "samples")) == 2
    assert snapshot(tmp_path)[0] == rows_before


def test_compact_on_subtree_root(tmp_path):
    root = (pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), "")
    store = ResultStore(root)
    write_finished_run(store, chunks=2)
    before = snapshot(root)
    store.compact(RUN)
    assert snapshot(root) == before
    assert len(list_data_files(store.root, "samples")) == 2
