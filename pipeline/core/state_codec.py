"""A CallState as the bytes of a changelog value, and back: compact and positional.

The streaming worker writes a call's whole state each time it changes. As JSON of
`CallState.to_dict()` that is about 560 bytes for a typical call; this encoding is
about a third of that, because it writes the packed events (packed.py) as they are
held, each event time as its distance from the call's newest one, and no field names.

The first byte says the format:

- 0x01 (FORMAT_STATE): a state. Then UTF-8 text, fields separated by RS:
  call_id, last_ts_ms, version, closed_at_ms, emitted_at, call_start_ms, others,
  SETUP, RINGING, ANSWER, HANGUP. Absent values are empty. closed_at_ms and
  call_start_ms are given as their difference to last_ts_ms. `others` (ids of the
  events that hold no slot, rarely any) is a JSON array. An event is its packed
  string with its time as the difference to last_ts_ms; one that is not packed
  (packed.py says when) is SEP and its JSON (a packed event never starts with SEP).
- 0x02 (FORMAT_ENTRY): a table entry, a state with the partition it belongs to: the
  partition in decimal, RS, then a 0x01 value without its first byte.
- "{": JSON, as values were written before: `CallState.to_dict()`, or the worker's
  table value {"p": partition, "s": CallState.to_dict()}. Such values still load.

A state whose text would hold RS itself (a call id with that control character), or
a string UTF-8 cannot hold (a lone surrogate), is written as JSON, so every state has
an encoding. Pure functions, no I/O.
"""

from __future__ import annotations

import json
from typing import Any, Final

from pipeline.core.events import CallEvent
from pipeline.core.packed import SEP, Slot
from pipeline.core.state import CallState

FORMAT_STATE: Final = 0x01
FORMAT_ENTRY: Final = 0x02
RS: Final = "\x1e"
_FIELDS: Final = 11
_STATE_MARK: Final = b"\x01"
ENTRY_MARK: Final = b"\x02"  # a table entry's first byte


class StateCodecError(ValueError):
    """Bytes that are not a call state in a known format (says which and why)."""


def encode_state(state: CallState) -> bytes:
    """The state as a changelog value (format 0x01, or JSON when it must)."""
    text = _text(state)
    if text is not None:
        try:
            return _STATE_MARK + text.encode()
        except UnicodeEncodeError:
            pass
    return json.dumps(state.to_dict(), separators=(",", ":")).encode()


def encode_entry(partition: int, state: CallState) -> bytes:
    """A state with its partition (format 0x02; JSON {"p", "s"} when it must)."""
    text = _text(state)
    if text is not None:
        try:
            return ENTRY_MARK + f"{partition}{RS}{text}".encode()
        except UnicodeEncodeError:
            pass
    return json.dumps({"p": partition, "s": state.to_dict()}, separators=(",", ":")).encode()


# What `peek` reads of a value without decoding its events: (call_id, last_ts_ms,
# closed_at_ms, emitted_at, call_start_ms).
Header = tuple[str, int, int | None, int | None, int | None]
_RS_BYTE: Final = b"\x1e"


def peek(data: bytes) -> Header | None:
    """A compact value's (0x01 or 0x02) call id and times, read from its head without
    decoding its events: what deciding whether a closed call is due needs. None for a
    JSON value (decode it). Raises StateCodecError for one that is not a state."""
    if not data:
        raise StateCodecError("empty call state value")
    marker = data[0]
    if marker == FORMAT_STATE:
        parts = data[1:].split(_RS_BYTE, 6)
    elif marker == FORMAT_ENTRY:
        parts = data[1:].split(_RS_BYTE, 7)[1:]
    elif marker == 0x7B:  # "{": JSON
        return None
    else:
        raise StateCodecError(f"call state value has unknown format marker {marker:#04x}")
    try:
        last = int(parts[1])
        closed, emitted, start = parts[3], parts[4], parts[5]
        return (parts[0].decode(), last, last + int(closed) if closed else None,
                int(emitted) if emitted else None, last + int(start) if start else None)
    except (ValueError, IndexError) as exc:
        raise StateCodecError(
            f"call state value (format {marker:#04x}) is corrupt: {exc!r}") from None


def read_head(data: bytes) -> Header:
    """`peek`, and for a JSON value (no head to read) the same fields of its decoded
    state."""
    head = peek(data)
    if head is not None:
        return head
    state = decode_state(data)
    return (state.call_id, state.last_ts_ms, state.closed_at_ms, state.emitted_at,
            state.call_start_ms)


def decode_state(data: bytes) -> CallState:
    """The CallState of a value written by encode_state or encode_entry, or of a JSON
    value written before them. Raises StateCodecError naming what is wrong."""
    return decode_entry(data)[1]


def decode_entry(data: bytes) -> tuple[int | None, CallState]:
    """(partition, state) of a value; the partition is None when the value has none."""
    if not data:
        raise StateCodecError("empty call state value")
    marker = data[0]
    try:
        if marker == FORMAT_STATE:
            return None, _from_text(data[1:].decode())
        if marker == FORMAT_ENTRY:
            partition, _, text = data[1:].decode().partition(RS)
            return int(partition), _from_text(text)
        if marker == 0x7B:  # "{": JSON
            return _from_json(json.loads(data))
    except StateCodecError:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise StateCodecError(
            f"call state value (format {marker:#04x}) is corrupt: {exc!r}") from None
    raise StateCodecError(f"call state value has unknown format marker {marker:#04x}")


# -- writing ----------------------------------------------------------------------------


def _text(state: CallState) -> str | None:
    last = state.last_ts_ms
    closed, start, emitted = state.closed_at_ms, state.call_start_ms, state.emitted_at
    others = state.others
    text = RS.join((
        state.call_id,
        str(last),
        str(state.version),
        "" if closed is None else str(closed - last),
        "" if emitted is None else str(emitted),
        "" if start is None else str(start - last),
        json.dumps(list(others)) if others else "",
        _slot_text(state.slot(0), last),
        _slot_text(state.slot(1), last),
        _slot_text(state.slot(2), last),
        _slot_text(state.slot(3), last),
    ))
    return text if text.count(RS) == _FIELDS - 1 else None


def _slot_text(slot: Slot | None, last: int) -> str:
    if slot is None:
        return ""
    if type(slot) is str:
        key, ts, rest = slot.split(SEP, 2)
        return f"{key}{SEP}{int(ts) - last}{SEP}{rest}"
    return SEP + json.dumps(slot.to_dict())  # type: ignore[union-attr]


# -- reading ----------------------------------------------------------------------------


def _from_text(text: str) -> CallState:
    parts = text.split(RS)
    if len(parts) != _FIELDS:
        raise StateCodecError(
            f"call state value has {len(parts)} fields, format 0x01 has {_FIELDS}")
    call_id, last_text, version, closed, emitted, start, others = parts[:7]
    last = int(last_text)
    return CallState.restore(
        call_id,
        (_slot(parts[7], last), _slot(parts[8], last), _slot(parts[9], last),
         _slot(parts[10], last)),
        tuple(json.loads(others)) if others else (),
        last,
        int(version),
        last + int(closed) if closed else None,
        int(emitted) if emitted else None,
        last + int(start) if start else None,
    )


def _slot(text: str, last: int) -> Slot | None:
    if not text:
        return None
    if text.startswith(SEP):
        return CallEvent(**json.loads(text[1:]))
    key, delta, rest = text.split(SEP, 2)
    return f"{key}{SEP}{last + int(delta)}{SEP}{rest}"


def _from_json(data: dict[str, Any]) -> tuple[int | None, CallState]:
    if "s" in data and "call_id" not in data:  # the worker's table value {"p", "s"}
        partition = data.get("p")
        return (partition if isinstance(partition, int) else None,
                CallState.from_dict(data["s"]))
    return None, CallState.from_dict(data)
