"""A per-partition view of the Faust `calls` table that the billing core can use.

The core's Correlator wants a MutableMapping[str, CallState]. Reads come from a
plain dict cache of the partition's calls (fast, no deserialisation per event);
every write goes through to the changelog-backed Faust table, so a restarted or
rebalanced worker recovers the same states. Each table value carries its
partition ("p"), so a worker can rebuild one partition's cache from the table.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from pipeline.core.state import CallState


class TableStore(MutableMapping[str, CallState]):
    def __init__(self, table: Any, partition: int) -> None:
        self._table = table
        self.partition = partition
        self._cache: dict[str, CallState] = {}

    def load(self) -> None:
        """Fill the cache with this partition's calls from the (recovered) table."""
        self._cache.clear()
        for key, value in list(self._table.items()):
            if isinstance(value, dict) and value.get("p") == self.partition:
                state = CallState.from_dict(value["s"])
                self._cache[state.call_id] = state

    def __getitem__(self, call_id: str) -> CallState:
        return self._cache[call_id]

    def get(self, call_id: str, default: Any = None) -> Any:
        return self._cache.get(call_id, default)

    def __setitem__(self, call_id: str, state: CallState) -> None:
        self._cache[call_id] = state
        self._table[call_id] = {"p": self.partition, "s": state.to_dict()}

    def __delitem__(self, call_id: str) -> None:
        del self._cache[call_id]
        del self._table[call_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._cache)

    def __len__(self) -> int:
        return len(self._cache)
