"""The one interface the storage code needs from ClickHouse, and version gates.

Two implementations: `native.NativeBackend` (a ClickHouse server over the
native TCP protocol, clickhouse-driver) and `embedded.EmbeddedBackend`
(chDB: the current ClickHouse engine in-process, on a data directory).

Query parameters use ClickHouse's own syntax, `{name:Type}`, whatever the
backend: `execute("SELECT ... WHERE call_id = {cid:String}", {"cid": x})`.
Values are never pasted into SQL unescaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

ServerVersion = tuple[int, int]

# First (major, minor) release where a feature is usable without experimental
# switches. Only 18.16 (Debian) and current (chDB) are exercised by the tests;
# the thresholds in between come from the ClickHouse changelog.
FEATURE_SINCE: dict[str, ServerVersion] = {
    # LowCardinality production-ready, allow_experimental_low_cardinality_type removed
    "low_cardinality": (19, 3),
    # table and column TTL
    "ttl": (19, 6),
    # server-side {name:Type} query parameters over the native protocol
    "query_parameters": (19, 11),
    # DateTime64 (not used by the schema: times are epoch-ms Int64 everywhere)
    "datetime64": (20, 1),
    # data skipping indices without allow_experimental_data_skipping_indices
    "skip_indices": (20, 3),
    # MergeTree setting: insert deduplication for non-replicated tables
    "non_replicated_deduplication_window": (21, 5),
    # async inserts (we turn them off explicitly for batch inserts)
    "async_insert": (21, 11),
    # per-insert user-supplied deduplication token
    "insert_deduplication_token": (22, 2),
}


def supports(version: ServerVersion, feature: str) -> bool:
    """Whether a server of `version` has `feature` (a FEATURE_SINCE key)."""
    try:
        since = FEATURE_SINCE[feature]
    except KeyError:
        raise ValueError(f"unknown ClickHouse feature {feature!r}") from None
    return tuple(version) >= since


def parse_version(text: str) -> ServerVersion:
    """'18.16.1' -> (18, 16); ValueError if it does not look like a version."""
    parts = text.strip().split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise ValueError(f"cannot parse ClickHouse version {text!r}") from None


def insert_dedup_supported(version: ServerVersion) -> bool:
    """Whether a retried insert with the same token is dropped by the server
    for the project's (non-replicated) tables. False on 18.16: there,
    idempotency rests on ReplacingMergeTree(version) collapsing identical
    (call_id, version) rows, so FINAL / argMax reads are still exact, but raw
    row counts can include retried duplicates until parts merge."""
    return supports(version, "insert_deduplication_token") and supports(
        version, "non_replicated_deduplication_window"
    )


@runtime_checkable
class ClickHouseBackend(Protocol):
    """What migrations, the CDR store and the sink need from ClickHouse."""

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement; return its rows (empty for DDL/INSERT).

        Values come back as Python types, the same from every backend: int,
        str, Decimal (Decimal columns), None (Nullable), list (Array),
        datetime.date (Date), datetime.datetime (DateTime: timezone-aware
        for DateTime('tz') columns, naive otherwise; the project's servers
        and sessions run in UTC)."""
        ...

    def insert_columns(
        self,
        table: str,
        columns: Sequence[str],
        data: Sequence[Sequence[Any]],
        dedup_token: str | None,
        *,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """Columnar insert: `data[i]` holds the values of `columns[i]`.

        `table` is `name` or `database.name`. With a `dedup_token`, a retry of
        the same batch is dropped by the server where it supports that
        (see `insert_dedup_supported`). `settings` are ClickHouse settings for
        this insert only (the cluster's `insert_distributed_sync`, `insert_quorum`:
        pipeline.storage.cluster)."""
        ...

    def server_version(self) -> ServerVersion:
        """(major, minor) of the ClickHouse engine, e.g. (18, 16) or (26, 9)."""
        ...

    def close(self) -> None:
        """Release connections / the embedded engine. Idempotent."""
        ...
