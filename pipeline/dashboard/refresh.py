"""Keep the dashboard aggregates (`cdr_agg`, migration 0003) equal to the
newest CDR versions.

A refresh finds the UTC days that received CDR versions since the last
refresh (`cdr.inserted_at` at or after the stored watermark), recomputes
each of those days from `cdr FINAL` into a private staging table (minute
rows from the CDRs, hour rows from the minutes, day rows from the hours) and
swaps the day in with `ALTER TABLE cdr_agg REPLACE PARTITION`: atomic per
day, so a reader sees the whole old day or the whole new day, and rows of
groups that a re-rating emptied disappear with the old day.

Every version of a call has the same `call_start_ms` (the sorting key of
`cdr`; see 0001_cdr.sql), so a re-rated call stays in its day and its
minute: recomputing the days that got new versions is enough.

Run one refresher per database (the dashboard process does, or a cron job
with `cdr-pipeline dashboard refresh`): two at once stay correct, because
the watermark overlap makes the next run recompute what a slower one may
have overwritten with an older snapshot, but they do the work twice.

On a cluster (`cdr` a Distributed table, docs/clickhouse.md) the same refresh
runs on each shard in turn, on one live replica of it, over the shard's own
tables (`cdr_local` into `cdr_newest_local` and `cdr_agg_local`, bookkeeping
in `cdr_agg_refresh_local`): a shard holds every version of its calls, so its
day is exact, and the REPLACE PARTITION on its replicated tables reaches the
shard's other replica through ZooKeeper. Readers sum the shards' rows through
the Distributed tables, as they sum the rows of one server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.cluster import (
    local_name,
    shard_backends,
    sync_shard_replicas,
    table_cluster,
)
from pipeline.storage.errors import StorageError
from pipeline.storage.sql import check_identifier

logger = logging.getLogger(__name__)

BREAKDOWNS = ("traffic", "outcome", "destination")
GRAINS = ("minute", "hour", "day")
ALL = "*"  # account_id / gateway of rows that sum over every account / gateway
MEASURES = (
    "attempts",
    "answered",
    "recorded",
    "hold_s",
    "pdd_ms_sum",
    "pdd_n",
    "billable_s",
    "revenue",
    "cost",
    "at_risk",
)
KEYS = (
    "currency",
    "cost_currency",
    "rate_prefix",
    "hangup_source",
    "server_reason",
    "record_decision",
    "decision_reason",
)
# The keys of each breakdown beyond time, account and gateway.
BREAKDOWN_KEYS: dict[str, tuple[str, ...]] = {
    "traffic": ("currency", "cost_currency"),
    "outcome": (
        "currency",
        "cost_currency",
        "hangup_source",
        "server_reason",
        "record_decision",
        "decision_reason",
    ),
    "destination": ("currency", "cost_currency", "rate_prefix"),
}
NEWEST_COLUMNS = (
    "call_id",
    "version",
    "call_start_ms",
    "bucket",
    "hour",
    "account_id",
    "ingress_gateway",
    "egress_gateway",
    *KEYS,
    *MEASURES,
)
AGG_COLUMNS = (
    "breakdown",
    "grain",
    "bucket",
    "account_id",
    "gateway",
    "gateway_role",
    *KEYS,
    *MEASURES,
)
STAGE_PREFIX = "cdr_agg_stage_"
SQL_REVISION = "1"  # bump when the statements below change what they compute
DEFAULT_OVERLAP_S = 60
_STALE_STAGE_S = 3600
_ZERO = "toDecimal64(0, 6)"

# cdr_newest's dimension columns and measures, from a `cdr` row.
PER_CALL_DIMENSIONS: dict[str, str] = {
    "account_id": "ifNull(account_id, '')",
    "ingress_gateway": "ifNull(ingress_gateway, '')",
    "egress_gateway": "ifNull(egress_gateway, '')",
    "currency": "ifNull(currency, '')",
    "cost_currency": "ifNull(cost_currency, '')",
    "rate_prefix": "ifNull(rate_prefix, '')",
    "hangup_source": "hangup_source",
    "server_reason": "ifNull(server_reason, '')",
    "record_decision": "record_decision",
    "decision_reason": "ifNull(decision_reason, '')",
}
PER_CALL_MEASURES: dict[str, str] = {
    "attempts": "toUInt64(1)",
    "answered": "toUInt64(answered)",
    "recorded": "toUInt64(record_decision = 'RECORDED')",
    "hold_s": "if(answered = 1, hold_s, 0)",
    "pdd_ms_sum": "ifNull(pdd_ms, 0)",
    "pdd_n": "toUInt64(pdd_ms IS NOT NULL)",
    "billable_s": "if(record_decision = 'RECORDED', ifNull(billable_s, 0), 0)",
    "revenue": f"if(record_decision = 'RECORDED', ifNull(fee, {_ZERO}), {_ZERO})",
    "cost": f"ifNull(cost, {_ZERO})",
    "at_risk": f"if(record_decision != 'RECORDED', ifNull(fee, {_ZERO}), {_ZERO})",
}
assert tuple(PER_CALL_MEASURES) == MEASURES
assert tuple(PER_CALL_DIMENSIONS) == ("account_id", "ingress_gateway", "egress_gateway", *KEYS)

# The newest version of each call of one day as cdr_newest rows.
_NEWEST_ROWS = (
    f"INSERT INTO {{db}}.{{stage}} ({', '.join(NEWEST_COLUMNS)})\n"
    "SELECT call_id, version, call_start_ms, call_start, toStartOfHour(call_start), "
    + ", ".join(PER_CALL_DIMENSIONS.values())
    + ", "
    + ", ".join(PER_CALL_MEASURES.values())
    + "\nFROM {db}.{cdr} FINAL\nWHERE call_date = {{day:Date}}"
)


@dataclass(frozen=True)
class Tables:
    """The tables one refresh reads and writes: a server's own, or on a cluster a
    shard's (`LOCAL`). `staged` is how a staging table is made like a target: on a
    cluster the target is replicated, and a staging table must not join its replicas."""

    cdr: str = "cdr"
    newest: str = "cdr_newest"
    agg: str = "cdr_agg"
    refreshes: str = "cdr_agg_refresh"
    replicated: bool = False


SERVER = Tables()
LOCAL = Tables(
    cdr=local_name("cdr"),
    newest=local_name("cdr_newest"),
    agg=local_name("cdr_agg"),
    refreshes=local_name("cdr_agg_refresh"),
    replicated=True,
)

# Grouping sets: (name, with the account, with the gateway).
SETS: dict[str, tuple[bool, bool]] = {
    "all": (False, False),
    "account": (True, False),
    "gateway": (False, True),
    "account_gateway": (True, True),
}
# Which sets each breakdown keeps, and at which grains below the day (every
# set has day rows). Sets with many groups per hour (destinations by
# account or gateway: accounts x prefixes) are kept per day only; readers
# take a range's partial days from cdr_newest (sorted by hour and account).
PLAN: dict[str, dict[str, tuple[str, ...]]] = {
    "traffic": {
        "all": ("minute", "hour"),
        "account": ("hour",),
        "gateway": ("hour",),
        "account_gateway": ("hour",),
    },
    "outcome": {
        "all": ("hour",),
        "account": ("hour",),
        "gateway": ("hour",),
        "account_gateway": (),
    },
    "destination": {
        "all": ("hour",),
        "account": (),
        "gateway": ("hour",),
        "account_gateway": (),
    },
}
_START_OF = {"minute": "toStartOfMinute", "hour": "toStartOfHour", "day": "toStartOfDay"}
# Refreshes record the PLAN they built; readers trust only rows built under
# the current PLAN, so a changed PLAN makes the next refresh a full one.
PLAN_TAG = (
    "-plan-"
    + hashlib.sha256(json.dumps(PLAN, sort_keys=True).encode() + SQL_REVISION.encode()).hexdigest()[
        :12
    ]
)

# The gateways of a call, each with its role; a call whose ingress and
# egress gateway are the same counts once for it, as 'both'.
GATEWAY_ROLES = (
    "if(ingress_gateway = egress_gateway, [(ingress_gateway, 'both')], "
    "[(ingress_gateway, 'in'), (egress_gateway, 'out')])"
)

# Rows of one breakdown and grouping set at one grain, from cdr_newest rows.
_SET_ROWS = """
INSERT INTO {db}.{stage} ({columns})
SELECT '{breakdown}', '{grain}', {start_of}(bucket) AS b, {account}, {gateway}, {role},
    {outer_keys}, {sums}
FROM {db}.{newest}
{array_join}
GROUP BY {group}
"""

# Day rows from the hour rows of the same day.
_DAY_ROWS = """
INSERT INTO {db}.{stage} ({columns})
SELECT breakdown, 'day', toStartOfDay(bucket) AS d, account_id, gateway, gateway_role,
    {keys}, {sums}
FROM {db}.{stage}
WHERE grain = 'hour'
GROUP BY breakdown, d, account_id, gateway, gateway_role, {keys}
"""


@dataclass
class RefreshResult:
    """What one refresh did."""

    refresh_id: str
    full: bool
    days: list[dt.date] = field(default_factory=list)
    rows_written: int = 0
    duration_s: float = 0.0
    watermark: dt.datetime | None = None

    def describe(self) -> str:
        if not self.days:
            return "aggregates up to date"
        span = f"{self.days[0]}" if len(self.days) == 1 else f"{self.days[0]}..{self.days[-1]}"
        kind = "rebuilt" if self.full else "refreshed"
        return (
            f"{kind} {len(self.days)} day(s) {span}: {self.rows_written} aggregate rows "
            f"in {self.duration_s:.2f} s"
        )


# One refresh at a time per (backend, database) within a process.
_LOCKS: dict[tuple[int, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(backend: ClickHouseBackend, database: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault((id(backend), database), threading.Lock())


def refresh_aggregates(
    backend: ClickHouseBackend,
    database: str = "cdr",
    *,
    full: bool = False,
    overlap_s: int = DEFAULT_OVERLAP_S,
) -> RefreshResult:
    """Bring `cdr_agg` up to date with the newest CDR versions; return what
    was done. `full` recomputes every day that has CDRs or aggregates (also
    the first refresh of a database, which has no watermark yet)."""
    check_identifier(database, "database name")
    with _lock_for(backend, database):
        cluster = table_cluster(backend, database, "cdr")
        if cluster is None:
            return _refresh(backend, database, full, overlap_s)
        return _refresh_shards(backend, database, cluster, full, overlap_s)


def _refresh_shards(
    backend: ClickHouseBackend, database: str, cluster: str, full: bool, overlap_s: int
) -> RefreshResult:
    """The refresh of every shard of `cluster`, one after the other; what they did
    together (days of any shard, rows of all). A shard none of whose replicas answers
    fails the refresh (StorageUnavailable) after the shards before it are done."""
    started = time.monotonic()
    shards = shard_backends(backend, cluster)
    results: list[RefreshResult] = []
    try:
        for shard, shard_backend in shards:
            logger.debug("refreshing %s on shard %s (%s)", database, shard, shard_backend)
            results.append(_refresh(shard_backend, database, full, overlap_s, LOCAL))
            if results[-1].days:  # the shard's other live replicas fetch the new days now,
                # so a reader the Distributed table sends to one of them sees them too
                sync_shard_replicas(backend, cluster, shard, database, (LOCAL.newest, LOCAL.agg))
    finally:
        for _, shard_backend in shards:
            shard_backend.close()
    combined = RefreshResult(
        refresh_id=results[0].refresh_id if results else uuid.uuid4().hex + PLAN_TAG,
        full=any(r.full for r in results),
        days=sorted({day for r in results for day in r.days}),
        rows_written=sum(r.rows_written for r in results),
        duration_s=time.monotonic() - started,
        watermark=min((r.watermark for r in results if r.watermark), default=None),
    )
    return combined


def _refresh(
    backend: ClickHouseBackend,
    database: str,
    full: bool,
    overlap_s: int,
    tables: Tables = SERVER,
) -> RefreshResult:
    started = time.monotonic()
    result = RefreshResult(refresh_id=uuid.uuid4().hex + PLAN_TAG, full=full)
    (now_row,) = backend.execute("SELECT now()")
    started_at = _utc(now_row[0])
    overlap = dt.timedelta(seconds=overlap_s)
    watermark = None if full else last_watermark(backend, database, tables)
    if watermark is None:
        result.full = True
        days = _all_days(backend, database, tables)
    else:
        days = _days_inserted_since(backend, database, watermark, tables)
    _drop_stale_stages(backend, database)
    for day in days:
        day_started = time.monotonic()
        (snapshot_row,) = backend.execute("SELECT now()")
        snapshot_at = _utc(snapshot_row[0])  # the day's CDRs are read after this
        rows = rebuild_day(backend, database, day, tables)
        result.rows_written += rows
        _record(
            backend,
            database,
            tables,
            result.refresh_id,
            result.full,
            [day],
            snapshot_at,
            snapshot_at - overlap,
            rows,
            time.monotonic() - day_started,
        )
    result.days = days
    result.watermark = started_at - overlap
    result.duration_s = time.monotonic() - started
    if days or watermark is None:
        _record(
            backend,
            database,
            tables,
            result.refresh_id,
            result.full,
            [],
            started_at,
            result.watermark,
            result.rows_written,
            result.duration_s,
        )
    if days:
        logger.info("%s.cdr_agg: %s", database, result.describe())
    return result


def last_watermark(
    backend: ClickHouseBackend, database: str, tables: Tables = SERVER
) -> dt.datetime | None:
    """The watermark of the newest recorded refresh; None before the first.

    cdr_agg_refresh holds one row per refresh (`days` empty: its start less
    the overlap; CDR versions inserted before it were seen by that refresh)
    and one row per day it rebuilt (`days` = [day]: when that day's CDRs
    were read, less the overlap). Only refreshes under the current PLAN
    count (their refresh_id ends with PLAN_TAG)."""
    rows = backend.execute(
        f"SELECT count(), max(watermark) FROM {check_identifier(database)}.{tables.refreshes} "
        "WHERE empty(days) AND endsWith(refresh_id, {tag:String})",
        {"tag": PLAN_TAG},
    )
    count, newest = rows[0]
    return _utc(newest) if int(count) else None


def rebuild_day(
    backend: ClickHouseBackend, database: str, day: dt.date, tables: Tables = SERVER
) -> int:
    """Recompute `cdr_newest` and `cdr_agg` for `day` and swap both in;
    return how many aggregate rows the day has now."""
    token = uuid.uuid4().hex[:16]
    newest, stage = f"{STAGE_PREFIX}n_{token}", f"{STAGE_PREFIX}a_{token}"
    backend.execute(_create_stage(backend, database, newest, tables.newest, tables))
    try:
        backend.execute(_create_stage(backend, database, stage, tables.agg, tables))
        for sql, params in _day_statements(database, newest, stage, day, tables.cdr):
            backend.execute(sql, params)
        (count_row,) = backend.execute(f"SELECT count() FROM {database}.{stage}")
        partition = f"PARTITION ID '{day:%Y%m%d}'"
        for table, staged in ((tables.newest, newest), (tables.agg, stage)):
            if int(count_row[0]):
                backend.execute(
                    f"ALTER TABLE {database}.{table} REPLACE {partition} FROM {database}.{staged}"
                )
            else:  # the day has no CDRs (any more: retention dropped them)
                backend.execute(f"ALTER TABLE {database}.{table} DROP {partition}")
    finally:
        for table in (newest, stage):
            try:
                backend.execute(f"DROP TABLE IF EXISTS {database}.{table}")
            except StorageError:
                logger.warning("could not drop staging table %s.%s", database, table)
    return int(count_row[0])


def _create_stage(
    backend: ClickHouseBackend, database: str, stage: str, target: str, tables: Tables
) -> str:
    """The CREATE TABLE of a staging table shaped like `target`: a copy of it on one
    server; on a cluster a plain MergeTree with the target's partition and sorting key
    (REPLACE PARTITION needs both equal), not one more replica of the target."""
    if not tables.replicated:
        return f"CREATE TABLE {database}.{stage} AS {database}.{target}"
    rows = backend.execute(
        "SELECT partition_key, sorting_key FROM system.tables "
        "WHERE database = {db:String} AND name = {t:String}",
        {"db": database, "t": target},
    )
    if not rows:
        raise StorageError(f"{database}.{target} does not exist: apply the migrations")
    partition_key, sorting_key = rows[0]
    return (
        f"CREATE TABLE {database}.{stage} AS {database}.{target} ENGINE = MergeTree "
        f"PARTITION BY {partition_key} ORDER BY ({sorting_key}) "
        "SETTINGS index_granularity = 1024"
    )


def _day_statements(
    database: str, newest: str, stage: str, day: dt.date, cdr: str = "cdr"
) -> list[tuple[str, dict[str, object] | None]]:
    columns = ", ".join(AGG_COLUMNS)
    sums = ", ".join(f"sum({m})" for m in MEASURES)
    statements: list[tuple[str, dict[str, object] | None]] = [
        (_NEWEST_ROWS.format(db=database, stage=newest, cdr=cdr), {"day": day})
    ]
    for breakdown, sets in PLAN.items():
        keys = BREAKDOWN_KEYS[breakdown]
        for set_name, grains in sets.items():
            with_account, with_gateway = SETS[set_name]
            group = (
                ["b"] + (["account_id"] if with_account else []) + (["g"] if with_gateway else [])
            )
            for grain in grains or ("day",):
                sql = _SET_ROWS.format(
                    db=database,
                    stage=stage,
                    newest=newest,
                    columns=columns,
                    breakdown=breakdown,
                    grain=grain,
                    start_of=_START_OF[grain],
                    account="account_id" if with_account else "'*'",
                    gateway="g.1" if with_gateway else "'*'",
                    role="g.2" if with_gateway else "''",
                    outer_keys=", ".join(k if k in keys else "''" for k in KEYS),
                    sums=sums,
                    array_join=f"ARRAY JOIN {GATEWAY_ROLES} AS g" if with_gateway else "",
                    group=", ".join(group + list(keys)),
                )
                statements.append((sql, None))
    statements.append(
        (
            _DAY_ROWS.format(
                db=database, stage=stage, columns=columns, keys=", ".join(KEYS), sums=sums
            ),
            None,
        )
    )
    return statements


def _all_days(
    backend: ClickHouseBackend, database: str, tables: Tables = SERVER
) -> list[dt.date]:
    rows = backend.execute(
        f"SELECT DISTINCT call_date FROM {database}.{tables.cdr} "
        f"UNION ALL SELECT DISTINCT toDate(bucket) FROM {database}.{tables.agg} "
        "WHERE breakdown = 'traffic' AND grain = 'day'"
    )
    return sorted({_date(r[0]) for r in rows})


def _days_inserted_since(
    backend: ClickHouseBackend, database: str, watermark: dt.datetime, tables: Tables = SERVER
) -> list[dt.date]:
    """Days with CDR versions inserted after the refresh watermark and after
    the day's own watermark (when it was last read, less the overlap): a
    long refresh does not make the next one redo the days it already read
    after the last insert."""
    newest_insert = {
        _date(d): _utc(t)
        for d, t in backend.execute(
            f"SELECT call_date, max(inserted_at) FROM {database}.{tables.cdr} "
            "WHERE inserted_at >= toDateTime({since:Int64}, 'UTC') GROUP BY call_date",
            {"since": int(watermark.timestamp())},
        )
    }
    if not newest_insert:
        return []
    day_marks = {
        _date(d): _utc(w)
        for d, w in backend.execute(
            f"SELECT days[1], max(watermark) FROM {database}.{tables.refreshes} "
            "WHERE length(days) = 1 AND has({candidates:Array(Date)}, days[1]) GROUP BY days[1]",
            {"candidates": sorted(newest_insert)},
        )
    }
    return sorted(
        day
        for day, inserted in newest_insert.items()
        if day not in day_marks or inserted >= day_marks[day]
    )


def _drop_stale_stages(backend: ClickHouseBackend, database: str) -> None:
    """Staging tables left by a refresher that died (older than an hour)."""
    rows = backend.execute(
        "SELECT name FROM system.tables WHERE database = {db:String} "
        "AND startsWith(name, {prefix:String}) "
        "AND metadata_modification_time < now() - {age:UInt32}",
        {"db": database, "prefix": STAGE_PREFIX, "age": _STALE_STAGE_S},
    )
    for (name,) in rows:
        logger.info("dropping stale staging table %s.%s", database, name)
        backend.execute(f"DROP TABLE IF EXISTS {database}.{check_identifier(str(name))}")


def _record(
    backend: ClickHouseBackend,
    database: str,
    tables: Tables,
    refresh_id: str,
    full: bool,
    days: list[dt.date],
    started_at: dt.datetime,
    watermark: dt.datetime,
    rows_written: int,
    duration_s: float,
) -> None:
    finished = _utc(backend.execute("SELECT now()")[0][0])
    backend.insert_columns(
        f"{database}.{tables.refreshes}",
        [
            "refresh_id",
            "started_at",
            "finished_at",
            "watermark",
            "full_rebuild",
            "days",
            "rows_written",
            "duration_ms",
        ],
        [
            [refresh_id],
            [started_at],
            [finished],
            [watermark],
            [1 if full else 0],
            [list(days)],
            [rows_written],
            [int(duration_s * 1000)],
        ],
        dedup_token=None,
    )


def _utc(value: object) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    raise StorageError(f"expected a DateTime from ClickHouse, got {value!r}")


def _date(value: object) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


class Refresher:
    """Refresh in a background thread every `interval_s` seconds, or three
    times as long as the last refresh took if that is longer (so a slow
    server is not kept busy refreshing). The dashboard process runs one.
    Failures are logged and retried next time."""

    def __init__(
        self,
        backend: ClickHouseBackend,
        database: str,
        interval_s: float,
        overlap_s: int = DEFAULT_OVERLAP_S,
    ) -> None:
        self.backend = backend
        self.database = database
        self.interval_s = interval_s
        self.overlap_s = overlap_s
        self.last: RefreshResult | None = None
        self.last_error: str | None = None
        self.generation = 0  # bumped after every refresh that changed something
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cdr-agg-refresh", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def refresh_now(self) -> RefreshResult:
        result = refresh_aggregates(self.backend, self.database, overlap_s=self.overlap_s)
        self.last, self.last_error = result, None
        if result.days:
            self.generation += 1
        return result

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.refresh_now()
            except StorageError as exc:
                self.last_error = str(exc)
                logger.warning("aggregate refresh of %s failed: %s", self.database, exc)
            took = time.monotonic() - started
            self._stop.wait(max(self.interval_s, 3 * took))
