"""A per-partition view of the Faust `calls` table that the billing core can use.

The core's Correlator wants a MutableMapping[str, CallState]. Reads come from a
plain dict cache of the partition's calls (fast, no deserialisation per event).
Writes are collected, and `flush` puts each changed call once into the Faust
table: its store (`table.data`) and its changelog topic, on this store's
partition explicitly. That is what `table[call_id] = value` does (Faust's
`Table.on_key_set`), without Faust's per-record producer machinery, which cost
more than the billing core's work per event. Records are the table's keys and
values as JSON, which Faust's table decodes, so Faust restores the table from
the changelog as before. Each table value carries its partition ("p"), so a
worker can rebuild one partition's cache from the table.

Flush before the records that changed the calls are acknowledged: Faust commits
an offset only after flushing the producer, so a committed offset means every
state change before it is in the changelog.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import orjson
from faust import streams as faust_streams
from faust.types import TP

from pipeline.core.state import CallState
from pipeline.worker.produce import BatchSender, Record


class TableStore(MutableMapping[str, CallState]):
    def __init__(self, table: Any, partition: int) -> None:
        self._table = table
        self.partition = partition
        self._cache: dict[str, CallState] = {}
        self._changed: dict[str, CallState | None] = {}  # None: deleted
        self._tp = TP(table.changelog_topic.get_topic_name(), partition)

    def load(self) -> None:
        """Fill the cache with this partition's calls from the (recovered) table."""
        self._cache.clear()
        self._changed.clear()
        for value in list(self._table.values()):
            if isinstance(value, dict) and value.get("p") == self.partition:
                state = CallState.from_dict(value["s"])
                self._cache[state.call_id] = state

    def __getitem__(self, call_id: str) -> CallState:
        return self._cache[call_id]

    def get(self, call_id: str, default: Any = None) -> Any:
        return self._cache.get(call_id, default)

    def __setitem__(self, call_id: str, state: CallState) -> None:
        self._cache[call_id] = state
        self._changed[call_id] = state

    def __delitem__(self, call_id: str) -> None:
        del self._cache[call_id]
        self._changed[call_id] = None

    def __iter__(self) -> Iterator[str]:
        return iter(self._cache)

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def pending(self) -> int:
        """Calls changed since the last flush."""
        return len(self._changed)

    async def flush(self, sender: BatchSender, event: Any) -> int:
        """Write each call changed since the last flush to the table's store and to
        the changelog (tombstones for deleted calls); returns how many.

        Keys and values are the table's JSON, encoded here rather than through
        Faust's serializer registry (same decoded values; tests check Faust reads
        them back). `event` is a record of this partition: Faust's current event
        while the store is written, as a RocksDB store picks the partition's
        database from it.
        """
        if not self._changed:
            return 0
        data = self._table.data
        partition = self.partition
        dump_key, dump_value = _dump_key, orjson.dumps
        records: list[Record] = []
        with current_event(event):
            for call_id, state in self._changed.items():
                if state is None:
                    data.pop(call_id, None)
                    value = None
                else:
                    record = {"p": partition, "s": state.to_dict()}
                    data[call_id] = record
                    value = dump_value(record)
                records.append((dump_key(call_id).encode(), value, []))
        self._changed.clear()
        sent = await sender.send(self._tp.topic, partition, records)
        if sent is not None:
            future, count = sent
            future.add_done_callback(lambda f: self._delivered(f, count))
        return len(records)

    def _delivered(self, sent: asyncio.Future[Any], count: int) -> None:
        # As Faust's own changelog callback: a persistent (RocksDB) store remembers how
        # far the changelog is applied, so a restart recovers only what came after.
        # A batch's result is its first record's offset; batches of one partition are
        # delivered in order, so the flush's last batch will do. A failed batch stops
        # the worker (BatchSender).
        if sent.cancelled() or sent.exception() is not None:
            return
        self._table.data.set_persisted_offset(self._tp, sent.result().offset + count - 1)


# Keys as the json module writes them (non-ASCII escaped): a changelog is compacted by
# key bytes, so a key must keep one byte form across versions. Values only need to
# decode to the same JSON; orjson writes them about ten times faster than json (half
# of the cost of a table write was json, the other half CallState.to_dict).
_dump_key = json.JSONEncoder(separators=(",", ":")).encode


@contextmanager
def current_event(event: Any) -> Iterator[None]:
    """Make `event` Faust's current event, as Faust's stream iteration does per record.

    The worker writes the table after a batch, outside that iteration. Faust has no
    public setter, so this sets its context variable; tests/unit/test_worker_batches.py
    checks that `faust.current_event()` follows.
    """
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)
