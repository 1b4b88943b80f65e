"""`cdr-pipeline db migrate`: create or update the ClickHouse schema."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def clickhouse_from(args: argparse.Namespace) -> tuple[Any, str]:
    """The backend and database named by --clickhouse, else the settings file / env."""
    from pipeline.runtime.settings import load_settings
    from pipeline.storage.url import open_clickhouse

    settings = load_settings(getattr(args, "config", None))
    return open_clickhouse(settings.clickhouse, getattr(args, "clickhouse", None))


def _migrate(args: argparse.Namespace) -> int:
    from pipeline.runtime.settings import load_settings
    from pipeline.storage.migrate import migrate

    cluster = args.cluster or load_settings(getattr(args, "config", None)).clickhouse.cluster
    backend, database = clickhouse_from(args)
    try:
        applied = migrate(backend, database, cluster=cluster or None)
    finally:
        backend.close()
    print(f"{database}: applied {', '.join(applied)}" if applied
          else f"{database}: schema is current")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("db", help="ClickHouse schema commands",
                       description="Manage the ClickHouse schema of the CDR store.")
    actions = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    m = actions.add_parser("migrate", help="apply pending schema migrations (safe to repeat)")
    m.add_argument("--config", type=Path, help="TOML file with a [clickhouse] section")
    m.add_argument("--clickhouse", metavar="URL",
                   help="native://host:port/db or chdb:///dir "
                        "(default from config / CDR_CLICKHOUSE_URL)")
    m.add_argument("--cluster", metavar="NAME",
                   help="create the tables ON CLUSTER NAME: replicated shards behind "
                        "Distributed tables (default [clickhouse] cluster / "
                        "CDR_CLICKHOUSE_CLUSTER; docs/clickhouse.md)")
    m.set_defaults(handler=_migrate)
