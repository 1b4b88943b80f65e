"""The storage on the local 2 x 2 ClickHouse cluster (18.16, ZooKeeper), against the same
code on one server: schema, inserts through the Distributed table, re-rating and the
dashboard aggregates.

The cluster is started by the `clickhouse_cluster` fixture (`clickhouse.sh up --cluster`)
when it is not running, and stopped after the session if the session started it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.cdr import RatedCdr
from pipeline.dashboard.queries import PANELS, Scope, run_panel
from pipeline.dashboard.refresh import refresh_aggregates
from pipeline.dashboard.report import Filters, build_report, format_report
from pipeline.dashboard.synthetic import python_cdrs
from pipeline.rerate.history import call_history
from pipeline.storage import dedup_token_for, fetch_newest, insert_cdrs, migrate
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.cdr_store import cdr_row, insert_cdr_rows, row_digest
from pipeline.storage.cluster import cluster_replicas, table_cluster
from pipeline.storage.errors import MigrationError, StorageError
from tests.integration.clickhouse_fixtures import CLUSTER_NAME, LocalClickHouseCluster
from tests.integration.test_aggregates import CALLS, SPAN_MS, START_MS, check_all, newest
from tests.integration.test_rerate_clickhouse import FROM_MS, TO_MS, Stored, _stored
from tests.integration.test_sink import make_calls
from tests.unit.test_rerate_scenarios import start_of

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

SHARDED = ("cdr", "cdr_history", "rerate_runs", "cdr_newest", "cdr_agg", "cdr_agg_refresh")


@pytest.fixture
def cluster_db(clickhouse_cluster: LocalClickHouseCluster, cluster_database: str) -> str:
    migrate(clickhouse_cluster.backend(1), cluster_database, cluster=CLUSTER_NAME)
    return cluster_database


@pytest.fixture
def single_db(clickhouse_native: ClickHouseBackend) -> Iterator[str]:
    name = f"cdr_test_{uuid.uuid4().hex[:12]}"
    yield name
    clickhouse_native.execute(f"DROP DATABASE IF EXISTS {name}")


def _engines(backend: ClickHouseBackend, db: str) -> dict[str, str]:
    rows = backend.execute(
        "SELECT name, engine FROM system.tables WHERE database = {db:String}", {"db": db})
    return {str(n): str(e) for n, e in rows}


def shard_of_calls(backend: ClickHouseBackend, call_ids: list[str]) -> dict[str, int]:
    """The shard (1-based) ClickHouse's own sharding key sends each call to."""
    rows = backend.execute(
        "SELECT id, cityHash64(id) % 2 + 1 FROM (SELECT arrayJoin({ids:Array(String)}) AS id)",
        {"ids": call_ids})
    return {str(i): int(s) for i, s in rows}


# -- schema ---------------------------------------------------------------------------------


def test_migrate_creates_replicated_shards_behind_distributed_tables_once_per_cluster(
    clickhouse_cluster: LocalClickHouseCluster, cluster_db: str
) -> None:
    for node in clickhouse_cluster.nodes:  # ON CLUSTER: every server has every table
        engines = _engines(clickhouse_cluster.backend(node), cluster_db)
        for table in SHARDED:
            assert engines[table] == "Distributed", (node, table)
            assert engines[f"{table}_local"].startswith("Replicated"), (node, table)
        assert engines["cdr_local"] == "ReplicatedReplacingMergeTree"
        assert engines["schema_migrations"] == "ReplicatedReplacingMergeTree"
    macros = clickhouse_cluster.backend(3).execute(
        f"SELECT zookeeper_path, replica_name FROM system.replicas "
        f"WHERE database = '{cluster_db}' AND table = 'cdr_local'")
    assert macros == [(f"/clickhouse/tables/2/{cluster_db}/cdr", "node3")]
    assert [r.port for r in cluster_replicas(clickhouse_cluster.backend(1), CLUSTER_NAME)] == [
        19100, 19101, 19102, 19103]
    assert table_cluster(clickhouse_cluster.backend(2), cluster_db, "cdr") == CLUSTER_NAME

    # again, from another node, with and without naming the cluster: nothing to apply,
    # and every server has each migration recorded once
    assert migrate(clickhouse_cluster.backend(4), cluster_db, cluster=CLUSTER_NAME) == []
    assert migrate(clickhouse_cluster.backend(2), cluster_db) == []
    clickhouse_cluster.sync_replicas(cluster_db, "schema_migrations")
    for node in clickhouse_cluster.nodes:
        rows = clickhouse_cluster.backend(node).execute(
            f"SELECT version, count() FROM {cluster_db}.schema_migrations GROUP BY version "
            "ORDER BY version")
        assert rows and all(int(n) == 1 for _, n in rows), (node, rows)


def test_a_command_that_migrates_first_takes_the_cluster_from_the_settings(
    clickhouse_cluster: LocalClickHouseCluster, cluster_database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`dashboard refresh --migrate` on a fresh database (as rerate, sink and the demo
    migrate): with [clickhouse] cluster set, the tables are made on the cluster."""
    from pipeline.cli import main

    monkeypatch.setenv("CDR_CLICKHOUSE_CLUSTER", CLUSTER_NAME)
    url = clickhouse_cluster.url(cluster_database)
    assert main(["dashboard", "refresh", "--clickhouse", url, "--migrate"]) == 0
    for node in clickhouse_cluster.nodes:
        engines = _engines(clickhouse_cluster.backend(node), cluster_database)
        assert engines["cdr"] == "Distributed", node
        assert engines["cdr_local"] == "ReplicatedReplacingMergeTree", node


def test_migrate_refuses_to_mix_a_single_server_schema_with_a_cluster(
    clickhouse_native: ClickHouseBackend, single_db: str
) -> None:
    migrate(clickhouse_native, single_db)
    with pytest.raises(MigrationError, match="holds the single-server schema"):
        migrate(clickhouse_native, single_db, cluster=CLUSTER_NAME)


# -- inserts --------------------------------------------------------------------------------


def test_cdrs_land_on_the_shard_of_their_call_and_a_retried_batch_is_stored_once(
    clickhouse_cluster: LocalClickHouseCluster, cluster_db: str
) -> None:
    produced, newest_of = make_calls(300, "spread")
    rows = [cdr_row(_record(c)) for c in produced]
    token = row_digest(rows)
    writer = clickhouse_cluster.backend(1)
    insert_cdr_rows(writer, rows, token, database=cluster_db)
    insert_cdr_rows(writer, rows, token, database=cluster_db)  # the sink's retry: same block

    shards = shard_of_calls(writer, sorted(newest_of))
    want = {s: sum(1 for c in produced if shards[c.call_id] == s) for s in (1, 2)}
    assert 0 < want[1] < len(produced)  # both shards hold some
    clickhouse_cluster.sync_replicas(cluster_db, "cdr_local")
    assert clickhouse_cluster.counts(cluster_db, "cdr_local") == {
        1: want[1], 2: want[1], 3: want[2], 4: want[2]}  # replicated, the retry dropped
    for node in clickhouse_cluster.nodes:  # nothing on the wrong shard
        ids = clickhouse_cluster.backend(node).execute(
            f"SELECT DISTINCT call_id FROM {cluster_db}.cdr_local")
        assert {shards[str(i)] for (i,) in ids} == {clickhouse_cluster.shard_of(node)}

    # through the Distributed table with FINAL, from any node: the newest version of each
    stored = fetch_newest(clickhouse_cluster.backend(4), cluster_db)
    assert {r["call_id"]: r["version"] for r in stored} == {
        k: v.version for k, v in newest_of.items()}
    assert {r["call_id"]: r["fee"] for r in stored} == {k: v.fee for k, v in newest_of.items()}


def _record(cdr: RatedCdr) -> dict[str, Any]:
    record = cdr._asdict()
    record["flags"] = list(record["flags"])
    return record


# -- readers: the same figures as one server ------------------------------------------------


def test_dashboard_aggregates_on_the_cluster_equal_the_newest_versions(
    clickhouse_cluster: LocalClickHouseCluster, cluster_db: str
) -> None:
    """test_aggregates' oracle, every panel and scope, on the cluster: refreshed per
    shard, read through the Distributed tables."""
    backend = clickhouse_cluster.backend(2)
    first = list(python_cdrs(CALLS, START_MS, SPAN_MS, seed=7, prefix="agg"))
    insert_cdrs(backend, first, dedup_token_for(first), cluster_db)
    result = refresh_aggregates(backend, cluster_db)
    assert result.full and len(result.days) == 3
    assert check_all(backend, cluster_db, newest(first)) > 0
    # each shard keeps its own bookkeeping and aggregates, replicated to its other replica
    clickhouse_cluster.sync_replicas(cluster_db, "cdr_agg_local")
    counts = clickhouse_cluster.counts(cluster_db, "cdr_agg_local")
    assert counts[1] == counts[2] > 0 and counts[3] == counts[4] > 0


def _scopes(stored: Stored) -> list[Scope]:
    """The whole of the stored traffic (whole days around it), the re-rated range, and
    one account and one gateway of it."""
    starts = [start_of(c) for c in stored.old.values()]
    day = 86_400_000
    lo, hi = min(starts) // day * day, (max(starts) // day + 1) * day
    some = next(c for c in stored.old.values() if c.account_id and c.egress_gateway)
    return [
        Scope(lo, hi),
        Scope(FROM_MS, TO_MS),
        Scope(lo, hi, account=some.account_id),
        Scope(FROM_MS - 7_000, TO_MS + 3_000, gateway=some.egress_gateway),
    ]


def _figures(stored: Stored) -> dict[tuple[str, str, str], Any]:
    backend, db = stored.backend, stored.db
    out = {}
    for scope in _scopes(stored):
        for name in PANELS:
            for source in ("agg", "raw"):
                panel = run_panel(backend, db, name, scope, source, top=None)
                out[(name, repr(scope), source)] = [
                    (key, figures.attempts, figures.revenue, figures.cost)
                    for key, figures in panel.rows
                ]
    return out


def _comparable(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {k: {f: v for f, v in r.items() if f != "rerate_run_id"} for k, r in rows.items()}


def test_rerate_and_dashboards_on_the_cluster_give_the_figures_of_one_server(
    clickhouse_native: ClickHouseBackend,
    single_db: str,
    clickhouse_cluster: LocalClickHouseCluster,
    cluster_db: str,
    tmp_path: Path,
) -> None:
    """The same CDRs on one server and on the cluster, the same re-rating on both: the
    same run figures, newest versions, history and dashboard panels."""
    single = _stored(clickhouse_native, single_db, tmp_path / "single")
    clustered = _stored(clickhouse_cluster.backend(1), cluster_db, tmp_path / "cluster")
    assert single.newest() == clustered.newest()
    for stored in (single, clustered):
        refresh_aggregates(stored.backend, stored.db)
    before = _figures(single)
    assert any(before.values())
    assert before == _figures(clustered)

    runs = {}
    for label, stored in (("single", single), ("cluster", clustered)):
        runs[label] = stored.rerate(stored.config("new", tariff="new"), workers=2, batch_rows=40)
    one, many = runs["single"], runs["cluster"]
    assert one.status == many.status == "DONE"
    assert (one.calls_read, one.calls_changed, one.cdrs_written) == (
        many.calls_read, many.calls_changed, many.cdrs_written)
    assert 0 < many.calls_changed < many.calls_read
    assert one.delta.as_dict() == many.delta.as_dict()
    assert _comparable(single.newest()) == _comparable(clustered.newest())
    assert {r["rerate_run_id"] for r in clustered.newest().values()} == {"", many.run_id}
    history = "SELECT count() FROM {db}.cdr_history FINAL"
    assert single.count(history) == clustered.count(history) == many.calls_changed
    changed = sorted(c for c, r in clustered.newest().items() if r["rerate_run_id"])
    assert _history(single, changed[0]) == _history(clustered, changed[0])

    for stored in (single, clustered):
        assert refresh_aggregates(stored.backend, stored.db).days  # the re-rated days
    after = _figures(single)
    assert after != before
    assert after == _figures(clustered)
    for source in ("agg", "raw"):  # `cdr-pipeline report`, as it prints
        assert format_report(build_report(single.backend, single.db, Filters(), source=source)) \
            == format_report(build_report(clustered.backend, clustered.db, Filters(),
                                          source=source))


def _history(stored: Stored, call_id: str) -> list[dict[str, Any]]:
    versions = call_history(stored.backend, stored.db, call_id)
    return [{k: v for k, v in row.items() if k not in ("superseded_by", "superseded_at",
                                                       "rerate_run_id", "inserted_at")}
            for row in versions]


def test_a_refresh_needs_every_shard(
    clickhouse_cluster: LocalClickHouseCluster, cluster_db: str
) -> None:
    """A shard with no live replica fails the refresh with StorageUnavailable naming it;
    with one replica of each shard down it goes on, on the other."""
    cdrs = list(python_cdrs(200, START_MS, 3_600_000, seed=3, prefix="down"))
    backend = clickhouse_cluster.backend(1)
    insert_cdrs(backend, cdrs, dedup_token_for(cdrs), cluster_db)
    clickhouse_cluster.stop_node(2)
    clickhouse_cluster.stop_node(4)
    try:
        assert refresh_aggregates(backend, cluster_db).days
        assert check_all(backend, cluster_db, newest(cdrs)) > 0
        clickhouse_cluster.stop_node(3)
        with pytest.raises(StorageError, match="shard 2: no replica answers"):
            refresh_aggregates(backend, cluster_db, full=True)
    finally:
        for node in (2, 3, 4):
            clickhouse_cluster.start_node(node)


# -- the rendering and the stamp, without a server ------------------------------------------


def test_every_migration_renders_for_a_cluster_and_anything_else_is_refused() -> None:
    from pipeline.storage.ddl import cluster_statements, render_ddl
    from pipeline.storage.migrate import load_migrations
    from pipeline.storage.sql import split_statements

    rendered = []
    for migration in load_migrations():
        for statement in split_statements(render_ddl(migration.text, (18, 16), "db", "x")):
            rendered += cluster_statements(statement, "c1", "db", migration.name)
    by_name = {s.split()[5]: s for s in rendered}  # CREATE TABLE IF NOT EXISTS db.t ...
    assert {name for name in by_name if not name.endswith("_local")} == {
        f"db.{t}" for t in SHARDED}
    local = by_name["db.cdr_local"]
    assert "ON CLUSTER c1" in local
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/cdr', '{replica}', " \
        "version)" in local
    assert "MATERIALIZED" in local
    front = by_name["db.cdr"]
    assert "Distributed(c1, db, cdr_local, cityHash64(call_id))" in front
    assert "MATERIALIZED" not in front and "call_date        Date ALIAS" in front
    assert "Distributed(c1, db, rerate_runs_local, cityHash64(run_id))" in by_name["db.rerate_runs"]
    from pipeline.storage.migrate import BOOTSTRAP_FILE, schema_dir

    bootstrap = render_ddl((schema_dir() / BOOTSTRAP_FILE).read_text(), (18, 16), "db", "b")
    (whole,) = cluster_statements(split_statements(bootstrap)[0], "c1", "db", BOOTSTRAP_FILE)
    assert "db.schema_migrations ON CLUSTER c1" in whole  # one table on every server
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/all/db/schema_migrations'" in whole
    with pytest.raises(MigrationError, match="0009_x.sql: cannot render 'ALTER TABLE"):
        cluster_statements("ALTER TABLE db.cdr ADD COLUMN x UInt8", "c1", "db", "0009_x.sql")
    with pytest.raises(MigrationError, match="table other: no sharding key"):
        cluster_statements("CREATE TABLE IF NOT EXISTS db.other (a UInt8) ENGINE = MergeTree "
                           "ORDER BY a", "c1", "db", "0009_x.sql")


def test_a_retry_soon_after_reuses_the_batch_stamp_and_a_late_one_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.storage import cluster

    clock = [1000.0]
    monkeypatch.setattr(cluster.time, "monotonic", lambda: clock[0])
    token = f"t-{uuid.uuid4().hex}"
    first = cluster.batch_stamp(token)
    clock[0] += cluster.STAMP_REUSE_S - 1
    assert cluster.batch_stamp(token) == first
    assert cluster.batch_stamp(None).tzinfo is not None
    clock[0] += 2  # past the reuse window: stamped anew (and remembered anew)
    later = cluster.batch_stamp(token)
    clock[0] += 1
    assert cluster.batch_stamp(token) == later
