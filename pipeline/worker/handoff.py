"""call-events records from Faust's fetch loop to the correlator, a batch at a time.

Faust hands each fetched record to its topic conductor, which takes a lock, waits
on flow control and producer ebb, counts references, builds an Event and puts it
on the agent's queue; the agent's stream takes it off again, tracks it, buffers it
for `take_events` and, once the batch is done, acknowledges it through the Event's
reference count. For a worker that takes its records in batches anyway, that was
about half of its CPU time per record.

`Handoff` replaces that path for the one topic and keeps what it is for:

- *Flow control.* A record that arrives while Faust's flow is suspended (a
  rebalance) is dropped, as Faust's own delivery drops it; Faust seeks back to the
  committed offsets afterwards. The handoff is one of the queues Faust's flow
  control clears at a rebalance: records not yet taken are dropped then, as the
  records in an agent's queue are, and fetched again.
- *Back-pressure.* At `maxsize` records waiting, delivery waits for room; Faust's
  fetch loop lets a waiting delivery give way when the flow is suspended.
- *Acknowledgements.* Records are tracked (Faust's `track_message`) when the
  correlator takes them, and acknowledged (Faust's `Consumer.ack`) when it has
  finished them. Faust commits an offset only when every record up to it is
  acknowledged, and before a rebalance gives partitions up it waits until every
  tracked record is (`stream_wait_empty`): a batch under way is finished and
  flushed first, as an agent's is.

Every other topic goes through Faust's conductor as before.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

Deliver = Callable[[Any], Awaitable[None]]


class Handoff:
    def __init__(self, app: Any, topic: str, maxsize: int) -> None:
        self._app = app
        self._topic = topic
        self._maxsize = maxsize
        self._records: deque[Any] = deque()
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
        return len(self._records)

    def wrap(self, deliver: Deliver) -> Deliver:
        """The consumer's callback: records of the topic come here, every other
        record goes on to `deliver` (Faust's conductor)."""
        topic = self._topic
        records = self._records
        flow_active = self._app.flow_control.is_active
        arrived = self._arrived

        async def on_message(message: Any) -> None:
            if message.topic != topic:
                await deliver(message)
                return
            if len(records) >= self._maxsize:
                await self._wait_for_room()
            if not flow_active():
                return  # a rebalance is under way: Faust fetches it again afterwards
            records.append(message)
            arrived.set()
            filled = self._filled
            if filled is not None and len(records) >= self._fill_to and not filled.done():
                filled.set_result(None)

        return on_message

    async def _wait_for_room(self) -> None:
        while len(self._records) >= self._maxsize:
            self._room.clear()
            await self._room.wait()

    def clear(self) -> None:
        """Drop the records not taken yet (Faust's flow control, at a rebalance)."""
        self._records.clear()
        self._arrived.clear()
        self._room.set()

    async def take(self, max_records: int, within: float) -> list[Any]:
        """The next batch: wait for a record, then at most `within` seconds until
        `max_records` are there; returns up to that many, in arrival order, each
        tracked by Faust's consumer as being processed."""
        records = self._records
        while True:
            await self._arrived.wait()
            if len(records) < max_records:
                await self._fill(max_records, within)
            count = min(len(records), max_records)
            if count == 0:
                continue  # cleared by a rebalance meanwhile
            batch = [records.popleft() for _ in range(count)]
            if not records:
                self._arrived.clear()
            if len(records) < self._maxsize:
                self._room.set()
            track = self._app.consumer.track_message
            for message in batch:
                track(message)
            return batch

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

    def ack(self, batch: list[Any]) -> None:
        """Acknowledge a finished batch to Faust's consumer. A record the correlator
        refused (marked acked without being processed) is passed over by Faust."""
        ack = self._app.consumer.ack
        for message in batch:
            ack(message)


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
