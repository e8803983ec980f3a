"""The Parquet result store: one file per (cell, chunk) of samples, one per cell and one per run."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage import layout
from storage.atomic import write_atomic
from storage.compact import DEFAULT_TARGET_ROWS_PER_FILE, CompactionResult, compact_run, compacted_chunks_in
from storage.errors import RunStateError, SchemaError, StoreIOError, UnknownRunError
from storage.files import visible_files
from storage.layout import StoreRoot, first_line
from storage.schema import CELLS_SCHEMA, RUNS_SCHEMA, SAMPLES_SCHEMA, rows_to_table

PARQUET_COMPRESSION = "zstd"

# Statuses after which a run's sample files no longer change, so compaction is safe.
FINISHED_RUN_STATUSES = ("completed", "failed")

# Maximum number of run ids listed in an "unknown run id" message.
MAX_LISTED_RUN_IDS = 20

RootLike = str | os.PathLike | tuple[pafs.FileSystem, str] | StoreRoot


class ResultStore:
    """Writer and reader of the evaluation results under one root.

    `root` is a local path, a URI that `pyarrow.fs.FileSystem.from_uri` accepts
    (`file:///…`, `s3://…`) or a `(pyarrow.fs.FileSystem, base_path)` pair. All I/O goes
    through the pyarrow filesystem API, so local and remote roots behave the same.
    Every write replaces its file atomically.
    """

    def __init__(self, root: RootLike):
        self.root = layout.resolve_root(root)

    def __repr__(self) -> str:
        return f"ResultStore({self.root.display!r})"

    def write_chunk(
        self, run_id: str, cell_id: str, chunk_index: int, rows: Sequence[Mapping[str, Any]]
    ) -> str:
        """Write one (cell, chunk) of sample rows and return its path relative to the root.

        Rows may omit run_id, cell_id, chunk_index and schema_version, which are filled from
        the arguments. Rows that carry a different value, an unknown column or a value of
        the wrong type raise SchemaError before anything is written. All rows must share one
        model and one benchmark, which choose the partition. Writing the same (cell, chunk)
        again replaces the file, unless compaction already merged it (RunStateError).
        """
        layout.validate_cell_id(cell_id)
        layout.validate_chunk_index(chunk_index)
        rows = list(rows)
        if not rows:
            raise SchemaError(f"no rows for cell {cell_id!r} chunk {chunk_index}; a chunk file needs at least one row")

        identity = {"run_id": run_id, "cell_id": cell_id, "chunk_index": chunk_index}
        table = rows_to_table([_with_identity(row, identity, number) for number, row in enumerate(rows)], SAMPLES_SCHEMA)
        model = _single_value(table, "model", cell_id)
        benchmark = _single_value(table, "benchmark", cell_id)

        directory = layout.samples_dir(run_id, model, benchmark)
        self._reject_compacted_rewrite(directory, run_id, cell_id, chunk_index)
        relative = f"{directory}/{layout.chunk_file_name(cell_id, chunk_index)}"
        self._write_table(relative, table)
        return relative

    def write_cell(self, row: Mapping[str, Any]) -> str:
        """Create or replace a cell's status row and return its path relative to the root."""
        table = rows_to_table([row], CELLS_SCHEMA)
        relative = layout.cell_file(row["run_id"], row["cell_id"])
        self._write_table(relative, table)
        return relative

    def write_run(self, row: Mapping[str, Any]) -> str:
        """Create or replace a run's row and return its path relative to the root."""
        table = rows_to_table([row], RUNS_SCHEMA)
        relative = layout.run_file(row["run_id"])
        self._write_table(relative, table)
        return relative

    def check_writable(self) -> None:
        """Write and delete a hidden probe file under runs/, raising StoreIOError when the store is not writable.

        A run calls this before its first write, so that a store it cannot write
        rejects the run before anything else happens. It leaves only the runs/ folder.
        """
        probe = f"runs/.write-probe-{uuid.uuid4().hex}"
        write_atomic(self.root, probe, lambda sink: sink.write(b"probe"))
        try:
            self.root.fs.delete_file(self.root.path(probe))
        except OSError as error:
            raise StoreIOError(f"cannot delete {probe} under {self.root.display!r}: {first_line(error)}") from None

    def completed_chunks(self, run_id: str) -> set[tuple[str, int]]:
        """Return the (cell_id, chunk_index) pairs of `run_id` whose sample rows are in the store.

        Compacted files contribute the pairs listed in their footer. Unreadable files do not
        count, so a resumed run writes those chunks again.
        """
        completed: set[tuple[str, int]] = set()
        for report in visible_files(self.root, "samples", [run_id]):
            parsed = layout.parse_chunk_file_name(layout.base_name(report.path))
            if parsed is not None:
                completed.add(parsed)
            completed.update(report.chunks)
        return completed

    def run_ids(self) -> list[str]:
        """Return the ids of every run with a folder under runs/, sorted."""
        selector = pafs.FileSelector(self.root.path("runs"), recursive=False, allow_not_found=True)
        try:
            infos = self.root.fs.get_file_info(selector)
        except OSError as error:
            raise StoreIOError(f"cannot list runs under {self.root.display!r}: {first_line(error)}") from None
        prefix = "run_id="
        return sorted(
            layout.decode_partition_value(info.base_name[len(prefix) :])
            for info in infos
            if info.type == pafs.FileType.Directory and info.base_name.startswith(prefix)
        )

    def run_exists(self, run_id: str) -> bool:
        """Return whether `run_id` has a run file."""
        info = self.root.fs.get_file_info(self.root.path(layout.run_file(run_id)))
        return info.type == pafs.FileType.File

    def read_run(self, run_id: str) -> dict[str, Any]:
        """Return the run's row as a dict. Raises UnknownRunError that lists the known run ids."""
        if not self.run_exists(run_id):
            raise UnknownRunError(self._unknown_run_message(run_id))
        return self._read_table(layout.run_file(run_id)).to_pylist()[0]

    def read_cells(self, run_id: str) -> list[dict[str, Any]]:
        """Return the cell rows of `run_id`, sorted by cell_id. Unreadable files are left out with a warning."""
        reports = visible_files(self.root, "cells", [run_id])
        rows = [row for report in reports for row in self._read_table(report.path).to_pylist()]
        return sorted(rows, key=lambda row: row["cell_id"])

    def compact(self, run_id: str, target_rows_per_file: int = DEFAULT_TARGET_ROWS_PER_FILE) -> CompactionResult:
        """Merge a finished run's sample files into about one file per (model, benchmark) partition.

        Query results do not change, and completed_chunks still returns every pair. Raises
        RunStateError unless the run's status is completed or failed.
        """
        status = self.read_run(run_id)["status"]
        if status not in FINISHED_RUN_STATUSES:
            raise RunStateError(
                f"cannot compact run {run_id!r}: its status is {status!r}; only completed or failed runs are compacted"
            )
        return compact_run(self.root, run_id, target_rows_per_file)

    def _write_table(self, relative: str, table: pa.Table) -> None:
        write_atomic(self.root, relative, lambda sink: pq.write_table(table, sink, compression=PARQUET_COMPRESSION))

    def _read_table(self, relative: str) -> pa.Table:
        try:
            with self.root.fs.open_input_file(self.root.path(relative)) as source:
                return pq.read_table(source)
        except (OSError, ValueError) as error:
            raise StoreIOError(f"cannot read {self.root.display}/{relative}: {first_line(error)}") from None

    def _reject_compacted_rewrite(self, directory: str, run_id: str, cell_id: str, chunk_index: int) -> None:
        covered = compacted_chunks_in(self.root, directory)
        if (cell_id, chunk_index) in covered:
            raise RunStateError(
                f"cell {cell_id!r} chunk {chunk_index} of run {run_id!r} was already compacted and cannot be "
                "rewritten; write the results to a new run instead"
            )

    def _unknown_run_message(self, run_id: str) -> str:
        known = self.run_ids()
        if not known:
            return f"unknown run id {run_id!r}; the store at {self.root.display} has no runs"
        listed = ", ".join(known[-MAX_LISTED_RUN_IDS:])
        more = f" and {len(known) - MAX_LISTED_RUN_IDS} older" if len(known) > MAX_LISTED_RUN_IDS else ""
        return f"unknown run id {run_id!r}; known: {listed}{more}"


def _with_identity(row: Mapping[str, Any], identity: dict[str, Any], row_number: int) -> dict[str, Any]:
    """Fill run_id, cell_id and chunk_index from the write call, rejecting rows that disagree."""
    if not isinstance(row, Mapping):
        raise SchemaError(f"row {row_number} is a {type(row).__name__}; expected a dict of column values")
    filled = dict(row)
    for name, expected in identity.items():
        value = filled.get(name)
        if value is None:
            filled[name] = expected
        elif value != expected:
            raise SchemaError(
                f"row {row_number} has {name}={value!r} but is written as {name}={expected!r}"
            )
    return filled


def _single_value(table: pa.Table, column: str, cell_id: str) -> str:
    values = table.column(column).unique().to_pylist()
    if len(values) != 1:
        raise SchemaError(f"cell {cell_id!r} chunk rows have {len(values)} values of {column!r} ({values[:5]}); expected one")
    return values[0]

