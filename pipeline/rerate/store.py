"""What a re-rating run reads from and writes to ClickHouse.

Reads: the newest stored version of the calls in range (`cdr FINAL`), streamed; the
newest versions of given call ids (Kafka source); the history rows of a run (resume).
Writes, per batch of changed calls: first the superseded versions into `cdr_history`
(with the run id, the new version and the fields that changed), then the new versions
into `cdr`. A crash between the two leaves a history row whose new version was never
written; the re-run writes both again and `cdr_history` (ReplacingMergeTree keyed by
call and superseded version) keeps one. Batches carry deterministic deduplication
tokens, and a batch is retried with the same token while ClickHouse is unavailable.

On a cluster the same SQL reads and writes the Distributed tables: `FINAL` is exact per
shard (every version of a call is on the shard of its call_id), and the writes go
through `storage.cluster.insert_rows` (synchronous, at the insert quorum).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from pipeline.core.cdr import RatedCdr, call_start_ms
from pipeline.rerate.facts import COL, I_CALL_ID, I_CALL_START, I_VERSION, STORED_COLUMNS, StoredRow
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.cdr_store import CDR_COLUMNS
from pipeline.storage.cluster import insert_rows
from pipeline.storage.errors import StorageError, StorageUnavailable
from pipeline.storage.sql import check_identifier

log = logging.getLogger(__name__)

CDR_INSERT_COLUMNS: tuple[str, ...] = tuple(name for name, _ in CDR_COLUMNS)
HISTORY_EXTRA_COLUMNS: tuple[str, ...] = ("run_id", "new_version", "changed_fields")
HISTORY_INSERT_COLUMNS: tuple[str, ...] = HISTORY_EXTRA_COLUMNS + CDR_INSERT_COLUMNS
_missing = [c for c in CDR_INSERT_COLUMNS if c not in COL]
assert not _missing, f"cdr columns the re-rating does not read: {_missing}"

RETRIES = 6
_ID_BATCH_CHARS = 120_000  # query text of one call-id lookup (max_query_size is 256 KiB)


class RowStream(Protocol):
    """Rows of a (possibly very large) SELECT, as tuples, without holding them all."""

    windowed: bool  # True: run one query per day of the range (no streaming available)

    def rows(self, sql: str, params: Mapping[str, Any]) -> Iterator[tuple[Any, ...]]: ...

    def close(self) -> None: ...


class NativeRowStream:
    """A dedicated clickhouse-driver connection streaming blocks (`execute_iter`), so the
    writer's connection stays free while a million-row SELECT is being read."""

    windowed = False

    def __init__(
        self,
        host: str,
        port: int,
        user: str = "default",
        password: str = "",
        block_rows: int = 20_000,
        tls: Any = None,  # a storage.native.ClickHouseTls: the server's TLS port
    ) -> None:
        from clickhouse_driver import Client

        self._where = f"{host}:{port}"
        self._block_rows = block_rows
        self._client = Client(
            host=host, port=port, user=user, password=password, send_receive_timeout=600,
            **(tls.client_kwargs() if tls is not None else {}),
        )

    def rows(self, sql: str, params: Mapping[str, Any]) -> Iterator[tuple[Any, ...]]:
        from pipeline.storage.native import translate_error
        from pipeline.storage.sql import render_params

        query = render_params(sql, params)
        try:
            yield from self._client.execute_iter(
                query, settings={"max_block_size": self._block_rows}
            )
        except Exception as exc:  # noqa: BLE001 - translated and re-raised
            raise translate_error(exc, f"streaming read on {self._where} failed") from exc

    def close(self) -> None:
        try:
            self._client.disconnect()
        except Exception:  # noqa: BLE001 - best effort
            log.debug("error closing the streaming connection", exc_info=True)


class BackendRowStream:
    """Any backend: one query per day of the range (chDB has no streaming reads)."""

    windowed = True

    def __init__(self, backend: ClickHouseBackend) -> None:
        self._backend = backend

    def rows(self, sql: str, params: Mapping[str, Any]) -> Iterator[tuple[Any, ...]]:
        yield from self._backend.execute(sql, params)

    def close(self) -> None:
        pass


# -- reads ----------------------------------------------------------------------------------


def _day(ms: int) -> dt.date:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date()


def range_condition(
    from_ms: int, to_ms: int, accounts: Sequence[str]
) -> tuple[str, dict[str, Any]]:
    """WHERE text selecting calls by their start (call_start_ms) and account.

    `call_date` repeats the time range so that the primary key prunes parts; the
    account condition applies to the newest version (WHERE after FINAL)."""
    where = (
        "call_date >= {d_from:Date} AND call_date <= {d_to:Date}"
        " AND call_start_ms >= {from_ms:Int64} AND call_start_ms < {to_ms:Int64}"
    )
    params: dict[str, Any] = {
        "d_from": _day(from_ms),
        "d_to": _day(max(from_ms, to_ms - 1)),
        "from_ms": from_ms,
        "to_ms": to_ms,
    }
    if accounts:
        where += " AND account_id IN (SELECT arrayJoin({accounts:Array(String)}))"
        params["accounts"] = list(accounts)
    return where, params


def _select(db: str, table: str = "cdr") -> str:
    return f"SELECT {', '.join(STORED_COLUMNS)} FROM {check_identifier(db)}.{table} FINAL"


def iter_stored(
    stream: RowStream,
    db: str,
    from_ms: int,
    to_ms: int,
    accounts: Sequence[str] = (),
    lo_id: str | None = None,
    hi_id: str | None = None,
) -> Iterator[tuple[Any, ...]]:
    """The newest version of every call that started in [from_ms, to_ms) (and, for one
    worker's share, whose call id is in [lo_id, hi_id))."""
    where, params = range_condition(from_ms, to_ms, accounts)
    if lo_id is not None:
        where += " AND call_id >= {lo_id:String}"
        params["lo_id"] = lo_id
    if hi_id is not None:
        where += " AND call_id < {hi_id:String}"
        params["hi_id"] = hi_id
    if not stream.windowed:
        yield from stream.rows(f"{_select(db)} WHERE {where}", params)
        return
    day, last = params["d_from"], params["d_to"]
    while day <= last:
        yield from stream.rows(
            f"{_select(db)} WHERE {where} AND call_date = {{day:Date}}", {**params, "day": day}
        )
        day += dt.timedelta(days=1)


def estimate_calls(
    backend: ClickHouseBackend, db: str, from_ms: int, to_ms: int, accounts: Sequence[str] = ()
) -> int:
    """About how many calls are in range (for progress): distinct call ids, no FINAL."""
    where, params = range_condition(from_ms, to_ms, accounts)
    rows = backend.execute(
        f"SELECT uniq(call_id) FROM {check_identifier(db)}.cdr WHERE {where}", params
    )
    return int(rows[0][0]) if rows else 0


def call_id_bounds(
    backend: ClickHouseBackend,
    db: str,
    from_ms: int,
    to_ms: int,
    accounts: Sequence[str],
    parts: int,
) -> list[str]:
    """Call ids that cut the calls in range into `parts` shares of about equal size
    (from a sample of the ids); fewer when there are too few calls."""
    if parts < 2:
        return []
    where, params = range_condition(from_ms, to_ms, accounts)
    table = f"{check_identifier(db)}.cdr"
    ids: list[str] = []
    for modulo in (64, 1):
        rows = backend.execute(
            f"SELECT DISTINCT call_id FROM {table} WHERE {where}"
            f" AND cityHash64(call_id) % {modulo} = 0 ORDER BY call_id",
            params,
        )
        ids = [r[0] for r in rows]
        if len(ids) >= 50 * parts:
            break
    bounds = sorted({ids[len(ids) * k // parts] for k in range(1, parts)} if ids else set())
    return [b for b in bounds if b != (ids[0] if ids else None)]


def _id_batches(ids: Sequence[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for call_id in ids:
        if batch and size + len(call_id) + 4 > _ID_BATCH_CHARS:
            yield batch
            batch, size = [], 0
        batch.append(call_id)
        size += len(call_id) + 4
    if batch:
        yield batch


def fetch_stored(
    backend: ClickHouseBackend, db: str, call_ids: Sequence[str], from_ms: int, to_ms: int
) -> dict[str, tuple[Any, ...]]:
    """The newest stored version of each of `call_ids` whose call started in
    [from_ms, to_ms) (a generous window: it only prunes partitions)."""
    out: dict[str, tuple[Any, ...]] = {}
    where = (
        "call_date >= {d_from:Date} AND call_date <= {d_to:Date}"
        " AND call_id IN (SELECT arrayJoin({ids:Array(String)}))"
    )
    for batch in _id_batches(call_ids):
        params = {"d_from": _day(from_ms), "d_to": _day(max(from_ms, to_ms - 1)), "ids": batch}
        for row in backend.execute(f"{_select(db)} WHERE {where}", params):
            out[row[I_CALL_ID]] = row
    return out


def history_of_run(backend: ClickHouseBackend, db: str, run_id: str) -> dict[str, tuple[Any, ...]]:
    """Superseded versions a run recorded, by call id: the calls an interrupted attempt
    of the run already changed (their 'before' for the delta report of the re-run)."""
    rows = backend.execute(
        f"{_select(db, 'cdr_history')} WHERE run_id = {{run:String}}", {"run": run_id}
    )
    out: dict[str, tuple[Any, ...]] = {}
    for row in rows:  # the oldest superseded version of the call is its 'before'
        held = out.get(row[I_CALL_ID])
        if held is None or row[I_VERSION] < held[I_VERSION]:
            out[row[I_CALL_ID]] = row
    return out


def has_history_table(backend: ClickHouseBackend, db: str) -> bool:
    rows = backend.execute(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'cdr_history'",
        {"db": db},
    )
    return bool(rows and rows[0][0])


# -- writes ---------------------------------------------------------------------------------


def _token(kind: str, run_id: str, pairs: Sequence[tuple[str, int]]) -> str:
    payload = json.dumps([kind, run_id, sorted(pairs)], separators=(",", ":"))
    return f"rerate-{kind}-" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _with_retry(what: str, action: Any) -> None:
    delay = 0.5
    for attempt in range(1, RETRIES + 1):
        try:
            action()
            return
        except StorageUnavailable as exc:
            if attempt == RETRIES:
                raise
            log.warning(
                "%s failed (%s); retry %s/%s in %.1fs", what, exc, attempt, RETRIES - 1, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


class Change:
    """A call whose new rating differs from its newest stored version."""

    __slots__ = ("changed", "new", "old")

    def __init__(self, old: StoredRow | None, new: RatedCdr, changed: tuple[str, ...]) -> None:
        self.old = old  # None: a call the Kafka replay found and ClickHouse never stored
        self.new = new  # carries the version it is written with
        self.changed = changed


def _history_columns(run_id: str, changes: Sequence[Change]) -> list[Sequence[Any]]:
    olds = [c.old for c in changes if c.old is not None]
    news = [c for c in changes if c.old is not None]
    by_position = list(zip(*olds, strict=True))
    return [
        [run_id] * len(olds),
        [c.new.version for c in news],
        [list(c.changed) for c in news],
        *(by_position[COL[name]] for name in CDR_INSERT_COLUMNS),
    ]


def _cdr_columns(run_id: str, changes: Sequence[Change]) -> list[Sequence[Any]]:
    news = [c.new for c in changes]
    by_field = list(zip(*news, strict=True))
    starts = [c.old[I_CALL_START] if c.old is not None else call_start_ms(c.new) or 0
              for c in changes]
    columns: list[Sequence[Any]] = []
    for name in CDR_INSERT_COLUMNS:
        if name == "call_start_ms":
            columns.append(starts)
        elif name == "rerate_run_id":
            columns.append([run_id] * len(news))
        elif name == "flags":
            columns.append([list(f) for f in by_field[COL[name]]])
        elif name == "answered":
            columns.append([1 if a else 0 for a in by_field[COL[name]]])
        else:
            columns.append(by_field[COL[name]])
    return columns


def write_changes(
    backend: ClickHouseBackend, db: str, run_id: str, changes: Sequence[Change]
) -> int:
    """Record the superseded versions, then insert the new ones; returns rows written to cdr."""
    if not changes:
        return 0
    check_identifier(db, "database name")
    pairs = [(c.new.call_id, c.new.version) for c in changes]
    if any(c.old is not None for c in changes):
        history = _history_columns(run_id, changes)
        token = _token("history", run_id, pairs)
        _with_retry(
            f"history insert of {len(history[0])} rows into {db}.cdr_history",
            lambda: insert_rows(backend, db, "cdr_history", HISTORY_INSERT_COLUMNS, history, token),
        )
    columns = _cdr_columns(run_id, changes)
    token = _token("cdr", run_id, pairs)
    _with_retry(
        f"insert of {len(changes)} re-rated CDRs into {db}.cdr",
        lambda: insert_rows(backend, db, "cdr", CDR_INSERT_COLUMNS, columns, token),
    )
    return len(changes)


def error_text(exc: BaseException) -> str:
    """One line for the run record."""
    if isinstance(exc, StorageError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".strip()
