"""The handoff of call-events records from the consumer's fetches to the correlator:
per-partition lists in fetch order, batches, Faust's flow control and
acknowledgements, back-pressure.

A real Faust app and consumer (never started, so no broker is needed); only the fetch
itself (what the consumer's `_getmany` gets from aiokafka's consumer thread) is a
stand-in returning aiokafka ConsumerRecords."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiokafka.structs import ConsumerRecord, TopicPartition
from faust.types import TP

from pipeline.worker import faust_compat
from pipeline.worker.handoff import Batch, Handoff

TOPIC = "call-events"
LONG = 30.0  # a bound for waits that must finish at once: only reached if they hang


def _record(offset: int, partition: int = 0, topic: str = TOPIC) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(topic, partition, offset, 0, 0, f"call-{offset}".encode(), b"v",
                          None, 9, 1, ())


def _records(first: int, end: int, partition: int = 0) -> list[ConsumerRecord[Any, Any]]:
    return [_record(offset, partition) for offset in range(first, end)]


class Setup:
    def __init__(self, maxsize: int = 100) -> None:
        self.app = faust.App("unit-handoff", broker="kafka://127.0.0.1:1", store="memory://",
                             web_enabled=False)
        self.app.topics.add(self.app.topic(TOPIC, key_serializer="raw", value_serializer="raw"))
        self.handoff = Handoff(self.app, TOPIC, maxsize=maxsize)
        # What the next fetches return (a callable: what it returns, called in the fetch).
        self.fetches: list[Any] = []
        self.consumer._getmany = self._fetch  # the stand-in for aiokafka's fetch
        self.handoff.install(self.consumer)
        self.app.flow_control.resume()

    async def _fetch(self, active_partitions: Any, timeout: float) -> dict[Any, list[Any]]:
        fetched = self.fetches.pop(0)
        return fetched() if callable(fetched) else fetched  # type: ignore[no-any-return]

    async def fetch(self, records: dict[Any, list[Any]], active: Any = None) -> dict[Any, Any]:
        """One fetch through the consumer, as Faust's fetch loop makes it; returns what
        goes on to Faust."""
        self.fetches.append(records)
        return await self.consumer._getmany(active_partitions=active, timeout=1.0)  # type: ignore[no-any-return]

    async def deliver(self, partition: int, first: int, end: int) -> None:
        await self.fetch({TopicPartition(TOPIC, partition): _records(first, end, partition)})

    @property
    def consumer(self) -> Any:
        return self.app.consumer


def _run(test: Callable[[Setup], Awaitable[None]], maxsize: int = 100) -> None:
    async def main() -> None:
        await test(Setup(maxsize))

    asyncio.run(main())


def _offsets(batch: Batch) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for _, records in batch.chunks for r in records]


def test_the_topic_s_records_are_handed_over_per_partition_and_others_go_to_faust() -> None:
    async def test(s: Setup) -> None:
        other = TopicPartition("calls-changelog", 0)
        rest = await s.fetch({TopicPartition(TOPIC, 0): _records(0, 2),
                              other: [_record(5, topic="calls-changelog")],
                              TopicPartition(TOPIC, 2): _records(7, 8, partition=2)})
        assert list(rest) == [other]  # Faust's fetch loop sees only the other topic
        batch = await asyncio.wait_for(s.handoff.take(3, within=LONG), LONG)
        assert _offsets(batch) == [(0, 0), (0, 1), (2, 7)]
        assert [(p, [r.offset for r in rs]) for p, rs in batch.by_partition()] == [
            (0, [0, 1]), (2, [7])]
        assert len(s.handoff) == 0

    _run(test)


def test_only_the_partitions_faust_asked_for_are_handed_over() -> None:
    async def test(s: Setup) -> None:
        await s.fetch({TopicPartition(TOPIC, 0): _records(0, 1),
                       TopicPartition(TOPIC, 1): _records(0, 1, partition=1)},
                      active={TP(TOPIC, 1)})
        batch = await asyncio.wait_for(s.handoff.take(10, within=0.01), LONG)
        assert _offsets(batch) == [(1, 0)]

    _run(test)


def test_a_partition_s_lists_of_one_batch_are_folded_as_one_list() -> None:
    async def test(s: Setup) -> None:
        await s.deliver(0, 0, 2)
        await s.deliver(1, 0, 1)
        await s.deliver(0, 2, 3)
        batch = await asyncio.wait_for(s.handoff.take(10, within=0.01), LONG)
        assert [(p, [r.offset for r in rs]) for p, rs in batch.by_partition()] == [
            (0, [0, 1, 2]), (1, [0])]

    _run(test)


def test_a_batch_takes_lists_until_max_records_and_the_rest_waits_for_the_next() -> None:
    async def test(s: Setup) -> None:
        await s.deliver(0, 0, 2)
        await s.deliver(0, 2, 4)
        await s.deliver(0, 4, 5)
        first = await asyncio.wait_for(s.handoff.take(3, within=LONG), LONG)
        second = await asyncio.wait_for(s.handoff.take(3, within=0.01), LONG)
        assert [o for _, o in _offsets(first)] == [0, 1, 2, 3]  # a list is not split
        assert [o for _, o in _offsets(second)] == [4]

    _run(test)


def test_a_waiting_take_returns_as_soon_as_its_batch_is_full() -> None:
    async def test(s: Setup) -> None:
        take = asyncio.ensure_future(s.handoff.take(3, within=LONG))
        await s.deliver(0, 0, 1)
        await asyncio.sleep(0)
        await s.deliver(0, 1, 2)
        await asyncio.sleep(0)
        assert not take.done()  # two of three: still filling
        await s.deliver(0, 2, 3)
        batch = await asyncio.wait_for(take, LONG)  # far before `within`
        assert [o for _, o in _offsets(batch)] == [0, 1, 2]

    _run(test)


def test_a_partial_batch_is_taken_after_within() -> None:
    async def test(s: Setup) -> None:
        await s.deliver(0, 0, 1)
        batch = await asyncio.wait_for(s.handoff.take(1000, within=0.01), LONG)
        assert [o for _, o in _offsets(batch)] == [0]

    _run(test)


def test_a_taken_batch_holds_the_rebalance_until_done() -> None:
    async def test(s: Setup) -> None:
        await s.deliver(0, 0, 3)
        assert not s.consumer._unacked_messages  # waiting, not yet being processed
        batch = await asyncio.wait_for(s.handoff.take(3, within=LONG), LONG)
        assert list(s.consumer._unacked_messages) == [batch.pending]
        # Faust's wait before a rebalance gives partitions up waits for the batch.
        waiting = asyncio.ensure_future(s.consumer.wait_empty())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        s.handoff.ack(batch, {0: (0, 3)})
        await asyncio.wait_for(waiting, LONG)
        assert not s.consumer._unacked_messages

    async def no_commit(*_: Any, **__: Any) -> bool:
        return False

    def with_commit_stubbed(s: Setup) -> Awaitable[None]:
        # wait_empty commits on its way; committing needs a broker, and what is committable
        # is the next test's subject.
        s.consumer.commit = no_commit
        s.consumer.commit_and_end_transactions = no_commit
        return test(s)

    _run(with_commit_stubbed)


def test_acknowledged_offsets_are_committable_up_to_the_first_missing_one() -> None:
    async def test(s: Setup) -> None:
        tp = TP(TOPIC, 0)
        await s.deliver(0, 0, 5)
        batch = await asyncio.wait_for(s.handoff.take(5, within=LONG), LONG)
        assert s.consumer._new_offset(tp) is None  # nothing committable yet
        # 0..1 folded; 2 refused (records were missing before it), so 3..4 never folded.
        s.handoff.ack(batch, {0: (0, 2)})
        assert s.consumer._new_offset(tp) == 2
        # Folded after the consumer was sent back: committable from where it stopped.
        assert faust_compat.ack_offsets(s.consumer, tp, 2, 5) == 3
        assert s.consumer._new_offset(tp) == 5
        # Acknowledged again (a re-delivery) or below the committed offset: not counted.
        s.consumer._committed_offset[tp] = 5
        assert faust_compat.ack_offsets(s.consumer, tp, 3, 5) == 0
        assert faust_compat.ack_offsets(s.consumer, tp, 5, 7) == 2
        assert faust_compat.ack_offsets(s.consumer, tp, 6, 8) == 1
        assert s.consumer._new_offset(tp) == 8
        assert s.consumer._n_acked == 0  # no commit from inside the fetch loop

    _run(test)


def test_records_fetched_while_the_flow_is_suspended_are_dropped() -> None:
    async def test(s: Setup) -> None:
        s.app.flow_control.suspend()
        await s.deliver(0, 0, 1)
        assert len(s.handoff) == 0
        s.app.flow_control.resume()
        await s.deliver(0, 1, 2)
        batch = await asyncio.wait_for(s.handoff.take(10, within=0.01), LONG)
        assert [o for _, o in _offsets(batch)] == [1]

    _run(test)


def test_records_of_a_fetch_that_outlived_its_consumer_generation_are_dropped() -> None:
    async def test(s: Setup) -> None:
        def across_a_rebalance() -> dict[Any, list[Any]]:
            s.app.consumer_generation_id += 1  # a rebalance completed during the fetch
            return {TopicPartition(TOPIC, 0): _records(0, 1)}

        s.handoff.install(s.consumer)  # idempotent: still one wrapper around the fetch
        s.fetches.append(across_a_rebalance)
        assert await s.consumer._getmany(active_partitions=None, timeout=1.0) == {}
        assert len(s.handoff) == 0
        await s.deliver(0, 0, 1)  # fetched again in the new generation
        assert len(s.handoff) == 1

    _run(test)


def test_a_rebalance_drops_the_records_not_taken_and_a_waiting_take_keeps_waiting() -> None:
    async def test(s: Setup) -> None:
        take = asyncio.ensure_future(s.handoff.take(2, within=LONG))
        await s.deliver(0, 0, 1)
        await asyncio.sleep(0)
        # What Faust does at a rebalance: suspend the flow and clear its queues.
        s.app.flow_control.suspend()
        s.app.flow_control.clear()
        assert len(s.handoff) == 0
        s.app.flow_control.resume()
        await asyncio.sleep(0)
        assert not take.done()
        # Fetched again after the rebalance, from the committed offset.
        await s.deliver(0, 0, 2)
        batch = await asyncio.wait_for(take, LONG)
        assert [o for _, o in _offsets(batch)] == [0, 1]

    _run(test)


def test_a_full_handoff_holds_the_fetch_until_records_are_taken() -> None:
    async def test(s: Setup) -> None:
        await s.deliver(0, 0, 2)
        blocked = asyncio.ensure_future(s.deliver(0, 2, 3))
        await asyncio.sleep(0)
        assert not blocked.done() and len(s.handoff) == 2
        batch = await asyncio.wait_for(s.handoff.take(1, within=LONG), LONG)
        await asyncio.wait_for(blocked, LONG)
        assert [o for _, o in _offsets(batch)] == [0, 1]
        rest = await asyncio.wait_for(s.handoff.take(10, within=0.01), LONG)
        assert [o for _, o in _offsets(rest)] == [2]

    _run(test, maxsize=2)


def test_a_held_fetch_gives_way_to_a_suspended_flow_and_hands_nothing_over() -> None:
    async def test(s: Setup) -> None:
        await s.deliver(0, 0, 1)
        blocked = asyncio.ensure_future(s.deliver(0, 1, 2))
        await asyncio.sleep(0)
        assert not blocked.done()
        s.consumer.stop_flow()  # a rebalance begins
        await asyncio.wait_for(blocked, LONG)
        s.consumer.resume_flow()
        batch = await asyncio.wait_for(s.handoff.take(10, within=0.01), LONG)
        assert [o for _, o in _offsets(batch)] == [0]

    _run(test, maxsize=1)


def test_a_fetch_held_across_a_whole_rebalance_hands_nothing_over() -> None:
    """Suspended and resumed while it waited for room: its records are of the old
    assignment (Faust seeks back to the committed offsets afterwards)."""
    async def test(s: Setup) -> None:
        await s.deliver(0, 0, 1)
        blocked = asyncio.ensure_future(s.deliver(0, 1, 2))
        await asyncio.sleep(0)
        s.app.consumer_generation_id += 1  # a rebalance came and went meanwhile
        first = await asyncio.wait_for(s.handoff.take(10, within=0.01), LONG)
        await asyncio.wait_for(blocked, LONG)
        assert [o for _, o in _offsets(first)] == [0] and len(s.handoff) == 0

    _run(test, maxsize=1)
