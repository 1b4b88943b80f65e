"""ClickHouse connections for the dashboard: read-only readers in a small
pool, and one writer for the aggregate refresh.

Readers on a server run with `readonly = 2` (no writes, no DDL, whatever
the SQL says), a time limit, and the uncompressed block cache, which makes
the repeated small reads of a dashboard several times faster. chDB is one
engine per process: readers and the refresher share one backend there.

On the secured stack the dashboard's own ClickHouse user has `readonly = 2`
in its profile, which no client setting lowers (docs/security.md), and the
connection is TLS (`[clickhouse] secure`, or `?secure=1` in the URL).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError
from pipeline.runtime.settings import Secret
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.url import ClickHouseUrl, parse_clickhouse_url, tls_of

if TYPE_CHECKING:
    from pipeline.storage.native import ClickHouseTls

READER_SETTINGS = {
    "readonly": 2,
    "max_execution_time": 30,
    "use_uncompressed_cache": 1,
}


@dataclass(frozen=True)
class Target:
    """Where the CDRs are and how to log in (credentials from configuration)."""

    url: str
    user: str = "default"
    password: Secret = Secret("")
    tls: ClickHouseTls | None = None  # the settings' TLS; the URL's own options win

    @property
    def parsed(self) -> ClickHouseUrl:
        return parse_clickhouse_url(self.url)

    @property
    def database(self) -> str:
        return self.parsed.database

    @property
    def embedded(self) -> bool:
        return self.parsed.scheme == "chdb"


def open_backend(target: Target, *, reader: bool) -> ClickHouseBackend:
    parsed = target.parsed
    if parsed.scheme == "native":
        from pipeline.storage.native import NativeBackend

        return NativeBackend(
            parsed.host,
            parsed.port,
            user=target.user,
            password=target.password.reveal(),
            settings=READER_SETTINGS if reader else None,
            tls=tls_of(parsed, target.tls),
        )
    if parsed.scheme == "chdb":
        from pipeline.storage.embedded import EmbeddedBackend

        return EmbeddedBackend(parsed.path)
    raise ConfigError(f"unsupported ClickHouse URL {target.url!r}")  # pragma: no cover


class BackendPool:
    """A fixed set of backends handed out one request at a time."""

    def __init__(self, factory: Callable[[], ClickHouseBackend], size: int) -> None:
        self._all = [factory() for _ in range(max(1, size))]
        self._free: queue.Queue[ClickHouseBackend] = queue.Queue()
        for backend in self._all:
            self._free.put(backend)

    @classmethod
    def shared(cls, backend: ClickHouseBackend) -> BackendPool:
        """One backend used by every request in turn (chDB)."""
        return cls(lambda: backend, 1)

    @contextmanager
    def connection(self, timeout: float = 60.0) -> Iterator[ClickHouseBackend]:
        backend = self._free.get(timeout=timeout)
        try:
            yield backend
        finally:
            self._free.put(backend)

    def close(self) -> None:
        for backend in self._all:
            backend.close()
