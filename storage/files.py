"""Listing of the store's Parquet files and the footer check that hides unreadable ones.

Readers (the SQL views, resume and compaction) see a file only when its Parquet footer
reads. A footer that fails to read is reported with a CorruptFileWarning that names the
path, and the file is left out. The check result is cached in-process by
(root, path, size, mtime), so a file is opened once until it changes.

Compaction writes files whose footer metadata names the files they replace. Those
replaced files are hidden even while they still exist, so a reader that lists the
directory between the compacted file's arrival and the deletion of its sources reads
every row exactly once.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from storage.errors import StoreIOError
from storage.layout import StoreRoot, first_line, is_data_file, run_dir

COMPACTION_METADATA_KEY = b"capkv.compaction"

# Entries kept by the footer cache before it is cleared. An entry for a chunk file takes a
# few hundred bytes (an estimate, not measured).
FOOTER_CACHE_MAX_ENTRIES = 200_000
FOOTER_READ_THREADS = 8


class CorruptFileWarning(UserWarning):
    """A Parquet file in the store could not be read and was left out."""


@dataclass(frozen=True)
class FileReport:
    """The result of reading one Parquet file's footer."""

    path: str
    """Path relative to the store root."""
    size: int
    num_rows: int | None
    error: str | None
    """First line of the read error, or None when the footer is valid."""
    replaces: frozenset[str] = frozenset()
    """Base names of files in the same directory that this compacted file replaces."""
    chunks: frozenset[tuple[str, int]] = frozenset()
    """(cell_id, chunk_index) pairs whose rows this compacted file contains."""

    @property
    def valid(self) -> bool:
        return self.error is None

    @property
    def directory(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else ""


_footer_cache: dict[tuple[str, str, int, int], FileReport] = {}


def list_data_files(root: StoreRoot, prefix: str) -> list[pafs.FileInfo]:
    """List the Parquet data files under `prefix` (relative to the root), sorted by path.

    A missing prefix gives an empty list. Temporary files and markers are skipped.
    """
    selector = pafs.FileSelector(root.path(prefix), recursive=True, allow_not_found=True)
    try:
        infos = root.fs.get_file_info(selector)
    except OSError as error:
        raise StoreIOError(f"cannot list {root.display}/{prefix}: {first_line(error)}") from None
    files = [info for info in infos if info.type == pafs.FileType.File and is_data_file(info.base_name)]
    return sorted(files, key=lambda info: info.path)


def _read_footer(root: StoreRoot, info: pafs.FileInfo) -> FileReport:
    relative = root.relative(info.path)
    try:
        with root.fs.open_input_file(info.path) as source:
            metadata = pq.read_metadata(source)
    except (OSError, ValueError) as error:
        # pyarrow raises ArrowInvalid (a ValueError) for a damaged footer, OSError for I/O.
        return FileReport(path=relative, size=info.size, num_rows=None, error=first_line(error))

    replaces: frozenset[str] = frozenset()
    chunks: frozenset[tuple[str, int]] = frozenset()
    raw = (metadata.metadata or {}).get(COMPACTION_METADATA_KEY)
    if raw is not None:
        try:
            manifest = json.loads(raw)
            replaces = frozenset(manifest["replaces"])
            chunks = frozenset((cell_id, int(chunk_index)) for cell_id, chunk_index in manifest["chunks"])
        except (ValueError, KeyError, TypeError) as error:
            message = f"invalid {COMPACTION_METADATA_KEY.decode()} footer metadata: {first_line(error)}"
            return FileReport(path=relative, size=info.size, num_rows=None, error=message)
    return FileReport(
        path=relative, size=info.size, num_rows=metadata.num_rows, error=None, replaces=replaces, chunks=chunks
    )


def inspect_files(root: StoreRoot, infos: Iterable[pafs.FileInfo]) -> list[FileReport]:
    """Read the footer of each file, using the in-process cache for files that did not change."""
    infos = list(infos)
    reports: dict[str, FileReport] = {}
    missing = []
    for info in infos:
        key = _cache_key(root, info)
        cached = _footer_cache.get(key) if key is not None else None
        if cached is not None:
            reports[info.path] = cached
        else:
            missing.append(info)

    if missing:
        with ThreadPoolExecutor(max_workers=min(FOOTER_READ_THREADS, len(missing))) as pool:
            fresh = list(pool.map(lambda info: _read_footer(root, info), missing))
        if len(_footer_cache) + len(fresh) > FOOTER_CACHE_MAX_ENTRIES:
            _footer_cache.clear()
        for info, report in zip(missing, fresh):
            reports[info.path] = report
            key = _cache_key(root, info)
            if key is not None:
                _footer_cache[key] = report

    return [reports[info.path] for info in infos]


def _cache_key(root: StoreRoot, info: pafs.FileInfo) -> tuple[str, str, int, int] | None:
    # Filesystems that report no modification time cannot be cached safely.
    if info.mtime_ns is None or info.size is None:
        return None
    return (root.cache_key, info.path, info.size, info.mtime_ns)


def visible_files(root: StoreRoot, table: str, run_ids: Iterable[str] | None = None) -> list[FileReport]:
    """Return the readable, not-replaced Parquet files of `table`, warning about each unreadable one."""
    prefixes = [table] if run_ids is None else [run_dir(table, run_id) for run_id in run_ids]
    infos = [info for prefix in prefixes for info in list_data_files(root, prefix)]
    reports = inspect_files(root, infos)

    for report in reports:
        if not report.valid:
            warnings.warn(
                f"skipping unreadable Parquet file {root.display.rstrip('/')}/{report.path}: {report.error}",
                CorruptFileWarning,
                stacklevel=3,
            )
    valid = [report for report in reports if report.valid]
    return hide_replaced(valid)


def hide_replaced(reports: list[FileReport]) -> list[FileReport]:
    """Drop the files that a compacted file in the same directory replaces."""
    replaced = {_join(report.directory, name) for report in reports for name in report.replaces}
    return [report for report in reports if report.path not in replaced]


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name
