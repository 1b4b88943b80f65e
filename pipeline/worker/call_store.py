"""One partition's calls as the billing core's store, and its changes as table writes.

The core's Correlator wants a MutableMapping[str, CallState]. Reads come from a
plain dict of the partition's calls (fast, no deserialisation per event). Writes are
collected, and `drain` gives each changed call once as a TableWrite: the value of
the Faust table `calls` ({"p": partition, "s": CallState.to_dict()}, None for a
forgotten call) and the changelog record that carries it, in the table's JSON. The
worker's driver puts them into the Faust table's store and onto the changelog
(table_store.TableWriter). Each table value carries its partition ("p"), so a worker
can rebuild one partition's calls from the recovered table (`load`).

No Faust here: the record path and its unit tests use this without a broker.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any, NamedTuple

import orjson

from pipeline.core.state import CallState
from pipeline.worker.produce import Record


class TableWrite(NamedTuple):
    call_id: str
    value: dict[str, Any] | None  # the table's value; None deletes the call
    record: Record  # the changelog record: JSON key, JSON value or a tombstone


class CallStore(MutableMapping[str, CallState]):
    def __init__(self, partition: int) -> None:
        self.partition = partition
        self._cache: dict[str, CallState] = {}
        self._changed: dict[str, CallState | None] = {}  # None: deleted

    def load(self, table_values: Iterable[Any]) -> None:
        """Fill the store with this partition's calls from the (recovered) table's values."""
        self._cache.clear()
        self._changed.clear()
        for value in table_values:
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
        """Calls changed since the last drain."""
        return len(self._changed)

    def drain(self) -> list[TableWrite]:
        """Each call changed since the last drain, once, as a table write; then none.

        Keys and values are the table's JSON, encoded here rather than through Faust's
        serializer registry (same decoded values; tests check Faust reads them back).
        """
        if not self._changed:
            return []
        partition = self.partition
        dump_key, dump_value = _dump_key, orjson.dumps
        writes = []
        for call_id, state in self._changed.items():
            if state is None:
                writes.append(TableWrite(call_id, None, (dump_key(call_id).encode(), None, [])))
            else:
                value = {"p": partition, "s": state.to_dict()}
                writes.append(TableWrite(call_id, value,
                                         (dump_key(call_id).encode(), dump_value(value), [])))
        self._changed.clear()
        return writes


# Keys as the json module writes them (non-ASCII escaped): a changelog is compacted by
# key bytes, so a key must keep one byte form across versions. Values only need to
# decode to the same JSON; orjson writes them about ten times faster than json (half
# of the cost of a table write was json, the other half CallState.to_dict).
_dump_key = json.JSONEncoder(separators=(",", ":")).encode
