"""The sink's loop: read, batch, store and commit, strictly in order, one insert at a time.

Each step finishes an insert that is done (commit it, or pause for an outage),
reads what completes the next batch while the insert thread works, and hands the
insert thread the next batch when it is due: full (`batch_rows`), old enough
(`batch_seconds`), or early when every assigned partition has been read to its
end and no partial batch went in during the last `batch_seconds`. While
ClickHouse is unavailable the step only keeps the group membership alive (the
consumer is polled, partitions paused) and retries the same batch when its
backoff expires. Batches are stored and committed in the order they were read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pipeline.sink.batcher import Batch, Batcher
from pipeline.sink.clients import ClientFactory, check_topics, consumer_conf, producer_conf
from pipeline.sink.committer import Committer
from pipeline.sink.config import CdrRow, SinkConfig, SinkStats
from pipeline.sink.dlq import DeadLetters
from pipeline.sink.inserter import Backoff, InsertThread
from pipeline.sink.lifecycle import Lifecycle
from pipeline.sink.progress import Progress
from pipeline.sink.reader import Reader
from pipeline.sink.rebalance import Rebalance
from pipeline.sink.store import BatchWriter, InsertRows
from pipeline.storage.backend import ClickHouseBackend

log = logging.getLogger(__name__)


class SinkLoop:
    """One run of a sink: its clients, its parts, its steps and its stop."""

    def __init__(self, config: SinkConfig, backend: ClickHouseBackend, clients: ClientFactory,
                 insert: InsertRows, lifecycle: Lifecycle, stats: SinkStats,
                 clock: Callable[[], float]) -> None:
        self.config = config
        self._lifecycle = lifecycle
        self._stats = stats
        self._clock = clock
        self.consumer = clients.consumer(config.kafka, consumer_conf(config))
        try:
            producer = clients.producer(config.kafka, producer_conf(config))
        except BaseException:
            self.consumer.close()
            raise
        lifecycle.bind(self.consumer)
        self.batcher: Batcher[CdrRow] = Batcher(config.batch_rows, config.batch_seconds,
                                                config.insert_gap_s)
        self.progress = Progress(self.consumer, config, clock)
        self.dead_letters = DeadLetters(producer, config.dlq_topic, config.dlq_delivery_timeout_s,
                                        stats, config.topic)
        self.committer = Committer(self.consumer, self.dead_letters,
                                   lambda: self.progress.assigned, stats)
        self.inserter = InsertThread(
            BatchWriter(backend, config.database, config.topic, stats, insert),
            Backoff(config.backoff_initial_s, config.backoff_max_s), clock, stats, config.topic)
        self.reader = Reader(self.consumer, config, self.batcher, self.dead_letters, self.progress)
        self._rebalance = Rebalance(
            lifecycle=lifecycle, progress=self.progress, reader=self.reader,
            batcher=self.batcher, inserter=self.inserter, committer=self.committer, stats=stats)

    @property
    def pending_rows(self) -> int:
        """Rows consumed but not yet stored (batched or in flight)."""
        return len(self.batcher) + self.inserter.rows

    def open(self) -> None:
        cfg = self.config
        check_topics(self.consumer, cfg)
        self.consumer.subscribe([cfg.topic], on_assign=self._rebalance.on_assign,
                                on_revoke=self._rebalance.on_revoke,
                                on_lost=self._rebalance.on_lost)
        log.info(
            "sink started: topic %s, group %s, dlq %s, database %s, batches of %s rows / %ss",
            cfg.topic, cfg.group, cfg.dlq_topic, cfg.database, cfg.batch_rows, cfg.batch_seconds,
        )

    def step(self) -> None:
        self._finish_insert()
        if self.inserter.batch is not None and (self._lifecycle.paused or not self.inserter.busy):
            self._outage_step()
            return
        self._lifecycle.resume_assigned()
        if self.inserter.busy and len(self.batcher) >= self.config.batch_rows:
            # The next batch is full: wait for the insert rather than read on.
            self.inserter.wait(self.config.poll_timeout_s)
            messages = []
        elif self.reader.held:
            messages = self.reader.take_held()
        else:
            messages = self.reader.consume(self._consume_timeout())
        now = self._clock()
        for msg in messages:
            self.reader.handle(msg, now)
        self._finish_insert()
        now = self._clock()
        if self.inserter.batch is None and (self.batcher.due(now) or (
            self.reader.drained and self.batcher.may_take_early(now) and self.progress.caught_up()
        )):
            batch = self.batcher.take(now=now)
            if batch is not None:
                self.inserter.start(batch)
        self.progress.watch(now, self._pending(), self.reader.drained)

    def drain(self) -> None:
        """Graceful stop: store and commit what is pending if ClickHouse takes it now
        (one attempt; during an outage it stays uncommitted), then close."""
        self._lifecycle.drain()
        if self.inserter.batch is not None:
            self._commit(self.inserter.finish_now("shutdown"))
        batch = self.batcher.take()
        if batch is not None:
            self._commit(self.inserter.store_now(batch, "shutdown"))
        self.committer.retry_failed()
        self.close()
        log.info(
            "sink stopped: %s rows in %s batches, %s dead-lettered, %s insert retries",
            self._stats.rows_inserted, self._stats.batches, self._stats.dead_lettered,
            self._stats.insert_retries,
        )

    def abort(self) -> None:
        """Stop without storing or committing anything more (redelivered on restart)."""
        self._lifecycle.abort()
        self.inserter.abandon()
        self.batcher.take()
        try:
            self.close()
        except Exception:  # noqa: BLE001 - the original error matters more
            log.debug("error while closing the sink after a failure", exc_info=True)

    def close(self) -> None:
        """Wait for an insert still running (it ends within the client's timeouts), the
        dead letters, then leave the group. The backend belongs to the caller."""
        if self._lifecycle.closed:
            return
        self.inserter.close()
        self.dead_letters.flush(raise_on_failure=False)
        self._lifecycle.close()  # revocations during consumer.close() flush nothing
        self.consumer.close()

    def _pending(self) -> bool:
        return self.inserter.batch is not None or bool(self.reader.held) or not self.batcher.empty

    def _commit(self, stored: Batch[CdrRow] | None) -> None:
        if stored is not None:
            self.committer.commit_stored(stored)

    def _finish_insert(self) -> None:
        """Once the insert under way is done: commit its batch and resume after an
        outage; on an outage, pause (the retry is scheduled); a rejection raises."""
        outcome = self.inserter.finished()
        if outcome is None:
            return
        if outcome.error is not None:
            self._lifecycle.pause()
            return
        self.committer.commit_stored(outcome.batch)
        self._lifecycle.stored()

    def _consume_timeout(self) -> float:
        """How long a read may wait for its first record (it returns with the first one,
        and every record fetched by then): long (poll_timeout_s) when nothing is batched;
        with rows batched, until they may go in (due by age, or a partial batch allowed:
        at once, or insert_gap_s after the last one); with an insert under way, soon, to
        see it finish."""
        cfg = self.config
        now = self._clock()
        if self.inserter.busy:
            return cfg.fetch_wait_s  # back soon to see the insert finish
        until_due = self.batcher.time_until_due(now)
        if until_due is None:
            return cfg.poll_timeout_s
        until_partial = self.batcher.time_until_partial(now)
        return max(0.0, min(cfg.poll_timeout_s, until_due,
                            until_partial if until_partial > 0 else cfg.fetch_wait_s))

    def _outage_step(self) -> None:
        """Keep the group membership alive while paused; retry when the backoff expires."""
        wait = min(self.config.poll_timeout_s, self.inserter.seconds_to_retry())
        if self.inserter.busy:
            wait = min(wait, self.config.fetch_wait_s)
        self._lifecycle.pause()  # partitions assigned since the outage began are paused too
        self.reader.held.extend(self.reader.consume(wait))  # fetched before the pause: kept
        self._finish_insert()
        self.inserter.retry_if_due()
        self.progress.watch(self._clock(), self._pending(), self.reader.drained)
