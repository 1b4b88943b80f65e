"""The dashboard aggregates equal the figures computed straight from the
newest CDR versions, before and after a re-rating, on ClickHouse 18.16
(native) and current ClickHouse (chDB).

Three references for every panel and scope:
  * the aggregates (`source="agg"`: cdr_agg + cdr_newest, what the
    dashboard and `report` read),
  * `cdr FINAL` (`source="raw"`),
  * an oracle in Python over the newest version of every call we inserted.
A re-rating is simulated by inserting newer versions with insert_cdrs.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pytest

from pipeline.dashboard.figures import Figures
from pipeline.dashboard.queries import PANELS, Scope, auto_step, run_panel
from pipeline.dashboard.refresh import refresh_aggregates
from pipeline.dashboard.synthetic import python_cdrs, rerated
from pipeline.storage import insert_cdrs, migrate
from pipeline.storage.backend import ClickHouseBackend

pytestmark = pytest.mark.integration

START_MS = 1718402400000  # 2024-06-14 22:00:00 UTC: the data crosses two midnights
SPAN_MS = 50 * 3_600_000
HOUR_MS = 3_600_000
CALLS = 2500


# -- the oracle ---------------------------------------------------------------------------


def newest(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        kept = out.get(row["call_id"])
        if kept is None or row["version"] > kept["version"]:
            out[row["call_id"]] = row
    return out


def _measures(row: dict[str, Any]) -> list[Any]:
    recorded = row["record_decision"] == "RECORDED"
    fee = row["fee"] or Decimal(0)
    return [
        1,
        1 if row["answered"] else 0,
        1 if recorded else 0,
        row["hold_s"] if row["answered"] else 0,
        row["pdd_ms"] or 0,
        0 if row["pdd_ms"] is None else 1,
        (row["billable_s"] or 0) if recorded else 0,
        fee if recorded else Decimal(0),
        row["cost"] or Decimal(0),
        Decimal(0) if recorded else fee,
    ]


def _start(row: dict[str, Any]) -> int:
    for key in ("setup_ts_ms", "answer_ts_ms", "end_ts_ms"):
        if row[key] is not None:
            return int(row[key])
    return 0


def _gateway_roles(row: dict[str, Any]) -> list[tuple[str, str]]:
    ingress, egress = row["ingress_gateway"] or "", row["egress_gateway"] or ""
    return [(ingress, "both")] if ingress == egress else [(ingress, "in"), (egress, "out")]


def expected_panel(
    calls: dict[str, dict[str, Any]], name: str, scope: Scope
) -> dict[tuple[Any, ...], Figures]:
    """The panel's rows computed in Python from the newest versions."""
    spec = PANELS[name]
    step_s = auto_step(scope.span_ms) // 1000
    out: dict[tuple[Any, ...], Figures] = {}
    for row in calls.values():
        start = _start(row)
        if not scope.from_ms <= start < scope.to_ms:
            continue
        if scope.account is not None and row["account_id"] != scope.account:
            continue
        roles = _gateway_roles(row)
        if scope.gateway is not None and scope.gateway not in (
            row["ingress_gateway"],
            row["egress_gateway"],
        ):
            continue
        keys: list[tuple[Any, ...]]
        if name in ("traffic_series", "money_series"):
            t = start // 1000 // step_s * step_s
            keys = [(dt.datetime.fromtimestamp(t, dt.UTC),)]
        elif name == "hangups":
            keys = [(row["hangup_source"], row["server_reason"] or "")]
        elif name == "at_risk":
            if row["record_decision"] == "RECORDED":
                continue
            keys = [(row["record_decision"], row["decision_reason"] or "")]
        elif name == "destinations":
            keys = [(row["rate_prefix"] or "",)]
        elif name == "gateways":
            keys = [g for g in roles if scope.gateway is None or g[0] == scope.gateway]
        elif name == "accounts":
            keys = [(row["account_id"] or "",)]
        else:
            keys = [()]
        assert spec.name == name
        for key in keys:
            out.setdefault(key, Figures()).add_row(
                row["currency"] or "", row["cost_currency"] or "", _measures(row)
            )
    return out


# -- helpers ------------------------------------------------------------------------------


def scopes() -> list[Scope]:
    end = START_MS + SPAN_MS
    return [
        Scope(START_MS - HOUR_MS, end + HOUR_MS),  # everything, whole days and hours
        Scope(START_MS + 77 * 60_000 + 31_500, end - 4 * HOUR_MS - 17 * 60_000 - 10),  # ragged
        Scope(START_MS + 26 * HOUR_MS, START_MS + 27 * HOUR_MS),  # one hour
        Scope(START_MS + 26 * HOUR_MS + 5_000, START_MS + 26 * HOUR_MS + 50_000),  # seconds
        Scope(START_MS, end, account="acct-01"),
        Scope(START_MS + 90 * 60_000, end - 30 * 60_000, gateway="out-1"),
        Scope(START_MS + 90 * 60_000, end - 30 * 60_000, gateway="in-2"),
        Scope(START_MS + 3 * HOUR_MS + 1, end, account="acct-00", gateway="out-0"),
        Scope(START_MS, end, account="acct-11"),
    ]


def check_all(backend: ClickHouseBackend, db: str, calls: dict[str, dict[str, Any]]) -> int:
    """Every panel, every scope: agg == raw == oracle. Returns rows compared."""
    compared = 0
    for scope in scopes():
        for name in PANELS:
            want = expected_panel(calls, name, scope)
            agg = dict(run_panel(backend, db, name, scope, "agg", top=None).rows)
            raw = dict(run_panel(backend, db, name, scope, "raw", top=None).rows)
            assert agg == want, f"{name} {scope}: aggregates differ from the newest CDRs"
            assert raw == want, f"{name} {scope}: cdr FINAL differs from the newest CDRs"
            compared += len(want)
    return compared


def rerating(calls: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Newer versions of some calls: a tariff change (fees +10 %), a policy
    change (RECORDED -> SKIPPED), corrections that move calls to another
    account, gateway or hangup source, and a whole account re-assigned (its
    groups vanish from the aggregates)."""
    out = []
    for i, (call_id, row) in enumerate(sorted(calls.items())):
        version = row["version"] + 1
        if row["account_id"] == "acct-11":
            out.append(rerated(row, version + 1000, account_id="acct-moved"))
        elif i % 7 == 0 and row["fee"] is not None:
            out.append(
                rerated(
                    row, version, fee=(row["fee"] * Decimal("1.1")).quantize(Decimal("0.000001"))
                )
            )
        elif i % 11 == 0 and row["record_decision"] == "RECORDED":
            out.append(
                rerated(
                    row, version, record_decision="SKIPPED", decision_reason="ZERO_HOLD_TIME_POLICY"
                )
            )
        elif i % 13 == 0:
            out.append(
                rerated(row, version + 1000, egress_gateway="out-9", cost=None, cost_currency=None)
            )
        elif i % 17 == 0:
            out.append(rerated(row, version + 1000, hangup_source="SERVER", server_reason="ADMIN"))
        elif i % 19 == 0:
            out.append(rerated(row, version + 1000, ingress_gateway=row["egress_gateway"]))
        del call_id
    return out


# -- the test -----------------------------------------------------------------------------


def test_aggregates_equal_newest_versions_before_and_after_rerating(
    storage_backend: ClickHouseBackend, clickhouse_database: str
) -> None:
    db = clickhouse_database
    migrate(storage_backend, db)
    first = list(python_cdrs(CALLS, START_MS, SPAN_MS, seed=7, prefix="agg"))
    insert_cdrs(storage_backend, first, None, db)
    calls = newest(first)

    result = refresh_aggregates(storage_backend, db)
    assert result.full and len(result.days) == 3
    assert check_all(storage_backend, db, calls) > 1000

    # The re-rating: newer versions of about a third of the calls.
    time.sleep(1.1)  # the next refresh's watermark must lie after the first inserts
    newer = rerating(calls)
    assert len(newer) > CALLS // 4
    insert_cdrs(storage_backend, newer, None, db)
    calls = newest(first + newer)
    assert any(r["account_id"] == "acct-moved" for r in calls.values())

    # Before the refresh the aggregates still show the old versions ...
    moved = Scope(START_MS, START_MS + SPAN_MS, account="acct-11")
    assert run_panel(storage_backend, db, "summary", moved).total.attempts > 0
    # ... after it, the new ones: the re-assigned account's groups are gone.
    result = refresh_aggregates(storage_backend, db)
    assert not result.full and len(result.days) == 3
    assert run_panel(storage_backend, db, "summary", moved).total.attempts == 0
    assert check_all(storage_backend, db, calls) > 1000


def test_refresh_recomputes_only_the_days_that_got_new_versions(
    storage_backend: ClickHouseBackend, clickhouse_database: str
) -> None:
    db = clickhouse_database
    migrate(storage_backend, db)
    assert refresh_aggregates(storage_backend, db).days == []  # an empty database is fine
    rows = list(python_cdrs(300, START_MS, SPAN_MS, seed=3, prefix="inc"))
    insert_cdrs(storage_backend, rows, None, db)
    time.sleep(1.1)  # inserted_at has whole seconds: keep it before the next watermark
    assert len(refresh_aggregates(storage_backend, db, overlap_s=0).days) == 3
    assert refresh_aggregates(storage_backend, db, overlap_s=0).days == []

    last_day = [r for r in rows if _start(r) >= START_MS + 26 * HOUR_MS]
    newer = [rerated(r, r["version"] + 1, fee=Decimal("1.000000")) for r in last_day[:5]]
    insert_cdrs(storage_backend, newer, None, db)
    result = refresh_aggregates(storage_backend, db, overlap_s=0)
    assert result.days == [dt.date(2024, 6, 16)]
    calls = newest(rows + newer)
    everything = Scope(START_MS, START_MS + SPAN_MS)
    for name in ("summary", "destinations", "money_series"):
        agg = dict(run_panel(storage_backend, db, name, everything, top=None).rows)
        assert agg == expected_panel(calls, name, everything)

    # A day whose CDRs are gone (retention) loses its aggregates on a full refresh.
    storage_backend.execute(f"ALTER TABLE {db}.cdr DROP PARTITION 202406")
    result = refresh_aggregates(storage_backend, db, full=True)
    assert result.rows_written == 0
    assert run_panel(storage_backend, db, "summary", everything).total.attempts == 0
