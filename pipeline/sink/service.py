"""The ClickHouse sink: consume rated CDRs from Kafka, insert them in batches, commit after.

Delivery is at-least-once: offsets are committed only after the batch holding them
is in ClickHouse, so a crash, a rebalance or a lost commit redelivers records that
may already be stored. That is harmless: `cdr` is a ReplacingMergeTree(version)
keyed by call_id, so the same (call_id, version) stored twice collapses to one row
under FINAL (and at the next merge), and servers with insert deduplication drop a
retried batch outright thanks to its deterministic token. See docs/sink.md.

One insert is in flight at a time, on a thread of its own: while ClickHouse stores a
batch, the next one is consumed and decoded. Batches are still stored and committed
in order, each commit after its insert.

Failure handling:
- a record that does not decode goes to the dead-letter topic with its reason and
  source coordinates in headers, is counted, and its offset is committed with the
  batch it belongs to; the sink never stops for one;
- ClickHouse unavailable (`StorageUnavailable`): the assigned partitions are
  paused, the consumer keeps being polled (group membership stays alive), and the
  SAME batch (same token) is retried with capped exponential backoff until it goes
  in; then consumption resumes;
- any other storage error (bad data, schema mismatch) is an operator problem: the
  sink logs it with the ClickHouse code and stops with `SinkError`, nothing
  committed past the last stored batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from pipeline.avro.codec import call_start_from, decode_cdr_record
from pipeline.errors import InvalidEvent, PipelineError
from pipeline.kafka.dead_letters import dead_letter_headers
from pipeline.sink import metrics
from pipeline.sink.batcher import Batch, Batcher, PartitionKey
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.cdr_store import cdr_row, insert_cdr_rows, row_digest
from pipeline.storage.errors import StorageError, StorageUnavailable

log = logging.getLogger(__name__)

Stop = threading.Event | Callable[[], bool]

CdrRow = tuple[Any, ...]
"""A `cdr` table row in CDR_COLUMNS order (`cdr_store.cdr_row`): what the sink batches."""

class SinkError(PipelineError):
    """The sink stopped for a reason an operator has to fix (the message says which)."""


@dataclass(frozen=True)
class SinkConfig:
    bootstrap: str
    topic: str = "cdrs"
    group: str = "cdr-sink"
    dlq_topic: str = "cdrs.dlq"
    database: str = "cdr"
    batch_rows: int = 5000
    batch_seconds: float = 1.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    poll_timeout_s: float = 0.5  # longest single consume() wait: bounds stop latency
    fetch_wait_s: float = 0.02  # consume() wait while records are flowing or rows pending
    lag_interval_s: float = 5.0
    idle_check_s: float = 0.2  # how often caught-up is checked while nothing is pending
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 45_000
    dlq_delivery_timeout_s: float = 60.0
    consumer_config: dict[str, Any] = field(default_factory=dict)  # extra librdkafka keys

    def __post_init__(self) -> None:
        if self.batch_rows < 1:
            raise SinkError(f"batch rows must be >= 1, got {self.batch_rows}")
        if self.batch_seconds <= 0:
            raise SinkError(f"batch seconds must be > 0, got {self.batch_seconds}")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise SinkError("backoff: need 0 < initial <= max")
        # an insert that hangs for the whole socket timeout must not cost the membership
        if self.max_poll_interval_ms < 60_000:
            raise SinkError("max.poll.interval.ms below 60000 risks eviction during inserts")


@dataclass
class SinkStats:
    rows_inserted: int = 0
    batches: int = 0
    commits: int = 0
    dead_lettered: int = 0
    insert_retries: int = 0
    rows_dropped_on_revoke: int = 0
    insert_seconds: float = 0.0


def _as_predicate(stop: Stop) -> Callable[[], bool]:
    if isinstance(stop, threading.Event):
        return stop.is_set
    return stop


def _where(msg: Message) -> str:
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"


def _coords(msg: Message) -> tuple[PartitionKey, int]:
    """(topic, partition), offset of a consumed (non-error) message."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return (topic, partition), offset


def _tp_key(tp: TopicPartition) -> PartitionKey:
    return (tp.topic, tp.partition)


class SinkService:
    """One sink worker: a consumer in group `config.group` writing to `backend`.

    `run()` may be called once; it closes the consumer when it returns. The backend
    belongs to the caller (opened and closed there)."""

    def __init__(
        self,
        config: SinkConfig,
        backend: ClickHouseBackend,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.backend = backend
        self.stats = SinkStats()
        self._clock = clock
        self._batcher: Batcher[CdrRow] = Batcher(config.batch_rows, config.batch_seconds)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._assigned: set[PartitionKey] = set()
        self._inflight: Batch[CdrRow] | None = None  # taken, not yet stored
        # The attempt at storing `_inflight` under way on the insert thread, if any; set
        # only while `_inflight` is. Every insert runs on that one thread.
        self._insert_running: Future[None] | None = None
        self._inserter = ThreadPoolExecutor(1, thread_name_prefix="sink-insert")
        self._held: list[Message] = []  # delivered while paused; handled after resuming
        self._uncommitted: dict[PartitionKey, int] = {}  # stored, commit failed: retried
        self._paused = False
        self._ever_paused = False
        self._resume_assigned = False
        self._backoff = config.backoff_initial_s
        self._next_attempt = 0.0
        self._attempts = 0
        self._closing = False
        self._fatal: BaseException | None = None
        self._dlq_pending = 0
        self._dlq_failures: list[str] = []
        self._next_lag = 0.0
        self._next_idle_check = 0.0
        self._drained = False  # the last consume() returned fewer records than asked
        self._flowing = False  # the last consume() returned as many as asked
        self._idle_since: float | None = None
        self._started = False
        self._m_labels = {"topic": config.topic}

    # ------------------------------------------------------------------ public API

    def run(self, stop: Stop) -> SinkStats:
        """Consume until `stop` is set (an Event or a callable returning True), then
        flush what is batched, commit, and close."""
        should_stop = _as_predicate(stop)
        if self._started:
            raise SinkError("a SinkService runs once; create a new one")
        try:
            self._open()
            while not should_stop():
                self._step()
            self._shutdown()
        except BaseException:
            self._abort()
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
            if deadline is not None and self._clock() >= deadline:
                timed_out = True
                return True
            return self.idle_for() >= idle_s

        stats = self.run(stop)
        if timed_out:
            raise TimeoutError(f"sink on {self.config.topic} not idle within {timeout_s}s")
        return stats

    def is_idle(self) -> bool:
        """Caught up with every assigned partition, nothing batched or in flight (as of
        the loop's last check; safe to call from another thread)."""
        return self._idle_since is not None

    @property
    def assigned(self) -> frozenset[PartitionKey]:
        """The (topic, partition) pairs currently assigned to this sink."""
        return frozenset(self._assigned)

    @property
    def pending_rows(self) -> int:
        """Rows consumed but not yet stored (batched or in flight)."""
        inflight = self._inflight
        return len(self._batcher) + (inflight.row_count if inflight is not None else 0)

    def idle_for(self) -> float:
        """Seconds the sink has been idle (0 when it is not)."""
        since = self._idle_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    # ------------------------------------------------------------------ lifecycle

    def _open(self) -> None:
        self._started = True
        cfg = self.config
        self._consumer = Consumer(self._consumer_conf())
        self._producer = Producer(self._producer_conf())
        self._check_topics()
        self._consumer.subscribe(
            [cfg.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "sink started: topic %s, group %s, dlq %s, database %s, batches of %s rows / %ss",
            cfg.topic, cfg.group, cfg.dlq_topic, cfg.database, cfg.batch_rows, cfg.batch_seconds,
        )

    def _consumer_conf(self) -> dict[str, Any]:
        cfg = self.config
        conf: dict[str, Any] = {
            "bootstrap.servers": cfg.bootstrap,
            "group.id": cfg.group,
            "client.id": f"{cfg.group}-consumer",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "isolation.level": "read_committed",
            "max.poll.interval.ms": cfg.max_poll_interval_ms,
            "session.timeout.ms": cfg.session_timeout_ms,
        }
        conf.update(cfg.consumer_config)
        return conf

    def _producer_conf(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.config.bootstrap,
            "client.id": f"{self.config.group}-dlq",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": int(self.config.dlq_delivery_timeout_s * 1000),
        }

    def _check_topics(self) -> None:
        """Fail fast, naming the topic, when the source or dead-letter topic is missing
        (brokers do not auto-create topics)."""
        assert self._consumer is not None
        for topic in (self.config.topic, self.config.dlq_topic):
            try:
                md = self._consumer.list_topics(topic=topic, timeout=15)
            except KafkaException as exc:
                raise SinkError(f"cannot read metadata of topic {topic}: {exc}") from exc
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None or not tmd.partitions:
                why = tmd.error.str() if tmd is not None and tmd.error is not None else "missing"
                raise SinkError(
                    f"topic {topic} is not usable on {self.config.bootstrap} ({why}); create it "
                    "first (brokers do not auto-create topics)"
                )

    def _shutdown(self) -> None:
        """Graceful stop: store and commit what is pending if ClickHouse takes it now."""
        self._closing = True
        if self._inflight is not None:
            self._attempt_once_or_drop("shutdown")
        batch = self._batcher.take()
        if batch is not None:
            self._inflight = batch
            self._attempt_once_or_drop("shutdown")
        self._retry_failed_commits()
        self._close()
        log.info(
            "sink stopped: %s rows in %s batches, %s dead-lettered, %s insert retries",
            self.stats.rows_inserted, self.stats.batches, self.stats.dead_lettered,
            self.stats.insert_retries,
        )

    def _abort(self) -> None:
        """Stop without storing or committing anything more (redelivered on restart)."""
        self._closing = True
        self._inflight = None
        self._insert_running = None  # its outcome no longer matters; _close waits for it
        self._batcher.take()
        try:
            self._close()
        except Exception:  # noqa: BLE001 - the original error matters more
            log.debug("error while closing the sink after a failure", exc_info=True)

    def _close(self) -> None:
        # An insert still running (after a failure elsewhere) ends within the client's
        # timeouts; the backend belongs to the caller, who may close it after run().
        self._inserter.shutdown(wait=True)
        metrics.PAUSED.labels(**self._m_labels).set(0)
        if self._producer is not None:
            self._flush_dlq(raise_on_failure=False)
            self._producer = None
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.close()  # leaves the group (revoke callback: nothing left to flush)

    # ------------------------------------------------------------------ main loop

    def _step(self) -> None:
        self._finish_attempt_if_done()
        if self._inflight is not None and (self._paused or self._insert_running is None):
            self._outage_step()
            return
        if self._resume_assigned:
            self._resume_assigned = False
            self._resume()  # a re-assigned partition must not stay paused from an outage
        running = self._insert_running
        if running is not None and len(self._batcher) >= self.config.batch_rows:
            # The next batch is full: wait for the insert rather than read on.
            wait_for_future([running], timeout=self.config.poll_timeout_s)
            messages = []
        elif self._held:
            messages, self._held = self._held, []
        else:
            messages = self._consume(self._consume_timeout())
        now = self._clock()
        for msg in messages:
            self._handle(msg, now)
        self._finish_attempt_if_done()
        now = self._clock()
        if self._inflight is None and (self._batcher.due(now) or (
            self._drained and self._batcher.may_take_early(now) and self._caught_up()
        )):
            self._flush(self._batcher.take(now=now))
        self._watch_progress(now)

    def _consume_timeout(self) -> float:
        """Wait long (poll_timeout_s) only when idle; while records are flowing or rows
        are pending, come back soon to flush a batch once all there is has been read."""
        now = self._clock()
        if self._insert_running is not None:
            return self.config.fetch_wait_s  # back soon to see the insert finish
        until_due = self._batcher.time_until_due(now)
        if until_due is None:
            return self.config.fetch_wait_s if self._flowing else self.config.poll_timeout_s
        wait = min(self.config.poll_timeout_s, until_due)
        if self._batcher.may_take_early(now):
            wait = min(wait, self.config.fetch_wait_s)
        return max(0.0, wait)

    def _consume(self, timeout: float) -> list[Message]:
        """Up to what completes the batch; `_drained` tells whether the client ran out of
        fetched records before that (the cue to check for caught-up), `_flowing` whether
        it did not (more are probably there)."""
        assert self._consumer is not None
        want = max(1, min(self.config.batch_rows - len(self._batcher), 10_000))
        messages = self._consumer.consume(num_messages=want, timeout=timeout)
        if self._fatal is not None:
            fatal, self._fatal = self._fatal, None
            raise fatal
        self._drained = len(messages) < want
        self._flowing = bool(messages) and not self._drained
        return [m for m in messages if self._usable(m)]

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return False
            if err.fatal():
                raise SinkError(f"fatal Kafka consumer error: {err.str()} ({err.name()})")
            log.warning("Kafka consumer error (retried by the client): %s", err.str())
            return False
        if (msg.topic(), msg.partition()) not in self._assigned:
            log.debug("%s: partition no longer assigned, skipped", _where(msg))
            return False
        return True

    def _handle(self, msg: Message, now: float) -> None:
        key, offset = _coords(msg)
        value = msg.value()
        if value is None:
            log.debug("%s: tombstone (null value), skipped", _where(msg))
            self._batcher.add(key, offset, None, now)
            return
        try:
            record = decode_cdr_record(value)
            pinned = call_start_from(msg.headers())
            if pinned is not None:
                record["call_start_ms"] = pinned  # the call's start as its first CDR gave it
            row = cdr_row(record)
        except InvalidEvent as exc:
            self._dead_letter(msg, exc.reason, exc.category)
            self._batcher.add(key, offset, None, now)
            return
        except (TypeError, ValueError, KeyError) as exc:  # a schema/record mismatch
            self._dead_letter(msg, f"{type(exc).__name__}: {exc}", "undecodable")
            self._batcher.add(key, offset, None, now)
            return
        self._batcher.add(key, offset, row, now)

    # ------------------------------------------------------------------ inserting

    def _flush(self, batch: Batch[CdrRow] | None) -> None:
        if batch is None:
            return
        self._inflight = batch
        self._attempts = 0
        self._backoff = self.config.backoff_initial_s
        self._attempt()

    def _attempt(self) -> None:
        """Start storing the in-flight batch on the insert thread; the loop sees the
        outcome in `_finish_attempt_if_done`."""
        batch = self._inflight
        assert batch is not None and self._insert_running is None
        self._attempts += 1
        self._insert_running = self._inserter.submit(self._insert, batch)

    def _finish_attempt_if_done(self) -> None:
        """Once the insert under way is done: commit its batch; on an outage, pause and
        schedule the next attempt; on any other storage error, stop."""
        running = self._insert_running
        if running is None or not running.done():
            return
        self._insert_running = None
        batch = self._inflight  # what is left of it if partitions were lost meanwhile
        if batch is None:
            return
        try:
            running.result()
        except StorageUnavailable as exc:
            self._on_outage(batch, exc)
            return
        except StorageError as exc:
            raise _rejected(batch, exc) from exc
        self._inflight = None
        if self._attempts > 1:
            log.warning("ClickHouse is back: batch %s stored after %s attempts",
                        batch.describe(), self._attempts)
        self._commit_batch(batch)
        if self._paused:
            self._resume()

    def _insert(self, batch: Batch[CdrRow]) -> None:
        rows = batch.rows
        if not rows:
            return  # only dead-lettered records or tombstones: nothing to store
        token = batch.token(row_digest(rows))
        started = time.perf_counter()
        insert_cdr_rows(self.backend, rows, token, database=self.config.database)
        elapsed = time.perf_counter() - started
        self.stats.rows_inserted += len(rows)
        self.stats.batches += 1
        self.stats.insert_seconds += elapsed
        metrics.ROWS.labels(**self._m_labels).inc(len(rows))
        metrics.BATCHES.labels(**self._m_labels).inc()
        metrics.INSERT_SECONDS.labels(**self._m_labels).observe(elapsed)
        metrics.BATCH_ROWS.labels(**self._m_labels).observe(len(rows))
        log.debug("inserted %s rows from %s in %.3fs (token %s)",
                  len(rows), batch.describe(), elapsed, token[:12])

    def _on_outage(self, batch: Batch[CdrRow], exc: StorageUnavailable) -> None:
        self.stats.insert_retries += 1
        metrics.INSERT_RETRIES.labels(**self._m_labels).inc()
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.config.backoff_max_s)
        self._next_attempt = self._clock() + delay
        log.warning(
            "ClickHouse unavailable (attempt %s for batch %s, %s rows): %s; consumption "
            "paused, retrying in %.1fs",
            self._attempts, batch.describe(), batch.row_count, exc, delay,
        )
        self._pause()

    def _watch_progress(self, now: float) -> None:
        """Refresh the lag gauges (every lag_interval_s) and the idle state (every
        idle_check_s while nothing is pending and the last consume() came back short)
        from cached watermarks. Not while records are flowing: a partition that has
        delivered nothing yet costs broker round trips."""
        pending = self._inflight is not None or bool(self._held) or not self._batcher.empty
        if pending or not self._assigned:
            self._idle_since = None
        lag_due = now >= self._next_lag
        idle_due = (not pending and self._drained and bool(self._assigned)
                    and now >= self._next_idle_check)
        if not (lag_due or idle_due):
            return
        ends = self._end_state()
        if lag_due:
            self._next_lag = now + self.config.lag_interval_s
            for (topic, part), (pos, high) in ends.items():
                metrics.CONSUMER_LAG.labels(topic=topic, partition=str(part)).set(
                    max(0, high - pos))
        if idle_due:
            self._next_idle_check = now + self.config.idle_check_s
            if not self._read_to_end(ends):
                self._idle_since = None
            elif self._idle_since is None:
                self._idle_since = now

    def _outage_step(self) -> None:
        """Keep the group membership alive while paused; retry when the backoff expires."""
        wait = max(0.0, min(self.config.poll_timeout_s, self._next_attempt - self._clock()))
        if self._insert_running is not None:
            wait = min(wait, self.config.fetch_wait_s)
        self._pause()  # partitions assigned since the outage began are paused too
        for msg in self._consume(wait):
            self._held.append(msg)  # fetched before the pause took effect: keep, in order
        self._finish_attempt_if_done()
        if (self._inflight is not None and self._insert_running is None
                and self._clock() >= self._next_attempt):
            self._attempt()
        self._watch_progress(self._clock())

    def _attempt_once_or_drop(self, why: str) -> None:
        """One attempt at the in-flight batch (revoke, shutdown); if ClickHouse is
        unavailable, forget the batch uncommitted: its records are redelivered."""
        batch = self._inflight
        assert batch is not None
        # The attempt under way, if any, is the one; else one more on the insert thread.
        running = self._insert_running or self._inserter.submit(self._insert, batch)
        self._insert_running = None
        self._attempts = max(self._attempts, 1)
        try:
            running.result()
        except StorageUnavailable as exc:
            self._inflight = None
            self.stats.rows_dropped_on_revoke += batch.row_count
            log.warning(
                "%s: ClickHouse unavailable (%s); batch %s (%s rows) left uncommitted, it "
                "will be redelivered", why, exc, batch.describe(), batch.row_count,
            )
            return
        except StorageError as exc:
            self._inflight = None
            raise _rejected(batch, exc) from exc
        self._inflight = None
        self._commit_batch(batch)

    # ------------------------------------------------------------------ pause / resume

    def _pause(self) -> None:
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.pause(assignment)
        self._ever_paused = True
        if not self._paused:
            self._paused = True
            metrics.PAUSED.labels(**self._m_labels).set(1)

    def _resume(self) -> None:
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.resume(assignment)
        if self._paused:
            log.info("consumption resumed")
        self._paused = False
        metrics.PAUSED.labels(**self._m_labels).set(0)

    # ------------------------------------------------------------------ commits

    def _commit_batch(self, batch: Batch[CdrRow]) -> None:
        """Commit after a successful insert; dead-letter records of the batch must be
        durably on the DLQ before their offsets are committed."""
        self._flush_dlq(raise_on_failure=True)
        offsets = dict(self._uncommitted)
        offsets.update(batch.commit_offsets)
        self._commit(offsets)

    def _retry_failed_commits(self) -> None:
        if self._uncommitted and not self._inflight:
            self._commit(dict(self._uncommitted))

    def _commit(self, offsets: dict[PartitionKey, int]) -> bool:
        assert self._consumer is not None
        offsets = {k: v for k, v in offsets.items() if k in self._assigned}
        if not offsets:
            return True
        tps = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
        try:
            result = self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            self._uncommitted = offsets
            log.warning("commit of %s failed (stored rows will be redelivered if this "
                        "persists; harmless): %s", self._describe_offsets(offsets), exc)
            return False
        failed = {_tp_key(tp): tp.offset for tp in result or [] if tp.error is not None}
        if failed:
            self._uncommitted = {k: offsets[k] for k in failed}
            log.warning("commit failed for %s", self._describe_offsets(self._uncommitted))
            return False
        self._uncommitted = {}
        self.stats.commits += 1
        log.debug("committed %s", self._describe_offsets(offsets))
        return True

    @staticmethod
    def _describe_offsets(offsets: dict[PartitionKey, int]) -> str:
        return ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(offsets.items()))

    # ------------------------------------------------------------------ dead letters

    def _dead_letter(self, msg: Message, reason: str, category: str) -> None:
        assert self._producer is not None
        log.warning("%s: not a decodable RatedCdr (%s), sent to %s",
                    _where(msg), reason, self.config.dlq_topic)
        headers: list[tuple[str, str | bytes | None]] = list(dead_letter_headers(
            reason, category, str(msg.topic()), msg.partition(), msg.offset()))
        where = _where(msg)

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            self._dlq_pending -= 1
            if err is not None:
                self._dlq_failures.append(f"{where}: {err.str()}")

        self._produce_dlq(msg, headers, delivered)
        self.stats.dead_lettered += 1
        metrics.DLQ.labels(**self._m_labels).inc()

    def _produce_dlq(
        self, msg: Message, headers: list[tuple[str, str | bytes | None]],
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None:
        assert self._producer is not None
        while True:
            try:
                self._producer.produce(
                    self.config.dlq_topic, value=msg.value(), key=msg.key(), headers=headers,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._producer.poll(0.1)
        self._dlq_pending += 1
        self._producer.poll(0)

    def _flush_dlq(self, raise_on_failure: bool) -> None:
        if self._producer is None or (self._dlq_pending == 0 and not self._dlq_failures):
            return
        remaining = self._producer.flush(self.config.dlq_delivery_timeout_s + 5)
        failures, self._dlq_failures = self._dlq_failures, []
        if remaining or failures:
            detail = "; ".join(failures[:5]) or f"{remaining} records not delivered in time"
            message = (f"dead-letter records could not be written to {self.config.dlq_topic} "
                       f"({detail}); offsets not committed")
            if raise_on_failure:
                raise SinkError(message)
            log.error("%s", message)

    # ------------------------------------------------------------------ rebalance

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {_tp_key(tp) for tp in partitions}
        self._assigned |= keys
        # First lag refresh one interval later: a partition that has delivered nothing
        # yet has no position, and reading its committed offset costs round trips.
        self._next_lag = self._clock() + self.config.lag_interval_s
        self._next_idle_check = 0.0
        self._idle_since = None
        self._resume_assigned = self._ever_paused and self._inflight is None
        log.info("assigned %s", ", ".join(f"{t}[{p}]" for t, p in sorted(keys)) or "nothing")

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {_tp_key(tp) for tp in partitions}
        log.info("revoking %s", ", ".join(f"{t}[{p}]" for t, p in sorted(keys)) or "nothing")
        try:
            self._flush_revoked(keys)
        except BaseException as exc:  # noqa: BLE001 - re-raised from the consume() caller
            self._fatal = exc
        finally:
            self._forget(keys)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = {_tp_key(tp) for tp in partitions}
        log.warning("lost %s (membership expired): pending rows dropped uncommitted",
                    ", ".join(f"{t}[{p}]" for t, p in sorted(keys)))
        self._forget(keys)

    def _flush_revoked(self, keys: set[PartitionKey]) -> None:
        """Store and commit what is pending for revoked partitions, if ClickHouse takes
        it at once; otherwise leave it uncommitted for the next owner."""
        if self._closing:
            return
        if self._inflight is not None and (
            self._insert_running is not None or self._inflight.partitions & keys
        ):
            # An insert under way is finished first, so the revoked partitions' batched
            # rows can still be stored and committed by this sink.
            self._attempt_once_or_drop("rebalance")
        if self._inflight is None:
            batch = self._batcher.take(keys)
            if batch is not None:
                self._inflight = batch
                self._attempt_once_or_drop("rebalance")
        self._retry_failed_commits()

    def _forget(self, keys: set[PartitionKey]) -> None:
        if self._inflight is not None:
            before = self._inflight.row_count
            self._inflight = self._inflight.without(keys)
            dropped = before - (self._inflight.row_count if self._inflight else 0)
            self.stats.rows_dropped_on_revoke += dropped
            if self._inflight is None and self._insert_running is not None:
                # Nothing of the batch is this sink's any more: let the insert end (rows
                # stored twice are harmless), so an insert under way always belongs to
                # `_inflight`.
                wait_for_future([self._insert_running])
                self._insert_running = None
        self.stats.rows_dropped_on_revoke += self._batcher.drop(keys)
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in keys]
        self._uncommitted = {k: v for k, v in self._uncommitted.items() if k not in keys}
        self._assigned -= keys
        for topic, part in keys:
            metrics.CONSUMER_LAG.labels(topic=topic, partition=str(part)).set(0)
        if self._inflight is None and self._paused and not self._closing:
            self._paused = False  # the new assignment starts unpaused
            metrics.PAUSED.labels(**self._m_labels).set(0)

    # ------------------------------------------------------------------ lag

    def _caught_up(self) -> bool:
        """Whether every assigned partition has been read to its high watermark (the one
        cached from the last fetch): nothing more to batch for now."""
        return self._read_to_end(self._end_state())

    def _read_to_end(self, ends: dict[PartitionKey, tuple[int, int]]) -> bool:
        return bool(ends) and len(ends) == len(self._assigned) and all(
            pos >= high for pos, high in ends.values())

    def _end_state(self) -> dict[PartitionKey, tuple[int, int]]:
        """(position, high watermark) per assigned partition. The watermark is the one
        cached from the last fetch (no round trip), asked from the broker only when
        none is cached; the position falls back to the committed offset, then to the
        low watermark, before anything was consumed."""
        assert self._consumer is not None
        tps = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        if not tps:
            return {}
        positions = {_tp_key(tp): tp.offset for tp in self._consumer.position(tps)}
        unknown = [TopicPartition(t, p) for (t, p), o in positions.items() if o < 0]
        if unknown:
            try:
                for tp in self._consumer.committed(unknown, timeout=5):
                    positions[_tp_key(tp)] = tp.offset
            except KafkaException as exc:
                log.debug("cannot read committed offsets: %s", exc)
        out: dict[PartitionKey, tuple[int, int]] = {}
        for tp in tps:
            key = _tp_key(tp)
            pos = positions.get(key, OFFSET_INVALID)
            marks = self._watermarks(tp, cached=pos >= 0)
            if marks is not None:
                low, high = marks
                out[key] = (pos if pos >= 0 else low, high)
        return out

    def _watermarks(self, tp: TopicPartition, cached: bool) -> tuple[int, int] | None:
        """(low, high); with `cached`, the high watermark of the last fetch response
        and no round trip (the cached low one is not maintained: do not use it)."""
        assert self._consumer is not None
        try:
            if cached:
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    return 0, high
            low, high = self._consumer.get_watermark_offsets(tp, timeout=2, cached=False)
        except KafkaException as exc:
            log.debug("%s[%s]: cannot read watermarks: %s", tp.topic, tp.partition, exc)
            return None
        return (low, high) if low >= 0 and high >= 0 else None


def _rejected(batch: Batch[CdrRow], exc: StorageError) -> SinkError:
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


def format_stats(stats: SinkStats, elapsed_s: float) -> str:
    rate = stats.rows_inserted / elapsed_s if elapsed_s > 0 else 0.0
    return (
        f"{stats.rows_inserted} rows in {stats.batches} batches ({rate:.0f} rows/s over "
        f"{elapsed_s:.1f}s), {stats.dead_lettered} dead-lettered, {stats.insert_retries} "
        "insert retries"
    )


__all__ = ["SinkConfig", "SinkError", "SinkService", "SinkStats", "format_stats"]
