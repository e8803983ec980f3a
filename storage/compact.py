"""Compaction: merge a finished run's small sample files into larger ones without changing query results.

Each compacted file stays in the (run, model, benchmark) partition of its sources and
records in its footer metadata which files it replaces and which (cell_id, chunk_index)
pairs it contains. Readers hide replaced files as soon as the compacted file exists, so
the steps (write the compacted file atomically, then delete the sources) never show a
row twice or lose one. A crash between the steps leaves hidden sources behind, which
the next compaction deletes.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage.atomic import write_atomic
from storage.errors import StoreIOError
from storage.files import (
    COMPACTION_METADATA_KEY,
    FileReport,
    hide_replaced,
    inspect_files,
    list_data_files,
    visible_files,
)
from storage.layout import (
    COMPACTED_FILE_PREFIX,
    COMPACTED_MARKER,
    StoreRoot,
    base_name,
    first_line,
    parse_chunk_file_name,
)
from storage.schema import SAMPLES_SCHEMA, conform_table

DEFAULT_TARGET_ROWS_PER_FILE = 1_000_000

# Source files read ahead in parallel. Batches bound the memory that read-ahead holds.
READ_THREADS = 4
READ_BATCH_FILES = 64

# DuckDB's own row group size: DuckDB scans one row group per thread, so smaller groups
# keep a large compacted file parallel to read.
COMPACTED_ROW_GROUP_SIZE = 122_880


@dataclass(frozen=True)
class CompactionResult:
    """Sample file counts before and after one compaction of a run, and the rows kept."""

    run_id: str
    files_before: int
    files_after: int
    rows: int


def compact_run(root: StoreRoot, run_id: str, target_rows_per_file: int) -> CompactionResult:
    """Merge the visible sample files of `run_id`, partition by partition.

    Files are merged in groups of up to `target_rows_per_file` rows. A file is never split,
    and a group of one file is left as it is. Callers check that the run is finished.
    """
    if target_rows_per_file < 1:
        raise ValueError(f"invalid target_rows_per_file {target_rows_per_file}; expected a positive int")
    reports = visible_files(root, "samples", [run_id])
    by_directory: dict[str, list[FileReport]] = defaultdict(list)
    for report in reports:
        by_directory[report.directory].append(report)

    for directory, files in sorted(by_directory.items()):
        for group in plan_groups(files, target_rows_per_file):
            merge_files(root, directory, group)
        delete_replaced(root, directory)

    after = visible_files(root, "samples", [run_id])
    return CompactionResult(
        run_id=run_id,
        files_before=len(reports),
        files_after=len(after),
        rows=sum(report.num_rows or 0 for report in after),
    )


def plan_groups(files: list[FileReport], target_rows: int) -> list[list[FileReport]]:
    """Split a partition's files into groups to merge, in a fixed order, keeping only groups of two or more."""
    ordered = sorted(files, key=_merge_order)
    groups: list[list[FileReport]] = []
    current: list[FileReport] = []
    current_rows = 0
    for report in ordered:
        rows = report.num_rows or 0
        if current and current_rows + rows > target_rows:
            groups.append(current)
            current, current_rows = [], 0
        current.append(report)
        current_rows += rows
    if current:
        groups.append(current)
    return [group for group in groups if len(group) > 1]


def _merge_order(report: FileReport) -> tuple[int, str, int]:
    # Earlier compacted files first, then chunk files by (cell_id, chunk_index).
    parsed = parse_chunk_file_name(base_name(report.path))
    if parsed is None:
        return (0, base_name(report.path), 0)
    return (1, parsed[0], parsed[1])


def merge_files(root: StoreRoot, directory: str, group: list[FileReport]) -> str:
    """Write one compacted file with the rows of `group` and return its path. The sources stay until delete_replaced."""
    replaces: set[str] = set()
    chunks: set[tuple[str, int]] = set()
    for report in group:
        replaces.add(base_name(report.path))
        replaces.update(report.replaces)
        parsed = parse_chunk_file_name(base_name(report.path))
        chunks.update([parsed] if parsed is not None else report.chunks)

    manifest = {"replaces": sorted(replaces), "chunks": sorted([cell, index] for cell, index in chunks)}
    schema = pa.schema([field.with_nullable(True) for field in SAMPLES_SCHEMA]).with_metadata(
        {COMPACTION_METADATA_KEY: json.dumps(manifest).encode()}
    )

    def write(sink: pa.NativeFile) -> None:
        with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
            pending: list[pa.Table] = []
            pending_rows = 0
            for table in _read_conformed(root, group):
                pending.append(table)
                pending_rows += table.num_rows
                # Source files are small, so rows are buffered into full row groups.
                if pending_rows >= COMPACTED_ROW_GROUP_SIZE:
                    writer.write_table(pa.concat_tables(pending), row_group_size=COMPACTED_ROW_GROUP_SIZE)
                    pending, pending_rows = [], 0
            if pending:
                writer.write_table(pa.concat_tables(pending), row_group_size=COMPACTED_ROW_GROUP_SIZE)

    # Writers look for compacted files before a rewrite only in partitions with this marker.
    marker = f"{directory}/{COMPACTED_MARKER}"
    write_atomic(root, marker, lambda sink: sink.write(b""))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    relative = f"{directory}/{COMPACTED_FILE_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    write_atomic(root, relative, write)
    return relative


def delete_replaced(root: StoreRoot, directory: str) -> int:
    """Delete the files in `directory` that a compacted file there replaces, and return how many."""
    reports = [report for report in inspect_files(root, list_data_files(root, directory)) if report.valid]
    visible = {report.path for report in hide_replaced(reports)}
    deleted = 0
    for report in reports:
        if report.path in visible:
            continue
        try:
            root.fs.delete_file(root.path(report.path))
        except FileNotFoundError:
            continue
        except OSError as error:
            raise StoreIOError(f"cannot delete compacted source {report.path}: {first_line(error)}") from None
        deleted += 1
    return deleted


def compacted_chunks_in(root: StoreRoot, directory: str) -> set[tuple[str, int]]:
    """Return the (cell_id, chunk_index) pairs held by compacted files in one partition directory.

    Only partitions with the compaction marker are listed, so a write to a never-compacted
    partition costs a single existence check.
    """
    marker = root.fs.get_file_info(root.path(f"{directory}/{COMPACTED_MARKER}"))
    if marker.type != pafs.FileType.File:
        return set()
    reports = inspect_files(root, list_data_files(root, directory))
    return {pair for report in reports if report.valid for pair in report.chunks}


def _read_conformed(root: StoreRoot, group: list[FileReport]) -> Iterator[pa.Table]:
    """Yield each file's table in the current schema, in order, reading a batch of files at a time in threads."""
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        for start in range(0, len(group), READ_BATCH_FILES):
            batch = group[start : start + READ_BATCH_FILES]
            yield from pool.map(lambda report: conform_table(_read(root, report.path), SAMPLES_SCHEMA), batch)


def _read(root: StoreRoot, relative: str) -> pa.Table:
    try:
        with root.fs.open_input_file(root.path(relative)) as source:
            return pq.read_table(source)
    except (OSError, ValueError) as error:
        raise StoreIOError(f"cannot read {relative} for compaction: {first_line(error)}") from None
