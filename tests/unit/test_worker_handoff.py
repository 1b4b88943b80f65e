"""The handoff of call-events records from Faust's fetch loop to the correlator:
arrival order, batches, Faust's flow control and acknowledgements, back-pressure.

A real Faust app and consumer (never started, so no broker is needed); only the
conductor that other topics go on to is a recording stand-in."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import pytest
from faust.types import TP, Message

from pipeline.worker.faust_compat import refuse
from pipeline.worker.handoff import Handoff

TOPIC = "call-events"
LONG = 30.0  # a bound for waits that must finish at once: only reached if they hang


def _message(offset: int, partition: int = 0, topic: str = TOPIC) -> Message:
    return Message(topic, partition, offset, 0.0, 0, [], f"call-{offset}".encode(), b"v", None)


class Setup:
    def __init__(self, maxsize: int = 100) -> None:
        self.app = faust.App("unit-handoff", broker="kafka://127.0.0.1:1", store="memory://",
                             web_enabled=False)
        self.app.topics.add(self.app.topic(TOPIC, key_serializer="raw", value_serializer="raw"))
        self.conducted: list[Any] = []
        self.handoff = Handoff(self.app, TOPIC, maxsize=maxsize)
        self.deliver = self.handoff.wrap(self._conductor)
        self.app.flow_control.resume()

    async def _conductor(self, message: Any) -> None:
        self.conducted.append(message)

    async def subscribe(self) -> None:
        # What Faust's conductor does when it subscribes: it learns the acking topics.
        await self.app.topics._update_indices()

    @property
    def consumer(self) -> Any:
        return self.app.consumer


def _run(test: Callable[[Setup], Awaitable[None]], maxsize: int = 100) -> None:
    async def main() -> None:
        await test(Setup(maxsize))

    asyncio.run(main())


def test_records_of_the_topic_are_handed_over_in_order_and_others_go_to_faust() -> None:
    async def test(s: Setup) -> None:
        other = _message(5, topic="elsewhere")
        for message in [_message(0), other, _message(1, partition=2), _message(2)]:
            await s.deliver(message)
        assert s.conducted == [other]
        batch = await asyncio.wait_for(s.handoff.take(3, within=LONG), LONG)
        assert [(m.partition, m.offset) for m in batch] == [(0, 0), (2, 1), (0, 2)]
        assert len(s.handoff) == 0

    _run(test)


def test_a_batch_is_at_most_max_records_and_the_rest_waits_for_the_next() -> None:
    async def test(s: Setup) -> None:
        for offset in range(5):
            await s.deliver(_message(offset))
        first = await asyncio.wait_for(s.handoff.take(3, within=LONG), LONG)
        second = await asyncio.wait_for(s.handoff.take(3, within=0.01), LONG)
        assert [m.offset for m in first] == [0, 1, 2]
        assert [m.offset for m in second] == [3, 4]

    _run(test)


def test_a_waiting_take_returns_as_soon_as_its_batch_is_full() -> None:
    async def test(s: Setup) -> None:
        take = asyncio.ensure_future(s.handoff.take(3, within=LONG))
        await s.deliver(_message(0))
        await asyncio.sleep(0)
        await s.deliver(_message(1))
        await asyncio.sleep(0)
        assert not take.done()  # two of three: still filling
        await s.deliver(_message(2))
        batch = await asyncio.wait_for(take, LONG)  # far before `within`
        assert [m.offset for m in batch] == [0, 1, 2]

    _run(test)


def test_a_partial_batch_is_taken_after_within() -> None:
    async def test(s: Setup) -> None:
        await s.deliver(_message(0))
        batch = await asyncio.wait_for(s.handoff.take(1000, within=0.01), LONG)
        assert [m.offset for m in batch] == [0]

    _run(test)


def test_taken_records_are_tracked_until_acknowledged_and_then_committable() -> None:
    async def test(s: Setup) -> None:
        await s.subscribe()
        for offset in range(3):
            await s.deliver(_message(offset))
        assert not s.consumer._unacked_messages  # waiting, not yet being processed
        batch = await asyncio.wait_for(s.handoff.take(3, within=LONG), LONG)
        assert set(s.consumer._unacked_messages) == set(batch)
        assert s.consumer._new_offset(TP(TOPIC, 0)) is None  # nothing committable yet
        s.handoff.ack(batch)
        assert not s.consumer._unacked_messages
        assert s.consumer._new_offset(TP(TOPIC, 0)) == 3

    _run(test)


def test_a_refused_record_holds_the_commit_back() -> None:
    async def test(s: Setup) -> None:
        await s.subscribe()
        for offset in range(3):
            await s.deliver(_message(offset))
        batch = await asyncio.wait_for(s.handoff.take(3, within=LONG), LONG)
        refuse(batch[1])  # refused by the record path's in-order guard
        s.handoff.ack(batch)
        assert s.consumer._new_offset(TP(TOPIC, 0)) == 1

    _run(test)


def test_records_arriving_while_the_flow_is_suspended_are_dropped() -> None:
    async def test(s: Setup) -> None:
        s.app.flow_control.suspend()
        await s.deliver(_message(0))
        assert len(s.handoff) == 0
        s.app.flow_control.resume()
        await s.deliver(_message(1))
        batch = await asyncio.wait_for(s.handoff.take(10, within=0.01), LONG)
        assert [m.offset for m in batch] == [1]

    _run(test)


def test_a_rebalance_drops_the_records_not_taken_and_a_waiting_take_keeps_waiting() -> None:
    async def test(s: Setup) -> None:
        take = asyncio.ensure_future(s.handoff.take(2, within=LONG))
        await s.deliver(_message(0))
        await asyncio.sleep(0)
        # What Faust does at a rebalance: suspend the flow and clear its queues.
        s.app.flow_control.suspend()
        s.app.flow_control.clear()
        assert len(s.handoff) == 0
        s.app.flow_control.resume()
        await asyncio.sleep(0)
        assert not take.done()
        # Fetched again after the rebalance, from the committed offset.
        await s.deliver(_message(0))
        await s.deliver(_message(1))
        batch = await asyncio.wait_for(take, LONG)
        assert [m.offset for m in batch] == [0, 1]

    _run(test)


def test_a_full_handoff_holds_delivery_until_records_are_taken() -> None:
    async def test(s: Setup) -> None:
        await s.deliver(_message(0))
        await s.deliver(_message(1))
        blocked = asyncio.ensure_future(s.deliver(_message(2)))
        await asyncio.sleep(0)
        assert not blocked.done() and len(s.handoff) == 2
        batch = await asyncio.wait_for(s.handoff.take(1, within=LONG), LONG)
        await asyncio.wait_for(blocked, LONG)
        assert [m.offset for m in batch] == [0]
        rest = await asyncio.wait_for(s.handoff.take(10, within=0.01), LONG)
        assert [m.offset for m in rest] == [1, 2]

    _run(test, maxsize=2)


def test_a_held_delivery_cancelled_by_a_suspended_flow_hands_nothing_over() -> None:
    async def test(s: Setup) -> None:
        await s.deliver(_message(0))
        blocked = asyncio.ensure_future(s.deliver(_message(1)))
        await asyncio.sleep(0)
        blocked.cancel()  # what Faust's fetch loop does when the flow is suspended
        with pytest.raises(asyncio.CancelledError):
            await blocked
        batch = await asyncio.wait_for(s.handoff.take(10, within=0.01), LONG)
        assert [m.offset for m in batch] == [0]

    _run(test, maxsize=1)
