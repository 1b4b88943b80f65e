"""Apply the versioned DDL in schemas/clickhouse/ to a ClickHouse backend.

Files named `NNNN_<name>.sql` are migrations, applied in version order, each
once per database; `schema_migrations.sql` creates the bookkeeping table
first. Files are templates (see `pipeline.storage.ddl`), rendered for the
server's version before they run.

ClickHouse DDL is not transactional: a migration interrupted half-way is not
recorded and runs again from its first statement next time. Every statement
must therefore be idempotent (`CREATE ... IF NOT EXISTS`, and on servers that
have it `ADD COLUMN IF NOT EXISTS`). Two migrators racing on one database are
harmless for the same reason (each may record the version; the table keeps
one row per version).

On a cluster (`migrate(..., cluster=NAME)`, `cdr-pipeline db migrate --cluster NAME`) each
table is created ON CLUSTER as a replicated `<table>_local` per shard with a Distributed
`<table>` in front (`ddl.cluster_statements`, docs/clickhouse.md); `schema_migrations` is
one replicated table on every server, so a migration is recorded once per cluster. A
database already on a cluster is migrated as one without being told.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.cluster import table_cluster
from pipeline.storage.ddl import cluster_statements, render_ddl
from pipeline.storage.errors import MigrationError, StorageError
from pipeline.storage.sql import check_identifier, split_statements

logger = logging.getLogger(__name__)

SCHEMA_DIR_ENV = "CDR_SCHEMA_DIR"
BOOTSTRAP_FILE = "schema_migrations.sql"
_MIGRATION_NAME = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # file name, e.g. "0001_cdr.sql"
    path: Path
    text: str

    @property
    def checksum(self) -> str:
        return checksum_of(self.text)


def checksum_of(text: str) -> str:
    """sha256 of the template text with line endings normalised."""
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def schema_dir() -> Path:
    """`$CDR_SCHEMA_DIR` if set, else `<repo root>/schemas/clickhouse`
    (this file is `<repo root>/pipeline/storage/migrate.py`)."""
    override = os.environ.get(SCHEMA_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "schemas" / "clickhouse"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """The numbered migration files in `directory`, sorted by version."""
    directory = directory if directory is not None else schema_dir()
    if not directory.is_dir():
        raise MigrationError(f"schema directory {directory} does not exist")
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.iterdir()):
        m = _MIGRATION_NAME.match(path.name)
        if not m or not path.is_file():
            continue
        version = int(m.group(1))
        if version in migrations:
            raise MigrationError(
                f"{path.name}: version {version:04d} already used by {migrations[version].name}"
            )
        migrations[version] = Migration(
            version=version, name=path.name, path=path, text=path.read_text(encoding="utf-8")
        )
    return [migrations[v] for v in sorted(migrations)]


def _run_script(
    backend: ClickHouseBackend,
    text: str,
    source: str,
    cluster: str | None = None,
    database: str = "",
) -> int:
    try:
        statements = split_statements(text)
    except ValueError as exc:
        raise MigrationError(f"{source}: {exc}") from exc
    if cluster:
        statements = [
            out for statement in statements
            for out in cluster_statements(statement, cluster, database, source)
        ]
    for index, statement in enumerate(statements, 1):
        logger.debug("%s: statement %s/%s", source, index, len(statements))
        try:
            backend.execute(statement)
        except StorageError as exc:
            raise type(exc)(f"{source}: statement {index} failed: {exc.message}", exc.code) from exc
    return len(statements)


def schema_cluster(
    backend: ClickHouseBackend, database: str, cluster: str | None
) -> str | None:
    """The cluster to migrate `database` on: `cluster`, or the one its `cdr` table is
    already spread over. MigrationError when asked for a cluster on a database that
    holds the single-server schema (or the other way round)."""
    present = backend.execute(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = 'cdr'",
        {"db": database},
    )[0][0]
    if not int(present):
        return cluster
    found = table_cluster(backend, database, "cdr")
    if cluster and found != cluster:
        where = f"is on cluster {found}" if found else "holds the single-server schema"
        raise MigrationError(f"database {database} {where}: cannot migrate it on cluster {cluster}")
    if found and not cluster:
        logger.info("database %s is on cluster %s: migrating it there", database, found)
    return found


def migrate(
    backend: ClickHouseBackend,
    database: str = "cdr",
    directory: Path | None = None,
    cluster: str | None = None,
) -> list[str]:
    """Bring `database` up to date; return the file names applied this time
    (empty when already current). Safe to run repeatedly. With `cluster` (or on a
    database already on one) every table is created ON CLUSTER as replicated shards
    behind a Distributed table (see the module docstring)."""
    check_identifier(database, "database name")
    if cluster is not None:
        check_identifier(cluster, "cluster name")
    directory = directory if directory is not None else schema_dir()
    migrations = load_migrations(directory)
    version = backend.server_version()
    version_text = f"{version[0]}.{version[1]}"

    cluster = schema_cluster(backend, database, cluster or None)
    on_cluster = f" ON CLUSTER {cluster}" if cluster else ""
    backend.execute(f"CREATE DATABASE IF NOT EXISTS {database}{on_cluster}")
    bootstrap = directory / BOOTSTRAP_FILE
    if not bootstrap.is_file():
        raise MigrationError(f"{bootstrap} is missing")
    _run_script(
        backend,
        render_ddl(bootstrap.read_text(encoding="utf-8"), version, database, BOOTSTRAP_FILE),
        BOOTSTRAP_FILE,
        cluster,
        database,
    )

    recorded: dict[int, tuple[str, str]] = {
        int(v): (str(name), str(checksum))
        for v, name, checksum in backend.execute(
            f"SELECT version, name, checksum FROM {database}.schema_migrations FINAL"
        )
    }
    on_disk = {m.version for m in migrations}
    for v in sorted(set(recorded) - on_disk):
        logger.warning(
            "database %s has migration %s (%s) applied that is not in %s",
            database,
            v,
            recorded[v][0],
            directory,
        )

    applied: list[str] = []
    for migration in migrations:
        if migration.version in recorded:
            name, checksum = recorded[migration.version]
            if checksum != migration.checksum:
                raise MigrationError(
                    f"{migration.name}: changed after it was applied to database {database} "
                    f"(recorded as {name} with checksum {checksum[:12]}..., file now "
                    f"{migration.checksum[:12]}...); never edit an applied migration, "
                    "add a new one"
                )
            continue
        rendered = render_ddl(migration.text, version, database, migration.name)
        logger.info("applying %s to %s (server %s)", migration.name, database, version_text)
        count = _run_script(backend, rendered, migration.name, cluster, database)
        backend.insert_columns(
            f"{database}.schema_migrations",
            ["version", "name", "checksum", "server_version", "statements"],
            [[migration.version], [migration.name], [migration.checksum], [version_text], [count]],
            dedup_token=None,
        )
        applied.append(migration.name)
    if applied:
        logger.info("database %s: applied %s", database, ", ".join(applied))
    else:
        logger.debug("database %s: schema up to date", database)
    return applied
