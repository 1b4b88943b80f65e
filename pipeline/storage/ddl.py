"""Render the version-gated DDL templates in schemas/clickhouse/.

The migration files are plain ClickHouse SQL plus `{{...}}` markers, replaced
for the server the migration runs against:

`{{db}}`
    the target database name (validated identifier).
`{{LowCardinality(T)}}`
    `LowCardinality(T)` on servers where it is production-ready (>= 19.3),
    plain `T` before (18.16 has it only behind an experimental setting).
`{{TTL <expr>}}`
    `TTL <expr>` on servers with table/column TTL (>= 19.6), nothing before.
`{{since X.Y: <text>}}`
    `<text>` on servers >= X.Y, nothing before.
`{{before X.Y: <text>}}`
    `<text>` on servers < X.Y, nothing from X.Y on.

Anything else between `{{` and `}}` is an error naming the file, as is a
stray `{{` or `}}` left after rendering. Markers are replaced everywhere,
comments included, so comments should not contain double braces.
"""

from __future__ import annotations

import re

from pipeline.storage.backend import ServerVersion, supports
from pipeline.storage.errors import MigrationError
from pipeline.storage.sql import check_identifier

_MARKER = re.compile(r"\{\{(.*?)\}\}", re.S)
_LOW_CARDINALITY = re.compile(r"^LowCardinality\((.+)\)$", re.S)
_TTL = re.compile(r"^TTL\s+(.+)$", re.S)
_GATE = re.compile(r"^(since|before)\s+(\d+)\.(\d+)\s*:(.*)$", re.S)


def render_ddl(
    template: str, server_version: ServerVersion, database: str, source: str = "<ddl>"
) -> str:
    """Return `template` with every marker resolved for `server_version`."""
    try:
        check_identifier(database, "database name")
    except ValueError as exc:
        raise MigrationError(f"{source}: {exc}") from exc

    def replace(m: re.Match[str]) -> str:
        body = m.group(1).strip()
        if body == "db":
            return database
        lc = _LOW_CARDINALITY.match(body)
        if lc:
            inner = lc.group(1).strip()
            return (
                f"LowCardinality({inner})" if supports(server_version, "low_cardinality") else inner
            )
        ttl = _TTL.match(body)
        if ttl:
            return f"TTL {ttl.group(1).strip()}" if supports(server_version, "ttl") else ""
        gate = _GATE.match(body)
        if gate:
            kind, major, minor, text = gate.groups()
            at_least = tuple(server_version) >= (int(major), int(minor))
            keep = at_least if kind == "since" else not at_least
            return text if keep else ""
        raise MigrationError(f"{source}: unknown template marker {m.group(0)!r}")

    rendered = _MARKER.sub(replace, template)
    for stray in ("{{", "}}"):
        if stray in rendered:
            line = rendered[: rendered.index(stray)].count("\n") + 1
            raise MigrationError(f"{source}: unbalanced {stray!r} near rendered line {line}")
    return rendered


# -- the same schema on a cluster ------------------------------------------------------

_CREATE_TABLE = re.compile(
    r"^(?P<head>CREATE TABLE IF NOT EXISTS )(?P<db>\w+)\.(?P<table>\w+)(?P<body>\s*\(.*)$", re.S
)
_ENGINE = re.compile(r"ENGINE\s*=\s*(?P<engine>\w*MergeTree)(?:\((?P<args>[^()]*)\))?")
_LEADING_COMMENTS = re.compile(r"^(?:\s*--[^\n]*\n)*\s*")


def cluster_statements(statement: str, cluster: str, database: str, source: str) -> list[str]:
    """One rendered `CREATE TABLE IF NOT EXISTS db.T (...) ENGINE = XMergeTree(args) ...`
    as the cluster has it (pipeline.storage.cluster): `db.T_local ON CLUSTER` with
    `ReplicatedXMergeTree('<zookeeper path>', '{replica}', args)`, then `db.T ON CLUSTER`
    as a Distributed table over them, sharded by the table's key. A table kept whole on
    every server (cluster.EVERYWHERE) keeps its name and gets no Distributed table. Other
    statements are refused, naming the file: teach this function before a migration
    uses them."""
    from pipeline.storage.cluster import EVERYWHERE, local_name, sharding_key, zookeeper_path

    check_identifier(cluster, "cluster name")
    text = _LEADING_COMMENTS.sub("", statement, count=1)
    create = _CREATE_TABLE.match(text)
    engine = _ENGINE.search(text) if create else None
    if create is None or engine is None:
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise MigrationError(
            f"{source}: cannot render {first[:60]!r} for a cluster: only CREATE TABLE IF NOT "
            "EXISTS ... ENGINE = *MergeTree is known (pipeline/storage/ddl.py)"
        )
    if create.group("db") != database:
        raise MigrationError(f"{source}: table {create.group('db')}.{create.group('table')} "
                             f"is not in database {database}")
    table = create.group("table")
    args = (engine.group("args") or "").strip()
    zk_args = f"'{zookeeper_path(database, table)}', '{{replica}}'" + (f", {args}" if args else "")
    replicated = f"ENGINE = Replicated{engine.group('engine')}({zk_args})"
    body = create.group("body")
    body = body[: engine.start() - create.start("body")] + replicated + body[
        engine.end() - create.start("body") :
    ]
    name = table if table in EVERYWHERE else local_name(table)
    statements = [f"{create.group('head')}{database}.{name} ON CLUSTER {cluster}{body}"]
    if table not in EVERYWHERE:
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {database}.{table} ON CLUSTER {cluster}\n"
            f"({_distributed_columns(_column_list(body, source))})\n"
            f"ENGINE = Distributed({cluster}, {database}, {name}, {sharding_key(table)})"
        )
    return statements


def _column_list(body: str, source: str) -> str:
    """The text inside the parentheses that open `body` (the column definitions)."""
    start = body.index("(")
    depth, quoted = 0, False
    for k in range(start, len(body)):
        char = body[k]
        if char == "'" and body[k - 1] != "\\":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth == 0:
                return body[start + 1 : k]
    raise MigrationError(f"{source}: unbalanced parentheses in a CREATE TABLE")


def _distributed_columns(columns: str) -> str:
    """The local table's columns as the Distributed table in front declares them:
    MATERIALIZED ones become ALIAS (an insert through a Distributed table sends every
    column it has to the shards, and a shard refuses values for a MATERIALIZED column;
    a read of the ALIAS goes to the shards as written, where it is the stored column),
    and data skipping indices stay with the local table."""
    kept = [
        line.replace(" MATERIALIZED ", " ALIAS ")
        for line in columns.split("\n")
        if not line.strip().startswith("INDEX ")
    ]
    return "\n".join(kept).rstrip().rstrip(",")
