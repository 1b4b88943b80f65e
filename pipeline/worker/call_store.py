"""One partition's calls as the billing core's store, and its changes as table writes.

The core's Correlator wants a MutableMapping[str, CallState]. This is a dict of the
partition's calls, so reads cost what a dict's do. Writes are collected, and `drain`
gives each changed call once as a TableWrite: the value of the Faust table `calls`
(changelog.py: the call's state and its partition, in the configured format; None for
a forgotten call) and the changelog record that carries it. The worker's driver puts
them into the Faust table's store and onto the changelog (table_store.TableWriter).
Each value carries its partition, so a worker can rebuild one partition's calls from
the recovered table (`load`), whichever format wrote them.

No Faust here: the record path and its unit tests use this without a broker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from pipeline.core.state import CallState
from pipeline.worker import changelog
from pipeline.worker.produce import Record


class TableWrite(NamedTuple):
    call_id: str
    value: bytes | None  # the table's value (changelog.py); None deletes the call
    record: Record  # the changelog record: JSON key, the value or a tombstone


class CallStore(dict[str, CallState]):
    """A dict of the partition's calls (the Correlator's reads are the dict's own, in
    C), which records what is written or deleted through `store[k] = v` and `del`."""

    def __init__(self, partition: int, changelog_format: str = "compact") -> None:
        super().__init__()
        self.partition = partition
        self._encode: Callable[[int, CallState], bytes] = changelog.encoder(changelog_format)
        self._changed: dict[str, CallState | None] = {}  # None: deleted

    def load(self, table_values: Iterable[Any]) -> None:
        """Fill the store with this partition's calls from the (recovered) table's
        values, in either changelog format."""
        self.clear()
        self._changed.clear()
        partition, decode, put = self.partition, changelog.decode_of, super().__setitem__
        for value in table_values:
            state = decode(value, partition) if value else None
            if state is not None:
                put(state.call_id, state)

    # Called for every event the Correlator folds: dict's own methods, not super()
    # (which builds a proxy object per call on Python 3.11).
    def __setitem__(self, call_id: str, state: CallState) -> None:
        _dict_set(self, call_id, state)
        self._changed[call_id] = state

    def __delitem__(self, call_id: str) -> None:
        _dict_del(self, call_id)
        self._changed[call_id] = None

    def _unrecorded(self, *_: Any, **__: Any) -> Any:
        raise TypeError("CallStore records only `store[call_id] = state` and "
                        "`del store[call_id]` as changes")

    # Writes a dict has that would not be recorded (and so never reach the changelog).
    pop = popitem = setdefault = update = _unrecorded

    @property
    def pending(self) -> int:
        """Calls changed since the last drain."""
        return len(self._changed)

    def drain(self) -> list[TableWrite]:
        """Each call changed since the last drain, once, as a table write; then none."""
        if not self._changed:
            return []
        partition, encode, key = self.partition, self._encode, changelog.encode_key
        writes = []
        for call_id, state in self._changed.items():
            value = None if state is None else encode(partition, state)
            # TableWrite(call_id, value, record), without its __new__ (a Python call)
            writes.append(_new(TableWrite, (call_id, value, (key(call_id), value, NO_HEADERS))))
        self._changed.clear()
        return writes


NO_HEADERS: list[tuple[str, bytes]] = []  # a changelog record's: shared, never appended to
_dict_set, _dict_del, _new = dict.__setitem__, dict.__delitem__, tuple.__new__
