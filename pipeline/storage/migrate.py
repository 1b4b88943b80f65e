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
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.ddl import render_ddl
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


def _run_script(backend: ClickHouseBackend, text: str, source: str) -> int:
    try:
        statements = split_statements(text)
    except ValueError as exc:
        raise MigrationError(f"{source}: {exc}") from exc
    for index, statement in enumerate(statements, 1):
        logger.debug("%s: statement %s/%s", source, index, len(statements))
        try:
            backend.execute(statement)
        except StorageError as exc:
            raise type(exc)(f"{source}: statement {index} failed: {exc.message}", exc.code) from exc
    return len(statements)


def migrate(
    backend: ClickHouseBackend, database: str = "cdr", directory: Path | None = None
) -> list[str]:
    """Bring `database` up to date; return the file names applied this time
    (empty when already current). Safe to run repeatedly."""
    check_identifier(database, "database name")
    directory = directory if directory is not None else schema_dir()
    migrations = load_migrations(directory)
    version = backend.server_version()
    version_text = f"{version[0]}.{version[1]}"

    backend.execute(f"CREATE DATABASE IF NOT EXISTS {database}")
    bootstrap = directory / BOOTSTRAP_FILE
    if not bootstrap.is_file():
        raise MigrationError(f"{bootstrap} is missing")
    _run_script(
        backend,
        render_ddl(bootstrap.read_text(encoding="utf-8"), version, database, BOOTSTRAP_FILE),
        BOOTSTRAP_FILE,
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
        count = _run_script(backend, rendered, migration.name)
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
