"""Open a ClickHouse backend from a URL.

- `native://host[:port][/database]`: a ClickHouse server over the native TCP
  protocol (clickhouse-driver); port 9000 and database `cdr` by default.
- `chdb:///absolute/dir[?database=name]` or `chdb://relative/dir`: embedded chDB
  on a data directory; database `cdr` by default.

The database is returned apart from the backend: the connection itself uses the
server's `default` database, so opening works before the first migration has
created the CDR database.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.errors import ConfigError
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.sql import check_identifier

DEFAULT_DATABASE = "cdr"
DEFAULT_NATIVE_PORT = 9000


@dataclass(frozen=True)
class ClickHouseUrl:
    scheme: str  # "native" or "chdb"
    database: str
    host: str = ""
    port: int = 0
    path: str = ""  # chdb data directory

    def redacted(self) -> str:
        if self.scheme == "native":
            return f"native://{self.host}:{self.port}/{self.database}"
        return f"chdb://{self.path}?database={self.database}"


def parse_clickhouse_url(url: str) -> ClickHouseUrl:
    """Parse and validate; ConfigError names what is wrong."""
    parts = urlsplit(url.strip())
    query = parse_qs(parts.query)
    if parts.scheme == "native":
        if not parts.hostname:
            raise ConfigError(f"ClickHouse URL {url!r}: no host")
        try:
            port = parts.port or DEFAULT_NATIVE_PORT
        except ValueError:
            raise ConfigError(f"ClickHouse URL {url!r}: invalid port") from None
        name = parts.path.strip("/") or query.get("database", [""])[0]
        return ClickHouseUrl("native", _database(url, name), host=parts.hostname, port=port)
    if parts.scheme == "chdb":
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ConfigError(f"ClickHouse URL {url!r}: chdb:// needs a data directory")
        return ClickHouseUrl("chdb", _database(url, query.get("database", [""])[0]), path=path)
    raise ConfigError(
        f"ClickHouse URL {url!r}: expected native://host:port/database or chdb:///path/to/dir"
    )


def _database(url: str, name: str) -> str:
    name = name or DEFAULT_DATABASE
    try:
        return check_identifier(name, "database name")
    except ValueError as exc:
        raise ConfigError(f"ClickHouse URL {url!r}: {exc}") from None


def open_backend(
    url: str, user: str = "default", password: str = ""
) -> tuple[ClickHouseBackend, str]:
    """The backend for `url` and the database the CDR tables live in."""
    target = parse_clickhouse_url(url)
    if target.scheme == "native":
        from pipeline.storage.native import NativeBackend

        native = NativeBackend(target.host, target.port, user=user, password=password)
        return native, target.database
    from pipeline.storage.embedded import EmbeddedBackend

    return EmbeddedBackend(target.path), target.database
