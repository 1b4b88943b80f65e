"""The `kafka` source of re-rating: replay the call-events topic through the correlator.

Which records: on every partition, from the first record whose timestamp is at or
after `from - (max_call_duration_s + reorder_grace_s + margin)` (offsets_for_times)
up to the partition's end as it was when the run started, stopping a partition
early at the first record stamped after `to + max_call_duration_s + reorder_grace_s
+ margin` (a tick record there still advances event time: it closes the calls that
went stale, as it did in the live correlator). Record timestamps are when the switch
published (CreateTime), at or after the event time; `margin_s` bounds how late a
switch may publish. Reading that far
back means that a call whose SETUP is before the window cannot have events in it
that would make it look in range (it would have ended before `from`).

How: one Correlator per partition, as in the streaming worker, with the NEW
configuration, so policy changes and correlation corrections apply. The consumer
uses assign() with explicit offsets under a group id of its own and never commits:
the live correlator's group is never touched. It connects with the [kafka] settings
(pipeline.kafka.clients; on a secured cluster the `rerate` principal, which may read
`call-events` under groups named cdr-rerate-*), and stops with one line naming the
cause when it cannot get in, instead of waiting for records that cannot come.

Which calls: those whose start (SETUP time, or for a SETUP_MISSING call its answer
or end time: the `call_start_ms` rule of the cdr table) is in [from, to) and whose
account is selected. A call's CDR is taken once the partition's event time has
moved `reorder_grace_s + margin_s` past its last emission (later corrections are
still taken, as newer versions); the end of the read closes every grace wait, and
calls still open then (no HANGUP, not yet stale) are left alone.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.avro import codec
from pipeline.core.cdr import RatedCdr, call_start_ms
from pipeline.core.config import BillingConfig
from pipeline.core.correlator import Correlator
from pipeline.core.events import parse_event
from pipeline.core.state_codec import encode_state
from pipeline.errors import InvalidEvent, PipelineError
from pipeline.kafka.clients import ClientLog, client_config, connection_problem, settings_of
from pipeline.rerate.facts import StoredRow
from pipeline.rerate.store import RowStream, fetch_stored, iter_stored
from pipeline.runtime.settings import KafkaSettings
from pipeline.storage.backend import ClickHouseBackend

log = logging.getLogger(__name__)

LOOKUP_BATCH = 2000
IDLE_TIMEOUT_S = 60.0


class KafkaReplayError(PipelineError):
    """The call-events topic cannot be replayed (unknown topic, broker unreachable...)."""


@dataclass(frozen=True)
class KafkaReplayOptions:
    bootstrap: str
    topic: str
    margin_s: int = 300
    poll_batch: int = 2000
    consumer_config: dict[str, Any] = field(default_factory=dict)
    # The [kafka] settings (security included); None: plaintext to `bootstrap`.
    kafka: KafkaSettings | None = None

    @property
    def settings(self) -> KafkaSettings:
        return self.kafka if self.kafka is not None else settings_of(self.bootstrap)


@dataclass
class PartitionPlan:
    partition: int
    start: int  # first offset to read
    end: int  # offset after the last record to read (the high watermark at start)


@dataclass
class ReplayStats:
    records: int = 0
    events: int = 0
    ticks: int = 0
    rejected: int = 0
    cdrs_emitted: int = 0
    calls_in_range: int = 0
    calls_out_of_range: int = 0


def load_stored(
    stream: RowStream, db: str, from_ms: int, to_ms: int, accounts: Sequence[str] = ()
) -> dict[str, tuple[Any, ...]]:
    """The newest stored version of every call that started in [from_ms, to_ms), by call
    id: one streamed read, instead of one lookup per batch of replayed calls (a lookup
    by random call ids touches most of the table). Calls the replay finds outside it
    are looked up one batch at a time. Memory: about 1 KB per stored call."""
    return {row[0]: row for row in iter_stored(stream, db, from_ms, to_ms, accounts)}


class _Partition:
    """One partition's correlator and the CDRs it emitted that are not yet taken."""

    def __init__(self, config: BillingConfig, plan: PartitionPlan, delay_ms: int) -> None:
        self.plan = plan
        # closed calls frozen: the replayed window's calls at a third of the memory
        self.correlator = Correlator(config, freeze=encode_state)
        # call id -> (newest CDR, partition event time when emitted), oldest emission first
        self.pending: OrderedDict[str, tuple[RatedCdr, int]] = OrderedDict()
        self.delay_ms = delay_ms
        self.done = plan.start >= plan.end

    def add(self, cdrs: list[RatedCdr]) -> None:
        watermark = self.correlator.watermark_ms
        pending = self.pending
        for cdr in cdrs:
            pending[cdr.call_id] = (cdr, watermark)
            pending.move_to_end(cdr.call_id)  # re-emitted: back of the queue

    def ripe(self, final: bool = False) -> list[RatedCdr]:
        """The CDRs whose call has been quiet long enough (all of them when `final`)."""
        out = []
        pending = self.pending
        limit = self.correlator.watermark_ms - self.delay_ms
        while pending:
            call_id = next(iter(pending))
            cdr, emitted_at = pending[call_id]
            if not final and emitted_at > limit:
                break
            del pending[call_id]
            out.append(cdr)
        return out


class KafkaSource:
    unit = "records"

    def __init__(
        self,
        options: KafkaReplayOptions,
        config: BillingConfig,
        from_ms: int,
        to_ms: int,
        accounts: Sequence[str],
        backend: ClickHouseBackend,
        db: str,
        group_id: str,
        plans: Sequence[PartitionPlan] | None = None,
        stored: Mapping[str, StoredRow] | None = None,
    ) -> None:
        self.options = options
        self.config = config
        self.from_ms, self.to_ms = from_ms, to_ms
        self.accounts = frozenset(accounts)
        self.backend, self.db = backend, db
        policy = config.policy
        reach_ms = (policy.max_call_duration_s + policy.reorder_grace_s + options.margin_s) * 1000
        self.read_from_ms = from_ms - reach_ms
        self.read_to_ms = to_ms + reach_ms
        self.delay_ms = (policy.reorder_grace_s + options.margin_s) * 1000
        self.group_id = group_id
        self.stats = ReplayStats()
        self.plans: list[PartitionPlan] = list(plans or ())
        self.total: int | None = sum(max(0, p.end - p.start) for p in self.plans) if plans else None
        self.done = 0
        self.on_read: Callable[[int], None] | None = None
        self._consumer: Consumer | None = None
        self._blocked: str | None = None  # why the consumer cannot get in, if it cannot
        self._client_log = ClientLog(logging.getLogger(f"{__name__}.librdkafka"))
        # newest stored versions of the calls in range, loaded beforehand (load_stored)
        self.stored = stored

    # -- planning -------------------------------------------------------------------------

    def _open(self) -> Consumer:
        conf = client_config(self.options.settings, **{
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "client.id": "cdr-rerate",
            "error_cb": self._on_error,
            "logger": self._client_log,
            **self.options.consumer_config,
        })
        try:
            return Consumer(conf)
        except KafkaException as exc:
            raise KafkaReplayError(f"invalid consumer configuration: {exc.args[0]}") from None

    def _on_error(self, err: KafkaError) -> None:
        why = connection_problem(err, self.options.settings, self._client_log)
        if why is not None:
            self._blocked = self._blocked or why
        else:
            log.debug("kafka client error while replaying: %s", err.str())

    def _raise_blocked(self, consumer: Consumer) -> None:
        consumer.poll(0)  # serves the error callback
        if self._blocked is not None:
            raise KafkaReplayError(f"topic {self.options.topic!r}: {self._blocked}")

    def plan(self) -> list[PartitionPlan]:
        """Offsets to read on each partition of the topic (also sets `total`); given
        plans (a worker's share, planned by the parent) are kept."""
        if self.total is not None:
            return self.plans
        consumer = self._consumer or self._open()
        self._consumer = consumer
        topic = self.options.topic
        try:
            metadata = consumer.list_topics(topic, timeout=15)
            info = metadata.topics.get(topic)
            if info is not None and info.error is not None:
                why = connection_problem(info.error, self.options.settings)
                if why is not None:
                    raise KafkaReplayError(f"topic {topic!r} cannot be replayed: {why}")
            if info is None or info.error is not None or not info.partitions:
                reason = info.error.str() if info is not None and info.error else "no partitions"
                raise KafkaReplayError(f"topic {topic!r} cannot be replayed: {reason}")
            partitions = sorted(info.partitions)
            found = consumer.offsets_for_times(
                [TopicPartition(topic, p, self.read_from_ms) for p in partitions], timeout=30
            )
            plans = []
            for tp in found:
                if tp.error is not None:
                    raise KafkaReplayError(
                        f"{topic}[{tp.partition}]: offsets_for_times: {tp.error}"
                    )
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, tp.partition), timeout=15, cached=False
                )
                start = high if tp.offset < 0 else max(tp.offset, low)
                plans.append(PartitionPlan(tp.partition, start, high))
        except KafkaException as exc:
            self._raise_blocked(consumer)
            raise KafkaReplayError(f"topic {topic!r}: {exc.args[0]}") from None
        self.plans = sorted(plans, key=lambda p: p.partition)
        self.total = sum(max(0, p.end - p.start) for p in self.plans)
        for p in self.plans:
            log.info("%s[%s]: replaying offsets %s..%s", topic, p.partition, p.start, p.end)
        return self.plans

    # -- replay ---------------------------------------------------------------------------

    def items(self) -> Iterator[tuple[StoredRow | None, RatedCdr]]:
        """(newest stored version or None, replayed CDR) for every replayed call in range."""
        if self.total is None:
            self.plan()
        if self._consumer is None:
            self._consumer = self._open()
        consumer = self._consumer
        topic = self.options.topic
        parts = {p.partition: _Partition(self.config, p, self.delay_ms) for p in self.plans}
        todo = [TopicPartition(topic, p.partition, p.start) for p in self.plans if p.start < p.end]
        candidates: list[RatedCdr] = []
        try:
            if todo:
                consumer.assign(todo)
            idle_since = time.monotonic()
            while any(not part.done for part in parts.values()):
                messages = consumer.consume(num_messages=self.options.poll_batch, timeout=1.0)
                if not messages:
                    self._raise_blocked(consumer)
                    if time.monotonic() - idle_since > IDLE_TIMEOUT_S:
                        waiting = [p for p, part in parts.items() if not part.done]
                        raise KafkaReplayError(
                            f"{topic}: no records for {IDLE_TIMEOUT_S:.0f}s while partitions "
                            f"{waiting} are not read to their end"
                        )
                    continue
                idle_since = time.monotonic()
                touched: set[int] = set()
                for msg in messages:
                    number = msg.partition()
                    part = parts.get(number) if number is not None else None
                    if number is None or part is None or part.done:
                        continue
                    touched.add(number)
                    self._record(consumer, msg, part)
                for p in touched:
                    candidates.extend(self._in_range(parts[p].ripe()))
                if len(candidates) >= LOOKUP_BATCH:
                    yield from self._pair(candidates)
                    candidates = []
                if self.on_read is not None:
                    self.on_read(self.done)
            for part in parts.values():
                part.add(part.correlator.finish())
                candidates.extend(self._in_range(part.ripe(final=True)))
            yield from self._pair(candidates)
        finally:
            self.close()

    def _record(self, consumer: Consumer, msg: Any, part: _Partition) -> None:
        error = msg.error()
        plan = part.plan
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                if msg.offset() >= plan.end:
                    self._finish(consumer, part)
                return
            why = connection_problem(error, self.options.settings) or error.str()
            raise KafkaReplayError(f"{msg.topic()}[{msg.partition()}]: {why}")
        offset = msg.offset()
        if offset >= plan.end:
            self._finish(consumer, part)
            return
        _kind, stamp = msg.timestamp()
        if stamp > self.read_to_ms:
            # Past the window. A tick there still tells how far event time went (the
            # live correlator closed stale calls on it too); events are not read.
            if codec.is_tick(msg.headers()):
                try:
                    part.add(part.correlator.advance(codec.decode_tick(msg.value()), offset))
                except InvalidEvent:
                    self.stats.rejected += 1
            self.done += plan.end - offset
            self._finish(consumer, part)
            return
        self.done += 1
        self.stats.records += 1
        corr = part.correlator
        try:
            if codec.is_tick(msg.headers()):
                self.stats.ticks += 1
                out = corr.advance(codec.decode_tick(msg.value()), position=offset)
            else:
                event = parse_event(codec.decode_event_dict(msg.value()))
                self.stats.events += 1
                out = corr.on_event(event, position=offset)
        except InvalidEvent as exc:
            self.stats.rejected += 1
            log.debug("%s[%s]@%s skipped: %s", msg.topic(), msg.partition(), offset, exc.reason)
            out = []
        if out:
            self.stats.cdrs_emitted += len(out)
            part.add(out)
        if offset + 1 >= plan.end:
            self._finish(consumer, part)

    def _finish(self, consumer: Consumer, part: _Partition) -> None:
        if part.done:
            return
        part.done = True
        try:
            consumer.pause([TopicPartition(self.options.topic, part.plan.partition)])
        except KafkaException:
            log.debug("pause of partition %s failed", part.plan.partition, exc_info=True)

    def _in_range(self, cdrs: list[RatedCdr]) -> list[RatedCdr]:
        out = []
        for cdr in cdrs:
            start = call_start_ms(cdr) or 0
            if self.from_ms <= start < self.to_ms and (
                not self.accounts or cdr.account_id in self.accounts
            ):
                out.append(cdr)
            else:
                self.stats.calls_out_of_range += 1
        self.stats.calls_in_range += len(out)
        return out

    def _pair(self, cdrs: list[RatedCdr]) -> Iterator[tuple[StoredRow | None, RatedCdr]]:
        if not cdrs:
            return
        index = self.stored if self.stored is not None else {}
        misses = [c.call_id for c in cdrs if c.call_id not in index]
        found = (
            fetch_stored(self.backend, self.db, misses, self.read_from_ms, self.read_to_ms)
            if misses
            else {}
        )
        for cdr in cdrs:
            row = index.get(cdr.call_id)
            yield (row if row is not None else found.get(cdr.call_id)), cdr

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close()
            except (KafkaException, RuntimeError):
                log.debug("closing the replay consumer failed", exc_info=True)
