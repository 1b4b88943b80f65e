"""The worker's batched table writes: once per changed call, on the partition's
changelog, as raw values Faust's recovery puts back as they are, so the worker rebuilds
the same states; and the Faust internal the table write relies on (faust_compat)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.types import TP, Message

from pipeline.core.correlator import Correlator
from pipeline.core.state import CallState
from pipeline.core.state_codec import decode_state
from pipeline.kafka.admin import CALLS_TABLE, worker_topics
from pipeline.worker import changelog
from pipeline.worker.call_store import CallStore
from pipeline.worker.faust_compat import current_event
from pipeline.worker.table_store import TableWriter
from tests.unit.builders import call, make_config


class Producer:
    """Stands in for BatchSender: records sends; each call is one batch, delivered at
    the next offsets of its partition (the result's offset is the batch's first)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int]] = []
        self.offsets: dict[int, int] = {}

    async def send(
        self, topic: str, partition: int,
        records: list[tuple[bytes | None, bytes | None, Any]], compression: str | None = None
    ) -> tuple[asyncio.Future[Any], int] | None:
        if not records:
            return None
        first = self.offsets.get(partition, 0)
        self.offsets[partition] = first + len(records)
        self.sent.extend((topic, key, value, partition) for key, value, _ in records)
        delivered = asyncio.get_running_loop().create_future()
        delivered.set_result(SimpleNamespace(offset=first))
        return delivered, len(records)


class _Event:
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


def _table(app_id: str = "unit-worker") -> Any:
    app = faust.App(app_id, broker="kafka://127.0.0.1:1", store="memory://", web_enabled=False)
    return app.Table(CALLS_TABLE, default=None, partitions=3, value_type=bytes)


async def _restore(table: Any, sent: list[tuple[str, bytes | None, bytes | None, int]]) -> None:
    """Apply changelog records to a table the way Faust's recovery does."""
    events = []
    for offset, (topic, key, value, partition) in enumerate(sent):
        message = Message(topic, partition, offset, 0.0, 0, [], key, value, None)
        events.append(await table.changelog_topic.decode(message))
    table.apply_changelog_batch(events)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _flush(store: CallStore, table: Any, producer: Producer) -> int:
    """The store's changes into the table and onto its changelog, as the driver does."""
    partition = store.partition
    return _run(TableWriter(table, producer).write(  # type: ignore[arg-type]
        partition, store.drain(), _Event(partition)))


def test_writes_are_held_until_flush_then_sent_once_per_call() -> None:
    table = _table()
    store = CallStore(2)
    producer = Producer()
    first, second = CallState("a"), CallState("b")
    store["a"] = first
    store["b"] = second
    first.last_ts_ms = 5
    store["a"] = first
    assert store.pending == 2 and producer.sent == [] and "a" not in table.data

    assert _flush(store, table, producer) == 2
    assert store.pending == 0
    topics = {topic for topic, _, _, _ in producer.sent}
    assert topics == {"unit-worker-calls-changelog"}
    sent = [(key, partition) for _, key, _, partition in producer.sent]
    assert sent == [(b'"a"', 2), (b'"b"', 2)]
    assert changelog.decode_value(table.data["a"]) == (2, first)
    assert _flush(store, table, producer) == 0 and len(producer.sent) == 2


def test_a_deleted_call_is_a_tombstone() -> None:
    table = _table()
    store = CallStore(0)
    producer = Producer()
    store["a"] = CallState("a")
    _flush(store, table, producer)
    del store["a"]
    assert "a" not in store and len(store) == 0
    _flush(store, table, producer)
    assert producer.sent[-1][1:] == (b'"a"', None, 0)
    assert "a" not in table.data


def test_set_and_deleted_between_flushes_is_only_a_tombstone() -> None:
    table = _table()
    store = CallStore(1)
    producer = Producer()
    store["a"] = CallState("a")
    del store["a"]
    _flush(store, table, producer)
    assert [value for _, _, value, _ in producer.sent] == [None]


@pytest.mark.parametrize("write", ["pop", "popitem", "setdefault", "update"])
def test_a_write_the_store_would_not_record_is_refused(write: str) -> None:
    """Only what reaches the changelog may change the calls: a dict write that the store
    would not see as a change fails instead of losing the change."""
    store = CallStore(0)
    store["a"] = CallState("a")
    args = {"pop": ("a",), "popitem": (), "setdefault": ("b", CallState("b")),
            "update": ({"b": CallState("b")},)}[write]
    with pytest.raises(TypeError, match="records only"):
        getattr(store, write)(*args)
    assert list(store) == ["a"] and store.pending == 1


def _thawed(held: CallState | bytes) -> CallState:
    """A store's call as a CallState (a frozen closed call is its state's bytes)."""
    return decode_state(held) if isinstance(held, bytes) else held


def test_changelog_restores_the_partition_s_states(tmp_path: Path) -> None:
    """Through Faust's own recovery of a raw table, with one changelog holding values of
    both formats (partition 0 compact, partition 1 JSON: a rolling upgrade's)."""
    config = make_config(tmp_path)
    table = _table()
    producer = Producer()
    stores = {0: CallStore(0, "compact"), 1: CallStore(1, "json")}
    correlators = {p: Correlator(config, stores[p], freeze=stores[p].freeze) for p in (0, 1)}
    for offset, event in enumerate(call("c1") + call("c2", answer_after_ms=None)):
        correlators[0].on_event(event, offset)
    for offset, event in enumerate(call("c3")[:2]):
        correlators[1].on_event(event, offset)
        _flush(stores[1], table, producer)
    _flush(stores[0], table, producer)
    assert len(producer.sent) == 4  # c1 and c2 once each, c3 after each of its two events

    restored = _table()
    _run(_restore(restored, producer.sent))
    for partition in (0, 1):
        again = CallStore(partition)
        again.load(restored.values())
        want = {k: _thawed(s).to_dict() for k, s in stores[partition].items()}
        assert {k: _thawed(s).to_dict() for k, s in again.items()} == want
    assert set(stores[0]) == {"c1", "c2"}


def test_persistent_store_learns_the_last_delivered_offset() -> None:
    table = _table()
    persisted: list[tuple[TP, int]] = []
    table.data.set_persisted_offset = lambda tp, offset: persisted.append((tp, offset))
    store = CallStore(2)
    writer = TableWriter(table, Producer())  # type: ignore[arg-type]

    async def twice() -> None:
        store["a"] = CallState("a")
        store["b"] = CallState("b")
        await writer.write(2, store.drain(), _Event(2))
        store["a"] = CallState("a")
        await writer.write(2, store.drain(), _Event(2))
        await asyncio.sleep(0)  # done callbacks run on the next loop pass

    _run(twice())
    changelog = TP("unit-worker-calls-changelog", 2)
    assert persisted == [(changelog, 1), (changelog, 2)]


def test_the_store_is_written_with_the_partition_s_event_current() -> None:
    """Faust's RocksDB store writes into the database of the current event's partition."""

    class Store(dict):  # records the partition Faust would pick for each write
        def __init__(self) -> None:
            super().__init__()
            self.partitions: list[int] = []

        def __setitem__(self, key: str, value: Any) -> None:
            self.partitions.append(faust.current_event().message.partition)
            super().__setitem__(key, value)

    table = _table()
    table._data = Store()
    store = CallStore(2)
    store["a"] = CallState("a")
    store["b"] = CallState("b")
    _flush(store, table, Producer())
    assert table.data.partitions == [2, 2]
    assert faust.current_event() is None


def test_current_event_is_faust_s_only_inside() -> None:
    event = _Event(1)
    assert faust.current_event() is None
    with current_event(event):
        assert faust.current_event() is event
    assert faust.current_event() is None


def test_current_event_is_restored_after_an_error() -> None:
    event = _Event(1)
    with pytest.raises(RuntimeError), current_event(event):
        raise RuntimeError("boom")
    assert faust.current_event() is None


def test_worker_topics_are_the_ones_faust_creates() -> None:
    """The demo, tests and benchmarks delete Faust's own topics by these names; a run
    must not leave topics behind on the broker."""
    table = _table("unit-cl")
    leader = table.app._leader_assignor._leader_topic_name
    assert worker_topics("unit-cl") == [table.changelog_topic.get_topic_name(), leader]
