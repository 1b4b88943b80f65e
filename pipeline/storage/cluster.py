"""ClickHouse on a cluster: shards of replicated tables behind Distributed tables.

On a cluster (`cdr-pipeline db migrate --cluster NAME`, docs/clickhouse.md) every table
`T` of the schema is two tables on every server: `T_local`, a Replicated*MergeTree holding
this shard's rows (copied to the shard's other replicas through ZooKeeper), and `T`, a
Distributed table over the `T_local` of every shard. Readers keep reading `T` and see the
whole cluster; `FINAL` is applied per shard, exact because every version of a call lands
on one shard (`SHARDING_KEYS`: `cityHash64(call_id)`).

What a writer must do differently is here, found from the schema itself (the engine of
the table it writes), so that the sink, re-rating and the refresher need no setting:

* `insert_settings`: an insert into a Distributed table is synchronous
  (`insert_distributed_sync`) and returns only once each shard's rows are on
  `INSERT_QUORUM` replicas (`insert_quorum`), so a caller that commits Kafka offsets after
  the insert commits rows that two servers hold.
* `stamped`: the server-filled time column of `cdr` / `cdr_history` (`inserted_at`,
  `superseded_at`, DEFAULT now()) is sent by the writer, the same for every attempt at a
  batch (keyed by its deduplication token), so a retried batch is the same block and the
  replicas drop it as a duplicate (18.16 deduplicates replicated inserts by block content).
* `shard_backends`: one live replica of each shard, for work that must run where the
  rows are (the dashboard aggregates' refresh swaps day partitions per shard).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.errors import MigrationError, StorageError, StorageUnavailable
from pipeline.storage.sql import check_identifier

logger = logging.getLogger(__name__)

LOCAL_SUFFIX = "_local"

# How each table's rows are spread over the shards. Every version of a call (cdr,
# cdr_history, its cdr_newest row) goes to the shard of its call_id, so FINAL and the
# per-shard aggregate refresh see all of a call's versions in one place. The aggregates
# are written per shard by the refresher, never through the Distributed table: their key
# only has to be valid.
SHARDING_KEYS: dict[str, str] = {
    "cdr": "cityHash64(call_id)",
    "cdr_history": "cityHash64(call_id)",
    "cdr_newest": "cityHash64(call_id)",
    "rerate_runs": "cityHash64(run_id)",
    "cdr_agg": "rand()",
    "cdr_agg_refresh": "rand()",
}
# Tables kept whole on every server of the cluster (one ZooKeeper path, no shard):
# the migrator's bookkeeping, so migrations are recorded once per cluster.
EVERYWHERE = frozenset({"schema_migrations"})

# A CDR batch is acknowledged once both replicas of its shard have it (a shard has two):
# a replica down pauses the sink (Kafka keeps the backlog) rather than leaving rows on
# one disk only. The timeout bounds an insert waiting for a replica that just died and
# whose ZooKeeper session has not expired yet.
INSERT_QUORUM = 2
INSERT_QUORUM_TIMEOUT_MS = 15_000
CLUSTER_INSERT_SETTINGS: dict[str, Any] = {
    "insert_distributed_sync": 1,
    "insert_quorum": INSERT_QUORUM,
    "insert_quorum_timeout": INSERT_QUORUM_TIMEOUT_MS,
}

# The writer-stamped time column of each table (what the server would fill with now()).
STAMPED_COLUMNS: dict[str, str] = {"cdr": "inserted_at", "cdr_history": "superseded_at"}
# A retry within this long after a batch's first attempt reuses its stamp (and so is
# dropped as a duplicate); a later one is stamped anew, so that the aggregate refresh,
# which looks for rows inserted since its last run less a 60 s overlap, cannot miss a
# batch that a long outage held back. A restamped retry may store a row twice; FINAL
# collapses it.
STAMP_REUSE_S = 40.0
_STAMP_CACHE_SIZE = 1024


def local_name(table: str) -> str:
    """`cdr` -> `cdr_local`: the shard's own table behind the Distributed one."""
    return f"{table}{LOCAL_SUFFIX}"


def zookeeper_path(database: str, table: str) -> str:
    """Where a replicated table's replicas meet in ZooKeeper: per shard ({shard} macro),
    or one path for a table kept whole on every server."""
    check_identifier(database, "database name")
    check_identifier(table, "table name")
    scope = "all" if table in EVERYWHERE else "{shard}"
    return f"/clickhouse/tables/{scope}/{database}/{table}"


def sharding_key(table: str) -> str:
    try:
        return SHARDING_KEYS[table]
    except KeyError:
        raise MigrationError(
            f"table {table}: no sharding key for a cluster; add one to "
            "pipeline.storage.cluster.SHARDING_KEYS"
        ) from None


# -- which tables are Distributed ------------------------------------------------------

_ENGINES: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], str | None]] = (
    weakref.WeakKeyDictionary()
)
_ENGINES_LOCK = threading.Lock()


def table_cluster(backend: ClickHouseBackend, database: str, table: str = "cdr") -> str | None:
    """The cluster that `database.table` is a Distributed table over; None for a table of
    one server (or a table that does not exist yet: asked again next time). Cached per
    backend once the table exists."""
    key = (database, table)
    with _ENGINES_LOCK:
        known = _ENGINES.get(backend)
        if known is not None and key in known:
            return known[key]
    rows = backend.execute(
        "SELECT engine, engine_full FROM system.tables "
        "WHERE database = {db:String} AND name = {t:String}",
        {"db": database, "t": table},
    )
    if not rows:
        return None
    engine, engine_full = str(rows[0][0]), str(rows[0][1])
    cluster = _distributed_cluster(engine_full) if engine == "Distributed" else None
    try:
        with _ENGINES_LOCK:
            _ENGINES.setdefault(backend, {})[key] = cluster
    except TypeError:  # a backend that cannot be weakly referenced: not cached
        pass
    return cluster


def _distributed_cluster(engine_full: str) -> str | None:
    """'Distributed(cdr_cluster, db, cdr_local, ...)' -> 'cdr_cluster'."""
    inside = engine_full.partition("(")[2]
    name = inside.split(",", 1)[0].strip().strip("'\"`")
    return name or None


def insert_settings(backend: ClickHouseBackend, database: str, table: str) -> dict[str, Any]:
    """The settings an insert into `database.table` needs: CLUSTER_INSERT_SETTINGS for a
    Distributed table, none otherwise."""
    return dict(CLUSTER_INSERT_SETTINGS) if table_cluster(backend, database, table) else {}


# -- the stamp of a batch --------------------------------------------------------------

_STAMPS: OrderedDict[str, tuple[float, dt.datetime]] = OrderedDict()
_STAMPS_LOCK = threading.Lock()


def batch_stamp(token: str | None) -> dt.datetime:
    """The time written into a batch's stamped column: that of its first attempt while a
    retry (same token) comes within STAMP_REUSE_S, else now (UTC, whole seconds)."""
    now_mono = time.monotonic()
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    if token is None:
        return now
    with _STAMPS_LOCK:
        seen = _STAMPS.get(token)
        if seen is not None and now_mono - seen[0] <= STAMP_REUSE_S:
            _STAMPS.move_to_end(token)
            return seen[1]
        _STAMPS[token] = (now_mono, now)
        _STAMPS.move_to_end(token)
        while len(_STAMPS) > _STAMP_CACHE_SIZE:
            _STAMPS.popitem(last=False)
    return now


def insert_rows(
    backend: ClickHouseBackend,
    database: str,
    table: str,
    columns: Sequence[str],
    data: Sequence[Sequence[Any]],
    dedup_token: str | None,
) -> None:
    """`backend.insert_columns` into `database.table`, on a cluster with the cluster's
    insert settings and the batch's stamp (see the module docstring)."""
    target = f"{check_identifier(database, 'database name')}.{table}"
    if not table_cluster(backend, database, table):
        backend.insert_columns(target, columns, data, dedup_token)
        return
    columns, data = list(columns), list(data)
    stamped = STAMPED_COLUMNS.get(table)
    if stamped is not None and stamped not in columns and data:
        columns.append(stamped)
        data.append([batch_stamp(dedup_token)] * len(data[0]))
    backend.insert_columns(target, columns, data, dedup_token, settings=CLUSTER_INSERT_SETTINGS)


# -- the servers of a cluster ----------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    """One server of a cluster, as `system.clusters` names it."""

    shard: int
    replica: int
    host: str
    port: int


def cluster_replicas(backend: ClickHouseBackend, cluster: str) -> list[Replica]:
    """The servers of `cluster` by shard and replica number."""
    rows = backend.execute(
        "SELECT shard_num, replica_num, host_address, port FROM system.clusters "
        "WHERE cluster = {c:String} ORDER BY shard_num, replica_num",
        {"c": cluster},
    )
    if not rows:
        raise StorageError(f"cluster {cluster!r} is not in this server's remote_servers")
    return [Replica(int(s), int(r), str(h), int(p)) for s, r, h, p in rows]


def shard_backends(
    backend: ClickHouseBackend, cluster: str, settings: Mapping[str, Any] | None = None
) -> list[tuple[int, ClickHouseBackend]]:
    """(shard number, a backend on a live replica of it) for every shard of `cluster`,
    made like `backend` (its `on_server`) with `settings` added. The caller closes them.
    StorageUnavailable names a shard none of whose replicas answers."""
    on_server = getattr(backend, "on_server", None)
    if on_server is None:
        raise StorageError(f"{type(backend).__name__} cannot reach the other servers of a cluster")
    by_shard: dict[int, list[Replica]] = {}
    for replica in cluster_replicas(backend, cluster):
        by_shard.setdefault(replica.shard, []).append(replica)
    opened: list[tuple[int, ClickHouseBackend]] = []
    try:
        for shard, replicas in sorted(by_shard.items()):
            opened.append((shard, _live_replica(on_server, shard, replicas, settings)))
    except StorageError:
        for _, other in opened:
            other.close()
        raise
    return opened


def _live_replica(
    on_server: Any, shard: int, replicas: list[Replica], settings: Mapping[str, Any] | None
) -> ClickHouseBackend:
    errors = []
    for replica in replicas:
        candidate: ClickHouseBackend = on_server(replica.host, replica.port, settings)
        try:
            candidate.execute("SELECT 1")
        except StorageError as exc:
            candidate.close()
            errors.append(f"{replica.host}:{replica.port}: {exc}")
            continue
        return candidate
    raise StorageUnavailable(f"shard {shard}: no replica answers ({'; '.join(errors)})")


def sync_shard_replicas(
    backend: ClickHouseBackend, cluster: str, shard: int, database: str, tables: Sequence[str]
) -> list[str]:
    """Wait until every replica of `shard` that answers has fetched what the shard's log
    holds for `tables` (SYSTEM SYNC REPLICA), so a reader that the Distributed table sends
    to any of them sees what was just written on one. A replica that does not answer is
    skipped (it catches up when it is back); returns the `host:port` of those."""
    on_server = getattr(backend, "on_server", None)
    if on_server is None:
        return []
    skipped = []
    for replica in cluster_replicas(backend, cluster):
        if replica.shard != shard:
            continue
        other: ClickHouseBackend = on_server(replica.host, replica.port)
        try:
            for table in tables:
                other.execute(f"SYSTEM SYNC REPLICA {database}.{check_identifier(table)}")
        except StorageError as exc:
            logger.info("replica %s:%s of shard %s not synced: %s",
                        replica.host, replica.port, shard, exc)
            skipped.append(f"{replica.host}:{replica.port}")
        finally:
            other.close()
    return skipped

