"""How a re-rating reaches ClickHouse: one connection to write, one to stream reads,
and, for parallel workers, fresh ones in every worker process.

A server (native protocol) can be connected to as often as needed, so the work can be
split across processes. An embedded chDB engine lives inside one process and cannot be
shared with a forked child: there the run stays in-process, on the given backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pipeline.rerate.store import BackendRowStream, NativeRowStream, RowStream
from pipeline.storage.backend import ClickHouseBackend

if TYPE_CHECKING:
    from pipeline.storage.native import ClickHouseTls


class Connector(Protocol):
    forkable: bool  # True: worker processes may open connections of their own

    def backend(self) -> ClickHouseBackend: ...

    def stream(self) -> RowStream: ...

    def close(self) -> None: ...


@dataclass
class NativeConnector:
    """A ClickHouse server: every call opens a new connection (same login and TLS). It
    travels to the worker processes; the password stays out of its repr."""

    host: str
    port: int
    user: str = "default"
    password: str = field(default="", repr=False)
    forkable: bool = True
    tls: ClickHouseTls | None = None

    def backend(self) -> ClickHouseBackend:
        from pipeline.storage.native import NativeBackend

        return NativeBackend(
            self.host, self.port, user=self.user, password=self.password, send_receive_timeout=600,
            tls=self.tls,
        )

    def stream(self) -> RowStream:
        return NativeRowStream(self.host, self.port, self.user, self.password, tls=self.tls)

    def close(self) -> None:
        pass


class SharedConnector:
    """One backend object used for everything (chDB, or tests): no worker processes."""

    forkable = False

    def __init__(self, backend: ClickHouseBackend) -> None:
        self._backend = backend

    def backend(self) -> ClickHouseBackend:
        return _Unclosable(self._backend)  # type: ignore[return-value]

    def stream(self) -> RowStream:
        return BackendRowStream(self._backend)

    def close(self) -> None:
        pass


class _Unclosable:
    """The shared backend, minus close(): its owner closes it."""

    def __init__(self, backend: ClickHouseBackend) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> object:
        return getattr(self._backend, name)

    def close(self) -> None:
        pass


def connector_for(
    backend: ClickHouseBackend, user: str = "default", password: str = ""
) -> Connector:
    """A NativeConnector for a server backend (same address and TLS), else a
    SharedConnector."""
    from pipeline.storage.native import NativeBackend

    if isinstance(backend, NativeBackend):
        return NativeConnector(backend.host, backend.port, user, password, tls=backend.tls)
    return SharedConnector(backend)
