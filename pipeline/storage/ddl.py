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
