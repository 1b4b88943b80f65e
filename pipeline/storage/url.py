"""Open a ClickHouse backend from a URL.

- `native://host[:port][/database][?secure=1&ca_file=PATH&verify=0]`: a ClickHouse
  server over the native TCP protocol (clickhouse-driver); port 9000 and database
  `cdr` by default. `secure=1` connects with TLS (the server's tcp_port_secure),
  checking its certificate against `ca_file`; the URL's TLS options win over the
  [clickhouse] `secure`/`ca_file`/`verify` settings, so a `--clickhouse URL` can
  name a TLS port on its own (docs/security.md).
- `chdb:///absolute/dir[?database=name]` or `chdb://relative/dir`: embedded chDB
  on a data directory; database `cdr` by default.

The database is returned apart from the backend: the connection itself uses the
server's `default` database, so opening works before the first migration has
created the CDR database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from pipeline.errors import ConfigError
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.sql import check_identifier

if TYPE_CHECKING:
    from pipeline.runtime.settings import ClickHouseSettings
    from pipeline.storage.native import ClickHouseTls

DEFAULT_DATABASE = "cdr"
DEFAULT_NATIVE_PORT = 9000


@dataclass(frozen=True)
class ClickHouseUrl:
    scheme: str  # "native" or "chdb"
    database: str
    host: str = ""
    port: int = 0
    path: str = ""  # chdb data directory
    secure: bool | None = None  # None: the URL does not say (the settings decide)
    ca_file: str = ""
    verify: bool = True

    def redacted(self) -> str:
        if self.scheme == "native":
            tls = "?secure=1" if self.secure else ""
            return f"native://{self.host}:{self.port}/{self.database}{tls}"
        return f"chdb://{self.path}?database={self.database}"


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _flag(url: str, query: dict[str, list[str]], key: str) -> bool | None:
    if key not in query:
        return None
    value = query[key][-1].strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ConfigError(f"ClickHouse URL {url!r}: {key} must be 1 or 0, got {value!r}")


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
        unknown = sorted(set(query) - {"database", "secure", "ca_file", "verify"})
        if unknown:
            raise ConfigError(f"ClickHouse URL {url!r}: unknown option {unknown[0]!r} "
                              "(known: database, secure, ca_file, verify)")
        verify = _flag(url, query, "verify")
        return ClickHouseUrl("native", _database(url, name), host=parts.hostname, port=port,
                             secure=_flag(url, query, "secure"),
                             ca_file=query.get("ca_file", [""])[-1],
                             verify=True if verify is None else verify)
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


def tls_of(target: ClickHouseUrl, default: ClickHouseTls | None = None) -> ClickHouseTls | None:
    """The TLS a native URL asks for: its own `secure`/`ca_file`/`verify` when it has
    them, else `default` (from the settings)."""
    if target.scheme != "native":
        return None
    if target.secure is None:
        if default is not None and target.ca_file:
            from pipeline.storage.native import ClickHouseTls

            return ClickHouseTls(target.ca_file, target.verify)
        return default
    if not target.secure:
        return None
    from pipeline.storage.native import ClickHouseTls

    ca_file = target.ca_file or (default.ca_file if default is not None else "")
    return ClickHouseTls(ca_file, target.verify)


def settings_tls(settings: ClickHouseSettings) -> ClickHouseTls | None:
    """The TLS the [clickhouse] settings ask for (None: plaintext)."""
    if not settings.secure:
        return None
    from pipeline.storage.native import ClickHouseTls

    return ClickHouseTls(settings.ca_file, settings.verify)


def open_clickhouse(
    settings: ClickHouseSettings, url: str | None = None
) -> tuple[ClickHouseBackend, str]:
    """The backend and CDR database for `url` (default: the settings' URL), logged in
    with the settings' user and password, with their TLS unless the URL says otherwise."""
    return open_backend(url or settings.url, settings.user, settings.password.reveal(),
                        tls=settings_tls(settings))


def open_backend(
    url: str, user: str = "default", password: str = "", *, tls: ClickHouseTls | None = None
) -> tuple[ClickHouseBackend, str]:
    """The backend for `url` and the database the CDR tables live in; `tls` applies to
    a native URL that does not say itself (see `tls_of`)."""
    target = parse_clickhouse_url(url)
    if target.scheme == "native":
        from pipeline.storage.native import NativeBackend

        native = NativeBackend(target.host, target.port, user=user, password=password,
                               tls=tls_of(target, tls))
        return native, target.database
    from pipeline.storage.embedded import EmbeddedBackend

    return EmbeddedBackend(target.path), target.database
