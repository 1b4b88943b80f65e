"""Benchmark of the dashboard's queries on millions of CDRs (not a test).

    .venv/bin/python bench/dashboard_bench.py [--clickhouse URL] [--calls N]
        [--reps N] [--raw-reps N] [--reuse] [--keep]

Against the local ClickHouse 18.16 server by default (deploy/local/clickhouse.sh
up), or chDB with --clickhouse chdb:///dir?database=name. In one run:

1. loads N synthetic calls (default ten million, 30 days) with one server-side
   INSERT ... SELECT, plus newer versions of 5 % of them (a re-rating), unless
   --reuse finds them already there;
2. builds the aggregates (full refresh) and times it, then re-rates 20,000
   calls of one day and times the incremental refresh;
3. runs every dashboard panel for several scopes (time ranges ending at a
   ragged minute, filters), each `--reps` times from the aggregates and
   `--raw-reps` times straight from `cdr FINAL`, checks that both give the
   same figures, and prints p50 / p99 in ms per panel, plus a whole page
   (all panels one after the other).

The goal on the 2-core development machine: every panel under 300 ms p99
from the aggregates. Other processes on the machine skew the figures: the
load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

from pipeline.dashboard.db import READER_SETTINGS, Target, open_backend
from pipeline.dashboard.queries import PANELS, Scope, run_panel
from pipeline.dashboard.refresh import refresh_aggregates
from pipeline.dashboard.synthetic import insert_sql_cdrs
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.migrate import migrate

END_MS = 1719792000000  # 2024-07-01 00:00 UTC
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
RAGGED = 7 * MINUTE + 13_000  # ranges end 7m13s before the hour, like "now"


def scenarios(days: int) -> dict[str, Scope]:
    end = END_MS - RAGGED
    return {
        "last 24h": Scope(end - DAY, end),
        "last 7d": Scope(end - 7 * DAY, end),
        f"all {days}d": Scope(END_MS - days * DAY, END_MS),
        "7d, account": Scope(end - 7 * DAY, end, account="acct-0"),
        "7d, gateway": Scope(end - 7 * DAY, end, gateway="out-3"),
        f"{days}d, account+gateway": Scope(
            END_MS - days * DAY, END_MS, account="acct-0", gateway="out-3"
        ),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * q
    low = int(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def timed(fn: Callable[[], object], reps: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(reps):
        started = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - started) * 1000)
    return times, result


def load(writer: ClickHouseBackend, database: str, calls: int, days: int, reuse: bool) -> None:
    if reuse:
        rows = writer.execute(
            "SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'cdr_agg'",
            {"db": database},
        )
        if int(rows[0][0]):
            (count,) = writer.execute(f"SELECT count() FROM {database}.cdr WHERE version = 1000")[0]
            if int(count) == calls:
                print(f"reusing {database}: {calls:,} calls already loaded")
                return
    writer.execute(f"DROP DATABASE IF EXISTS {database}")
    migrate(writer, database)
    started = time.perf_counter()
    insert_sql_cdrs(writer, database, calls, END_MS, days)
    insert_sql_cdrs(
        writer,
        database,
        calls,
        END_MS,
        days,
        version=1001,
        rerate_percent=5,
        fee_factor_percent=110,
    )
    (versions,) = writer.execute(f"SELECT count() FROM {database}.cdr")[0]
    print(
        f"loaded {calls:,} calls, {int(versions):,} CDR versions in "
        f"{time.perf_counter() - started:.1f} s"
    )
    started = time.perf_counter()
    result = refresh_aggregates(writer, database, full=True)
    print(f"full refresh: {result.describe()} ({time.perf_counter() - started:.1f} s)")


def rerate_one_day(writer: ClickHouseBackend, database: str) -> None:
    """Re-rate 20,000 calls of the last day, then refresh incrementally."""
    started = time.perf_counter()
    writer.execute(
        f"INSERT INTO {database}.cdr (call_id, version, call_start_ms, status, record_decision, "
        "decision_reason, billing_mode, account_id, caller, callee, callee_gateway, "
        "ingress_gateway, egress_gateway, switch_id, setup_ts_ms, answer_ts_ms, end_ts_ms, pdd_ms, "
        "answered, hold_ms, hold_s, rated_s, billable_s, hangup_source, sip_code, q850_cause, "
        "server_reason, illegal_reason, rate_table, rate_prefix, rate_per_min, currency, fee, "
        "cost_rate_table, cost_prefix, cost, cost_currency, tariff_version, flags, rerate_run_id) "
        "SELECT call_id, version + 1, call_start_ms, status, record_decision, decision_reason, "
        "billing_mode, account_id, caller, callee, callee_gateway, ingress_gateway, "
        "egress_gateway, "
        "switch_id, setup_ts_ms, answer_ts_ms, end_ts_ms, pdd_ms, answered, hold_ms, hold_s, "
        "rated_s, billable_s, hangup_source, sip_code, q850_cause, server_reason, illegal_reason, "
        "rate_table, rate_prefix, rate_per_min, currency, fee * 2, cost_rate_table, cost_prefix, "
        "cost, cost_currency, 'bench-rerate', flags, 'bench' "
        f"FROM {database}.cdr FINAL "
        "WHERE call_date = toDate(toDateTime(intDiv({d:Int64}, 1000) - 86400, 'UTC')) "
        "LIMIT 20000",
        {"d": END_MS},
    )
    inserted = time.perf_counter() - started
    started = time.perf_counter()
    result = refresh_aggregates(writer, database)
    print(
        f"re-rated 20,000 calls of one day in {inserted:.1f} s; incremental refresh: "
        f"{result.describe()} ({time.perf_counter() - started:.1f} s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--clickhouse", default="native://127.0.0.1:19000/cdr_bench_dashboard", metavar="URL"
    )
    parser.add_argument("--calls", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--reps", type=int, default=40, help="runs per panel from the aggregates")
    parser.add_argument("--raw-reps", type=int, default=3, help="runs per panel from cdr FINAL")
    parser.add_argument("--reuse", action="store_true", help="keep data loaded by an earlier run")
    parser.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    parser.add_argument("--no-rerate", action="store_true", help="skip the incremental refresh")
    args = parser.parse_args()

    target = Target(args.clickhouse)
    database = target.database
    print(
        f"dashboard bench: {args.calls:,} calls over {args.days} days in "
        f"{target.parsed.redacted()}; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}"
    )
    writer = open_backend(target, reader=False)
    try:
        version = writer.server_version()
        print(f"ClickHouse {version[0]}.{version[1]}")
        load(writer, database, args.calls, args.days, args.reuse)
        if not args.no_rerate:
            rerate_one_day(writer, database)
        if target.embedded:
            reader = raw_reader = writer
        else:
            from pipeline.storage.native import NativeBackend

            reader = open_backend(target, reader=True)
            parsed = target.parsed
            raw_reader = NativeBackend(
                parsed.host,
                parsed.port,
                user=target.user,
                password=target.password.reveal(),
                send_receive_timeout=900,
                settings={**READER_SETTINGS, "max_execution_time": 900},
            )
        run_scenarios(reader, raw_reader, database, args)
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        if not args.keep:
            writer.execute(f"DROP DATABASE IF EXISTS {database}")
        writer.close()
    return 0


def run_scenarios(
    reader: ClickHouseBackend, raw: ClickHouseBackend, database: str, args: argparse.Namespace
) -> None:
    print()
    print(
        f"{'scope':<26} {'panel':<15} {'agg p50':>8} {'agg p99':>8} {'raw p50':>9} {'raw p99':>9}"
        f"  {'rows':>5}  same"
    )
    worst = 0.0
    for label, scope in scenarios(args.days).items():
        page: list[float] = [0.0] * args.reps
        for name in PANELS:
            run_panel(reader, database, name, scope)  # warm-up (first read of the marks)
            agg_times, agg = timed(
                lambda n=name, s=scope: run_panel(reader, database, n, s, top=None), args.reps
            )
            for i, t in enumerate(agg_times):
                page[i] += t
            raw_times, raw_result = timed(
                lambda n=name, s=scope: run_panel(raw, database, n, s, "raw", top=None),
                args.raw_reps,
            )
            same = agg.rows == raw_result.rows  # type: ignore[attr-defined]
            p99 = percentile(agg_times, 0.99)
            worst = max(worst, p99)
            print(
                f"{label:<26} {name:<15} {statistics.median(agg_times):8.1f} {p99:8.1f} "
                f"{statistics.median(raw_times):9.1f} {percentile(raw_times, 0.99):9.1f}  "
                f"{len(agg.rows):>5}  {'yes' if same else 'NO'}",
                flush=True,
            )  # type: ignore[attr-defined]
            if not same:
                print("  aggregates and cdr FINAL differ!", file=sys.stderr)
        print(
            f"{label:<26} {'(whole page)':<15} {statistics.median(page):8.1f} "
            f"{percentile(page, 0.99):8.1f}",
            flush=True,
        )
    print(f"\nworst panel p99 from the aggregates: {worst:.1f} ms (goal < 300 ms)")


if __name__ == "__main__":
    sys.exit(main())
