"""ClickHouse server backend over the native TCP protocol (clickhouse-driver).

Works against the Debian 18.16 server and current servers:

* Query parameters (`{name:Type}`) are rendered client-side as
  `CAST(<escaped literal> AS Type)`: 18.16 has no server-side parameters,
  and one code path keeps both server generations identical.
* Inserts are columnar (`columnar=True`). `insert_deduplication_token` is
  sent only to servers that know it (>= 22.2), with `async_insert=0` where
  that setting exists (>= 21.11); sending an unknown setting is an error on
  old servers. On 18.16 a non-replicated MergeTree has no insert
  deduplication at all: a retried batch is stored twice, and idempotency
  rests on ReplacingMergeTree(version) collapsing the identical
  (call_id, version) rows (FINAL / argMax reads are exact at once, raw row
  counts until the next merge are not).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver import errors as ch_errors

from pipeline.storage.backend import ServerVersion, parse_version, supports
from pipeline.storage.errors import StorageError, StorageUnavailable
from pipeline.storage.sql import check_identifier, check_table, render_params

logger = logging.getLogger(__name__)

# Server error codes that mean "not now" rather than "never": retrying the
# same operation later (same dedup token) is correct.
TRANSIENT_CODES: frozenset[int] = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        236,  # ABORTED (server shutting down)
        242,  # TABLE_IS_READ_ONLY (replica lost its keeper session)
        252,  # TOO_MANY_PARTS (insert throttling: slow down and retry)
        319,  # UNKNOWN_STATUS_OF_INSERT
        999,  # KEEPER_EXCEPTION
    }
)

_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    ch_errors.NetworkError,
    ch_errors.SocketTimeoutError,
    EOFError,  # connection dropped mid-packet
    OSError,  # ConnectionRefusedError, ConnectionResetError, socket timeouts
)


def translate_error(exc: BaseException, what: str) -> StorageError:
    """Map a clickhouse-driver / socket exception to StorageError or
    StorageUnavailable, keeping the ClickHouse code when there is one."""
    code = getattr(exc, "code", None)
    code = code if isinstance(code, int) else None
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    first_line = str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__
    first_line = first_line.split(" Stack trace:")[0].rstrip(". ") or first_line
    message = f"{what}: {first_line}"
    if isinstance(exc, ch_errors.Error) and not isinstance(
        exc, ch_errors.NetworkError | ch_errors.SocketTimeoutError
    ):
        if code in TRANSIENT_CODES:
            return StorageUnavailable(message, code)
        return StorageError(message, code)
    if isinstance(exc, _NETWORK_ERRORS):
        return StorageUnavailable(message, code)
    return StorageError(message, code)


class NativeBackend:
    """`ClickHouseBackend` on a ClickHouse server via clickhouse-driver."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9000,
        user: str = "default",
        password: str = "",
        database: str = "default",
        *,
        connect_timeout: float = 5.0,
        send_receive_timeout: float = 120.0,
        settings: Mapping[str, Any] | None = None,
        types_check: bool = False,
    ) -> None:
        """`types_check=True` makes clickhouse-driver check every inserted
        value's Python type (clearer errors, about 3x slower inserts);
        `insert_cdrs` validates CDR rows itself, so it is off by default."""
        check_identifier(database, "database name")
        self.host = host
        self.port = port
        self.database = database
        self._client = Client(
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
            connect_timeout=connect_timeout,
            send_receive_timeout=send_receive_timeout,
            settings=dict(settings or {}),
        )
        self._types_check = types_check
        self._version: ServerVersion | None = None
        # clickhouse-driver's Client is one connection and not thread-safe.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"NativeBackend({self.host}:{self.port}/{self.database})"

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            query = render_params(sql, params)
        except (TypeError, ValueError) as exc:
            raise StorageError(f"cannot render query parameters: {exc}") from exc
        try:
            # No params argument: clickhouse-driver does no %-substitution then.
            with self._lock:
                result = self._client.execute(query)
        except Exception as exc:  # noqa: BLE001 - translated and re-raised
            raise translate_error(exc, f"query on {self.host}:{self.port} failed") from exc
        return [tuple(row) for row in result] if isinstance(result, list) else []

    def insert_columns(
        self,
        table: str,
        columns: Sequence[str],
        data: Sequence[Sequence[Any]],
        dedup_token: str | None,
    ) -> None:
        check_table(table)
        for column in columns:
            check_identifier(column, "column name")
        if len(columns) != len(data):
            raise StorageError(
                f"insert into {table}: {len(columns)} columns but {len(data)} data columns"
            )
        if not data or not data[0]:
            return
        version = self.server_version()
        settings: dict[str, Any] = {}
        if supports(version, "async_insert"):
            settings["async_insert"] = 0
        if dedup_token is not None and supports(version, "insert_deduplication_token"):
            settings["insert_deduplication_token"] = dedup_token
        query = f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
        try:
            with self._lock:
                self._client.execute(
                    query,
                    [list(col) for col in data],
                    columnar=True,
                    types_check=self._types_check,
                    settings=settings,
                )
        except Exception as exc:  # noqa: BLE001 - translated and re-raised
            raise translate_error(
                exc, f"insert of {len(data[0])} rows into {table} on {self.host}:{self.port} failed"
            ) from exc
        logger.debug("inserted %s rows into %s (token %s)", len(data[0]), table, dedup_token)

    def server_version(self) -> ServerVersion:
        if self._version is None:
            rows = self.execute("SELECT version()")
            try:
                self._version = parse_version(str(rows[0][0]))
            except ValueError as exc:
                raise StorageError(str(exc)) from exc
        return self._version

    def ping(self) -> bool:
        """True if the server answers `SELECT 1`."""
        try:
            return self.execute("SELECT 1") == [(1,)]
        except StorageError:
            return False

    def close(self) -> None:
        try:
            with self._lock:
                self._client.disconnect()
        except Exception:  # noqa: BLE001 - closing is best effort
            logger.debug(
                "error while disconnecting from %s:%s", self.host, self.port, exc_info=True
            )
