"""`cdr-pipeline report` and `cdr-pipeline dashboard refresh` against real
ClickHouse (18.16 and chDB): tables, CSV and JSON with the figures of the
newest CDR versions, filters, and clear errors."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from decimal import Decimal

import pytest

from pipeline.cli import main
from pipeline.dashboard.figures import Figures
from pipeline.dashboard.queries import Scope
from pipeline.dashboard.synthetic import rerated
from pipeline.storage import insert_cdrs
from pipeline.storage.backend import ClickHouseBackend
from tests.integration.test_aggregates import expected_panel, newest
from tests.integration.test_dashboard_web import (
    SPAN_MS,
    START_MS,
    Loaded,
    load,
    restored_logging,
    url_of,
)

pytestmark = pytest.mark.integration

WINDOW = ["--from", "2024-06-15T00:00Z", "--to", "2024-06-16T06:00Z"]


@pytest.fixture
def loaded(storage_backend: ClickHouseBackend, clickhouse_database: str) -> Loaded:
    url = url_of(storage_backend, clickhouse_database)
    return load(storage_backend, clickhouse_database, 1200, url)


@pytest.fixture
def keep_logging() -> Iterator[None]:
    with restored_logging():
        yield


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def total_of(loaded: Loaded, name: str, scope: Scope) -> Figures:
    total = Figures()
    for figures in expected_panel(newest(loaded.rows), name, scope).values():
        total.merge(figures)
    return total


def test_report_json_table_and_csv(
    loaded: Loaded, capsys: pytest.CaptureFixture[str], keep_logging: None
) -> None:
    scope = Scope(START_MS, START_MS + SPAN_MS, account="acct-00")
    want = total_of(loaded, "summary", scope)

    code, out, err = run(
        capsys,
        "report",
        "--clickhouse",
        loaded.url,
        *WINDOW,
        "--account",
        "acct-00",
        "--format",
        "json",
    )
    assert code == 0, err
    data = json.loads(out)
    assert data["scope"]["account"] == "acct-00" and data["source"] == "agg"
    assert set(data["panels"]) >= {
        "summary",
        "traffic_series",
        "hangups",
        "at_risk",
        "destinations",
    }
    got = data["panels"]["summary"]["total"]
    assert got["attempts"] == want.attempts and got["answered"] == want.answered
    assert {c: Decimal(v) for c, v in got["revenue"].items()} == want.revenue
    assert {c: Decimal(v) for c, v in got["margin"].items()} == want.margin

    # the same from cdr FINAL
    code, out, err = run(
        capsys,
        "report",
        "--clickhouse",
        loaded.url,
        *WINDOW,
        "--account",
        "acct-00",
        "--format",
        "json",
        "--source",
        "raw",
        "--panel",
        "summary",
    )
    assert code == 0, err
    assert json.loads(out)["panels"]["summary"]["total"] == got

    code, out, err = run(capsys, "report", "--clickhouse", loaded.url, *WINDOW)
    assert code == 0, err
    for title in (
        "Totals",
        "Calls and ASR over time",
        "Hangup sources and server reasons",
        "Revenue at risk by decision reason",
        "Top destinations",
        "Top gateways",
    ):
        assert title in out
    assert f" {len(loaded.rows)} " in out.split("Calls and ASR")[0]

    code, out, err = run(
        capsys,
        "report",
        "--clickhouse",
        loaded.url,
        *WINDOW,
        "--gateway",
        "out-1",
        "--panel",
        "destinations",
        "--top",
        "3",
        "--format",
        "csv",
    )
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3 and rows[0]["prefix"]
    want_dest = expected_panel(
        newest(loaded.rows), "destinations", Scope(START_MS, START_MS + SPAN_MS, gateway="out-1")
    )
    top = sorted(want_dest.items(), key=lambda kv: (-kv[1].attempts, kv[0]))[:3]
    assert [(r["prefix"], int(r["attempts"])) for r in rows] == [
        (k[0] or "(none)", f.attempts) for k, f in top
    ]


def test_report_refreshes_after_a_rerating(
    loaded: Loaded, capsys: pytest.CaptureFixture[str], keep_logging: None
) -> None:
    newer = [
        rerated(
            r,
            r["version"] + 1,
            fee=Decimal("9.990000"),
            record_decision="RECORDED",
            decision_reason=None,
        )
        for r in loaded.rows[:40]
    ]
    insert_cdrs(loaded.backend, newer, None, loaded.database)
    loaded.rows.extend(newer)
    want = total_of(loaded, "summary", Scope(START_MS, START_MS + SPAN_MS))
    code, out, err = run(
        capsys,
        "report",
        "--clickhouse",
        loaded.url,
        *WINDOW,
        "--panel",
        "summary",
        "--format",
        "json",
    )
    assert code == 0, err
    revenue = json.loads(out)["panels"]["summary"]["total"]["revenue"]
    assert {c: Decimal(v) for c, v in revenue.items()} == want.revenue

    code, _, err = run(capsys, "dashboard", "refresh", "--clickhouse", loaded.url)
    assert code == 0 and ("aggregates up to date" in err or "refreshed" in err), err


def test_report_errors_are_clear(
    loaded: Loaded, capsys: pytest.CaptureFixture[str], keep_logging: None
) -> None:
    for argv, message in (
        (["--format", "csv"], "choose one --panel"),
        (["--panel", "nope"], "unknown nope"),
        (["--from", "yesterday"], "is not a time"),
        (["--last", "1x"], "is not a duration"),
        (["--from", "2024-06-16", "--to", "2024-06-15"], "empty"),
        (["--account", "*"], "reserved"),
    ):
        code, _, err = run(capsys, "report", "--clickhouse", loaded.url, *argv)
        assert code == 2 and message in err, (argv, err)
