"""File layout of the store: root resolution, hive partition paths and file names.

Layout under the root:

    samples/run_id=<run_id>/model=<model>/benchmark=<benchmark>/cell-<cell_id>-chunk-<NNNNN>.parquet
    samples/run_id=<run_id>/model=<model>/benchmark=<benchmark>/compacted-<stamp>-<hex>.parquet
    cells/run_id=<run_id>/cell-<cell_id>.parquet
    runs/run_id=<run_id>/run.parquet

Partition values are percent-encoded, and DuckDB decodes them when it reads hive
partitions, so a model such as `Qwen/Qwen2.5-0.5B` becomes one safe path component
while queries still see the real name. Files whose names start with '.' or '_' are
temporary files and markers, which readers skip.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass

import pyarrow.fs as pafs

from storage.errors import SchemaError, StoreIOError

TABLES = ("samples", "cells", "runs")

# A cell id is a file name component, so it is limited to characters that need no escaping.
CELL_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
CHUNK_FILE_PATTERN = re.compile(r"^cell-(?P<cell_id>[A-Za-z0-9_.-]+)-chunk-(?P<chunk_index>\d{5,})\.parquet$")
COMPACTED_FILE_PREFIX = "compacted-"
COMPACTED_MARKER = "_compacted"

# Values that DuckDB's hive type detection turns into DATE or other non-text types
# although they start with a letter (checked with DuckDB 2.0.1).
_CASTABLE_WORDS = frozenset({"inf", "infinity", "epoch", "nan", "true", "false", "null", "allballs"})


@dataclass(frozen=True)
class StoreRoot:
    """A store location: a pyarrow filesystem and the base path of the store on it."""

    fs: pafs.FileSystem
    base: str
    display: str

    @property
    def is_local(self) -> bool:
        """True when the files are on the local disk, where DuckDB reads them with its own reader."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, relative: str) -> str:
        """Return the filesystem path of `relative`, a '/'-separated path under the root."""
        if not self.base:
            return relative
        return self._prefix() + relative if relative else self.base

    def relative(self, path: str) -> str:
        """Return `path`, as the filesystem lists it, relative to the root."""
        if not self.base:
            return path.lstrip("/")
        prefix = self._prefix()
        if not path.startswith(prefix):
            raise ValueError(f"path {path!r} is not under the store root {self.base!r}")
        return path[len(prefix) :]

    def _prefix(self) -> str:
        return self.base if self.base.endswith("/") else self.base + "/"

    @property
    def cache_key(self) -> str:
        """Text that identifies this root in process-wide caches."""
        return f"{self.fs.type_name}:{self.base}"


def resolve_root(root: str | os.PathLike | tuple[pafs.FileSystem, str] | StoreRoot) -> StoreRoot:
    """Turn a local path, a URI or a (filesystem, base_path) pair into a StoreRoot.

    URIs are anything `pyarrow.fs.FileSystem.from_uri` accepts, such as `file:///data/results`
    or `s3://bucket/results`. Raises StoreIOError in one line when the URI cannot be resolved.
    """
    if isinstance(root, StoreRoot):
        return root
    if isinstance(root, tuple):
        if len(root) != 2 or not isinstance(root[0], pafs.FileSystem) or not isinstance(root[1], str):
            raise TypeError("a root pair must be (pyarrow.fs.FileSystem, base_path)")
        fs, base = root
        return StoreRoot(fs=fs, base=_strip_slash(base), display=f"{fs.type_name}:{base or '/'}")
    text = os.fspath(root)
    if "://" not in text:
        base = os.path.abspath(text)
        return StoreRoot(fs=pafs.LocalFileSystem(), base=base, display=base)
    try:
        fs, base = pafs.FileSystem.from_uri(text)
    except (OSError, ValueError) as error:
        raise StoreIOError(f"cannot open result store root {text!r}: {first_line(error)}") from None
    return StoreRoot(fs=fs, base=_strip_slash(base), display=text)


def _strip_slash(base: str) -> str:
    # Keep a lone '/' so that a store at the filesystem root still gets absolute paths.
    stripped = base.rstrip("/")
    return stripped if stripped or not base else "/"


def first_line(error: BaseException) -> str:
    """Return the first line of an exception's message, which pyarrow and DuckDB often make multi-line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def encode_partition_value(value: str) -> str:
    """Percent-encode a partition value into one path component that DuckDB reads back as text.

    Every character outside letters, digits and '-_.~' is encoded, so '/' cannot nest
    directories. The first character is encoded too when the value does not start with a
    letter or is a word such as 'inf'. DuckDB would otherwise type `7` or `2026-01-01` as a
    number or a date, but it reads `%37` as the text '7'.
    """
    if not isinstance(value, str) or not value:
        raise SchemaError(f"invalid partition value {value!r}; expected a non-empty str")
    encoded = urllib.parse.quote(value, safe="-_.~")
    first = value[0]
    if not (first.isascii() and first.isalpha()) or value.lower() in _CASTABLE_WORDS:
        if encoded.startswith("%"):
            return encoded
        return f"%{ord(first):02X}{encoded[1:]}"
    return encoded


def decode_partition_value(component: str) -> str:
    """Invert encode_partition_value."""
    return urllib.parse.unquote(component)


def validate_cell_id(cell_id: str) -> str:
    """Return `cell_id` unchanged, or raise SchemaError when it cannot be part of a file name."""
    if not isinstance(cell_id, str) or not CELL_ID_PATTERN.match(cell_id):
        raise SchemaError(
            f"invalid cell_id {cell_id!r}; expected 1-200 characters from letters, digits, '_', '.' and '-'"
        )
    return cell_id


def validate_chunk_index(chunk_index: int) -> int:
    """Return `chunk_index` unchanged, or raise SchemaError when it is not an int in [0, 2**31)."""
    if isinstance(chunk_index, bool) or not isinstance(chunk_index, int) or not 0 <= chunk_index < 2**31:
        raise SchemaError(f"invalid chunk_index {chunk_index!r}; expected an int in [0, 2147483647]")
    return chunk_index


def run_dir(table: str, run_id: str) -> str:
    """Return the partition directory of one run in `table`, relative to the root."""
    return f"{table}/run_id={encode_partition_value(run_id)}"


def samples_dir(run_id: str, model: str, benchmark: str) -> str:
    """Return the partition directory that contains the sample files of a (run, model, benchmark)."""
    return (
        f"{run_dir('samples', run_id)}/model={encode_partition_value(model)}"
        f"/benchmark={encode_partition_value(benchmark)}"
    )


def chunk_file_name(cell_id: str, chunk_index: int) -> str:
    """Return the file name of one (cell, chunk) sample file."""
    return f"cell-{validate_cell_id(cell_id)}-chunk-{validate_chunk_index(chunk_index):05d}.parquet"


def parse_chunk_file_name(name: str) -> tuple[str, int] | None:
    """Return (cell_id, chunk_index) for a chunk file name, or None for any other name."""
    match = CHUNK_FILE_PATTERN.match(name)
    if match is None:
        return None
    return match["cell_id"], int(match["chunk_index"])


def cell_file(run_id: str, cell_id: str) -> str:
    """Return the path of a cell's status file, relative to the root."""
    return f"{run_dir('cells', run_id)}/cell-{validate_cell_id(cell_id)}.parquet"


def run_file(run_id: str) -> str:
    """Return the path of a run's file, relative to the root."""
    return f"{run_dir('runs', run_id)}/run.parquet"


def is_data_file(name: str) -> bool:
    """True for a Parquet file that readers should see. Temporary files and markers start with '.' or '_'."""
    return name.endswith(".parquet") and not name.startswith((".", "_"))


def base_name(path: str) -> str:
    """Return the last component of a '/'-separated path."""
    return path.rsplit("/", 1)[-1]
