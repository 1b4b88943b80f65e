"""Storage errors: everything the ClickHouse adapters raise on purpose."""

from __future__ import annotations

from pipeline.errors import PipelineError


class StorageError(PipelineError):
    """A ClickHouse operation failed.

    `code` is the ClickHouse error code (e.g. 60 UNKNOWN_TABLE, 62 SYNTAX_ERROR)
    when the server or the embedded engine reported one, else None.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        return f"[ClickHouse code {self.code}] {self.message}"


class StorageUnavailable(StorageError):
    """The storage is unreachable or temporarily refusing work (network error,
    timeout, server shutting down, too many parts...). Retrying the same
    operation later, with the same deduplication token, is the right reaction;
    the sink waits these out with backoff."""


class MigrationError(StorageError):
    """A schema migration cannot be applied (edited after being applied,
    unknown template marker, duplicate version number...). The message names
    the file."""


class InvalidIdentifier(StorageError, ValueError):
    """A database, table or column name, or a query-parameter type, that is
    not safe to put into SQL text. Also a ValueError: it is a caller bug."""
