"""`cdr-pipeline report` and `cdr-pipeline dashboard [refresh]`.

Heavy imports (starlette, uvicorn, ClickHouse drivers) happen inside the
handlers so that `cdr-pipeline --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, PipelineError

log = logging.getLogger(__name__)

_URL_HELP = (
    "native://host:port/database or chdb:///path/to/dir (default from --config, "
    "env CDR_CLICKHOUSE_URL, else native://127.0.0.1:19000/cdr)"
)


def register(sub: Any) -> None:
    """Add `dashboard` (serve, refresh) and `report`."""
    _register_dashboard(sub)
    _register_report(sub)


# -- shared ---------------------------------------------------------------------------------


def _target(args: argparse.Namespace) -> Any:
    from pipeline.dashboard.db import Target
    from pipeline.runtime.settings import load_settings
    from pipeline.storage.url import settings_tls

    settings = load_settings(args.config)
    url = args.clickhouse or settings.clickhouse.url
    return settings, Target(url, settings.clickhouse.user, settings.clickhouse.password,
                            settings_tls(settings.clickhouse))


def _check_schema(backend: Any, database: str, migrate_first: bool, cluster: str = "") -> None:
    if migrate_first:
        from pipeline.storage.migrate import migrate

        applied = migrate(backend, database, cluster=cluster or None)
        log.info("migrations applied to %s: %s", database, ", ".join(applied) or "none")
        return
    rows = backend.execute(
        "SELECT count() FROM system.tables WHERE database = {db:String} "
        "AND name IN ('cdr', 'cdr_agg', 'cdr_newest', 'cdr_agg_refresh')",
        {"db": database},
    )
    if int(rows[0][0]) < 4:
        raise PipelineError(
            f"database {database} lacks the CDR or dashboard tables: run "
            "`cdr-pipeline db migrate` (or pass --migrate)"
        )


# -- dashboard ----------------------------------------------------------------------------------


def _common(suppress: bool) -> argparse.ArgumentParser:
    """Options of `dashboard` and `dashboard refresh`. On the subcommand they
    default to SUPPRESS, so that `dashboard --config X refresh` keeps X."""
    common = argparse.ArgumentParser(add_help=False)
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    common.add_argument(
        "--config",
        type=Path,
        **extra,
        help="TOML with [clickhouse] and [dashboard] (token: env CDR_DASHBOARD_TOKEN)",
    )
    common.add_argument("--clickhouse", metavar="URL", help=_URL_HELP, **extra)
    common.add_argument(
        "--migrate",
        action="store_true",
        **extra,
        help="apply the ClickHouse schema migrations first",
    )
    return common


def _register_dashboard(sub: Any) -> None:
    common = _common(suppress=False)

    p = sub.add_parser(
        "dashboard",
        parents=[common],
        help="serve the web dashboard (or refresh its aggregates)",
        description="Serve the analytics dashboard: calls and ASR, revenue and margin over "
        "time, hangup sources and server reasons, revenue at risk, top destinations and "
        "gateways, with filters and auto-refresh. Reads ClickHouse (server or chDB) through "
        "the aggregates of migration 0003, which this process keeps fresh. A read-only token "
        "from the configuration ([dashboard] token or CDR_DASHBOARD_TOKEN, 16+ characters) "
        "protects every page; without one the dashboard does not start. "
        "`dashboard refresh` updates the aggregates once and exits (cron, or after a bulk "
        "load). See docs/dashboards.md.",
    )
    p.add_argument("--host", help="listen address (default 127.0.0.1, or [dashboard] host)")
    p.add_argument("--port", type=int, help="listen port (default 8050, or [dashboard] port)")
    p.add_argument(
        "--refresh-interval",
        type=float,
        default=60.0,
        metavar="S",
        help="refresh the aggregates every S seconds in this process "
        "(default 60; 0 = never: another process refreshes)",
    )
    p.add_argument(
        "--page-refresh",
        type=int,
        default=30,
        metavar="S",
        help="default auto-refresh of the page in seconds (default 30; 0 = off)",
    )
    p.add_argument(
        "--readers",
        type=int,
        default=4,
        help="ClickHouse connections for page requests (default 4)",
    )
    p.add_argument("--top", type=int, default=10, help="rows of the top-N panels (default 10)")
    p.set_defaults(handler=_serve)
    actions = p.add_subparsers(dest="dashboard_command", metavar="ACTION")
    r = actions.add_parser(
        "refresh",
        parents=[_common(suppress=True)],
        help="bring the dashboard aggregates up to date once",
        description="Recompute the aggregates of the days that received CDR versions since "
        "the last refresh (all days with --full), from the newest versions, and exit.",
    )
    r.add_argument("--full", action="store_true", help="recompute every day")
    r.set_defaults(handler=_refresh)


def _refresh(args: argparse.Namespace) -> int:
    from pipeline.dashboard.db import open_backend
    from pipeline.dashboard.refresh import refresh_aggregates

    settings, target = _target(args)
    backend = open_backend(target, reader=False)
    try:
        _check_schema(backend, target.database, args.migrate, settings.clickhouse.cluster)
        result = refresh_aggregates(backend, target.database, full=args.full)
    finally:
        backend.close()
    print(f"{target.database}: {result.describe()}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline.dashboard.app import DashboardState, create_app
    from pipeline.dashboard.db import BackendPool, open_backend
    from pipeline.dashboard.refresh import Refresher
    from pipeline.runtime.http_auth import TokenGate

    settings, target = _target(args)
    gate = TokenGate(settings.dashboard.token.reveal())  # refuses to start without a token
    host = args.host or settings.dashboard.host
    port = args.port if args.port is not None else settings.dashboard.port
    if args.readers < 1 or args.top < 1 or args.page_refresh < 0 or args.refresh_interval < 0:
        raise ConfigError("--readers and --top must be >= 1, the intervals >= 0")
    writer = open_backend(target, reader=False)
    pool = (
        BackendPool.shared(writer)
        if target.embedded
        else BackendPool(lambda: open_backend(target, reader=True), args.readers)
    )
    refresher: Refresher | None = None
    try:
        _check_schema(writer, target.database, args.migrate, settings.clickhouse.cluster)
        if args.refresh_interval > 0:
            refresher = Refresher(writer, target.database, args.refresh_interval)
            refresher.start()
        state = DashboardState(
            pool=pool,
            database=target.database,
            gate=gate,
            page_refresh_s=args.page_refresh,
            top=args.top,
            refresher=refresher,
        )
        log.info("dashboard on http://%s:%s/ reading %s", host, port, target.parsed.redacted())
        uvicorn.run(
            create_app(state),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            server_header=False,
        )
    finally:
        if refresher is not None:
            refresher.stop()
        pool.close()
        writer.close()
    return 0


# -- report ----------------------------------------------------------------------------------------


def _register_report(sub: Any) -> None:
    from pipeline.dashboard.queries import PANELS

    p = sub.add_parser(
        "report",
        help="dashboard figures as tables, CSV or JSON",
        description="Print the dashboard's figures for a time range: totals (attempts, "
        "answered, ASR, ACD, PDD, billable minutes, revenue, cost, margin, revenue at risk "
        "per currency), calls and money over time, hangup sources and server reasons, revenue "
        "at risk by decision reason, top destinations, gateways and accounts. Each call counts "
        "once, in its newest version. Times are UTC: ISO 8601 (2024-06-01, "
        "2024-06-01T12:00Z) or epoch ms. Without --from/--to/--last: every day with calls.",
    )
    p.add_argument("--config", type=Path, help="TOML file with a [clickhouse] section")
    p.add_argument("--clickhouse", metavar="URL", help=_URL_HELP)
    p.add_argument("--from", dest="start", metavar="TIME", help="first call start (inclusive)")
    p.add_argument("--to", dest="end", metavar="TIME", help="last call start (exclusive)")
    p.add_argument("--last", metavar="DURATION", help="the last 90m / 24h / 7d ... until now")
    p.add_argument("--account", help="only this account")
    p.add_argument("--gateway", help="only calls through this gateway (ingress or egress)")
    p.add_argument(
        "--panel",
        action="append",
        metavar="NAME",
        help=f"panel(s) to print, repeatable or comma-separated: {', '.join(PANELS)} "
        "(default: all; CSV takes exactly one)",
    )
    p.add_argument("--top", type=int, default=10, help="rows of the top-N panels (default 10)")
    p.add_argument(
        "--step",
        metavar="DURATION",
        help="time step of the series panels (default: at most 200 points)",
    )
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument(
        "--source",
        choices=("agg", "raw"),
        default="agg",
        help="agg: the aggregates (fast, default); raw: cdr FINAL (slow, the reference)",
    )
    p.add_argument(
        "--no-refresh",
        action="store_true",
        help="do not bring the aggregates up to date first (read-only users)",
    )
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from pipeline.dashboard.db import open_backend
    from pipeline.dashboard.queries import MINUTE_MS, PANELS, ScopeError
    from pipeline.dashboard.refresh import refresh_aggregates
    from pipeline.dashboard.report import (
        Filters,
        build_report,
        format_csv,
        format_json,
        format_report,
    )
    from pipeline.dashboard.timeparse import ceil_to, now_ms, parse_duration, parse_instant
    from pipeline.storage.errors import StorageError

    panels = [n.strip() for item in (args.panel or []) for n in item.split(",") if n.strip()]
    panels = panels or list(PANELS)
    unknown = [n for n in panels if n not in PANELS]
    if unknown:
        raise ConfigError(f"--panel: unknown {', '.join(unknown)} (known: {', '.join(PANELS)})")
    if args.format == "csv" and len(panels) != 1:
        raise ConfigError("--format csv holds one table: choose one --panel")
    if args.top < 1:
        raise ConfigError("--top must be >= 1")
    try:
        now = now_ms()
        start = parse_instant(args.start, now) if args.start else None
        end = parse_instant(args.end, now) if args.end else None
        if args.last:
            if args.start:
                raise ConfigError("--last and --from exclude each other")
            end = end if end is not None else ceil_to(now, MINUTE_MS)
            start = end - parse_duration(args.last)
        step = parse_duration(args.step) if args.step else None
        filters = Filters(start, end, account=args.account or None, gateway=args.gateway or None)
    except ScopeError as exc:
        raise ConfigError(str(exc)) from None

    _, target = _target(args)
    backend = open_backend(target, reader=False)
    try:
        _check_schema(backend, target.database, False)
        if args.source == "agg" and not args.no_refresh:
            try:
                result = refresh_aggregates(backend, target.database)
                log.info("%s", result.describe())
            except StorageError as exc:
                log.warning("could not refresh the aggregates (%s); they may be stale", exc)
        try:
            report = build_report(
                backend,
                target.database,
                filters,
                source=args.source,
                panels=panels,
                top=args.top,
                step_ms=step,
            )
        except ScopeError as exc:
            raise ConfigError(str(exc)) from None
    finally:
        backend.close()
    if args.format == "json":
        print(format_json(report))
    elif args.format == "csv":
        if report.scope is None:
            raise PipelineError("no calls stored")
        print(format_csv(report.panels[panels[0]]), end="")
    else:
        print(format_report(report))
    return 0
