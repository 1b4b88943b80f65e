"""ClickHouse storage against real engines: the Debian 18.16 server (native)
and current ClickHouse in-process (chDB). Every test runs on both.

Run: python -m pytest tests/integration/test_clickhouse_storage.py \
        -p tests.integration.clickhouse_fixtures
"""

from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.avro.codec import decode_cdr_record, encode_cdr
from pipeline.core.cdr import RatedCdr
from pipeline.storage import (
    CDR_FIELDS,
    MigrationError,
    StorageError,
    StorageUnavailable,
    dedup_token_for,
    fetch_newest,
    insert_cdrs,
    insert_dedup_supported,
    migrate,
)
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.cdr_store import (
    CDR_COLUMNS,
    cdr_row,
    column_types_for,
    insert_cdr_rows,
    row_digest,
)
from pipeline.storage.migrate import load_migrations, schema_dir

pytestmark = pytest.mark.integration

# every migration on disk (later work adds its own after these two)
ALL_MIGRATIONS = [m.name for m in load_migrations()]
assert ALL_MIGRATIONS[:2] == ["0001_cdr.sql", "0002_rerate_runs.sql"]

# 2024-01-31 23:59:59.500 UTC: a call set up on the last second of January.
JAN_31_LAST_SECOND_MS = 1706745599500


def cdr(call_id: str, version: int = 1, **overrides: Any) -> dict[str, Any]:
    """A complete, recorded, rated call; overrides change single fields."""
    setup = 1717243200000  # 2024-06-01 12:00:00 UTC
    base: dict[str, Any] = {
        "call_id": call_id,
        "version": version,
        "status": "COMPLETE",
        "record_decision": "RECORDED",
        "decision_reason": None,
        "billing_mode": "NORMAL",
        "account_id": "acme",
        "caller": "+441632960001",
        "callee": "+14155550100",
        "callee_gateway": "99914155550100",
        "ingress_gateway": "gw-in-1",
        "egress_gateway": "gw-uk-1",
        "switch_id": "sw-1",
        "setup_ts_ms": setup,
        "answer_ts_ms": setup + 2300,
        "end_ts_ms": setup + 2300 + 21050,
        "pdd_ms": 1200,
        "answered": True,
        "hold_ms": 21050,
        "hold_s": 22,
        "rated_s": 22,
        "billable_s": 30,
        "hangup_source": "CALLER",
        "sip_code": 200,
        "q850_cause": 16,
        "server_reason": None,
        "illegal_reason": None,
        "rate_table": "retail-usd",
        "rate_prefix": "1415",
        "rate_per_min": Decimal("0.38400000"),
        "currency": "USD",
        "fee": Decimal("0.1920"),
        "cost_rate_table": "vendor-a",
        "cost_prefix": "1",
        "cost": Decimal("0.004321"),
        "cost_currency": "USD",
        "tariff_version": "2024-06-01#a1b2c3",
        "flags": [],
    }
    base.update(overrides)
    assert set(base) == set(CDR_FIELDS)
    return base


def sample_batch() -> list[dict[str, Any]]:
    return [
        cdr("call-complete"),
        cdr(
            "call-setup-missing",
            status="SETUP_MISSING",
            record_decision="AUDIT",
            decision_reason="INCOMPLETE",
            account_id=None,
            caller=None,
            callee=None,
            ingress_gateway=None,
            setup_ts_ms=None,
            pdd_ms=None,
            rate_table=None,
            rate_prefix=None,
            rate_per_min=None,
            currency=None,
            fee=None,
            billable_s=None,
            tariff_version="2024-06-01#a1b2c3",
        ),
        cdr(
            "call-unanswered",
            answered=False,
            answer_ts_ms=None,
            egress_gateway=None,
            callee_gateway=None,
            hold_ms=0,
            hold_s=0,
            rated_s=0,
            billable_s=0,
            hangup_source="CALLEE",
            sip_code=486,
            q850_cause=17,
            fee=Decimal("0"),
            cost=None,
            cost_prefix=None,
            cost_rate_table=None,
            cost_currency=None,
            flags=["NEGATIVE_HOLD", "LATE_EVENT"],
        ),
        cdr(
            "call-month-edge",
            setup_ts_ms=JAN_31_LAST_SECOND_MS,
            answer_ts_ms=JAN_31_LAST_SECOND_MS + 1000,
            end_ts_ms=JAN_31_LAST_SECOND_MS + 61000,
            hangup_source="SERVER",
            server_reason="MAX_DURATION",
            fee=Decimal("999999999999.999999"),
            rate_per_min=Decimal("9999999999.99999999"),
            cost=Decimal("-0.000001"),
        ),
        cdr(
            "call-quotes-'\"\\\t\n-ünï€-🙂",
            caller="O'Brien\\'; DROP TABLE cdr; --",
            callee="{x:String}",
            billing_mode="FREE",
            fee=Decimal("0.00"),
            illegal_reason=None,
        ),
    ]


@pytest.fixture
def db(storage_backend: ClickHouseBackend, clickhouse_database: str) -> str:
    assert migrate(storage_backend, clickhouse_database) == ALL_MIGRATIONS
    return clickhouse_database


def raw_count(backend: ClickHouseBackend, database: str) -> int:
    return int(backend.execute(f"SELECT count() FROM {database}.cdr")[0][0])


# -- migrations ------------------------------------------------------------------


def test_migrate_twice_applies_nothing_the_second_time(
    storage_backend: ClickHouseBackend, clickhouse_database: str
) -> None:
    assert migrate(storage_backend, clickhouse_database) == ALL_MIGRATIONS
    assert migrate(storage_backend, clickhouse_database) == []
    rows = storage_backend.execute(
        f"SELECT version, name FROM {clickhouse_database}.schema_migrations FINAL ORDER BY version"
    )
    assert rows == [(m.version, m.name) for m in load_migrations()]
    tables = {
        r[0]
        for r in storage_backend.execute(
            "SELECT name FROM system.tables WHERE database = {d:String}",
            {"d": clickhouse_database},
        )
    }
    assert {"cdr", "rerate_runs", "schema_migrations"} <= tables


def test_table_columns_match_cdr_columns(storage_backend: ClickHouseBackend, db: str) -> None:
    described = [
        (row[0], row[1])
        for row in storage_backend.execute(f"DESCRIBE TABLE {db}.cdr")
        if row[2] != "MATERIALIZED" and row[0] != "inserted_at"
    ]
    expected = column_types_for(storage_backend.server_version())
    assert [(n, t.replace(" ", "")) for n, t in described] == [
        (n, t.replace(" ", "")) for n, t in expected
    ]
    engine = storage_backend.execute(
        "SELECT engine, partition_key, sorting_key FROM system.tables "
        "WHERE database = {d:String} AND name = 'cdr'",
        {"d": db},
    )[0]
    assert engine[0] == "ReplacingMergeTree"
    assert engine[1].replace(" ", "") == "toYYYYMM(call_date)"
    assert engine[2].replace(" ", "") == "call_date,call_id"


def test_changed_migration_is_an_error_naming_the_file(
    storage_backend: ClickHouseBackend,
    clickhouse_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schemas = tmp_path / "schemas"
    shutil.copytree(schema_dir(), schemas)
    monkeypatch.setenv("CDR_SCHEMA_DIR", str(schemas))
    assert migrate(storage_backend, clickhouse_database) == ALL_MIGRATIONS

    (schemas / "9999_extra.sql").write_text(
        "CREATE TABLE IF NOT EXISTS {{db}}.extra (x UInt8) ENGINE = MergeTree ORDER BY x;\n"
        "-- a trailing comment; with a semicolon\n"
    )
    assert migrate(storage_backend, clickhouse_database) == ["9999_extra.sql"]

    edited = schemas / "0002_rerate_runs.sql"
    edited.write_text(edited.read_text() + "\n-- edited after being applied\n")
    with pytest.raises(MigrationError, match="0002_rerate_runs.sql"):
        migrate(storage_backend, clickhouse_database)


# -- CDR round trip ----------------------------------------------------------------


def test_insert_and_read_back_exactly(storage_backend: ClickHouseBackend, db: str) -> None:
    batch = sample_batch()
    insert_cdrs(storage_backend, batch, dedup_token_for(batch), database=db)
    stored = fetch_newest(storage_backend, database=db)
    assert [r["call_id"] for r in stored] == sorted(r["call_id"] for r in batch)
    by_id = {r["call_id"]: r for r in stored}
    for original in batch:
        back = by_id[original["call_id"]]
        assert set(back) == set(CDR_FIELDS)
        for field in CDR_FIELDS:
            assert back[field] == original[field], field
            if original[field] is None:
                assert back[field] is None, field
    complete = by_id["call-complete"]
    assert isinstance(complete["fee"], Decimal) and complete["fee"] == Decimal("0.1920")
    assert isinstance(complete["rate_per_min"], Decimal)
    assert complete["rate_per_min"] == Decimal("0.384")
    assert complete["cost"] == Decimal("0.004321")
    edge = by_id["call-month-edge"]
    assert edge["fee"] == Decimal("999999999999.999999")
    assert edge["rate_per_min"] == Decimal("9999999999.99999999")
    assert edge["answered"] is True and by_id["call-unanswered"]["answered"] is False


def test_partition_follows_call_start(storage_backend: ClickHouseBackend, db: str) -> None:
    batch = sample_batch()
    insert_cdrs(storage_backend, batch, None, database=db)
    rows = dict(storage_backend.execute(f"SELECT call_id, toYYYYMM(call_date) FROM {db}.cdr FINAL"))
    assert rows["call-month-edge"] == 202401  # setup on Jan 31, answer/end in February
    assert rows["call-complete"] == 202406
    # no SETUP: anchored on the answer time
    assert rows["call-setup-missing"] == 202406
    start = fetch_newest(
        storage_backend,
        database=db,
        where="call_id = {c:String}",
        params={"c": "call-setup-missing"},
        extra_columns=["call_start_ms", "rerate_run_id"],
    )[0]
    assert start["call_start_ms"] == batch[1]["answer_ts_ms"]
    assert start["rerate_run_id"] == ""


def test_newer_version_replaces_older_under_final(
    storage_backend: ClickHouseBackend, db: str
) -> None:
    v1 = cdr(
        "call-x",
        1,
        status="ANSWER_MISSING",
        record_decision="AUDIT",
        decision_reason="INCOMPLETE",
        answer_ts_ms=None,
        egress_gateway=None,
        fee=None,
        billable_s=None,
        rate_prefix=None,
        cost=None,
    )
    v2 = cdr("call-x", 2, fee=Decimal("0.25"))
    v3 = cdr("call-x", 3, fee=Decimal("0.31"), tariff_version="rerate-7")
    other = cdr("call-y", 1)
    insert_cdrs(storage_backend, [v1, other], dedup_token_for([v1, other]), database=db)
    insert_cdrs(storage_backend, [v3], dedup_token_for([v3]), database=db)
    # an older version arriving late must not win
    insert_cdrs(storage_backend, [v2], dedup_token_for([v2]), database=db)

    newest = fetch_newest(storage_backend, database=db)
    assert [(r["call_id"], r["version"]) for r in newest] == [("call-x", 3), ("call-y", 1)]
    assert newest[0] == v3
    assert raw_count(storage_backend, db) == 4

    # a filter on a non-key column applies to the newest version only (the
    # stale v2 with fee 0.25 must not leak through)
    stale = fetch_newest(
        storage_backend, database=db, where="fee < {f:Decimal(18, 6)}", params={"f": "0.30"}
    )
    assert [(r["call_id"], r["version"]) for r in stale] == [("call-y", 1)]

    # the same answer through argMax, the FINAL-free way dashboards can use
    arg = storage_backend.execute(
        f"SELECT call_id, max(version), argMax(fee, version) FROM {db}.cdr "
        "GROUP BY call_id ORDER BY call_id"
    )
    assert arg == [("call-x", 3, Decimal("0.31")), ("call-y", 1, Decimal("0.1920"))]

    # every version of a call is in one partition, so a merge collapses them
    storage_backend.execute(f"OPTIMIZE TABLE {db}.cdr FINAL")
    assert raw_count(storage_backend, db) == 2


def test_call_start_must_be_pinned_across_versions(
    storage_backend: ClickHouseBackend, db: str
) -> None:
    """A late SETUP moves coalesce(setup, answer, end) to another day: the
    writer must carry the first version's call_start_ms, or FINAL sees two
    sorting keys (argMax by call_id stays right either way)."""
    june_2_00_00_01 = 1717286401000
    late_setup = june_2_00_00_01 - 5000  # 2024-06-01 23:59:56
    v1 = cdr(
        "call-late-setup",
        1,
        status="SETUP_MISSING",
        record_decision="AUDIT",
        decision_reason="INCOMPLETE",
        setup_ts_ms=None,
        answer_ts_ms=june_2_00_00_01,
        end_ts_ms=june_2_00_00_01 + 30000,
    )
    v2_pinned = dict(
        cdr(
            "call-late-setup",
            2,
            setup_ts_ms=late_setup,
            answer_ts_ms=june_2_00_00_01,
            end_ts_ms=june_2_00_00_01 + 30000,
        ),
        call_start_ms=june_2_00_00_01,
    )
    insert_cdrs(storage_backend, [v1], None, database=db)
    insert_cdrs(storage_backend, [v2_pinned], None, database=db)
    newest = fetch_newest(storage_backend, database=db, extra_columns=["call_start_ms"])
    assert [(r["call_id"], r["version"], r["call_start_ms"]) for r in newest] == [
        ("call-late-setup", 2, june_2_00_00_01)
    ]

    unpinned = cdr("call-unpinned", 1, setup_ts_ms=None, answer_ts_ms=june_2_00_00_01)
    unpinned_v2 = cdr("call-unpinned", 2, setup_ts_ms=late_setup, answer_ts_ms=june_2_00_00_01)
    insert_cdrs(storage_backend, [unpinned], None, database=db)
    insert_cdrs(storage_backend, [unpinned_v2], None, database=db)
    versions = [
        r["version"]
        for r in fetch_newest(
            storage_backend,
            database=db,
            where="call_id = {c:String}",
            params={"c": "call-unpinned"},
        )
    ]
    assert versions == [1, 2]  # the hazard: two "newest" rows under FINAL
    arg = storage_backend.execute(
        f"SELECT argMax(version, version) FROM {db}.cdr WHERE call_id = 'call-unpinned'"
    )
    assert arg == [(2,)]


def test_same_batch_twice_with_same_token(storage_backend: ClickHouseBackend, db: str) -> None:
    batch = sample_batch()
    token = dedup_token_for(batch)
    assert token == dedup_token_for(list(reversed(batch)))
    insert_cdrs(storage_backend, batch, token, database=db)
    insert_cdrs(storage_backend, batch, token, database=db)  # a retried batch

    if insert_dedup_supported(storage_backend.server_version()):
        assert raw_count(storage_backend, db) == len(batch)
    else:  # 18.16: stored twice until a merge, but reads are exact
        assert raw_count(storage_backend, db) == 2 * len(batch)
    final_count = storage_backend.execute(f"SELECT count() FROM {db}.cdr FINAL")[0][0]
    assert final_count == len(batch)
    assert len(fetch_newest(storage_backend, database=db)) == len(batch)

    # a different batch (other versions) under its own token is stored
    newer = [cdr("call-complete", 2, fee=Decimal("0.5"))]
    insert_cdrs(storage_backend, newer, dedup_token_for(newer), database=db)
    got = fetch_newest(
        storage_backend, database=db, where="call_id = {c:String}", params={"c": "call-complete"}
    )
    assert got == newer


# -- parameters and injection ------------------------------------------------------

NASTY = [
    "x' OR 1=1 --",
    "x\\' OR 1=1 --",
    "'; DROP TABLE {db}.cdr; --",
    "\\'); DROP DATABASE {db}; --",
    "a\tb\nc\\N\0",
    "{c:String}",
    "'",
    "\\",
]


def test_injection_through_parameters_is_harmless(
    storage_backend: ClickHouseBackend, db: str
) -> None:
    batch = sample_batch()
    insert_cdrs(storage_backend, batch, None, database=db)
    weird_id = batch[-1]["call_id"]
    for attempt in NASTY:
        value = attempt.replace("{db}", db)
        assert (
            fetch_newest(
                storage_backend, database=db, where="call_id = {c:String}", params={"c": value}
            )
            == []
        )
        echoed = storage_backend.execute(
            "SELECT {v:String}, {n:Nullable(String)}", {"v": value, "n": value}
        )
        assert echoed == [(value, value)]
        arr = storage_backend.execute("SELECT {a:Array(String)}", {"a": [value, "ok"]})
        assert arr == [([value, "ok"],)]
    assert raw_count(storage_backend, db) == len(batch)

    found = fetch_newest(
        storage_backend, database=db, where="call_id = {c:String}", params={"c": weird_id}
    )
    assert len(found) == 1 and found[0]["caller"] == batch[-1]["caller"]
    assert found[0]["callee"] == "{x:String}"  # stored verbatim, never substituted

    by_account = fetch_newest(
        storage_backend,
        database=db,
        where=(
            "account_id = {a:String} AND fee >= {f:Decimal(18, 6)} "
            "AND has({ids:Array(String)}, call_id)"
        ),
        params={"a": "acme", "f": Decimal("0.1920"), "ids": ["call-complete", "call-month-edge"]},
    )
    assert [r["call_id"] for r in by_account] == ["call-complete", "call-month-edge"]


def test_placeholder_inside_literal_is_not_substituted(
    storage_backend: ClickHouseBackend,
) -> None:
    rows = storage_backend.execute("SELECT '{v:String}', {v:String}", {"v": "real"})
    assert rows == [("{v:String}", "real")]


def test_missing_parameter_and_float_are_refused(storage_backend: ClickHouseBackend) -> None:
    with pytest.raises(StorageError, match="v"):
        storage_backend.execute("SELECT {v:String}", {"w": "x"})
    with pytest.raises(StorageError, match="float"):
        storage_backend.execute("SELECT {v:Float64}", {"v": 0.1})


# -- errors ----------------------------------------------------------------------


def test_server_errors_carry_the_clickhouse_code(storage_backend: ClickHouseBackend) -> None:
    with pytest.raises(StorageError) as info:
        storage_backend.execute("SELECT * FROM no_such_db_xyz.no_such_table")
    assert info.value.code in (60, 81)  # UNKNOWN_TABLE / UNKNOWN_DATABASE
    assert not isinstance(info.value, StorageUnavailable)
    with pytest.raises(StorageError) as syntax:
        storage_backend.execute("SELEC 1")
    assert syntax.value.code == 62  # SYNTAX_ERROR


def test_money_must_be_decimal(storage_backend: ClickHouseBackend, db: str) -> None:
    with pytest.raises(StorageError, match="float"):
        insert_cdrs(storage_backend, [cdr("c", fee=0.192)], None, database=db)
    with pytest.raises(StorageError, match="decimal places"):
        insert_cdrs(storage_backend, [cdr("c", fee=Decimal("0.1234567"))], None, database=db)
    with pytest.raises(StorageError, match="lacks field"):
        row = cdr("c")
        del row["tariff_version"]
        insert_cdrs(storage_backend, [row], None, database=db)
    assert raw_count(storage_backend, db) == 0


def avro_rows(batch: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The sink's path: each CDR as a Kafka message, decoded to a `cdr` row."""
    cdrs = [RatedCdr(**{**r, "flags": tuple(r["flags"])}) for r in batch]
    return [cdr_row(decode_cdr_record(encode_cdr(c))) for c in cdrs]


def test_avro_rows_are_stored_exactly(storage_backend: ClickHouseBackend, db: str) -> None:
    batch = sample_batch()
    rows = avro_rows(batch)
    assert row_digest(rows) == dedup_token_for(batch)  # one batch identity on both paths
    insert_cdr_rows(storage_backend, rows, row_digest(rows), database=db)
    stored = fetch_newest(storage_backend, database=db, extra_columns=("call_start_ms",))
    by_id = {r["call_id"]: r for r in stored}
    assert sorted(by_id) == sorted(r["call_id"] for r in batch)
    for original in batch:
        back = by_id[original["call_id"]]
        for field in CDR_FIELDS:
            assert back[field] == original[field], field
            if original[field] is None:
                assert back[field] is None, field
    assert by_id["call-month-edge"]["fee"] == Decimal("999999999999.999999")
    assert by_id["call-month-edge"]["rate_per_min"] == Decimal("9999999999.99999999")
    assert by_id["call-month-edge"]["call_start_ms"] == JAN_31_LAST_SECOND_MS
    setup_missing = by_id["call-setup-missing"]
    assert setup_missing["call_start_ms"] == setup_missing["answer_ts_ms"]


def test_avro_rows_out_of_range_are_refused_before_sending(
    storage_backend: ClickHouseBackend, db: str
) -> None:
    def row(**overrides: Any) -> tuple[Any, ...]:
        (good,) = avro_rows([cdr("c")])
        named = dict(zip((name for name, _ in CDR_COLUMNS), good, strict=True))
        named.update(overrides)
        return tuple(named.values())

    with pytest.raises(StorageError, match="does not fit Decimal"):
        insert_cdr_rows(storage_backend, [row(fee=Decimal("1000000000000"))], None, db)
    with pytest.raises(StorageError, match="decimal places"):
        insert_cdr_rows(storage_backend, [row(cost=Decimal("0.1234567"))], None, db)
    with pytest.raises(StorageError, match="out of range for UInt64"):
        insert_cdr_rows(storage_backend, [row(), row(version=-1)], None, db)
    assert raw_count(storage_backend, db) == 0
    insert_cdr_rows(storage_backend, [row(fee=Decimal("0.1000000"))], None, db)  # zeros only
    assert raw_count(storage_backend, db) == 1


def test_unreachable_server_is_storage_unavailable() -> None:
    from pipeline.storage.native import NativeBackend

    backend = NativeBackend(host="127.0.0.1", port=1, connect_timeout=1)
    with pytest.raises(StorageUnavailable):
        backend.execute("SELECT 1")
    backend.close()


# -- rerate_runs -------------------------------------------------------------------


def test_rerate_runs_keeps_the_latest_revision(storage_backend: ClickHouseBackend, db: str) -> None:
    table = f"{db}.rerate_runs"
    cols = [
        "run_id",
        "revision",
        "started_at",
        "user",
        "config_fingerprint",
        "from_ms",
        "to_ms",
        "accounts",
        "source",
        "status",
    ]
    import datetime as dt

    started = dt.datetime(2024, 6, 2, 8, 0, 0)
    storage_backend.insert_columns(
        table,
        cols,
        [
            ["run-1"],
            [1],
            [started],
            ["ops"],
            ["sha256:ab"],
            [0],
            [10],
            [["acme", "o'brien"]],
            ["clickhouse"],
            ["RUNNING"],
        ],
        dedup_token=None,
    )
    storage_backend.insert_columns(
        table,
        cols + ["calls_read", "calls_changed", "delta_summary"],
        [
            ["run-1"],
            [2],
            [started],
            ["ops"],
            ["sha256:ab"],
            [0],
            [10],
            [["acme", "o'brien"]],
            ["clickhouse"],
            ["DONE"],
            [5],
            [2],
            ['{"USD": "0.12"}'],
        ],
        dedup_token=None,
    )
    rows = storage_backend.execute(
        "SELECT run_id, status, calls_read, calls_changed, accounts, delta_summary "
        f"FROM {table} FINAL"
    )
    assert rows == [("run-1", "DONE", 5, 2, ["acme", "o'brien"], '{"USD": "0.12"}')]
