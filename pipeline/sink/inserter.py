"""The insert thread: the one batch being stored, the attempts at it, and their backoff.

One insert is in flight at a time, on a thread of its own, so the sink reads and
decodes the next batch while ClickHouse stores this one. The batch stays here
until it is stored: a ClickHouse outage (`StorageUnavailable`) is waited out by
retrying the SAME batch (same rows, same token) with capped exponential backoff,
forever; it is never dropped for an outage. Only a revocation or a stop gives it up,
uncommitted, so its records are read again. Any other storage error is a problem
retrying cannot fix: it stops the sink (`rejected`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_future
from dataclasses import dataclass

from pipeline.sink import metrics
from pipeline.sink.batcher import Batch, PartitionKey
from pipeline.sink.config import CdrRow, SinkError, SinkStats
from pipeline.storage.errors import StorageError, StorageUnavailable

log = logging.getLogger(__name__)

Store = Callable[[Batch[CdrRow]], None]
"""Stores one batch (`store.BatchWriter`); raises a StorageError when it cannot."""


class Backoff:
    """Delays between attempts at one batch: `initial_s`, doubled up to `max_s`."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._next = initial_s

    def reset(self) -> None:
        self._next = self.initial_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(delay * 2, self.max_s)
        return delay


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: stored (`error` None), or ClickHouse unavailable and the
    next attempt scheduled."""

    batch: Batch[CdrRow]
    error: StorageUnavailable | None = None


class InsertThread:
    """The batch taken for storing (`batch`, None when there is none) and the thread
    storing it. An attempt under way always belongs to `batch`."""

    def __init__(self, store: Store, backoff: Backoff, clock: Callable[[], float],
                 stats: SinkStats, topic: str) -> None:
        self.batch: Batch[CdrRow] | None = None
        self._store = store
        self._backoff = backoff
        self._clock = clock
        self._stats = stats
        self._labels = {"topic": topic}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sink-insert")
        self._running: Future[None] | None = None
        self._attempts = 0
        self._next_attempt = 0.0

    @property
    def busy(self) -> bool:
        """An attempt is under way on the insert thread."""
        return self._running is not None

    @property
    def rows(self) -> int:
        return 0 if self.batch is None else self.batch.row_count

    def start(self, batch: Batch[CdrRow]) -> None:
        """Take a new batch and start its first attempt."""
        assert self.batch is None
        self.batch = batch
        self._attempts = 0
        self._backoff.reset()
        self._submit()

    def seconds_to_retry(self) -> float:
        return max(0.0, self._next_attempt - self._clock())

    def retry_if_due(self) -> None:
        """After an outage: the next attempt at the same batch, once its backoff expired."""
        if self.batch is not None and self._running is None and (
                self._clock() >= self._next_attempt):
            self._submit()

    def wait(self, timeout: float | None = None) -> None:
        """Until the attempt under way ends (or `timeout`)."""
        if self._running is not None:
            wait_for_future([self._running], timeout=timeout)

    def finished(self) -> Outcome | None:
        """The outcome of the attempt under way once it is done, else None. After an
        outage the next attempt is scheduled; a rejection raises SinkError."""
        running = self._running
        if running is None or not running.done():
            return None
        self._running = None
        batch = self.batch  # what is left of it if partitions were lost meanwhile
        if batch is None:
            return None
        try:
            running.result()
        except StorageUnavailable as exc:
            self._schedule_retry(batch, exc)
            return Outcome(batch, exc)
        except StorageError as exc:
            raise rejected(batch, exc) from exc
        self.batch = None
        if self._attempts > 1:
            log.warning("ClickHouse is back: batch %s stored after %s attempts",
                        batch.describe(), self._attempts)
        return Outcome(batch)

    def finish_now(self, why: str) -> Batch[CdrRow] | None:
        """One attempt at `batch`, waited for (revocation, shutdown): the one under way,
        else a new one. Returns the batch once stored (the caller commits it); if
        ClickHouse is unavailable, forgets it uncommitted (its records are read again)
        and returns None."""
        batch = self.batch
        assert batch is not None
        running = self._running or self._pool.submit(self._store, batch)
        self._running = None
        self.batch = None
        try:
            running.result()
        except StorageUnavailable as exc:
            self._stats.rows_dropped_on_revoke += batch.row_count
            log.warning(
                "%s: ClickHouse unavailable (%s); batch %s (%s rows) left uncommitted, it "
                "will be redelivered", why, exc, batch.describe(), batch.row_count,
            )
            return None
        except StorageError as exc:
            raise rejected(batch, exc) from exc
        return batch

    def store_now(self, batch: Batch[CdrRow], why: str) -> Batch[CdrRow] | None:
        """`finish_now` for a batch taken just now."""
        assert self.batch is None and self._running is None
        self.batch = batch
        return self.finish_now(why)

    def without(self, keys: Iterable[PartitionKey]) -> int:
        """Forget the rows of `keys` (revoked or lost partitions); returns how many. If
        nothing of the batch is left, an insert under way is let finish (rows stored
        twice are harmless), so an insert under way always belongs to `batch`."""
        if self.batch is None:
            return 0
        before = self.batch.row_count
        self.batch = self.batch.without(keys)
        if self.batch is None and self._running is not None:
            wait_for_future([self._running])
            self._running = None
        return before - self.rows

    def abandon(self) -> None:
        """Forget the batch (a failure elsewhere); an insert still running ends within
        the client's timeouts and `close` waits for it."""
        self.batch = None
        self._running = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _submit(self) -> None:
        assert self.batch is not None and self._running is None
        self._attempts += 1
        self._running = self._pool.submit(self._store, self.batch)

    def _schedule_retry(self, batch: Batch[CdrRow], exc: StorageUnavailable) -> None:
        self._stats.insert_retries += 1
        metrics.INSERT_RETRIES.labels(**self._labels).inc()
        delay = self._backoff.next_delay()
        self._next_attempt = self._clock() + delay
        log.warning(
            "ClickHouse unavailable (attempt %s for batch %s, %s rows): %s; consumption "
            "paused, retrying in %.1fs",
            self._attempts, batch.describe(), batch.row_count, exc, delay,
        )


def rejected(batch: Batch[CdrRow], exc: StorageError) -> SinkError:
    """Log a non-transient storage failure and make the error that stops the sink."""
    log.error(
        "insert of %s rows from %s failed with ClickHouse code %s: %s; stopping the sink "
        "(nothing committed past the last stored batch)",
        batch.row_count, batch.describe(), exc.code, exc.message,
    )
    return SinkError(
        f"ClickHouse rejected a batch from {batch.describe()} (code {exc.code}): "
        f"{exc.message}; fix the cause and restart the sink, it resumes from the last "
        "committed offsets"
    )
