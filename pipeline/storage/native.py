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
import re
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec

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
        225,  # NO_ZOOKEEPER (a replicated table's keeper is unreachable)
        242,  # TABLE_IS_READ_ONLY (replica lost its keeper session)
        252,  # TOO_MANY_PARTS (insert throttling: slow down and retry)
        279,  # ALL_CONNECTION_TRIES_FAILED (a Distributed table's shard is down)
        285,  # TOO_FEW_LIVE_REPLICAS (insert_quorum: a replica of the shard is down)
        286,  # UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE (the last quorum insert still waits)
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


@dataclass(frozen=True)
class ClickHouseTls:
    """TLS to the server's secure native port (tcp_port_secure): the server certificate
    is checked against `ca_file` (else the system's CA store), its name included, unless
    `verify` is off (a throwaway test server only)."""

    ca_file: str = ""
    verify: bool = True

    def client_kwargs(self) -> dict[str, Any]:
        """clickhouse-driver's Client arguments for this TLS."""
        kwargs: dict[str, Any] = {"secure": True, "verify": self.verify}
        if self.ca_file:
            kwargs["ca_certs"] = self.ca_file
        return kwargs


# What a failed TLS handshake says: never cured by retrying, so not "unavailable".
_TLS_FAILURES = ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", "[SSL", "TLSV1_ALERT")
_TLS_HINTS = {
    "CERTIFICATE_VERIFY_FAILED": "the server's certificate is not signed by clickhouse.ca_file",
    "WRONG_VERSION_NUMBER": "the port does not speak TLS (clickhouse.secure on a plaintext port?)",
}


def _tls_reason(text: str) -> str:
    """`[SSL: CODE] words (_ssl.c:1006) (host:port)` as `words (CODE): hint`."""
    match = re.search(r"\[SSL: ([A-Z0-9_]+)\] ([^(]+)", text)
    if match is None:
        return text.strip().splitlines()[0] if text.strip() else "unknown TLS error"
    code, words = match.group(1), match.group(2).strip()
    hint = _TLS_HINTS.get(code)
    return f"{words} ({code}){': ' + hint if hint else ''}"


def translate_error(exc: BaseException, what: str) -> StorageError:
    """Map a clickhouse-driver / socket exception to StorageError or
    StorageUnavailable, keeping the ClickHouse code when there is one. A TLS
    handshake failure (untrusted certificate, a TLS client on a plaintext port) is
    a StorageError: waiting does not cure it."""
    if isinstance(exc, ssl.SSLError) or any(t in str(exc) for t in _TLS_FAILURES):
        return StorageError(f"{what}: TLS handshake failed: {_tls_reason(str(exc))}")
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
        if "Connection reset by peer" in message:  # what a TLS port does to a plaintext hello
            message += " (if this is the server's TLS port: clickhouse.secure or ?secure=1)"
        return StorageUnavailable(message, code)
    return StorageError(message, code)


_P = ParamSpec("_P")


def _keeps_arguments(
    init: Callable[Concatenate[NativeBackend, _P], None],
) -> Callable[Concatenate[NativeBackend, _P], None]:
    """Remember how a backend was made, so that `on_server` makes its twin on another
    server of the cluster (same login, TLS and settings) without knowing them."""

    def made_with(self: NativeBackend, /, *args: _P.args, **kwargs: _P.kwargs) -> None:
        self._made_with = (tuple(args), dict(kwargs))
        init(self, *args, **kwargs)

    made_with.__doc__ = init.__doc__
    return made_with


class NativeBackend:
    """`ClickHouseBackend` on a ClickHouse server via clickhouse-driver."""

    _made_with: tuple[tuple[Any, ...], dict[str, Any]]

    @_keeps_arguments
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
        tls: ClickHouseTls | None = None,
    ) -> None:
        """`types_check=True` makes clickhouse-driver check every inserted
        value's Python type (clearer errors, about 3x slower inserts);
        `insert_cdrs` validates CDR rows itself, so it is off by default.
        `tls`: connect to the server's TLS port (docs/security.md)."""
        check_identifier(database, "database name")
        self.host = host
        self.port = port
        self.database = database
        self.tls = tls
        self._client = Client(
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
            connect_timeout=connect_timeout,
            send_receive_timeout=send_receive_timeout,
            settings=dict(settings or {}),
            **(tls.client_kwargs() if tls is not None else {}),
        )
        self._types_check = types_check
        self._version: ServerVersion | None = None
        # clickhouse-driver's Client is one connection and not thread-safe.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        tls = ", TLS" if self.tls is not None else ""
        return f"NativeBackend({self.host}:{self.port}/{self.database}{tls})"

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
        *,
        settings: Mapping[str, Any] | None = None,
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
        query_settings: dict[str, Any] = dict(settings or {})
        if supports(version, "async_insert"):
            query_settings["async_insert"] = 0
        if dedup_token is not None and supports(version, "insert_deduplication_token"):
            query_settings["insert_deduplication_token"] = dedup_token
        query = f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
        try:
            with self._lock:
                self._client.execute(
                    query,
                    [list(col) for col in data],
                    columnar=True,
                    types_check=self._types_check,
                    settings=query_settings,
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

    def on_server(
        self, host: str, port: int, settings: Mapping[str, Any] | None = None
    ) -> NativeBackend:
        """A backend like this one (login, TLS, settings, plus `settings`) on another
        server: a replica or shard of the cluster this one belongs to
        (pipeline.storage.cluster)."""
        args, kwargs = self._made_with
        kwargs = {k: v for k, v in kwargs.items() if k not in ("host", "port")}
        if settings:  # a keyword-only parameter
            kwargs["settings"] = {**(kwargs.get("settings") or {}), **settings}
        return NativeBackend(host, port, *args[2:], **kwargs)

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
