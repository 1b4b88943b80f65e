"""The Faust app: call-events in, versioned RatedCdrs out, state in a changelog table.

One Correlator per assigned partition, each with its own event-time watermark,
driven only from inside the stream (events and tick records), because Faust
timers cannot change tables. Delivery is at-least-once: after an assignment the
first record seen tells from where input is replayed, and every CDR whose last
emission came from that input on is sent again (same version, same content), so
a crash between the changelog write and the CDR send loses nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import TP

from pipeline import codec
from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig
from pipeline.core.correlator import Correlator
from pipeline.core.events import parse_event
from pipeline.errors import InvalidEvent
from pipeline.settings import Settings
from pipeline.worker import metrics
from pipeline.worker.table_store import TableStore

log = logging.getLogger(__name__)


@dataclass
class PartitionState:
    correlator: Correlator
    store: TableStore
    records: int = 0


@dataclass
class CorrelatorRuntime:
    """What the agent keeps between records: one Correlator per assigned partition."""

    config: BillingConfig
    table: Any
    partitions: dict[int, PartitionState] = field(default_factory=dict)

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
            "partition %s assigned: %s calls restored, watermark %s, %s CDRs re-sent from offset %s",
            partition, len(store), watermark, len(resend), first_offset,
        )
        return held, resend

    def revoke(self, partitions: set[int]) -> None:
        for partition in partitions:
            self.partitions.pop(partition, None)


def _headers(message: Any) -> list[tuple[str, bytes]]:
    headers = message.headers or []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


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
        web_enabled=False,
        table_cleanup_interval=3600.0,
        stream_wait_empty=False,
        consumer_auto_offset_reset="earliest",
    )
    events_topic = app.topic(kafka.call_events, key_serializer="raw", value_serializer="raw")
    cdrs_topic = app.topic(kafka.cdrs, key_serializer="raw", value_serializer="raw")
    dlq_topic = app.topic(kafka.dlq, key_serializer="raw", value_serializer="raw")
    # Keys are call ids (str), values {"p": partition, "s": CallState.to_dict()}; both
    # JSON in the changelog topic <app_id>-calls-changelog.
    table = app.Table("calls", default=None, partitions=kafka.partitions)
    runtime = CorrelatorRuntime(config, table)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: set[TP], **_: Any) -> None:
        runtime.revoke({tp.partition for tp in revoked if tp.topic == kafka.call_events})

    async def send_cdrs(cdrs: list[RatedCdr], partition: int) -> None:
        for cdr in cdrs:
            await cdrs_topic.send(key=cdr.call_id.encode(), value=codec.encode_cdr(cdr), partition=partition)
            metrics.CDRS_OUT.labels(cdr.record_decision).inc()

    async def dead_letter(message: Any, exc: InvalidEvent) -> None:
        headers = [
            ("dlq-reason", exc.reason.encode()),
            ("dlq-category", exc.category.encode()),
            ("source-topic", message.topic.encode()),
            ("source-partition", str(message.partition).encode()),
            ("source-offset", str(message.offset).encode()),
        ]
        await dlq_topic.send(key=message.key, value=message.value or b"", headers=headers)
        metrics.DLQ.labels(exc.category).inc()
        log.warning("%s[%s]@%s to dead-letter: %s", message.topic, message.partition, message.offset, exc.reason)

    @app.agent(events_topic)
    async def correlate(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            partition = message.partition
            held, resend = runtime.partition(partition, message.offset)
            if resend:
                metrics.REEMITTED.inc(len(resend))
                await send_cdrs(resend, partition)
            try:
                if codec.is_tick(_headers(message)):
                    metrics.EVENTS_IN.labels("tick").inc()
                    out = held.correlator.advance(codec.decode_tick(message.value or b""), message.offset)
                else:
                    metrics.EVENTS_IN.labels("event").inc()
                    call_event = parse_event(codec.decode_event_dict(message.value or b""))
                    key = message.key.decode("utf-8", "replace") if message.key else None
                    if key is not None and key != call_event.call_id:
                        raise InvalidEvent(f"record key {key!r} is not the event's call_id {call_event.call_id!r}", "call_id")
                    out = held.correlator.on_event(call_event, message.offset)
            except InvalidEvent as exc:
                await dead_letter(message, exc)
                continue
            if out:
                await send_cdrs(out, partition)
            held.records += 1
            if held.records % 1000 == 0:
                _observe(held, partition, app, message)

    app.correlate_agent = correlate  # type: ignore[attr-defined]
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

