"""Write deploy/grafana/dashboards/cdr-dashboard.json (the Grafana version of
`cdr-pipeline dashboard`) from the panel queries below.

    .venv/bin/python deploy/grafana/build_dashboard.py

The queries read the aggregates of migration 0003 (`cdr_agg`, kept fresh by
the dashboard service or `cdr-pipeline dashboard refresh`) through the
grafana-clickhouse-datasource plugin. Grafana's time range selects whole
buckets (hours, or days for the sets that only have days); the project's own
dashboard and `report` are exact to the millisecond. Account and gateway
variables use '*' for "all", the aggregates' marker for every account /
gateway; values reach the SQL through Grafana's `sqlstring` formatting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "cdr-dashboard.json"
DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "cdr-clickhouse"}
DB = "cdr"

FILTER = "account_id = ${account:sqlstring} AND gateway = ${gateway:sqlstring}"
# Hour rows exist for every set of 'traffic'; for 'outcome' and 'destination'
# some sets have day rows only (see PLAN in pipeline/dashboard/refresh.py).
TRAFFIC = f"breakdown = 'traffic' AND grain = 'hour' AND $__timeFilter(bucket) AND {FILTER}"
OUTCOME = (
    "breakdown = 'outcome' AND grain = if(${account:sqlstring} != '*' AND "
    "${gateway:sqlstring} != '*', 'day', 'hour') AND $__timeFilter(bucket) AND " + FILTER
)
DESTINATION = (
    "breakdown = 'destination' AND grain = if(${account:sqlstring} = '*', 'hour', 'day') "
    "AND $__timeFilter(bucket) AND " + FILTER
)

QUERIES: dict[str, str] = {
    "totals": (
        "SELECT sum(attempts) AS calls, sum(answered) AS answered_calls, "
        "sum(answered) / greatest(sum(attempts), 1) AS asr, "
        "sum(hold_s) / greatest(sum(answered), 1) AS acd_s, "
        "sum(pdd_ms_sum) / greatest(sum(pdd_n), 1) / 1000 AS pdd_s, "
        "sum(billable_s) / 60 AS billable_minutes "
        f"FROM {DB}.cdr_agg WHERE {TRAFFIC}"
    ),
    "money": (
        "SELECT c AS currency, sumIf(v, k = 'revenue') AS revenue, sumIf(v, k = 'cost') AS cost, "
        "sumIf(v, k = 'revenue') - sumIf(v, k = 'cost') AS margin, "
        "sumIf(v, k = 'at_risk') AS at_risk FROM ("
        " SELECT currency AS c, 'revenue' AS k, toFloat64(sum(revenue)) AS v "
        f" FROM {DB}.cdr_agg WHERE {TRAFFIC} GROUP BY currency"
        " UNION ALL SELECT currency, 'at_risk', toFloat64(sum(at_risk)) "
        f" FROM {DB}.cdr_agg WHERE {TRAFFIC} GROUP BY currency"
        " UNION ALL SELECT cost_currency, 'cost', toFloat64(sum(cost)) "
        f" FROM {DB}.cdr_agg WHERE {TRAFFIC} GROUP BY cost_currency"
        ") WHERE c != '' GROUP BY c ORDER BY c"
    ),
    "calls": (
        "SELECT $__timeInterval(bucket) AS time, sum(attempts) AS calls, "
        "sum(answered) AS answered_calls, sum(answered) / greatest(sum(attempts), 1) AS ASR "
        f"FROM {DB}.cdr_agg WHERE {TRAFFIC} GROUP BY time ORDER BY time"
    ),
    "revenue": (
        "SELECT time, concat(k, ' ', c) AS series, sum(v) AS value FROM ("
        " SELECT $__timeInterval(bucket) AS time, currency AS c, 'revenue' AS k, "
        " toFloat64(sum(revenue)) AS v "
        f" FROM {DB}.cdr_agg WHERE {TRAFFIC} AND currency != '' GROUP BY time, currency"
        " UNION ALL SELECT $__timeInterval(bucket) AS time, cost_currency, 'cost', "
        " toFloat64(sum(cost)) "
        f" FROM {DB}.cdr_agg WHERE {TRAFFIC} AND cost_currency != '' GROUP BY time, cost_currency"
        ") GROUP BY time, series ORDER BY time"
    ),
    "hangups": (
        "SELECT if(hangup_source = 'SERVER', concat('SERVER ', if(server_reason = '', '(none)', "
        "server_reason)), hangup_source) AS source, sum(attempts) AS calls, "
        "sum(answered) AS answered_calls, sum(recorded) AS recorded_calls "
        f"FROM {DB}.cdr_agg WHERE {OUTCOME} GROUP BY source ORDER BY calls DESC"
    ),
    "at_risk": (
        "SELECT concat(record_decision, ' ', decision_reason, ' ', currency) AS reason, "
        "toFloat64(sum(at_risk)) AS amount_at_risk, sum(attempts) AS calls "
        f"FROM {DB}.cdr_agg WHERE {OUTCOME} AND record_decision != 'RECORDED' "
        "GROUP BY reason ORDER BY amount_at_risk DESC"
    ),
    "destinations": (
        "SELECT if(rate_prefix = '', '(none)', rate_prefix) AS prefix, sum(attempts) AS calls, "
        "sum(answered) / greatest(sum(attempts), 1) AS ASR, "
        "sum(hold_s) / greatest(sum(answered), 1) AS ACD, sum(billable_s) / 60 AS minutes, "
        "toFloat64(sum(revenue)) AS revenue_sum, toFloat64(sum(cost)) AS cost_sum "
        f"FROM {DB}.cdr_agg WHERE {DESTINATION} GROUP BY prefix ORDER BY calls DESC LIMIT 15"
    ),
    "gateways": (
        "SELECT concat(gateway, ' (', gateway_role, ')') AS gateway_name, sum(attempts) AS calls, "
        "sum(answered) / greatest(sum(attempts), 1) AS ASR, "
        "sum(hold_s) / greatest(sum(answered), 1) AS ACD "
        f"FROM {DB}.cdr_agg WHERE breakdown = 'traffic' AND grain = 'hour' "
        "AND $__timeFilter(bucket) AND account_id = ${account:sqlstring} "
        "AND if(${gateway:sqlstring} = '*', gateway != '*', gateway = ${gateway:sqlstring}) "
        "GROUP BY gateway_name ORDER BY calls DESC LIMIT 15"
    ),
}


def target(sql: str, table: bool) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "editorType": "sql",
        "queryType": "sql",
        "format": 1 if table else 0,
        "rawSql": sql,
        "refId": "A",
    }


def panel(
    pid: int,
    title: str,
    kind: str,
    query: str,
    grid: tuple[int, int, int, int],
    *,
    table: bool = True,
    options: dict[str, Any] | None = None,
    field_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    x, y, w, h = grid
    return {
        "id": pid,
        "title": title,
        "type": kind,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [target(QUERIES[query], table)],
        "options": options or {},
        "fieldConfig": field_config or {"defaults": {}, "overrides": []},
    }


def unit_overrides(units: dict[str, str]) -> dict[str, Any]:
    return {
        "defaults": {},
        "overrides": [
            {
                "matcher": {"id": "byName", "options": name},
                "properties": [{"id": "unit", "value": unit}],
            }
            for name, unit in units.items()
        ],
    }


def variable(name: str, column: str, other: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": (
            f"SELECT DISTINCT {column} FROM {DB}.cdr_agg WHERE breakdown = 'traffic' "
            f"AND grain = 'day' AND {column} != '*' AND {other} = '*' AND $__timeFilter(bucket) "
            f"ORDER BY {column}"
        ),
        "refresh": 2,
        "includeAll": True,
        "allValue": "*",
        "multi": False,
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    stats = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "textMode": "value_and_name",
        "colorMode": "none",
    }
    panels = [
        panel(
            1,
            "Totals",
            "stat",
            "totals",
            (0, 0, 14, 4),
            options=stats,
            field_config=unit_overrides({"asr": "percentunit", "acd_s": "s", "pdd_s": "s"}),
        ),
        panel(2, "Revenue, cost, margin and revenue at risk", "table", "money", (14, 0, 10, 4)),
        panel(
            3,
            "Calls and ASR over time",
            "timeseries",
            "calls",
            (0, 4, 12, 9),
            table=False,
            field_config={
                "defaults": {},
                "overrides": [
                    {
                        "matcher": {"id": "byName", "options": "ASR"},
                        "properties": [
                            {"id": "unit", "value": "percentunit"},
                            {"id": "custom.axisPlacement", "value": "right"},
                        ],
                    }
                ],
            },
        ),
        panel(
            4, "Revenue and cost over time", "timeseries", "revenue", (12, 4, 12, 9), table=False
        ),
        panel(
            5,
            "Hangup sources and server reasons",
            "barchart",
            "hangups",
            (0, 13, 12, 9),
            options={"orientation": "horizontal", "xField": "source"},
        ),
        panel(
            6,
            "Revenue at risk by decision reason",
            "barchart",
            "at_risk",
            (12, 13, 12, 9),
            options={"orientation": "horizontal", "xField": "reason"},
        ),
        panel(
            7,
            "Top destinations",
            "table",
            "destinations",
            (0, 22, 12, 10),
            field_config=unit_overrides({"ASR": "percentunit", "ACD": "s"}),
        ),
        panel(
            8,
            "Top gateways",
            "table",
            "gateways",
            (12, 22, 12, 10),
            field_config=unit_overrides({"ASR": "percentunit", "ACD": "s"}),
        ),
    ]
    return {
        "uid": "cdr-pipeline-overview",
        "title": "CDR pipeline: traffic and revenue",
        "tags": ["cdr-pipeline"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {
            "list": [
                variable("account", "account_id", "gateway"),
                variable("gateway", "gateway", "account_id"),
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
