"""Batched produce on Faust's own producer, with failed deliveries fatal.

The worker writes each batch's CDRs and changed calls as a few record batches per
topic-partition (aiokafka's `create_batch`/`send_batch`) instead of one
`Producer.send` per record: one future per batch instead of one per record, and
none of Faust's per-record send path. The records go through the same
aiokafka producer, so Faust's commit, which flushes that producer first, still
commits an offset only after they were delivered.

A batch that cannot be delivered (aiokafka has retried until its request timeout)
stops the process at once, before Faust's next commit can pass the records that
made it: a restart then replays them, as after a SIGKILL. Stopping the app the
graceful way would commit on the way out, and lose them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from pipeline.worker.faust_compat import append_records

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]  # a list: aiokafka's compiled batch builder takes no other
Record = tuple[bytes | None, bytes | None, Headers]  # key, value, headers

# Exit status of a worker that stopped because Kafka did not take its output.
EXIT_DELIVERY_FAILED = 75


def exit_on_failure(where: str, exc: BaseException) -> None:
    log.critical(
        "%s: a record batch was not delivered (%r); stopping now so that no offset "
        "is committed past its input, which a restart replays", where, exc,
    )
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_DELIVERY_FAILED)


# The producer's largest record batch (Faust's producer_max_batch_size, app.py).
MAX_BATCH_BYTES = 512 * 1024

# Compression codecs of a record batch by name (the worker's COMPRESSIONS).
CODECS = {"none": DefaultRecordBatch.CODEC_NONE, "gzip": DefaultRecordBatch.CODEC_GZIP,
          "snappy": DefaultRecordBatch.CODEC_SNAPPY, "lz4": DefaultRecordBatch.CODEC_LZ4,
          "zstd": DefaultRecordBatch.CODEC_ZSTD}


class BatchSender:
    """Sends records to one topic-partition at a time as aiokafka record batches.

    `producer` returns the started AIOKafkaProducer to send with: in the worker the one
    inside Faust's producer (faust_compat.aiokafka_producer), asked for at every send
    because Faust starts it after the app is built."""

    def __init__(self, producer: Callable[[], Any],
                 on_failure: Callable[[str, BaseException], None] = exit_on_failure) -> None:
        self._producer = producer
        self._on_failure = on_failure

    async def send(self, topic: str, partition: int, records: Sequence[Record],
                   compression: str | None = None) -> tuple[asyncio.Future[Any], int] | None:
        """Queue `records` in order; returns the last batch's delivery future and how
        many records that batch holds (its result's offset is the batch's first
        record's), or None when there was nothing to send. `compression` (a name of
        CODECS) compresses these batches other than the producer's own setting: a
        record batch carries its codec, so one producer may send both."""
        if not records:
            return None
        aio = self._producer()
        new_batch = aio.create_batch if compression is None else partial(
            BatchBuilder, MAX_BATCH_BYTES, CODECS[compression], is_transactional=False)
        batch, first, total = new_batch(), 0, len(records)
        while (taken := append_records(batch, records, first)) < total:
            if taken == first:  # not even one record fits an empty batch
                raise ValueError(f"{topic}[{partition}]: a record of "
                                 f"{len(records[taken][1] or b'')} bytes is larger than the "
                                 "producer's batch size")
            await self._submit(aio, batch, topic, partition)
            batch, first = new_batch(), taken
        sent = await self._submit(aio, batch, topic, partition)
        return sent, total - first

    async def _submit(self, aio: Any, batch: Any, topic: str,
                      partition: int) -> asyncio.Future[Any]:
        # A closed batch is sent at once: a batch still open waits out the producer's
        # linger first, and the next batch for its partition waits for it.
        batch.close()
        sent: asyncio.Future[Any] = await aio.send_batch(batch, topic, partition=partition)
        self.watch(sent, f"{topic}[{partition}]")
        return sent

    def watch(self, sent: Awaitable[Any], where: str) -> None:
        """Treat a failed delivery of `sent` (any send's future) as fatal too; `where`
        names it in the log."""
        asyncio.ensure_future(sent).add_done_callback(lambda f: self._check(f, where))

    def _check(self, sent: asyncio.Future[Any], where: str) -> None:
        if not sent.cancelled() and sent.exception() is not None:
            self._on_failure(where, sent.exception())  # type: ignore[arg-type]
