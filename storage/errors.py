"""Exceptions raised by the result store, its SQL layer and its schema checks."""


class StoreError(Exception):
    """Base class of every error that the result store raises on purpose."""


class SchemaError(StoreError, ValueError):
    """A row does not match the table schema: unknown column, wrong type or missing value."""


class StoreIOError(StoreError, OSError):
    """Reading or writing the store's files failed, for example because the root is not writable."""


class UnknownRunError(StoreError, LookupError):
    """The requested run id has no entry in the store."""


class RunStateError(StoreError, ValueError):
    """The run's state does not allow the operation (compacting an unfinished run, rewriting a compacted chunk)."""


class QueryError(StoreError):
    """A SQL query failed. The message is one line that starts with 'SQL error:'."""
