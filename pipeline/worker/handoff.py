"""call-events records from Faust's fetches to the correlator, a batch at a time.

Faust's fetch loop hands records over one at a time: it builds a Faust Message per
record, checks its read offset, gaps and commit count, runs a delivery and a "flow
suspended" wait per record, and an agent's stream then tracks, buffers and
acknowledges each record. For a worker that folds records in batches anyway, that
was more CPU per record than the billing core's own work.

`Handoff` takes each fetch's call-events records as lists, a partition's at a time
(`faust_compat.take_batches` wraps the consumer's fetch), before Faust's fetch loop
sees them; every other topic goes through Faust as before. It keeps what Faust's
path is for:

- *Flow control.* Records of a fetch that completes while Faust's flow is suspended
  (a rebalance) are dropped, as Faust drops them; Faust seeks back to the committed
  offsets afterwards. The handoff is one of the queues Faust's flow control clears at
  a rebalance: records not taken yet are dropped then, as an agent's queue is, and
  fetched again.
- *Back-pressure.* With `maxsize` records waiting, a delivery waits for room, and
  gives way when the flow is suspended (its records are dropped: fetched again).
- *Acknowledgements.* A taken batch counts as being processed in Faust's consumer
  (`faust_compat.track_batch`) until the correlator has finished it; then the offsets
  it folded are acknowledged (`faust_compat.ack_offsets`). Faust commits an offset only
  when every record up to it is acknowledged, and before a rebalance gives partitions
  up it waits until every batch being processed is finished (`stream_wait_empty`): a
  batch under way is written out and flushed first, as an agent's records are.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from typing import Any

from faust.types import TP

from pipeline.worker import faust_compat


class Batch:
    """Records taken together: per partition, its lists in fetch (offset) order."""

    def __init__(self, chunks: list[tuple[int, list[Any]]], pending: Any) -> None:
        self.chunks = chunks
        self.pending = pending  # Faust's count of it as being processed

    def __len__(self) -> int:
        return sum(len(records) for _, records in self.chunks)

    def by_partition(self) -> Iterator[tuple[int, list[Any]]]:
        """Each partition's records of the batch, in offset order (one list each)."""
        parts: dict[int, list[Any]] = {}
        for partition, records in self.chunks:
            held = parts.get(partition)
            if held is None:
                parts[partition] = records
            else:
                parts[partition] = held + records
        return iter(parts.items())


class Handoff:
    def __init__(self, app: Any, topic: str, maxsize: int) -> None:
        self._app = app
        self._topic = topic
        self._maxsize = maxsize
        self._chunks: deque[tuple[int, list[Any]]] = deque()
        self._count = 0  # records waiting
        self._arrived = asyncio.Event()  # set while records are waiting
        self._room = asyncio.Event()  # set while fewer than maxsize are waiting
        self._room.set()
        # While take() waits for a batch to fill: how many records fill it, and the
        # future a delivery completes when they are there.
        self._filled: asyncio.Future[None] | None = None
        self._fill_to = 0
        # Faust's flow control holds its queues weakly; the app holds the handoff.
        app.flow_control.manage_queue(self)

    def __len__(self) -> int:
        return self._count

    def install(self, consumer: Any) -> None:
        """Take the topic's records from `consumer`'s fetches (idempotent)."""
        faust_compat.take_batches(consumer, self._topic, self.deliver)

    async def deliver(self, partition: int, records: list[Any]) -> None:
        """A fetch's records of one partition (in offset order)."""
        if not records:
            return
        app = self._app
        generation = app.consumer_generation_id
        if self._count >= self._maxsize and not await self._wait_for_room():
            return  # the flow was suspended meanwhile: fetched again afterwards
        if not app.flow_control.is_active() or app.consumer_generation_id != generation:
            return  # a rebalance is (or was, while waiting) under way: fetched again
        self._chunks.append((partition, records))
        self._count += len(records)
        self._arrived.set()
        filled = self._filled
        if filled is not None and self._count >= self._fill_to and not filled.done():
            filled.set_result(None)

    async def _wait_for_room(self) -> bool:
        """Until there is room (True), or the flow is suspended (False)."""
        suspended = self._app.consumer.suspend_flow
        while self._count >= self._maxsize:
            if suspended.is_set():
                return False
            self._room.clear()
            room = asyncio.ensure_future(self._room.wait())
            stop = asyncio.ensure_future(suspended.wait())
            try:
                await asyncio.wait((room, stop), return_when=asyncio.FIRST_COMPLETED)
            finally:
                room.cancel()
                stop.cancel()
        return True

    def clear(self) -> None:
        """Drop the records not taken yet (Faust's flow control, at a rebalance)."""
        self._chunks.clear()
        self._count = 0
        self._arrived.clear()
        self._room.set()

    async def take(self, max_records: int, within: float) -> Batch:
        """The next batch: wait for records, then at most `within` seconds until
        `max_records` are there; returns the lists delivered first until they hold
        `max_records` (a list is not split, so a batch may hold a few more), counted by
        Faust's consumer as being processed."""
        while True:
            await self._arrived.wait()
            if self._count < max_records:
                await self._fill(max_records, within)
            if self._count:
                break  # else cleared by a rebalance meanwhile
        waiting, chunks, taken = self._chunks, [], 0
        while waiting and taken < max_records:
            chunk = waiting.popleft()
            chunks.append(chunk)
            taken += len(chunk[1])
        self._count -= taken
        if not waiting:
            self._arrived.clear()
        if self._count < self._maxsize:
            self._room.set()
        return Batch(chunks, faust_compat.track_batch(self._app.consumer))

    async def _fill(self, max_records: int, within: float) -> None:
        loop = asyncio.get_running_loop()
        filled: asyncio.Future[None] = loop.create_future()
        self._filled, self._fill_to = filled, max_records
        timer = loop.call_later(within, _finish, filled)
        try:
            await filled
        finally:
            timer.cancel()
            self._filled = None

    def ack(self, batch: Batch, folded: dict[int, tuple[int, int]]) -> None:
        """Finish a batch: acknowledge per partition the offsets it folded, `(first,
        end)`. A record the correlator refused (after missing ones) is not among them,
        and holds Faust's commit of its partition back."""
        consumer, topic = self._app.consumer, self._topic
        for partition, (first, end) in folded.items():
            faust_compat.ack_offsets(consumer, TP(topic, partition), first, end)
        faust_compat.finish_batch(consumer, batch.pending)


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
