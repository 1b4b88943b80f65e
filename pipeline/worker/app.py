"""The Faust app: call-events in, versioned RatedCdrs out, state in a changelog table.

One Correlator per assigned partition, each with its own event-time watermark,
driven only from inside the stream (events and tick records), because Faust
timers cannot change tables. Delivery is at-least-once: after an assignment the
first record seen tells from where input is replayed, and every CDR whose last
emission came from that input on is sent again (same version, same content), so
a crash between the changelog write and the CDR send loses nothing.

Records are taken in batches, straight from Faust's fetch loop (Handoff). Each
partition's records in a batch are folded in order, then every call they changed
is written once to the table and its changelog, on that partition
(TableStore.flush). A batch's records are acknowledged to Faust only when it is
finished, and Faust commits an offset only after flushing the producer, so a
committed offset still means every CDR and state change before it was delivered.
Faust's per-record paths for stream delivery and table writes cost more than the
billing core itself; see docs/streaming.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import faust
from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import TopicPartition
from faust.types import TP

from pipeline.avro import codec
from pipeline.core.cdr import DECISIONS, RatedCdr
from pipeline.core.config import BillingConfig
from pipeline.core.correlator import Correlator
from pipeline.core.events import parse_event
from pipeline.errors import InvalidEvent
from pipeline.kafka.admin import CALLS_TABLE
from pipeline.kafka.dead_letters import dead_letter_headers
from pipeline.runtime.settings import Settings
from pipeline.worker import metrics
from pipeline.worker.handoff import Handoff
from pipeline.worker.lean import LeanMonitor, deliver_without_tasks
from pipeline.worker.produce import BatchSender, Record
from pipeline.worker.table_store import TableStore

log = logging.getLogger(__name__)

# At most this many records per batch, and at most this long waiting to fill one.
BATCH_MAX = 1000
BATCH_WITHIN_S = 0.05
# At most this many call-events records waiting for the correlator; Faust's fetch loop
# waits for room beyond that.
HANDOFF_MAX = 16384
# Seconds between updates of a partition's gauges: counting its open calls walks the
# partition's table, so it is not done per so many records (a large table made that
# a per-record cost).
OBSERVE_EVERY_S = 5.0


@dataclass
class PartitionState:
    correlator: Correlator
    store: TableStore
    observed_at: float = 0.0  # time.monotonic() of the last gauge update


@dataclass
class CorrelatorRuntime:
    """What the agent keeps between records: one Correlator per assigned partition."""

    config: BillingConfig
    table: Any
    partitions: dict[int, PartitionState] = field(default_factory=dict)
    # Per assigned partition: the offset of the record to fold next (see in_order).
    expected: dict[int, int] = field(default_factory=dict)

    def partition(self, partition: int, first_offset: int) -> tuple[PartitionState, list[RatedCdr]]:
        held = self.partitions.get(partition)
        if held is not None:
            return held, []
        store = TableStore(self.table, partition)
        store.load()
        watermark = max((s.last_ts_ms for s in store.values()), default=0)
        held = PartitionState(Correlator(self.config, store, watermark_ms=watermark), store)
        self.partitions[partition] = held
        resend = held.correlator.reemit_from(first_offset)
        log.info(
            "partition %s assigned: %s calls restored, watermark %s, "
            "%s CDRs re-sent from offset %s",
            partition, len(store), watermark, len(resend), first_offset,
        )
        return held, resend

    def revoke(self, partitions: set[int]) -> None:
        for partition in partitions:
            self.partitions.pop(partition, None)
            self.expected.pop(partition, None)

    def in_order(self, partition: int, messages: list[Any]) -> tuple[list[Any], int | None]:
        """The records to fold, in offset order from the expected offset on, and the
        offset to send the consumer back to if records are missing (else None).

        call-events has neither compaction nor transaction markers, so a partition's
        offsets are contiguous. A record before the expected offset was folded already
        (a re-delivery) and is passed over. A record after it means records are missing:
        it is refused and never acknowledged (so no commit can pass the missing ones),
        and the consumer must be sent back to the expected offset. That is asked after
        every batch with a refused record: Faust's fetch loop may still be handing over
        stale records fetched before the last seek, and each of them moves its read
        offset past the records the seek is to bring back.
        """
        expected = self.expected[partition]
        ready: list[Any] = []
        missing = False
        for message in messages:
            offset = message.offset
            if offset == expected:
                ready.append(message)
                expected += 1
            elif offset > expected:
                missing = True
                message.acked = True  # Faust then never counts it as processed
        self.expected[partition] = expected
        return ready, (expected if missing else None)


def _headers(message: Any) -> list[tuple[str, bytes]]:
    headers = message.headers or []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def forget_read_offsets(consumer: Any, assigned: set[TP]) -> None:
    """Clear Faust's stale "read offset" of newly assigned partitions.

    Faust's fetch loop (main thread) can record the offset of a message it was
    delivering when a rebalance suspended the flow after the consumer thread had
    already cleared the revoked partitions' read offsets. A partition assigned
    again then keeps that offset, and Faust silently drops every refetched record
    below it: calls lose events, yet the offsets get committed. Faust sets the read
    offset again when it seeks to the committed offsets; for a partition without a
    committed offset it would not. Called from `on_partitions_assigned`, while the
    flow is still suspended. tests/unit/test_worker_batches.py checks the attribute.
    """
    read_offsets = consumer._read_offset
    for tp in assigned:
        read_offsets.pop(tp, None)


def ignore_gaps(consumer: Any, topic: str) -> None:
    """Stop Faust from counting a jump in `topic`'s offsets as processed.

    Faust's fetch loop treats offsets skipped between two fetched records as done
    (meant for compacted topics and transaction markers) and commits past them.
    call-events has neither, so a jump there only means a stale re-fetch after a
    rebalance; the agent refuses those records and sends the consumer back
    (CorrelatorRuntime.in_order), and nothing may be committed past the gap.
    """
    if getattr(consumer, "_cdr_gaps_ignored", None) == topic:
        return
    add_gap = consumer._add_gap

    async def _add_gap(tp: TP, offset_from: int, offset_to: int) -> None:
        if tp.topic != topic:
            await add_gap(tp, offset_from, offset_to)

    consumer._add_gap = _add_gap
    consumer._cdr_gaps_ignored = topic


def set_fetch_wait(consumer: Any, wait_ms: int, min_bytes: int = 1) -> None:
    """Make the consumer's fetches wait at the broker until `min_bytes` of records are
    there, or at most `wait_ms`.

    faust-streaming creates its aiokafka consumer with `fetch_max_wait_ms=1500`
    and no setting for it. At a steady few thousand records/s the worker then
    stalled for up to 1.5 s every few seconds (a fetch for partitions whose
    records were still buffered waited out its maximum), and each stall put
    that much latency on every CDR behind it: HANGUP to CDR p50 1.5-2.7 s at
    1,000 events/s, 0.17 s with 100 ms. aiokafka's fetcher reads the value for
    every fetch request, so setting it on the running fetcher takes effect at
    the next one. tests/integration/test_worker_produce.py checks the attributes.

    `min_bytes` (Faust leaves aiokafka's 1) is what keeps a worker below its peak
    rate from fetching a few records at a time: at 1,000 events/s the worker took
    0.66 of a core with 1 and 0.25 with 32 KiB, for about 50 ms more latency.
    """
    fetcher = consumer._thread._ensure_consumer()._fetcher
    fetcher._fetch_max_wait_ms = wait_ms
    fetcher._fetch_min_bytes = min_bytes


def by_partition(messages: list[Any]) -> dict[int, list[Any]]:
    """A batch's records per partition, each partition's in offset order."""
    parts: dict[int, list[Any]] = {}
    for message in messages:
        parts.setdefault(message.partition, []).append(message)
    return parts


def create_app(settings: Settings, config: BillingConfig) -> faust.App:
    kafka = settings.kafka
    worker = settings.worker
    app = faust.App(
        worker.app_id,
        broker=[f"kafka://{host}" for host in kafka.bootstrap.split(",")],
        store=worker.store,
        datadir=worker.data_dir,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        broker_commit_interval=worker.commit_interval_s,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        # Batch produce requests (CDRs and changelog): without linger aiokafka sends
        # a request for every few records.
        producer_linger=0.02,
        producer_max_batch_size=512 * 1024,
        producer_compression_type=None if worker.compression == "none" else worker.compression,
        broker_max_poll_records=2000,
        stream_buffer_maxsize=HANDOFF_MAX,
        web_enabled=False,
        table_cleanup_interval=3600.0,
        # Faust's default, kept on purpose: a rebalance waits until the batches being
        # processed are finished (and flushed) before the partitions are given up, so no
        # state change reaches a changelog partition another worker already owns.
        stream_wait_empty=True,
        consumer_auto_offset_reset="earliest",
        monitor=LeanMonitor(),
    )
    # Subscribed through Faust's conductor as an agent's topic would be; its records
    # reach the correlator through the handoff, not through Faust's stream delivery.
    events_topic = app.topic(kafka.call_events, key_serializer="raw", value_serializer="raw")
    app.topics.add(events_topic)
    handoff = Handoff(app, kafka.call_events, maxsize=HANDOFF_MAX)
    app.topics.on_message = handoff.wrap(app.topics.on_message)  # the consumer's callback
    dlq_topic = app.topic(kafka.dlq, key_serializer="raw", value_serializer="raw")
    # Keys are call ids (str), values {"p": partition, "s": CallState.to_dict()}; both
    # JSON in the changelog topic <app_id>-calls-changelog.
    table = app.Table(CALLS_TABLE, default=None, partitions=kafka.partitions)
    runtime = CorrelatorRuntime(config, table)

    # Faust sends these signals with the partitions as the one positional argument (its
    # signal type asks for handlers taking any positional arguments).
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: set[TP], **_: Any) -> None:
        runtime.revoke({tp.partition for tp in revoked if tp.topic == kafka.call_events})

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: set[TP], **_: Any) -> None:
        forget_read_offsets(app.consumer, {tp for tp in assigned if tp.topic == kafka.call_events})
        ignore_gaps(app.consumer, kafka.call_events)
        set_fetch_wait(app.consumer, worker.fetch_wait_ms, worker.fetch_min_bytes)
        deliver_without_tasks(app.consumer)

    # Counted per batch and added to the Prometheus counters once per batch: a counter's
    # inc takes a lock, and per record that was about 3% of the worker's time.
    records_in = {kind: metrics.EVENTS_IN.labels(kind) for kind in ("event", "tick")}

    sender = BatchSender(app.producer)
    cdrs_out = {decision: metrics.CDRS_OUT.labels(decision) for decision in DECISIONS}

    def encode_cdrs(cdrs: list[RatedCdr], out: list[Record], counts: Counter[str],
                    correlator: Correlator) -> None:
        """Each CDR as a record, with its call's pinned start in a header (the sink files
        every version of the call under it)."""
        for cdr in cdrs:
            start = correlator.call_start_ms(cdr.call_id)
            headers = [] if start is None else [codec.call_start_header(start)]
            out.append((cdr.call_id.encode(), codec.encode_cdr(cdr), headers))
            counts[cdr.record_decision] += 1

    async def dead_letter(message: Any, exc: InvalidEvent) -> None:
        headers = dead_letter_headers(exc.reason, exc.category, message.topic,
                                      message.partition, message.offset)
        sent = await dlq_topic.send(key=message.key, value=message.value or b"", headers=headers)
        sender.watch(sent, f"{dlq_topic.get_topic_name()} (dead letter of {message.topic}"
                           f"[{message.partition}]@{message.offset})")
        metrics.DLQ.labels(exc.category).inc()
        log.warning("%s[%s]@%s to dead-letter: %s",
                    message.topic, message.partition, message.offset, exc.reason)

    def fold(held: PartitionState, message: Any, counts: Counter[str]) -> list[RatedCdr]:
        """One record into its partition's Correlator; raises InvalidEvent for a bad one."""
        if codec.is_tick(_headers(message)):
            counts["tick"] += 1
            return held.correlator.advance(codec.decode_tick(message.value or b""), message.offset)
        counts["event"] += 1
        call_event = parse_event(codec.decode_event_dict(message.value or b""))
        key = message.key.decode("utf-8", "replace") if message.key else None
        if key is not None and key != call_event.call_id:
            raise InvalidEvent(
                f"record key {key!r} is not the event's call_id {call_event.call_id!r}", "call_id"
            )
        return held.correlator.on_event(call_event, message.offset)

    offsets_client: list[Any] = []

    def resume_offset(partition: int) -> int:
        """Where the group resumes a partition, asked of Kafka: the committed offset, else
        (or if retention already deleted it) the log start, as auto_offset_reset=earliest
        does. Blocking; run in an executor."""
        if not offsets_client:
            offsets_client.append(KafkaConsumer({
                "bootstrap.servers": kafka.bootstrap, "group.id": worker.app_id,
                "enable.auto.commit": False,
            }))
        client = offsets_client[0]
        tp = TopicPartition(kafka.call_events, partition)
        committed = client.committed([tp], timeout=30)[0].offset
        low, _high = client.get_watermark_offsets(tp, timeout=30)
        return int(max(committed, low))

    async def process(partition: int, messages: list[Any]) -> None:
        """One partition's records of a batch, in order; then its changed calls, once each."""
        if partition not in runtime.expected:
            runtime.expected[partition] = await asyncio.get_running_loop().run_in_executor(
                None, resume_offset, partition)
        first = runtime.expected[partition]
        messages, seek_to = runtime.in_order(partition, messages)
        if seek_to is not None:
            metrics.OFFSET_GAPS.inc()
            log.warning("%s[%s]: records from offset %s are missing (a stale fetch after a "
                        "rebalance); later records refused, consumer sent back to %s",
                        kafka.call_events, partition, seek_to, seek_to)
            # Faust's thread-safe seek; it also resets Faust's read offset of the partition.
            await app.consumer.seek_wait({TP(kafka.call_events, partition): seek_to})
        if not messages:
            return
        held, resend = runtime.partition(partition, first)
        # The CDRs of the partition's records, sent as one batch (in order) after them.
        out: list[Record] = []
        kinds: Counter[str] = Counter()  # records in, by kind
        decisions: Counter[str] = Counter()  # CDRs out, by decision
        if resend:
            metrics.REEMITTED.inc(len(resend))
            encode_cdrs(resend, out, decisions, held.correlator)
        for message in messages:
            try:
                cdrs = fold(held, message, kinds)
            except InvalidEvent as exc:
                await dead_letter(message, exc)
                continue
            if cdrs:
                encode_cdrs(cdrs, out, decisions, held.correlator)
        for kind, count in kinds.items():
            records_in[kind].inc(count)
        for decision, count in decisions.items():
            cdrs_out[decision].inc(count)
        await sender.send(kafka.cdrs, partition, out)
        last = messages[-1]
        await held.store.flush(sender, app.create_event(last.key, last.value, last.headers, last))
        now = time.monotonic()
        if now - held.observed_at >= OBSERVE_EVERY_S:
            held.observed_at = now
            _observe(held, partition, app, last)

    async def correlate() -> None:
        """Batches of call-events records, one partition's records at a time; each
        batch acknowledged to Faust when it is finished. An error here crashes the
        app (Faust stops it and logs the traceback); the batch is not acknowledged,
        so a restart folds it again."""
        while True:
            batch = await handoff.take(BATCH_MAX, BATCH_WITHIN_S)
            for partition, part in by_partition(batch).items():
                await process(partition, part)
            handoff.ack(batch)

    app.task(correlate)  # started once the app is up (after table recovery)
    app.handoff = handoff  # type: ignore[attr-defined]
    app.runtime = runtime  # type: ignore[attr-defined]
    return app


def _observe(held: PartitionState, partition: int, app: faust.App, message: Any) -> None:
    label = str(partition)
    metrics.TABLE_SIZE.labels(label).set(len(held.store))
    metrics.OPEN_CALLS.labels(label).set(sum(1 for _ in held.correlator.open_calls()))
    metrics.WATERMARK.labels(label).set(held.correlator.watermark_ms)
    try:
        highwater = app.consumer.highwater(TP(message.topic, partition))
        metrics.LAG.labels(label).set(max(0, highwater - message.offset - 1))
    except Exception:  # noqa: BLE001 - lag is best effort, never stops the stream
        log.debug("no highwater for %s[%s]", message.topic, partition)

