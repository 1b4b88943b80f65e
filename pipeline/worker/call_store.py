"""One partition's calls as the billing core's store, and its changes as table writes.

The core's Correlator wants a MutableMapping of call ids to states. This is a dict of
the partition's calls, so reads cost what a dict's do. Closed calls are held frozen
(correlator.py): as their compact table entry (`freeze`), the very bytes the table's
store holds and the changelog gets, so a remembered call costs one copy of its value
rather than its objects and a value beside them. Writes are collected, and `drain`
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
from pipeline.core.state_codec import ENTRY_MARK, decode_state, encode_entry
from pipeline.worker import changelog
from pipeline.worker.produce import Record


class TableWrite(NamedTuple):
    call_id: str
    value: bytes | None  # the table's value (changelog.py); None deletes the call
    record: Record  # the changelog record: JSON key, the value or a tombstone


class CallStore(dict[str, Any]):
    """A dict of the partition's calls, a CallState each or the bytes of a frozen closed
    call (the Correlator's reads are the dict's own, in C), which records what is
    written or deleted through `store[k] = v` and `del`."""

    def __init__(self, partition: int, changelog_format: str = "compact") -> None:
        super().__init__()
        self.partition = partition
        self._encode: Callable[[int, CallState], bytes] = changelog.encoder(changelog_format)
        # A frozen call is its compact entry: the changelog's value as it is in that format
        self._frozen_is_value = changelog_format == "compact"
        self._changed: dict[str, CallState | bytes | None] = {}  # None: deleted

    def freeze(self, state: CallState) -> bytes:
        """A closed call as this store holds it (the Correlator's `freeze`): its compact
        table entry of this partition."""
        return encode_entry(self.partition, state)

    def load(self, table_values: Iterable[Any]) -> None:
        """Fill the store with this partition's calls from the (recovered) table's
        values, in either changelog format; a closed call in the compact format is kept
        frozen as the table's own bytes."""
        self.clear()
        self._changed.clear()
        partition, decode, put = self.partition, changelog.decode_of, _dict_set
        for value in table_values:
            state = decode(value, partition) if value else None
            if state is None:
                continue
            if state.closed:
                put(self, state.call_id,
                    value if value[:1] == ENTRY_MARK else self.freeze(state))
            else:
                put(self, state.call_id, state)

    # Called for every event the Correlator folds: dict's own methods, not super()
    # (which builds a proxy object per call on Python 3.11).
    def __setitem__(self, call_id: str, state: CallState | bytes) -> None:
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
        frozen_is_value = self._frozen_is_value
        for call_id, state in self._changed.items():
            if state is None:
                value = None
            elif type(state) is bytes:  # frozen: its entry, the compact format's value
                value = state if frozen_is_value else encode(partition, decode_state(state))
            else:
                value = encode(partition, state)  # type: ignore[arg-type]
            # TableWrite(call_id, value, record), without its __new__ (a Python call)
            writes.append(_new(TableWrite, (call_id, value, (key(call_id), value, NO_HEADERS))))
        self._changed.clear()
        return writes


NO_HEADERS: list[tuple[str, bytes]] = []  # a changelog record's: shared, never appended to
_dict_set, _dict_del, _new = dict.__setitem__, dict.__delitem__, tuple.__new__
