"""Faust's per-record costs the worker does without.

Through Faust's own extension point:

- `LeanMonitor`: Faust's default monitor keeps per-record statistics (messages in
  and out, per-stream event counts and timings) for its web views, which the
  worker does not run. The worker's Prometheus metrics say what operators need;
  the per-partition and commit bookkeeping Faust itself reads is kept.

And one that has none: `deliver_without_tasks`, for the fetch loop's two tasks
per record. (The call-events records themselves skip Faust's stream delivery: see
handoff.py.)
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Generator
from typing import Any

from faust.sensors import Monitor
from mode.services import WaitResults


class LeanMonitor(Monitor):
    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any,
                            state: Any = None) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int,
                          valsize: int) -> None:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        return None


def deliver_without_tasks(consumer: Any) -> None:
    """Let Faust's fetch loop hand a record over without two tasks per record.

    For every record, Faust's fetch loop awaits `wait_first(callback(message),
    suspend_flow.wait())` (mode's `Service.wait_first`): it wraps both in tasks
    and waits for the first to finish, so that a delivery blocked on a full
    stream buffer gives way when the flow is suspended for a rebalance. Almost
    every delivery finishes at once, and the two tasks, the wait and the
    cancellation then cost more than the rest of the worker's per-record work:
    records per CPU-second went from ~2,600 to ~4,300 without them.

    This wraps the consumer's `wait_first`: the first awaitable is run to its
    first suspension point right away. If it finishes there, it is the first to
    finish (the others are never started) and its result is returned as
    `wait_first` would. If it has to wait, the rest of it races the others
    through the original `wait_first`, exactly as before. A stopped or crashed
    consumer goes the original way too. tests/unit/test_worker_lean.py checks
    both paths against mode's own.
    """
    if getattr(consumer, "_cdr_deliver_without_tasks", False):
        return
    wait_first = consumer.wait_first

    async def fast_wait_first(*coros: Any, timeout: Any = None) -> Any:
        first = coros[0] if coros else None
        if (not asyncio.iscoroutine(first) or consumer._stopped.is_set()
                or consumer._crashed.is_set()):
            return await wait_first(*coros, timeout=timeout)
        try:
            yielded = first.send(None)
        except StopIteration as finished:
            _close(coros[1:])
            return WaitResults([first], [finished.value], False)
        except BaseException:
            _close(coros[1:])
            raise
        return await wait_first(_rest(first, yielded), *coros[1:], timeout=timeout)

    consumer.wait_first = fast_wait_first
    consumer._cdr_deliver_without_tasks = True


def _close(awaitables: tuple[Any, ...]) -> None:
    for other in awaitables:
        if asyncio.iscoroutine(other):
            other.close()  # never started: closing it only avoids "never awaited"


async def _rest(coro: Any, yielded: Any) -> Any:
    return await _resume(coro, yielded)


@types.coroutine
def _resume(coro: Any, yielded: Any) -> Generator[Any, Any, Any]:
    """The rest of `coro`, which has already run up to yielding `yielded`."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - handed on to the coroutine
            try:
                yielded = coro.throw(exc)
            except StopIteration as finished:
                return finished.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as finished:
                return finished.value
