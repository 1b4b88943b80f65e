"""The worker's task: call-events batches from Faust, through the record path, to Kafka.

The driver is the I/O around the record path (record_path.py): it takes batches from
the handoff, asks Kafka where a newly assigned partition resumes, and does what each
partition's output asks, in order: send the consumer back after a gap, send the dead
letters, the CDRs and the changed calls. Only then is the batch acknowledged to
Faust, and Faust commits an offset only after flushing the producer, so a committed
offset means every CDR and state change before it was delivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from faust.types import TP

from pipeline.core.cdr import DECISIONS
from pipeline.runtime.settings import Settings
from pipeline.worker import faust_compat, metrics
from pipeline.worker.handoff import Handoff
from pipeline.worker.offsets import GroupOffsets
from pipeline.worker.produce import BatchSender
from pipeline.worker.record_path import DeadLetter, PartitionOutput, RecordPath
from pipeline.worker.table_store import TableWriter

log = logging.getLogger(__name__)

# At most this many records per batch, and at most this long waiting to fill one.
BATCH_MAX = 1000
BATCH_WITHIN_S = 0.05
# Seconds between updates of a partition's gauges: counting its open calls walks the
# partition's calls, so it is not done per so many records (a large table made that
# a per-record cost).
OBSERVE_EVERY_S = 5.0


class Driver:
    def __init__(self, app: Any, settings: Settings, path: RecordPath, handoff: Handoff,
                 sender: BatchSender, table: TableWriter, dlq_topic: Any) -> None:
        self._app = app
        self._settings = settings
        self._topic = settings.kafka.call_events
        self._path = path
        self._handoff = handoff
        self._sender = sender
        self._table = table
        self._dlq = dlq_topic
        self._offsets = GroupOffsets(settings.kafka, settings.worker.app_id, self._topic)
        self._observed_at: dict[int, float] = {}  # time.monotonic() of a partition's gauges
        # Counted per batch and added to the Prometheus counters once per batch: a
        # counter's inc takes a lock, and per record that was about 3% of the worker's time.
        self._records_in = {kind: metrics.EVENTS_IN.labels(kind) for kind in ("event", "tick")}
        self._cdrs_out = {decision: metrics.CDRS_OUT.labels(decision) for decision in DECISIONS}

    async def run(self) -> None:
        """Batches of call-events records, one partition's records at a time; each
        batch acknowledged to Faust when it is finished. An error here crashes the app
        (Faust stops it and logs the traceback); the batch is not acknowledged, so a
        restart folds it again."""
        while True:
            batch = await self._handoff.take(BATCH_MAX, BATCH_WITHIN_S)
            folded = {}
            for partition, records in batch.by_partition():
                out = await self.process(partition, records)
                if out.folded is not None:
                    folded[partition] = out.folded
            self._handoff.ack(batch, folded)

    async def process(self, partition: int, records: Sequence[Any]) -> PartitionOutput:
        """One partition's records of a batch through the record path, and its output
        out; returns the output (its `folded` offsets are to be acknowledged)."""
        path = self._path
        if not path.started(partition):
            resume = await asyncio.get_running_loop().run_in_executor(
                None, self._offsets.resume_offset, partition)
            path.start(partition, resume)
        out = path.process(partition, records)
        if out.seek_to is not None:
            await self._send_back(partition, out)
        if out.last is None:
            return out
        for letter in out.dead_letters:
            await self._dead_letter(letter)
        self._count(out)
        await self._sender.send(self._settings.kafka.cdrs, partition, out.cdrs)
        if out.changelog:
            last = out.last
            event = self._app.create_event(last.key, last.value, last.headers, last)
            await self._table.write(partition, out.changelog, event)
        self._observe(partition, last=out.last)
        return out

    async def on_revoked(self, sender: Any, revoked: set[TP], **_: Any) -> None:
        partitions = {tp.partition for tp in revoked if tp.topic == self._topic}
        self._path.revoke(partitions)
        for partition in partitions:
            self._observed_at.pop(partition, None)

    async def on_assigned(self, sender: Any, assigned: set[TP], **_: Any) -> None:
        # Before the assigned partitions are fetched: the handoff takes call-events
        # records from the consumer's fetches (idempotent, as the two below).
        consumer, worker = self._app.consumer, self._settings.worker
        self._handoff.install(consumer)
        faust_compat.set_fetch_wait(consumer, worker.fetch_wait_ms, worker.fetch_min_bytes)
        faust_compat.deliver_without_tasks(consumer)

    async def _send_back(self, partition: int, out: PartitionOutput) -> None:
        metrics.OFFSET_GAPS.inc()
        log.warning("%s[%s]: records from offset %s are missing (a stale fetch after a "
                    "rebalance); later records refused, consumer sent back to %s",
                    self._topic, partition, out.seek_to, out.seek_to)
        # Faust's thread-safe seek; it also resets Faust's read offset of the partition.
        await self._app.consumer.seek_wait({TP(self._topic, partition): out.seek_to})

    async def _dead_letter(self, letter: DeadLetter) -> None:
        sent = await self._dlq.send(key=letter.key, value=letter.value, headers=letter.headers)
        self._sender.watch(sent, f"{self._dlq.get_topic_name()} (dead letter of {letter.source})")
        metrics.DLQ.labels(letter.category).inc()
        log.warning("%s to dead-letter: %s", letter.source, letter.reason)

    def _count(self, out: PartitionOutput) -> None:
        if out.reemitted:
            metrics.REEMITTED.inc(out.reemitted)
        for kind, count in out.records_in.items():
            self._records_in[kind].inc(count)
        for decision, count in out.cdrs_out.items():
            self._cdrs_out[decision].inc(count)

    def _observe(self, partition: int, last: Any) -> None:
        now = time.monotonic()
        if now - self._observed_at.get(partition, 0.0) < OBSERVE_EVERY_S:
            return
        self._observed_at[partition] = now
        stats = self._path.stats(partition)
        if stats is None:
            return
        label = str(partition)
        metrics.TABLE_SIZE.labels(label).set(stats.table_calls)
        metrics.OPEN_CALLS.labels(label).set(stats.open_calls)
        metrics.WATERMARK.labels(label).set(stats.watermark_ms)
        try:
            highwater = self._app.consumer.highwater(TP(last.topic, partition))
            metrics.LAG.labels(label).set(max(0, highwater - last.offset - 1))
        except Exception:  # noqa: BLE001 - lag is best effort, never stops the stream
            log.debug("no highwater for %s[%s]", last.topic, partition)
