"""The ClickHouse sink: consume rated CDRs from Kafka, insert them in batches, commit after
(at-least-once; a redelivered record is harmless, docs/sink.md). This module composes
the parts (package docstring). The Kafka clients come from a factory (`clients`), the
insert from `insert` (default `cdr_store.insert_cdr_rows`): unit tests pass fakes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pipeline.sink import metrics
from pipeline.sink.batcher import PartitionKey
from pipeline.sink.clients import ClientFactory, ConfluentClients
from pipeline.sink.config import SinkConfig, SinkError, SinkStats, format_stats
from pipeline.sink.lifecycle import Lifecycle
from pipeline.sink.loop import SinkLoop
from pipeline.sink.store import InsertRows
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.cdr_store import insert_cdr_rows


class SinkService:
    """One sink worker: a consumer in group `config.group` writing to `backend`.

    `run()` may be called once; it closes the clients when it returns. The backend
    belongs to the caller (opened and closed there)."""

    def __init__(self, config: SinkConfig, backend: ClickHouseBackend, *,
                 clients: ClientFactory | None = None, insert: InsertRows = insert_cdr_rows,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.backend = backend
        self.stats = SinkStats()
        self._clients = clients or ConfluentClients()
        self._insert = insert
        self._clock = clock
        self._lifecycle = Lifecycle(metrics.PAUSED.labels(topic=config.topic))
        self._loop: SinkLoop | None = None

    def run(self, stop: threading.Event | Callable[[], bool]) -> SinkStats:
        """Consume until `stop` is set (an Event or a callable returning True), then
        flush what is batched, commit, and close."""
        should_stop = stop.is_set if isinstance(stop, threading.Event) else stop
        self._lifecycle.start()
        loop = None
        try:
            loop = self._loop = SinkLoop(self.config, self.backend, self._clients, self._insert,
                                         self._lifecycle, self.stats, self._clock)
            loop.open()
            while not should_stop():
                loop.step()
            loop.drain()
        except BaseException:
            if loop is not None:
                loop.abort()
            raise
        return self.stats

    def run_until_idle(self, idle_s: float = 1.0, timeout_s: float | None = None) -> SinkStats:
        """Run until every assigned partition has been read to its high watermark and
        nothing is batched or waiting for ClickHouse, for `idle_s` seconds (tests and
        the demo). Raises TimeoutError (after a clean shutdown) past `timeout_s`."""
        deadline = None if timeout_s is None else self._clock() + timeout_s
        timed_out = False

        def stop() -> bool:
            nonlocal timed_out
            timed_out = deadline is not None and self._clock() >= deadline
            return timed_out or self.idle_for() >= idle_s

        stats = self.run(stop)
        if timed_out:
            raise TimeoutError(f"sink on {self.config.topic} not idle within {timeout_s}s")
        return stats

    def is_idle(self) -> bool:
        """Caught up with every assigned partition, nothing batched or in flight (as of
        the loop's last check; safe to call from another thread)."""
        return self._loop is not None and self._loop.progress.idle_since is not None

    @property
    def assigned(self) -> frozenset[PartitionKey]:
        """The (topic, partition) pairs currently assigned to this sink."""
        return frozenset() if self._loop is None else frozenset(self._loop.progress.assigned)

    @property
    def pending_rows(self) -> int:
        """Rows consumed but not yet stored (batched or in flight)."""
        return 0 if self._loop is None else self._loop.pending_rows

    def idle_for(self) -> float:
        """Seconds the sink has been idle (0 when it is not)."""
        return 0.0 if self._loop is None else self._loop.progress.idle_for()


__all__ = ["SinkConfig", "SinkError", "SinkService", "SinkStats", "format_stats"]
