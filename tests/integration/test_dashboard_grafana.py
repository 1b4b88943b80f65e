"""The provisioned Grafana dashboard: its files are consistent, and every
panel's SQL runs on current ClickHouse (chDB) with Grafana's macros expanded
as the ClickHouse plugin does, giving the figures the dashboard shows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.dashboard.queries import Scope, run_panel
from pipeline.dashboard.refresh import refresh_aggregates
from pipeline.dashboard.synthetic import python_cdrs
from pipeline.storage import insert_cdrs, migrate
from pipeline.storage.backend import ClickHouseBackend

pytestmark = pytest.mark.integration

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "cdr-dashboard.json"
START_S = 1718409600  # 2024-06-15 00:00 UTC
DAYS = 2


def test_provisioning_files_agree() -> None:
    datasource = (GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text()
    provider = (GRAFANA / "provisioning" / "dashboards" / "cdr-pipeline.yaml").read_text()
    assert (
        "uid: cdr-clickhouse" in datasource and "type: grafana-clickhouse-datasource" in datasource
    )
    assert "password: $CLICKHOUSE_PASSWORD" in datasource  # from the environment, not the file
    assert "path: /var/lib/grafana/dashboards" in provider
    board = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in board["panels"]}
    assert {
        "Calls and ASR over time",
        "Top destinations",
        "Top gateways",
        "Hangup sources and server reasons",
        "Revenue at risk by decision reason",
    } <= titles
    for p in board["panels"]:
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "cdr-clickhouse"
            assert "cdr.cdr_agg" in t["rawSql"]
            # variables only through Grafana's SQL string escaping
            assert not re.search(r"\$\{(account|gateway)\}|\$(account|gateway)\b", t["rawSql"])
    # the committed JSON is what the builder writes
    out = subprocess.run(
        [sys.executable, str(GRAFANA / "build_dashboard.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "wrote" in out.stdout
    assert json.loads(DASHBOARD.read_text()) == board


def expand(sql: str, db: str, frm: int, to: int, account: str, gateway: str, step: int) -> str:
    def quoted(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    sql = sql.replace("${account:sqlstring}", quoted(account))
    sql = sql.replace("${gateway:sqlstring}", quoted(gateway))
    sql = re.sub(
        r"\$__timeFilter\((\w+)\)",
        rf"\1 >= toDateTime({frm}) AND \1 <= toDateTime({to})",
        sql,
    )
    sql = re.sub(
        r"\$__timeInterval\((\w+)\)",
        rf"toStartOfInterval(toDateTime(\1), INTERVAL {step} second)",
        sql,
    )
    return sql.replace("cdr.cdr_agg", f"{db}.cdr_agg")


def rows_of(backend: ClickHouseBackend, sql: str) -> list[tuple[Any, ...]]:
    assert "$" not in sql, sql
    return backend.execute(sql)


def test_grafana_panels_show_the_dashboard_figures(chdb_backend: ClickHouseBackend) -> None:
    db = "grafana_check"
    migrate(chdb_backend, db)
    insert_cdrs(
        chdb_backend, list(python_cdrs(1500, START_S * 1000, DAYS * 86_400_000, seed=5)), None, db
    )
    refresh_aggregates(chdb_backend, db)
    board = json.loads(DASHBOARD.read_text())
    sql = {p["title"]: p["targets"][0]["rawSql"] for p in board["panels"]}
    frm, to = START_S, START_S + DAYS * 86400 - 1  # Grafana's range is inclusive
    scope_all = Scope(START_S * 1000, (START_S + DAYS * 86400) * 1000)
    for account, gateway in (("*", "*"), ("acct-01", "*"), ("*", "out-1"), ("acct-00", "out-0")):
        scope = Scope(
            scope_all.from_ms,
            scope_all.to_ms,
            account=None if account == "*" else account,
            gateway=None if gateway == "*" else gateway,
        )
        want = run_panel(chdb_backend, db, "summary", scope).total

        def run(title: str, a: str = account, g: str = gateway) -> list[tuple[Any, ...]]:
            return rows_of(chdb_backend, expand(sql[title], db, frm, to, a, g, 3600))

        (totals,) = run("Totals")
        assert totals[0] == want.attempts and totals[1] == want.answered
        assert totals[5] == pytest.approx(want.billable_s / 60)
        money = {r[0]: r for r in run("Revenue, cost, margin and revenue at risk")}
        for currency, amount in want.revenue.items():
            assert money[currency][1] == pytest.approx(float(amount))
        for currency, amount in want.cost.items():
            assert money[currency][2] == pytest.approx(float(amount))
        calls = run("Calls and ASR over time")
        assert sum(r[1] for r in calls) == want.attempts and len(calls) <= DAYS * 24
        assert sum(r[2] for r in run("Revenue and cost over time")) == pytest.approx(
            float(sum(want.revenue.values()) + sum(want.cost.values()))
        )
        assert sum(r[1] for r in run("Hangup sources and server reasons")) == want.attempts
        at_risk = run("Revenue at risk by decision reason")
        assert sum(r[1] for r in at_risk) == pytest.approx(float(sum(want.at_risk.values())))
        top = run_panel(chdb_backend, db, "destinations", scope, top=None)
        dest = run("Top destinations")
        assert dest[0][1] == max(f.attempts for _, f in top.rows)
        gateways = run("Top gateways")
        assert gateways and all(r[1] > 0 for r in gateways)
    # the variables list what the aggregates hold
    for var in board["templating"]["list"]:
        values = rows_of(chdb_backend, expand(var["query"], db, frm, to, "*", "*", 3600))
        assert values and all(v[0] != "*" for v in values)
