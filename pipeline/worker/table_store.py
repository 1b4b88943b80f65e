"""A partition's table writes into the Faust `calls` table: its store and its changelog.

The record path gives each changed call of a batch once (call_store.TableWrite).
`TableWriter.write` puts them into the table's store (`table.data`) and onto the
changelog topic, on the partition explicitly: what `table[call_id] = value` does
(Faust's `Table.on_key_set`), without Faust's per-record producer machinery, which
cost more than the billing core's work per event. Values are bytes (changelog.py; the
table's value serializer is "raw"), written as they are. Faust restores the table
from that changelog as before.

Write before the records that changed the calls are acknowledged: Faust commits an
offset only after flushing the producer, so a committed offset means every state
change before it is in the changelog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from faust.stores.memory import Store as MemoryStore
from faust.types import TP

from pipeline.worker.call_store import TableWrite
from pipeline.worker.faust_compat import current_event
from pipeline.worker.produce import BatchSender


class TableWriter:
    """`compression`: the changelog's record batch codec (a name of produce.CODECS), or
    None for the producer's own."""

    def __init__(self, table: Any, sender: BatchSender, compression: str | None = None) -> None:
        self._table = table
        self._sender = sender
        self._topic = table.changelog_topic.get_topic_name()
        self._compression = compression

    async def write(self, partition: int, writes: Sequence[TableWrite], event: Any) -> int:
        """Write `writes` (one partition's) to the table's store and its changelog
        partition; returns how many.

        `event` is a record of this partition: Faust's current event while the store is
        written, as a RocksDB store picks the partition's database from it.
        """
        if not writes:
            return 0
        data = self._table.data
        with current_event(event):
            if isinstance(data, MemoryStore):
                # a dict underneath (mode's FastUserDict): one update, not a call per key
                data.update([(w.call_id, w.value) for w in writes])
                for write in writes:
                    if write.value is None:
                        data.pop(write.call_id, None)
            else:
                # One key at a time: a RocksDB store serializes each (its `update` would not).
                for write in writes:
                    if write.value is None:
                        data.pop(write.call_id, None)
                    else:
                        data[write.call_id] = write.value
        sent = await self._sender.send(self._topic, partition, [w.record for w in writes],
                                       self._compression)
        if sent is not None:
            future, count = sent
            tp = TP(self._topic, partition)
            future.add_done_callback(lambda f: self._delivered(f, tp, count))
        return len(writes)

    def _delivered(self, sent: asyncio.Future[Any], tp: TP, count: int) -> None:
        # As Faust's own changelog callback: a persistent (RocksDB) store remembers how
        # far the changelog is applied, so a restart recovers only what came after.
        # A batch's result is its first record's offset; batches of one partition are
        # delivered in order, so the write's last batch will do. A failed batch stops
        # the worker (BatchSender).
        if sent.cancelled() or sent.exception() is not None:
            return
        self._table.data.set_persisted_offset(tp, sent.result().offset + count - 1)
