"""Reading: records from the consumer, each decoded into a row of the batch (or a dead letter).

Each record is decoded straight to a `cdr` row (no intermediate RatedCdr) and added
to the batcher with its partition and offset, so its offset is committed with the
batch even when it produced no row (a dead letter, a tombstone). Records delivered
while consumption is paused (fetched before the pause took effect) are held, in
order, and handled once it resumes: nothing is skipped.
"""

from __future__ import annotations

import logging
from enum import Enum

from confluent_kafka import KafkaError, Message

from pipeline.avro.codec import call_start_from, decode_cdr_record
from pipeline.errors import InvalidEvent
from pipeline.sink.batcher import Batcher, PartitionKey
from pipeline.sink.clients import SinkConsumer
from pipeline.sink.config import CdrRow, SinkConfig, SinkError
from pipeline.sink.dlq import DeadLetters, where
from pipeline.sink.progress import Progress
from pipeline.storage.cdr_store import cdr_row

log = logging.getLogger(__name__)

MAX_FETCH = 10_000  # records asked of one consume() at most


class Fetch(Enum):
    """What the last consume() returned, the cue for how long to wait next."""

    UNREAD = "unread"  # nothing asked yet
    NONE = "none"  # no record: the topic is quiet
    SHORT = "short"  # fewer records than asked: the client had no more fetched
    FULL = "full"  # as many as asked: more are probably there


class Reader:
    """Consumes up to what completes the batch and feeds the batcher."""

    def __init__(self, consumer: SinkConsumer, config: SinkConfig, batcher: Batcher[CdrRow],
                 dead_letters: DeadLetters, progress: Progress) -> None:
        self.fetch = Fetch.UNREAD
        self.held: list[Message] = []  # delivered while paused; handled after resuming
        self._consumer = consumer
        self._batch_rows = config.batch_rows
        self._batcher = batcher
        self._dead_letters = dead_letters
        self._progress = progress
        self._failed: BaseException | None = None

    @property
    def drained(self) -> bool:
        """The last consume() came back short (or empty): time to check for caught-up."""
        return self.fetch is Fetch.SHORT or self.fetch is Fetch.NONE

    def fail(self, exc: BaseException) -> None:
        """An error raised inside a rebalance callback: re-raised from `consume`, in the
        loop, since the client swallows what a callback raises."""
        self._failed = exc

    def consume(self, timeout: float) -> list[Message]:
        """Up to what completes the batch, without errors or records of partitions no
        longer assigned: as soon as one record is there (or after `timeout`), with every
        record fetched by then. (A consume() of many records waits for all of them or its
        whole timeout: a record that came early waited that long to be batched.)"""
        want = max(1, min(self._batch_rows - len(self._batcher), MAX_FETCH))
        first = self._consumer.poll(timeout)
        messages = [] if first is None else [first]
        if first is not None and want > 1:
            messages += self._consumer.consume(num_messages=want - 1, timeout=0)
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        self.fetch = (Fetch.FULL if len(messages) >= want else
                      Fetch.SHORT if messages else Fetch.NONE)
        return [m for m in messages if self._usable(m)]

    def take_held(self) -> list[Message]:
        held, self.held = self.held, []
        return held

    def drop(self, keys: set[PartitionKey]) -> None:
        """Forget held records of revoked or lost partitions."""
        self.held = [m for m in self.held if (m.topic(), m.partition()) not in keys]

    def handle(self, msg: Message, now: float) -> None:
        """Add `msg` to the batch: as a row, or without one when it is a tombstone or
        goes to the dead-letter topic."""
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        assert topic is not None and partition is not None and offset is not None
        key = (topic, partition)
        value = msg.value()
        if value is None:
            log.debug("%s: tombstone (null value), skipped", where(msg))
            self._batcher.add(key, offset, None, now)
            return
        try:
            record = decode_cdr_record(value)
            pinned = call_start_from(msg.headers())
            if pinned is not None:
                record["call_start_ms"] = pinned  # the call's start as its first CDR gave it
            row = cdr_row(record)
        except InvalidEvent as exc:
            self._dead_letters.send(msg, exc.reason, exc.category)
            self._batcher.add(key, offset, None, now)
            return
        except (TypeError, ValueError, KeyError) as exc:  # a schema/record mismatch
            self._dead_letters.send(msg, f"{type(exc).__name__}: {exc}", "undecodable")
            self._batcher.add(key, offset, None, now)
            return
        self._batcher.add(key, offset, row, now)

    def _usable(self, msg: Message) -> bool:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return False
            if err.fatal():
                raise SinkError(f"fatal Kafka consumer error: {err.str()} ({err.name()})")
            log.warning("Kafka consumer error (retried by the client): %s", err.str())
            return False
        if (msg.topic(), msg.partition()) not in self._progress.assigned:
            log.debug("%s: partition no longer assigned, skipped", where(msg))
            return False
        return True
