"""Synthetic rated CDRs for dashboard tests, demos and the benchmark.

Two generators with the same shape of traffic (skewed accounts, gateways of
different quality, a busy middle of the day, a few currencies, every record
decision and hangup source):

* `python_cdrs` builds RatedCdr-shaped dicts in Python, for `insert_cdrs`
  (tests: the expected figures are computed from the same dicts).
* `insert_sql_cdrs` has the server generate millions of rows with one
  `INSERT ... SELECT FROM numbers(n)` (the benchmark: ten million CDRs in
  about a minute instead of an hour through Python).

Neither is billing logic: fees are plausible numbers, not a rating.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.sql import check_identifier

COUNTRY_CODES = (1, 44, 49, 33, 34, 39, 86, 91, 55, 52, 234, 27, 81, 61, 7, 20, 62, 63, 90, 966)
SERVER_REASONS = ("MAX_DURATION", "NO_ROUTE", "ADMIN", "NO_BALANCE", "MEDIA_TIMEOUT")
DAY_MS = 86_400_000
VERSION = 1000  # VERSION_STRIDE: the correlator's first version of a call


def python_cdrs(
    n: int, start_ms: int, span_ms: int, seed: int = 1, prefix: str = "t"
) -> Iterator[dict[str, Any]]:
    """`n` CDR dicts (version 1000) with call times in [start_ms, start_ms + span_ms)."""
    rnd = random.Random(seed)  # noqa: S311 - test data, not secrets
    for i in range(n):
        yield _one(rnd, f"{prefix}-{i:07d}", start_ms + rnd.randrange(span_ms))


def _one(rnd: random.Random, call_id: str, t_ms: int) -> dict[str, Any]:
    a = int(rnd.random() ** 2 * 12)
    e = int(rnd.random() ** 1.5 * 6)
    cc = COUNTRY_CODES[int(rnd.random() ** 2.2 * 8)]
    rate_prefix = f"{cc}{rnd.randrange(4)}"
    status = "COMPLETE" if rnd.random() > 0.03 else "HANGUP_MISSING"
    answered = rnd.random() < 0.65 - e * 0.06
    roll = rnd.random()
    if answered:
        hangup = "CALLER" if roll < 0.5 else "CALLEE" if roll < 0.93 else "SERVER"
    else:
        hangup = "CALLER" if roll < 0.3 else "CALLEE" if roll < 0.85 else "SERVER"
    server_reason = rnd.choice(SERVER_REASONS) if hangup == "SERVER" else None
    rated = rnd.random() > 0.02
    hold_ms = 500 + rnd.randrange(180_000) if answered else 0
    hold_s = (hold_ms + 999) // 1000
    billable = (0 if hold_s == 0 else max(30, 30 + -(-(hold_s - 30) // 6) * 6)) if rated else None
    if status != "COMPLETE":
        decision, reason = "AUDIT", "INCOMPLETE"
    elif server_reason == "ADMIN":
        decision, reason = "SKIPPED", "SERVER_HANGUP_POLICY"
    elif answered and not rated:
        decision, reason = "AUDIT", "RATE_NOT_FOUND"
    else:
        decision, reason = "RECORDED", None
    rate = Decimal(5000 + (hash_int(rate_prefix) % 200_000)).scaleb(-6)
    fee = (rate * billable / 60).quantize(Decimal("0.000001")) if billable is not None else None
    cost = (
        (rate * 7 / 10 * hold_s / 60).quantize(Decimal("0.000001")) if answered and e != 5 else None
    )
    currency = "EUR" if a % 5 == 3 else "USD"
    pdd = None if rnd.random() < 0.03 else 300 + rnd.randrange(5000)
    answer_ts = t_ms + (pdd or 0) if answered else None
    return {
        "call_id": call_id,
        "version": VERSION,
        "status": status,
        "record_decision": decision,
        "decision_reason": reason,
        "billing_mode": "NORMAL",
        "account_id": f"acct-{a:02d}",
        "caller": f"+1555{rnd.randrange(10**7):07d}",
        "callee": f"+{rate_prefix}{rnd.randrange(10**7):07d}",
        "callee_gateway": f"{rate_prefix}{rnd.randrange(10**7):07d}",
        "ingress_gateway": f"in-{(a * 2 + rnd.randrange(2)) % 8}",
        "egress_gateway": f"out-{e}",
        "switch_id": f"sw-{rnd.randrange(3)}",
        "setup_ts_ms": t_ms,
        "answer_ts_ms": answer_ts,
        "end_ts_ms": (answer_ts or t_ms) + hold_ms + 1000,
        "pdd_ms": pdd,
        "answered": answered,
        "hold_ms": hold_ms,
        "hold_s": hold_s,
        "rated_s": hold_s,
        "billable_s": billable,
        "hangup_source": hangup,
        "sip_code": 200 if answered else 486,
        "q850_cause": 16 if answered else 17,
        "server_reason": server_reason,
        "illegal_reason": None,
        "rate_table": "retail-eur" if currency == "EUR" else "retail-usd",
        "rate_prefix": rate_prefix if rated else None,
        "rate_per_min": rate if rated else None,
        "currency": currency,
        "fee": fee,
        "cost_rate_table": f"vendor-{e}" if cost is not None else None,
        "cost_prefix": str(cc) if cost is not None else None,
        "cost": cost,
        "cost_currency": "USD" if cost is not None else None,
        "tariff_version": "synthetic-1",
        "flags": [],
    }


def hash_int(text: str) -> int:
    """A small stable string hash (Python's hash() is salted per process)."""
    value = 2166136261
    for ch in text.encode():
        value = ((value ^ ch) * 16777619) & 0xFFFFFFFF
    return value


def rerated(row: dict[str, Any], version: int, **changes: Any) -> dict[str, Any]:
    """A newer version of `row` (a re-rating or correction) with `changes`."""
    new = dict(row)
    new.update(changes)
    new["version"] = version
    return new


# -- server-side generation (benchmark scale) ---------------------------------------

_CDR_INSERT_COLUMNS = (
    "call_id, version, call_start_ms, status, record_decision, decision_reason, billing_mode, "
    "account_id, caller, callee, callee_gateway, ingress_gateway, egress_gateway, switch_id, "
    "setup_ts_ms, answer_ts_ms, end_ts_ms, pdd_ms, answered, hold_ms, hold_s, rated_s, "
    "billable_s, hangup_source, sip_code, q850_cause, server_reason, illegal_reason, rate_table, "
    "rate_prefix, rate_per_min, currency, fee, cost_rate_table, cost_prefix, cost, cost_currency, "
    "tariff_version, flags, rerate_run_id"
)

# Columns of the generated rows; `g` is the inner query with the random draws.
_GENERATED_SELECT = """
SELECT
    concat('b-', toString(n)) AS call_id,
    toUInt64({version:UInt64}) AS version,
    t_ms AS call_start_ms,
    status,
    multiIf(status != 'COMPLETE', 'AUDIT', server_reason = 'ADMIN', 'SKIPPED',
            answered = 1 AND NOT rated, 'AUDIT', 'RECORDED') AS record_decision,
    multiIf(status != 'COMPLETE', 'INCOMPLETE', server_reason = 'ADMIN', 'SERVER_HANGUP_POLICY',
            answered = 1 AND NOT rated, 'RATE_NOT_FOUND', NULL) AS decision_reason,
    'NORMAL' AS billing_mode,
    concat('acct-', toString(a)) AS account_id,
    concat('+1555', toString(h1 % 10000000)) AS caller,
    concat('+', rate_prefix_all, toString(h2 % 10000000)) AS callee,
    concat(rate_prefix_all, toString(h2 % 10000000)) AS callee_gateway,
    concat('in-', toString((a * 2 + h3 % 2) % 20)) AS ingress_gateway,
    concat('out-', toString(e)) AS egress_gateway,
    concat('sw-', toString(h4 % 4)) AS switch_id,
    t_ms AS setup_ts_ms,
    if(answered = 1, t_ms + ifNull(pdd, 0), NULL) AS answer_ts_ms,
    t_ms + ifNull(pdd, 0) + hold_ms + 1000 AS end_ts_ms,
    pdd AS pdd_ms,
    answered,
    hold_ms,
    hold_s,
    hold_s AS rated_s,
    if(rated, billable, NULL) AS billable_s,
    hangup_source,
    if(answered = 1, 200, 486) AS sip_code,
    if(answered = 1, 16, 17) AS q850_cause,
    server_reason,
    NULL AS illegal_reason,
    if(currency = 'EUR', 'retail-eur', 'retail-usd') AS rate_table,
    if(rated, rate_prefix_all, NULL) AS rate_prefix,
    if(rated, CAST(rate_micro AS Decimal(18, 8)) / 1000000, NULL) AS rate_per_min,
    currency,
    if(rated, toDecimal64(intDiv(rate_micro * billable * {fee_factor:UInt32}, 60 * 100), 6)
              / 1000000, NULL) AS fee,
    if(has_cost, concat('vendor-', toString(e)), NULL) AS cost_rate_table,
    if(has_cost, toString(cc), NULL) AS cost_prefix,
    if(has_cost, toDecimal64(intDiv(rate_micro * 7 * hold_s, 600), 6) / 1000000, NULL) AS cost,
    if(has_cost, 'USD', NULL) AS cost_currency,
    'synthetic-1' AS tariff_version,
    emptyArrayString() AS flags,
    '' AS rerate_run_id
FROM
(
    SELECT
        n, h1, h2, h3, h4, a, e, cc, rate_prefix_all, rate_micro, status, answered, hangup_source,
        server_reason, rated, pdd, t_ms, hold_ms, hold_s, currency,
        if(hold_s = 0, 0, if(hold_s <= 30, 30, 30 + intDiv(hold_s - 30 + 5, 6) * 6)) AS billable,
        answered = 1 AND e != 13 AS has_cost
    FROM
    (
        SELECT
            number AS n,
            cityHash64(number, 1) AS h1, cityHash64(number, 2) AS h2,
            cityHash64(number, 3) AS h3, cityHash64(number, 4) AS h4,
            cityHash64(number, 5) AS h5, cityHash64(number, 6) AS h6,
            cityHash64(number, 7) AS h7, cityHash64(number, 8) AS h8,
            cityHash64(number, 9) AS h9, cityHash64(number, 10) AS h10,
            toUInt64(floor(pow((h5 % 10000) / 10000., 2) * 60)) AS a,
            toUInt64(floor(pow((h6 % 10000) / 10000., 1.5) * 14)) AS e,
            {codes:Array(UInt32)}[toUInt64(floor(pow((h7 % 10000) / 10000., 2.2) * 20)) + 1] AS cc,
            concat(toString(cc), toString(h8 % 15)) AS rate_prefix_all,
            5000 + cityHash64(rate_prefix_all) % 200000 AS rate_micro,
            if(h9 % 1000 < 20, 'HANGUP_MISSING', 'COMPLETE') AS status,
            toUInt8(h10 % 1000 < 650 - e * 25) AS answered,
            if(answered = 1,
               multiIf(h1 % 100 < 50, 'CALLER', h1 % 100 < 95, 'CALLEE', 'SERVER'),
               multiIf(h1 % 100 < 30, 'CALLER', h1 % 100 < 85, 'CALLEE', 'SERVER'))
                AS hangup_source,
            if(hangup_source = 'SERVER', {reasons:Array(String)}[h2 % 5 + 1], NULL)
                AS server_reason,
            h3 % 1000 >= 8 AS rated,
            if(h4 % 100 < 3, NULL, 300 + h4 % 5000) AS pdd,
            {start_ms:Int64} + toInt64(h1 % {days:UInt64}) * 86400000
                + toInt64(intDiv((h2 % 86400) + (h3 % 86400), 2)) * 1000
                + toInt64(h4 % 1000) AS t_ms,
            toInt64(if(answered = 1, 500 + h5 % 180000 + if(h6 % 4 = 0, h7 % 1200000, 0), 0))
                AS hold_ms,
            intDiv(hold_ms + 999, 1000) AS hold_s,
            if(a % 7 = 3, 'EUR', 'USD') AS currency
        FROM numbers({count:UInt64})
        WHERE {keep_all:UInt8} = 1 OR h10 % 100 < {rerate_pct:UInt8}
    )
)
"""


def insert_sql_cdrs(
    backend: ClickHouseBackend,
    database: str,
    count: int,
    end_ms: int,
    days: int = 30,
    *,
    version: int = VERSION,
    rerate_percent: int | None = None,
    fee_factor_percent: int = 100,
) -> None:
    """Have the server insert `count` synthetic calls `b-0` ... over the `days`
    days before `end_ms` (UTC, whole days), each at `version`.

    With `rerate_percent`, only about that share of the same calls is written
    again (same call ids, anchors and dimensions), at `version` with fees
    scaled by `fee_factor_percent`: a re-rating."""
    check_identifier(database, "database name")
    sql = f"INSERT INTO {database}.cdr ({_CDR_INSERT_COLUMNS}) {_GENERATED_SELECT}"
    backend.execute(
        sql,
        {
            "version": version,
            "fee_factor": fee_factor_percent,
            "codes": list(COUNTRY_CODES),
            "reasons": list(SERVER_REASONS),
            "start_ms": end_ms - days * DAY_MS,
            "days": days,
            "count": count,
            "keep_all": 1 if rerate_percent is None else 0,
            "rerate_pct": rerate_percent or 0,
        },
    )
