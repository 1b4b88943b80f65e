"""`cdr-pipeline rerate` (and `rerate-runs`, `call-history`): re-rating from the command line.

Heavy modules (clickhouse_driver, confluent_kafka) are imported inside the handlers
so that `cdr-pipeline --help` stays fast.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def parse_time(text: str) -> int:
    """Epoch milliseconds from digits, or from ISO 8601 (UTC unless an offset is given:
    2025-11-01, 2025-11-01T00:00:00Z, 2025-11-01T02:00:00+02:00)."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither epoch milliseconds nor an ISO 8601 time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def _user(given: str | None) -> str:
    if given:
        return given
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rerate",
        help="re-rate stored calls under a new tariff or policy, with an audit trail",
        description="Re-rate the calls that started in [--from, --to) with the billing "
        "configuration --config. --source clickhouse rebuilds each call from its stored "
        "CDR facts (fast; tariff and policy changes); --source kafka replays the "
        "call-events topic through the correlator (also corrections of correlation). "
        "Every changed call is written as a new version, strictly higher than any before, "
        "after its superseded version is copied to cdr_history; unchanged calls are not "
        "written. A delta report (per account and currency: old and new totals, "
        "difference, calls changed, top destinations) is printed and stored in "
        "rerate_runs. Re-running the same command after a crash resumes the run; after "
        "a finished run it changes nothing. See docs/rerating.md.",
    )
    p.add_argument(
        "--config",
        required=True,
        type=Path,
        help="the NEW billing TOML (its [clickhouse]/[kafka] sections, if any, "
        "say where the stores are)",
    )
    p.add_argument(
        "--from",
        dest="from_ms",
        required=True,
        type=parse_time,
        metavar="T1",
        help="first call start to re-rate (inclusive): ISO 8601 UTC or epoch ms",
    )
    p.add_argument(
        "--to",
        dest="to_ms",
        required=True,
        type=parse_time,
        metavar="T2",
        help="end of the range (exclusive)",
    )
    p.add_argument(
        "--account",
        dest="accounts",
        action="append",
        default=[],
        metavar="A",
        help="only this account (repeat for several; default all)",
    )
    p.add_argument(
        "--source",
        choices=("clickhouse", "kafka"),
        default="clickhouse",
        help="where calls come from (default clickhouse)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="write nothing (no CDRs, no history, no run record); print what would change",
    )
    p.add_argument("--user", help="who runs it, for the audit trail (default $USER)")
    p.add_argument(
        "--clickhouse",
        metavar="URL",
        help="native://host:port/database or chdb:///path (env CDR_CLICKHOUSE_URL)",
    )
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (--source kafka)")
    p.add_argument(
        "--topic", help="call-events topic (default: call-events with the kafka topic prefix)"
    )
    p.add_argument(
        "--kafka-margin-s",
        type=int,
        default=300,
        help="how late a switch may publish an event, in seconds: widens the "
        "replayed window on both sides (default 300)",
    )
    p.add_argument(
        "--batch-rows", type=int, default=5000, help="changed calls per insert (default 5000)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="worker processes, each re-rating a share of the calls (call-id "
        "ranges, or Kafka partitions); default the number of CPUs, at most 4; "
        "embedded chDB always runs in one",
    )
    p.add_argument(
        "--show",
        type=int,
        default=20,
        metavar="N",
        help="with --dry-run, list the first N changed calls (default 20)",
    )
    p.add_argument(
        "--report-json",
        type=Path,
        metavar="PATH",
        help="also write the run's result and delta report as JSON",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.add_argument(
        "--migrate", action="store_true", help="apply the ClickHouse schema migrations first"
    )
    p.set_defaults(handler=_run)

    runs_p = subparsers.add_parser(
        "rerate-runs",
        help="list re-rating runs, or show one run's delta report",
        description="Without --run: the latest re-rating runs (who, when, range, status, "
        "counts). With --run: that run's record and its stored delta report.",
    )
    runs_p.add_argument("--run", help="a run id")
    runs_p.add_argument("--limit", type=int, default=20)
    runs_p.add_argument("--config", type=Path, help="TOML with a [clickhouse] section")
    runs_p.add_argument("--clickhouse", metavar="URL")
    runs_p.set_defaults(handler=_runs)

    hist_p = subparsers.add_parser(
        "call-history",
        help="every billed version of a call across re-ratings",
        description="The versions of one call: those re-ratings superseded (with the run "
        "and the fields that changed) and the current one.",
    )
    hist_p.add_argument("call_id")
    hist_p.add_argument("--config", type=Path, help="TOML with a [clickhouse] section")
    hist_p.add_argument("--clickhouse", metavar="URL")
    hist_p.set_defaults(handler=_history)


def _open(args: argparse.Namespace) -> tuple[Any, str, Any]:
    from pipeline.runtime.settings import load_settings
    from pipeline.storage.url import open_clickhouse

    settings = load_settings(args.config)
    backend, database = open_clickhouse(settings.clickhouse, args.clickhouse)
    return backend, database, settings


def _run(args: argparse.Namespace) -> int:
    from pipeline.core.config import load_config
    from pipeline.rerate.connect import connector_for
    from pipeline.rerate.delta import format_report
    from pipeline.rerate.progress import Progress
    from pipeline.rerate.runner import RerateRequest, rerate

    config = load_config(args.config)
    backend, database, settings = _open(args)
    try:
        if args.migrate:
            from pipeline.storage.migrate import migrate

            migrate(backend, database, cluster=settings.clickhouse.cluster or None)
        request = RerateRequest(
            config=config,
            from_ms=args.from_ms,
            to_ms=args.to_ms,
            source=args.source,
            accounts=tuple(args.accounts),
            dry_run=args.dry_run,
            user=_user(args.user),
            database=database,
            batch_rows=args.batch_rows,
            samples=max(0, args.show),
            workers=args.workers,
        )
        connector = connector_for(
            backend, settings.clickhouse.user, settings.clickhouse.password.reveal()
        )
        progress = Progress(None, enabled=not args.no_progress)
        result = rerate(request, connector, _kafka(args, settings), progress)
    finally:
        backend.close()
    print(_header(request, result))
    print(format_report(result.delta))
    if args.dry_run and result.samples:
        print(f"\nfirst {len(result.samples)} changed calls:")
        for change in result.samples:
            print("  " + _describe(change))
    if args.report_json:
        args.report_json.write_text(json.dumps(_as_json(request, result), indent=2, sort_keys=True))
    return 0


def _kafka(args: argparse.Namespace, settings: Any) -> Any:
    if args.source != "kafka":
        return None
    from pipeline.rerate.kafka_source import KafkaReplayOptions
    from pipeline.runtime.settings import replace

    kafka = replace(settings.kafka, bootstrap=args.bootstrap)
    return KafkaReplayOptions(
        bootstrap=kafka.bootstrap,
        topic=args.topic or kafka.call_events,
        margin_s=args.kafka_margin_s,
        kafka=kafka,
    )


def _ms_text(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")


def _header(request: Any, result: Any) -> str:
    what = "dry run (nothing written)" if request.dry_run else f"run {result.run_id}"
    if result.resumed:
        what += " (resumed)"
    lines = [
        f"re-rating {what}: {request.source}, calls starting {_ms_text(request.from_ms)} .. "
        f"{_ms_text(request.to_ms)}"
        + (f", accounts {', '.join(request.accounts)}" if request.accounts else ""),
        f"tariff version {request.config.tariff_version} ({request.config.source}), "
        f"{result.calls_read} calls in {result.elapsed_s:.1f}s ({result.rate:,.0f}/s), "
        f"{result.calls_changed} changed, {result.cdrs_written} versions written"
        f" ({result.workers} worker{'s' if result.workers != 1 else ''})",
    ]
    if result.calls_new or result.older_than_stored or result.errors:
        lines.append(
            f"new calls (never stored) {result.calls_new}, replayed from fewer events than "
            f"stored (left alone) {result.older_than_stored}, errors {result.errors}"
        )
    if result.replay is not None:
        r = result.replay
        lines.append(
            f"replay: {r.records} records ({r.events} events, {r.ticks} ticks, "
            f"{r.rejected} rejected), {r.calls_out_of_range} calls out of range"
        )
    return "\n".join(lines) + "\n"


def _describe(change: Any) -> str:
    new = change.new
    old = change.old
    if old is None:
        return f"{new.call_id}: new call, {new.record_decision} fee {new.fee} {new.currency or ''}"
    from pipeline.rerate.facts import I_DECISION, I_FEE

    return (
        f"{new.call_id}: {old[I_DECISION]} {old[I_FEE]} -> {new.record_decision} {new.fee} "
        f"{new.currency or ''} (v{new.version}; {', '.join(change.changed)})"
    )


def _as_json(request: Any, result: Any) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "dry_run": request.dry_run,
        "source": request.source,
        "from_ms": request.from_ms,
        "to_ms": request.to_ms,
        "accounts": list(request.accounts),
        "tariff_version": request.config.tariff_version,
        "status": result.status,
        "calls_read": result.calls_read,
        "calls_rerated": result.calls_rerated,
        "calls_changed": result.calls_changed,
        "cdrs_written": result.cdrs_written,
        "errors": result.errors,
        "summary": result.summary(),
    }


def _runs(args: argparse.Namespace) -> int:
    from pipeline.rerate import runs

    backend, database, _ = _open(args)
    try:
        if args.run:
            record = runs.load(backend, database, args.run)
            if record is None:
                raise PipelineError(f"no re-rating run {args.run!r} in {database}.rerate_runs")
            print(json.dumps(record, indent=2, sort_keys=True, default=str))
            return 0
        for run in runs.recent(backend, database, args.limit):
            print(
                f"{run['run_id']}  {run['status']:<7} {run['source']:<10} by {run['user']:<10} "
                f"started {run['started_at']}  {_ms_text(run['from_ms'])}..{_ms_text(run['to_ms'])}"
                f"  read {run['calls_read']} changed {run['calls_changed']}"
                f" written {run['cdrs_written']}"
            )
    finally:
        backend.close()
    return 0


def _history(args: argparse.Namespace) -> int:
    from pipeline.rerate.history import call_history

    backend, database, _ = _open(args)
    try:
        versions = call_history(backend, database, args.call_id)
    finally:
        backend.close()
    if not versions:
        print(f"no call {args.call_id!r} in {database}", file=sys.stderr)
        return 1
    for v in versions:
        state = (
            f"superseded by {v['superseded_by']} -> v{v['new_version']} "
            f"({', '.join(v['changed_fields'])})"
            if v["superseded_by"]
            else "current"
        )
        print(
            f"v{v['version']}: {v['record_decision']} fee {v['fee']} {v['currency'] or ''} "
            f"cost {v['cost']} tariff {v['tariff_version']} "
            f"written by {v['rerate_run_id'] or 'live pipeline'}; {state}"
        )
    return 0
