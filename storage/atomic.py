"""Atomic file replacement on a pyarrow filesystem: write a hidden temporary file, then move it into place."""

from __future__ import annotations

import errno
import uuid
from collections.abc import Callable

import pyarrow as pa

from storage.errors import StoreIOError
from storage.layout import StoreRoot, base_name, first_line


def temporary_name(relative: str) -> str:
    """Return a unique hidden file name next to `relative`, which readers skip."""
    directory, _, name = relative.rpartition("/")
    temporary = f".{name}.tmp-{uuid.uuid4().hex}"
    return f"{directory}/{temporary}" if directory else temporary


def write_atomic(root: StoreRoot, relative: str, write: Callable[[pa.NativeFile], None]) -> None:
    """Create or replace the file at `relative` with what `write` puts into the stream it gets.

    Readers see either the old file or the complete new one, never a partial file. On the
    local disk the final step is a rename, which replaces the target atomically on POSIX.
    On any error the temporary file is deleted and the error is raised again, with
    filesystem errors turned into a one-line StoreIOError.
    """
    # NOTE: on object stores pyarrow implements move as copy + delete, so the new object
    # appears atomically (one PUT) but the temporary object costs a second upload.
    directory = relative.rpartition("/")[0]
    temporary = temporary_name(relative)
    try:
        if directory:
            root.fs.create_dir(root.path(directory), recursive=True)
    except OSError as error:
        raise StoreIOError(
            f"result store root {root.display!r} is not writable: {first_line(error)}; {_remedy(error)}"
        ) from None

    try:
        with root.fs.open_output_stream(root.path(temporary)) as sink:
            write(sink)
        root.fs.move(root.path(temporary), root.path(relative))
    except BaseException as error:
        _delete_quietly(root, temporary)
        if isinstance(error, OSError) and not isinstance(error, StoreIOError):
            raise StoreIOError(
                f"cannot write {base_name(relative)} under {root.display!r}: {first_line(error)}; {_remedy(error)}"
            ) from None
        raise


def _remedy(error: OSError) -> str:
    """Return what the user can do about a failed store write, by errno."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space there or choose another store root"
    return "choose a store root (a folder or URI) that this process can write to"


def _delete_quietly(root: StoreRoot, relative: str) -> None:
    try:
        root.fs.delete_file(root.path(relative))
    except OSError:
        # The file may not exist yet. Any other cleanup failure matters less than the
        # original error, and readers skip the hidden name anyway.
        pass
