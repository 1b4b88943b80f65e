"""Every place the worker reaches into Faust, mode or aiokafka beyond their public API.

The worker needs a few things faust-streaming has no setting for (a shorter fetch
wait, a fetch loop without two tasks per record, batched table writes, call-events
records taken from the fetches a batch at a time, with their tracking and
acknowledgement; which also keeps them away from two faust-streaming bugs that lose
records after a rebalance, docs/streaming.md, "Delivery guarantees"). Each of those
touches a private attribute or replaces a method, and an upgrade can rename or rework
any of them. They are all here, and only here
(tests/unit/test_faust_fence.py fails on a private attribute of a Faust object
anywhere else in pipeline/), each with why, what it guards against and the test
that fails if it breaks.

Two checks run at import:
- *Versions.* pyproject.toml pins faust-streaming and aiokafka to the range the test
  suite passed on (TESTED). An environment assembled around the pin (`--no-deps`, a
  distribution's package, a constraints file) gets a WARNING naming the installed and
  the tested versions: a newer release is not necessarily broken, and refusing it
  would also refuse a fix release that changes none of the internals below.
- *Hooks.* What the patches below rely on (HOOKS: a method exists and its code still
  uses the attributes they set or replace) is checked from the code objects. If
  anything is missing the worker would run without its guards and could commit past
  records it never folded, so importing this module refuses with IncompatibleFaust,
  naming the hook and the installed versions (`cdr-pipeline worker` prints it as one
  line).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import types
import weakref
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import import_module, metadata
from typing import Any

from faust import streams as faust_streams
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.services import WaitResults
from mode.utils.futures import notify

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

Deliver = Callable[[Any], Awaitable[None]]

# -- versions ----------------------------------------------------------------------------

# Per package: the lowest version the test suite passed on, and the first it was not
# run on. pyproject.toml pins all three to the same range (a unit test holds them
# together): mode-streaming comes with faust-streaming, and Faust rides on its services.
TESTED: dict[str, tuple[str, str]] = {
    "faust-streaming": ("0.15.3", "0.16"),
    "aiokafka": ("0.14.0", "0.15"),
    "mode-streaming": ("0.7.1", "0.8"),
}


class IncompatibleFaust(PipelineError):
    """The installed Faust, mode or aiokafka lacks something the worker's patches use."""


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: "0.16.0rc1" -> (0, 16, 0)."""
    parts = []
    for piece in version.split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) < len(piece):
            break
    return tuple(parts)


def installed_versions() -> dict[str, str | None]:
    """The installed version of each package in TESTED (None: not installed)."""
    found: dict[str, str | None] = {}
    for name in TESTED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def untested_versions(installed: Mapping[str, str | None]) -> list[str]:
    """One line per package of TESTED installed outside its tested range."""
    lines = []
    for name, (low, high) in TESTED.items():
        version = installed.get(name)
        if version is None:
            continue  # not installed: importing faust would have failed already
        if not _release(low) <= _release(version) < _release(high):
            lines.append(
                f"{name} {version} is installed, but the worker's Faust patches "
                f"(pipeline/worker/faust_compat.py) were tested on >={low},<{high}; run "
                "tests/unit/test_worker_*.py and tests/integration/test_worker_*.py on it")
    return lines


def warn_if_untested(installed: Mapping[str, str | None] | None = None) -> list[str]:
    """Log a WARNING per package outside its tested range; returns the lines."""
    lines = untested_versions(installed_versions() if installed is None else installed)
    for line in lines:
        log.warning("%s", line)
    return lines


# -- hooks -------------------------------------------------------------------------------

# What the patches below rely on: (module, qualified name, names its code must use).
# A name listed is looked for in the function's code object (attribute and global
# names, nested functions included): the attribute a patch sets is still the one the
# library reads.
HOOKS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("faust.transport.consumer", "Consumer.__init__",
     ("_acked", "_acked_index", "_committed_offset", "_unacked_messages", "_waiting_for_ack")),
    ("faust.transport.consumer", "Consumer._wait_next_records", ("_getmany",)),
    ("faust.transport.consumer", "Consumer.ack",
     ("_acked", "_acked_index", "_committed_offset", "_unacked_messages", "_waiting_for_ack",
      "ack_lock")),
    ("faust.transport.consumer", "Consumer._new_offset", ("_acked", "_acked_index")),
    ("faust.transport.consumer", "Consumer.wait_empty", ("_unacked_messages",)),
    ("faust.transport.consumer", "Consumer._drain_messages", ("wait_first", "callback")),
    ("faust.transport.consumer", "ThreadDelegateConsumer._getmany", ()),
    ("faust.transport.consumer", "ThreadDelegateConsumer.__init__", ("_thread",)),
    ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread._ensure_consumer", ()),
    ("faust.transport.drivers.aiokafka", "Producer._ensure_producer", ()),
    ("faust.streams", "current_event", ("_current_event",)),
    ("aiokafka.consumer.consumer", "AIOKafkaConsumer.start", ("_fetcher",)),
    ("aiokafka.consumer.fetcher", "Fetcher._get_actions_per_node",
     ("_fetch_max_wait_ms", "_fetch_min_bytes")),
    ("aiokafka.producer.message_accumulator", "BatchBuilder.append",
     ("_builder", "_relative_offset", "_closed")),
    ("aiokafka.producer.message_accumulator", "BatchBuilder.record_count",
     ("_relative_offset",)),
    ("mode.services", "Service.__init__", ("_stopped", "_crashed")),
    ("mode.services", "Service.wait_first", ()),
)


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def missing_hooks(hooks: tuple[tuple[str, str, tuple[str, ...]], ...] = HOOKS) -> list[str]:
    """One line per hook that is gone or no longer uses a name it must."""
    missing = []
    for module_name, qualname, uses in hooks:
        try:
            target: Any = import_module(module_name)
            for part in qualname.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError):
            missing.append(f"{module_name}.{qualname} is gone")
            continue
        code = getattr(inspect.unwrap(target), "__code__", None)  # under its decorators
        absent = [name for name in uses if code is None or name not in _code_names(code)]
        if absent:
            missing.append(f"{module_name}.{qualname} no longer uses {', '.join(absent)}")
    return missing


def require_hooks(hooks: tuple[tuple[str, str, tuple[str, ...]], ...] = HOOKS) -> None:
    """Refuse (IncompatibleFaust) when a hook the patches use is missing."""
    missing = missing_hooks(hooks)
    if missing:
        versions = ", ".join(f"{name} {version}" for name, version in installed_versions().items())
        tested = ", ".join(f"{name} >={low},<{high}" for name, (low, high) in TESTED.items())
        raise IncompatibleFaust(
            f"the installed {versions} lack what the worker's Faust patches need "
            f"({'; '.join(missing)}); install the tested versions ({tested})")


# -- the consumer ------------------------------------------------------------------------


class Pending:
    """Stands in Faust's set of records being processed for a batch the worker has
    taken (take_batches): Faust's wait before a rebalance (`Consumer.wait_empty`) waits
    until it is acked, as it waits for an agent's records. Held by the batch: Faust's
    set holds it weakly."""

    __slots__ = ("__weakref__", "acked", "refcount")

    def __init__(self) -> None:
        self.acked = False
        self.refcount = 1  # read by Faust's log line of what wait_empty waits for


DeliverBatch = Callable[[int, list[Any]], Awaitable[None]]


def take_batches(consumer: Any, topic: str, deliver: DeliverBatch) -> None:
    """Hand each fetch's records of `topic` to `deliver(partition, records)`, a
    partition's list at a time, before Faust's fetch loop sees them.

    Why: Faust's fetch loop hands over records one at a time: a Faust Message built per
    record, the read offset, gap and commit checks, a delivery coroutine and a "flow
    suspended" wait per record, then tracking and acknowledging each record. For the
    worker, which folds records in batches, that was more than the billing core's own
    work per record. This wraps the consumer's `_getmany` (what Faust's fetch loop
    awaits for each fetch): `topic`'s records (aiokafka ConsumerRecords) are taken out
    of the fetch and delivered as lists; every other topic's go on to Faust as before.
    What Faust's loop did for them is kept: records of a fetch that completes after the
    flow was suspended or the consumer generation changed (a rebalance) are dropped, as
    Faust drops them (it seeks back to the committed offsets afterwards); only the
    partitions Faust asked for are delivered; `deliver` may wait for room
    (back-pressure), which holds the fetch loop as a waiting Faust delivery does.
    Tracking and acknowledgement are `track_batch` and `ack_offsets`. Faust's read
    offsets and gap handling never see these records, so its two rebalance bugs that
    lose records (docs/streaming.md) cannot reach them. Idempotent. Tests:
    tests/unit/test_worker_handoff.py (a real Faust consumer's `_getmany`).
    """
    if getattr(consumer, "_cdr_batches_of", None) == topic:
        return
    getmany = consumer._getmany
    app = consumer.app

    async def _getmany(active_partitions: Any, timeout: float) -> Any:
        generation = app.consumer_generation_id
        records = await getmany(active_partitions=active_partitions, timeout=timeout)
        mine = [tp for tp in records if tp.topic == topic]
        if not mine:
            return records
        deliverable = (consumer.flow_active and app.flow_control.is_active()
                       and app.consumer_generation_id == generation)
        for tp in mine:
            batch = records.pop(tp)
            if deliverable and (active_partitions is None or tp in active_partitions):
                await deliver(tp.partition, batch)
        return records

    consumer._getmany = _getmany
    consumer._cdr_batches_of = topic


def track_batch(consumer: Any) -> Pending:
    """Count a taken batch as being processed, as Faust's `track_message` counts a
    record; `ack_offsets`, then `finish_batch` when it is finished.

    Why: the batch's records never became Faust Messages (take_batches), and Faust's
    wait before a rebalance (`stream_wait_empty`) must still wait for it to be written
    out. Test: tests/unit/test_worker_handoff.py
    (test_a_taken_batch_holds_the_rebalance_until_done)."""
    pending = Pending()
    consumer._unacked_messages.add(pending)
    return pending


def finish_batch(consumer: Any, pending: Pending) -> None:
    """The batch of `pending` is finished (its offsets acknowledged with ack_offsets)."""
    with ack_lock:
        pending.acked = True
        consumer._unacked_messages.discard(pending)
    notify(consumer._waiting_for_ack)


def ack_offsets(consumer: Any, tp: TP, first: int, end: int) -> int:
    """Acknowledge the records `first` .. `end - 1` of `tp` as processed; returns how many
    were newly acknowledged.

    Why: what Faust's `Consumer.ack` does per Message (under Faust's `ack_lock`: an
    offset below the committed one is ignored, one already acknowledged is not counted
    twice), for a run of offsets at once. Faust commits an offset only when every
    offset before it is acknowledged (`_new_offset`), so a record the in-order guard
    refused, never acknowledged, holds the commit back. Unlike `Consumer.ack` this does
    not count toward `broker_commit_every`: that count makes Faust's fetch loop commit
    from inside the loop, which holds every fetch for the commit's duration (1-2 s on a
    busy broker, a stall in every partition's latency); Faust's commit timer
    (`broker_commit_interval`) commits. Test:
    tests/unit/test_worker_handoff.py
    (test_acknowledged_offsets_are_committable_up_to_the_first_missing_one).
    """
    with ack_lock:
        committed = consumer._committed_offset[tp]
        if committed is not None and first < committed:
            first = committed
        if first >= end:
            return 0
        acked, index = consumer._acked[tp], consumer._acked_index[tp]
        offsets: Any = range(first, end)
        # Runs are acknowledged in offset order, so a run after the last one acknowledged
        # (Faust keeps the list sorted) has none acknowledged already.
        if acked and first <= acked[-1]:
            offsets = [offset for offset in offsets if offset not in index]
        index.update(offsets)
        acked.extend(offsets)
        return len(offsets)


def set_fetch_wait(consumer: Any, wait_ms: int, min_bytes: int = 1) -> None:
    """Make the consumer's fetches wait at the broker until `min_bytes` of records are
    there, or at most `wait_ms`.

    Why: faust-streaming creates its aiokafka consumer with `fetch_max_wait_ms=1500`
    and no setting for it. At a steady few thousand records/s the worker then stalled
    for up to 1.5 s every few seconds (a fetch for partitions whose records were still
    buffered waited out its maximum), and each stall put that much latency on every
    CDR behind it: HANGUP to CDR p50 1.5-2.7 s at 1,000 events/s, 0.17 s with 100 ms.
    aiokafka's fetcher reads the value for every fetch request, so setting it on the
    running fetcher takes effect at the next one. `min_bytes` (Faust leaves aiokafka's
    1) keeps a worker below its peak rate from fetching a few records at a time: at
    1,000 events/s the worker took 0.66 of a core with 1 and 0.25 with 32 KiB, for
    about 50 ms more latency. Test: tests/integration/test_worker_produce.py
    (test_set_fetch_wait_reaches_the_running_fetcher).
    """
    fetcher = consumer._thread._ensure_consumer()._fetcher
    fetcher._fetch_max_wait_ms = wait_ms
    fetcher._fetch_min_bytes = min_bytes


def deliver_without_tasks(consumer: Any) -> None:
    """Let Faust's fetch loop hand a record over without two tasks per record.

    Why: for every record, Faust's fetch loop awaits `wait_first(callback(message),
    suspend_flow.wait())` (mode's `Service.wait_first`): it wraps both in tasks and
    waits for the first to finish, so that a delivery blocked on a full buffer gives
    way when the flow is suspended for a rebalance. Almost every delivery finishes at
    once, and the two tasks, the wait and the cancellation then cost more than the rest
    of the worker's per-record work: records per CPU-second went from ~2,600 to ~4,300
    without them.

    This wraps the consumer's `wait_first`: the first awaitable is run to its first
    suspension point right away. If it finishes there, it is the first to finish (the
    others are never started) and its result is returned as `wait_first` would. If it
    has to wait, the rest of it races the others through the original `wait_first`,
    exactly as before. A stopped or crashed consumer (mode's `_stopped`, `_crashed`)
    goes the original way too. Idempotent. Test: tests/unit/test_worker_lean.py checks
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


# -- the producer and the table ----------------------------------------------------------


def append_records(batch: Any, records: Sequence[Any], start: int = 0,
                   timestamp: int | None = None) -> int:
    """Append `records[start:]` ((key, value, headers) each, headers a list) to an open
    aiokafka record batch (a BatchBuilder: `create_batch`) until it is full; returns
    the index of the first record it did not take (`len(records)`: all of them).
    `timestamp` (epoch ms) as `append` takes it: None is the producer's clock.

    Why: `BatchBuilder.append` is a keyword-only Python method per record (a closed
    check, a serializer call, then its compiled builder's `append`); the worker's
    records are bytes already, so this calls the compiled builder itself, positionally,
    and counts the records as `append` does (`_relative_offset`, which `record_count`
    and the batch's send read). The same bytes go out (same builder, same arguments).
    Half the CPU of a record's append; one is made per CDR and per changelog write.
    Test: tests/unit/test_worker_faust_compat.py (test_append_records_builds_what_append_builds).
    """
    if batch._closed:
        return start
    append = batch._builder.append
    offset = batch._relative_offset
    end = len(records)
    for index in range(start, end):
        key, value, headers = records[index]
        if append(offset, timestamp, key, value, headers) is None:
            batch._relative_offset = offset
            batch.close()  # full: as `append` leaves it
            return index
        offset += 1
    batch._relative_offset = offset
    return end



def aiokafka_producer(producer: Any) -> Any:
    """The AIOKafkaProducer inside Faust's (started) producer.

    Why: the worker writes CDRs and changelog records as aiokafka record batches
    (`create_batch`/`send_batch`, produce.py) on Faust's own producer, so that Faust's
    commit, which flushes that producer first, still covers them; Faust's producer has
    no batch API. Raises Faust's NotReady before the producer has started. Tests:
    tests/unit/test_worker_faust_compat.py (before the start) and
    tests/integration/test_worker_produce.py (test_batches_go_out_on_faust_s_producer).
    """
    return producer._ensure_producer()


@contextmanager
def current_event(event: Any) -> Iterator[None]:
    """Make `event` Faust's current event, as Faust's stream iteration does per record.

    Why: the worker writes the table after a batch, outside that iteration, and a
    RocksDB store picks the partition's database from the current event. Faust has no
    public setter, so this sets its context variable (and resets it on the way out,
    also after an error). Test: tests/unit/test_worker_batches.py
    (test_current_event_is_faust_s_only_inside and the two after it).
    """
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


require_hooks()
warn_if_untested()
