"""Faust extension points (and one patch, faust_compat.deliver_without_tasks) the worker
uses to skip per-record work it does not need."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import pytest
from faust.types import TP
from mode import Service

from pipeline.worker.faust_compat import deliver_without_tasks
from pipeline.worker.handoff import Handoff
from pipeline.worker.lean import LeanMonitor


def test_lean_monitor_keeps_the_bookkeeping_faust_reads() -> None:
    monitor = LeanMonitor()
    tp = TP("call-events", 0)
    monitor.track_tp_end_offset(tp, 42)
    monitor.on_tp_commit({tp: 40})
    assert monitor.tp_end_offsets[tp] == 42 and monitor.tp_committed_offsets[tp] == 40
    # Per-record hooks record nothing (and keep no reference to the message).
    monitor.on_message_in(tp, 41, object())
    assert monitor.messages_received_total == 0 and monitor.tp_read_offsets == {}


def test_the_worker_app_uses_the_lean_monitor_and_the_handoff() -> None:
    from pipeline.core.config import load_config
    from pipeline.runtime.settings import load_settings
    from pipeline.worker.app import create_app

    root = Path(__file__).resolve().parents[2]
    settings = load_settings(root / "deploy" / "config" / "pipeline.toml", env={})
    app = create_app(settings, load_config(root / "deploy" / "demo" / "demo.toml"))
    assert isinstance(app.monitor, LeanMonitor)
    # call-events is subscribed through Faust's conductor (so Faust assigns it); its
    # records reach the correlator through the handoff, one of the queues Faust's flow
    # control clears at a rebalance.
    assert settings.kafka.call_events in {t.get_topic_name() for t in app.topics}
    assert [q for q in app.flow_control._queues if isinstance(q, Handoff)]
    # The table's values are the worker's bytes (changelog.py); Faust does not decode them.
    (table,) = app.tables.values()
    assert table.value_serializer == "raw"


class _Consumer(Service):
    """A mode Service, as Faust's consumer is: the real wait_first to wrap."""


async def _started() -> _Consumer:
    consumer = _Consumer()
    deliver_without_tasks(consumer)
    return consumer


def test_a_delivery_that_finishes_at_once_needs_no_task() -> None:
    async def scenario() -> None:
        consumer = await _started()
        ran = []

        async def deliver() -> str:
            ran.append("deliver")
            return "delivered"

        async def suspended() -> None:
            ran.append("suspended")  # must never start

        tasks_before = len(asyncio.all_tasks())
        result = await consumer.wait_first(deliver(), suspended())
        assert (result.results, result.stopped, ran) == (["delivered"], False, ["deliver"])
        assert len(asyncio.all_tasks()) == tasks_before

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail
        asyncio.run(scenario())


def test_a_blocked_delivery_still_gives_way_to_a_suspended_flow() -> None:
    async def scenario() -> None:
        consumer = await _started()
        room = asyncio.Event()  # a full stream buffer
        suspend_flow = asyncio.Event()
        outcome: list[str] = []

        async def deliver() -> str:
            try:
                await room.wait()
            except asyncio.CancelledError:
                outcome.append("abandoned")
                raise
            return "delivered"

        waiting = asyncio.ensure_future(consumer.wait_first(deliver(), suspend_flow.wait()))
        await asyncio.sleep(0)
        suspend_flow.set()
        result = await waiting
        assert result.results == [True] and not result.stopped  # Event.wait() returns True
        assert outcome == ["abandoned"]

    asyncio.run(scenario())


def test_a_blocked_delivery_finishes_when_there_is_room() -> None:
    async def scenario() -> None:
        consumer = await _started()
        room = asyncio.Event()

        async def deliver() -> str:
            await room.wait()
            await asyncio.sleep(0)
            return "delivered"

        waiting = asyncio.ensure_future(consumer.wait_first(deliver(), asyncio.Event().wait()))
        await asyncio.sleep(0)
        room.set()
        assert (await waiting).results == ["delivered"]

    asyncio.run(scenario())


def test_an_error_in_the_delivery_propagates() -> None:
    async def scenario() -> None:
        consumer = await _started()

        async def deliver() -> None:
            raise ValueError("bad record")

        async def suspended() -> None:
            raise AssertionError("never started")

        with pytest.raises(ValueError, match="bad record"):
            await consumer.wait_first(deliver(), suspended())

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asyncio.run(scenario())


def test_a_stopped_consumer_answers_as_mode_does() -> None:
    async def scenario() -> None:
        consumer = await _started()
        consumer._stopped.set()

        async def deliver() -> str:
            return "delivered"

        result = await consumer.wait_first(deliver())
        assert result.stopped and result.results == []

    asyncio.run(scenario())
