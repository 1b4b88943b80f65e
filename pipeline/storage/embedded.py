"""Embedded ClickHouse backend: chDB (the current ClickHouse engine in-process).

The default storage when no ClickHouse server is configured, and the engine
that validates the current-version DDL in tests.

* Data lives in a directory (`chdb.connect(path)`); it survives restarts.
* Query parameters are chDB's own server-side `{name:Type}` parameters; the
  values are serialized to ClickHouse's Escaped text format here, so strings
  with quotes, backslashes, tabs or `\\N` arrive verbatim.
* Results are read as JSONCompact with 64-bit integers and decimals quoted,
  then converted by column type: Decimal columns come back as `Decimal` from
  their exact text, never through float.
* Inserts are `INSERT ... FORMAT JSONEachRow` with decimals written as exact
  strings, `async_insert=0`, and `insert_deduplication_token` when a token is
  given: the project's tables set `non_replicated_deduplication_window` on
  current versions, so a retried batch with the same token is dropped.
* The session runs in UTC (`session_timezone`), whatever the host's TZ.

chDB keeps one engine per process. Several connections to the same path are
fine; switching to another path works after the previous backend is closed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipeline.storage.backend import ServerVersion, parse_version
from pipeline.storage.errors import StorageError
from pipeline.storage.sql import (
    check_identifier,
    check_table,
    error_code_from_text,
    param_text,
    placeholders,
    quote_literal,
)

logger = logging.getLogger(__name__)

_TZ_ARG = re.compile(r"'([^']+)'")

SESSION_SETTINGS: tuple[str, ...] = (
    "output_format_json_quote_64bit_integers = 1",
    "output_format_json_quote_decimals = 1",
    "output_format_json_quote_denormals = 1",
    "session_timezone = 'UTC'",
)


class EmbeddedBackend:
    """`ClickHouseBackend` on chDB with a data directory."""

    def __init__(self, path: str | Path) -> None:
        try:
            import chdb  # imported here: chdb is heavy and optional for server users
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise StorageError("chdb is not installed (pip install chdb)") from exc
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._version: ServerVersion | None = None
        try:
            connect: Any = chdb.connect  # untyped library function
            self._conn: Any = connect(str(self.path))
        except Exception as exc:  # noqa: BLE001 - translated and re-raised
            raise _translate(exc, f"cannot open chDB data directory {self.path}") from exc
        for setting in SESSION_SETTINGS:
            self._query(f"SET {setting}", None)

    def __repr__(self) -> str:
        return f"EmbeddedBackend({str(self.path)!r})"

    # -- raw access --------------------------------------------------------------

    def _query(self, sql: str, params: Mapping[str, str] | None, fmt: str = "JSONCompact") -> str:
        with self._lock:
            if self._conn is None:
                raise StorageError(f"chDB backend on {self.path} is closed")
            try:
                result = self._conn.query(sql, fmt, params=dict(params) if params else None)
            except Exception as exc:  # noqa: BLE001 - translated and re-raised
                raise _translate(exc, "chDB query failed") from exc
        if isinstance(result, bytes | bytearray | memoryview):
            return bytes(result).decode("utf-8")
        return str(result) if result is not None else ""

    # -- ClickHouseBackend -------------------------------------------------------

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        text_params: dict[str, str] | None = None
        if params:
            try:
                wanted = {name for name, _ in placeholders(sql)}
                missing = wanted - set(params)
                if missing:
                    raise ValueError(f"no value for query parameter(s) {sorted(missing)}")
                text_params = {name: param_text(params[name]) for name in wanted}
            except (TypeError, ValueError) as exc:
                raise StorageError(f"cannot render query parameters: {exc}") from exc
        out = self._query(sql, text_params)
        if not out.strip():
            return []
        try:
            doc = json.loads(out, parse_float=Decimal)
        except ValueError as exc:
            raise StorageError(f"unexpected chDB output (not JSONCompact): {out[:200]!r}") from exc
        converters = [_converter(col["type"]) for col in doc.get("meta", [])]
        return [
            tuple(conv(value) for conv, value in zip(converters, row, strict=True))
            for row in doc.get("data", [])
        ]

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
        n = len(data[0])
        if any(len(col) != n for col in data):
            raise StorageError(f"insert into {table}: data columns have different lengths")
        try:
            lines = [
                json.dumps(
                    {c: _jsonable(data[k][i]) for k, c in enumerate(columns)},
                    ensure_ascii=False,
                    allow_nan=False,
                    separators=(",", ":"),
                )
                for i in range(n)
            ]
        except (TypeError, ValueError) as exc:
            raise StorageError(f"insert into {table}: {exc}") from exc
        clauses = ["async_insert = 0", "insert_deduplicate = 1"]
        if dedup_token is not None:
            clauses.append(f"insert_deduplication_token = {quote_literal(dedup_token)}")
        for name, value in (settings or {}).items():
            literal = quote_literal(value) if isinstance(value, str) else str(int(value))
            clauses.append(f"{check_identifier(name, 'setting name')} = {literal}")
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) SETTINGS {', '.join(clauses)} "
            "FORMAT JSONEachRow\n" + "\n".join(lines) + "\n"
        )
        self._query(sql, None)
        logger.debug("inserted %s rows into %s (token %s)", n, table, dedup_token)

    def server_version(self) -> ServerVersion:
        if self._version is None:
            rows = self.execute("SELECT version()")
            try:
                self._version = parse_version(str(rows[0][0]))
            except ValueError as exc:
                raise StorageError(str(exc)) from exc
        return self._version

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                logger.debug("error while closing chDB on %s", self.path, exc_info=True)


def _translate(exc: BaseException, what: str) -> StorageError:
    text = str(exc).strip() or type(exc).__name__
    first_line = text.splitlines()[0]
    return StorageError(f"{what}: {first_line}", error_code_from_text(text))


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return 1 if value else 0
    if isinstance(value, int | float):
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"non-finite Decimal {value!r}")
        return format(value, "f")
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    raise TypeError(f"cannot insert a {type(value).__name__}")


# -- result conversion by ClickHouse type ------------------------------------------


def _unwrap(type_name: str) -> tuple[str, str]:
    """'Nullable(Decimal(18, 6))' -> ('Nullable', 'Decimal(18, 6)'); 'Int64' -> ('Int64', '')."""
    type_name = type_name.strip()
    if "(" in type_name and type_name.endswith(")"):
        head, _, rest = type_name.partition("(")
        return head.strip(), rest[:-1]
    return type_name, ""


def _keep(value: Any) -> Any:
    return value


def _to_int(value: Any) -> Any:
    return None if value is None else int(value)


def _to_float(value: Any) -> Any:
    return None if value is None else float(value)


def _to_decimal(value: Any) -> Any:
    return None if value is None else Decimal(str(value))


def _to_str(value: Any) -> Any:
    return None if value is None else str(value)


def _to_bool(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        return value.lower() in ("true", "1")
    return bool(value)


def _to_date(value: Any) -> Any:
    return None if value is None else dt.date.fromisoformat(str(value))


def _to_datetime(value: Any) -> Any:
    if value is None:
        return None
    text = str(value)
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return dt.datetime.strptime(text, fmt)


def _datetime_in(tz_name: str) -> Callable[[Any], Any]:
    """DateTime('tz') columns: an aware datetime, as clickhouse-driver returns."""
    tz = dt.UTC if tz_name in ("UTC", "Etc/UTC") else ZoneInfo(tz_name)

    def convert(value: Any) -> Any:
        naive = _to_datetime(value)
        return None if naive is None else naive.replace(tzinfo=tz)

    return convert


@lru_cache(maxsize=512)
def _converter(type_name: str) -> Callable[[Any], Any]:
    head, inner = _unwrap(type_name)
    if head in ("Nullable", "LowCardinality"):
        return _converter(inner)
    if head == "Array":
        element = _converter(inner)
        return lambda v: None if v is None else [element(x) for x in v]
    if head == "Tuple":
        # not used by the schema; JSON gives a list (or an object for named tuples)
        return lambda v: tuple(v) if isinstance(v, list) else v
    if head.startswith("Decimal"):
        return _to_decimal
    if head.startswith(("Int", "UInt")):
        return _to_int
    if head.startswith(("Float", "BFloat")):
        return _to_float
    if head == "Bool":
        return _to_bool
    if head in ("Date", "Date32"):
        return _to_date
    if head in ("DateTime", "DateTime64"):
        tz = _TZ_ARG.search(inner)
        return _datetime_in(tz.group(1)) if tz else _to_datetime
    if head in ("String", "FixedString", "UUID", "IPv4", "IPv6") or head.startswith("Enum"):
        return _to_str
    return _keep
