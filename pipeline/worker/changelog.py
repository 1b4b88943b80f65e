"""The values of the worker's `calls` table, as its changelog holds them: two formats.

Each value is one call's state and the partition it belongs to (a worker rebuilds a
partition's calls from the recovered table, which mixes every partition's values).
The table's value serializer is "raw": these bytes are what the changelog record
holds and what Faust's table holds after recovery; the worker decodes them when it
loads a partition (`decode_of`), never Faust.

- "json": `{"p": partition, "s": CallState.to_dict()}` as JSON (orjson), the only
  format before the compact one (562 bytes for a typical state). Every worker version
  reads it.
- "compact": the core's table entry (`pipeline.core.state_codec.encode_entry`: a
  format byte 0x02, the partition, the state's fields positionally; about 150 bytes).
  Only a worker that has the core's state codec reads it.

Both are read (the first byte tells them apart: JSON starts with "{"), so a worker
reads a changelog that holds either or both. Which one a worker writes is `[worker]
changelog_format`: "json" while workers of an older version may still take over
partitions (a rolling upgrade), "compact" once none is left (docs/operations.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

from pipeline.core.state import CallState
from pipeline.core.state_codec import ENTRY_MARK, RS, decode_entry, encode_entry
from pipeline.errors import PipelineError

FORMATS = ("compact", "json")

# Keys as the json module writes them (non-ASCII escaped), in both formats: a changelog
# is compacted by key bytes, so a key must keep one byte form across versions.
_json_key: Callable[[Any], str] = json.JSONEncoder(separators=(",", ":")).encode


def encode_key(call_id: str) -> bytes:
    """The changelog key of a call: its id as a JSON string, in the json module's bytes.
    For an id of printable ASCII (every switch's) orjson writes the same bytes (it
    escapes only the quote and the backslash there, as the json module does), in one
    call; anything else (non-ASCII, control characters, DEL: the json module escapes
    them its own way) goes through the json module's encoder."""
    if call_id.isascii() and call_id.isprintable():
        return orjson.dumps(call_id)
    return _json_key(call_id).encode()

_RS = RS.encode()
_PARTITION_ENDS = 12  # where the RS after an entry's partition is looked for, at most


class BadChangelogValue(PipelineError):
    """A changelog value of the calls table that is not a call state with its partition
    (corrupt, or written by a newer worker in a format this one does not know)."""


def encode_json(partition: int, state: CallState) -> bytes:
    """Today's JSON value, as workers before the compact format wrote it."""
    return orjson.dumps({"p": partition, "s": state.to_dict()})


def encoder(changelog_format: str) -> Callable[[int, CallState], bytes]:
    """The value encoder (partition, state) -> bytes of a format (one of FORMATS)."""
    if changelog_format == "compact":
        return encode_entry
    if changelog_format == "json":
        return encode_json
    raise ValueError(f"changelog format must be one of {', '.join(FORMATS)}, "
                     f"got {changelog_format!r}")


def decode_value(value: bytes) -> tuple[int, CallState]:
    """(partition, state) of a value in either format; BadChangelogValue (naming what
    is wrong) for anything else."""
    try:
        partition, state = decode_entry(value)
    except ValueError as exc:  # the codec's StateCodecError, or a partition not a number
        raise BadChangelogValue(f"changelog value of the calls table: {exc}") from None
    if partition is None:
        raise BadChangelogValue("changelog value of the calls table holds no partition "
                                "(a bare state, not a table entry)")
    return partition, state


def decode_of(value: bytes, partition: int) -> CallState | None:
    """The state of a value if it belongs to `partition`, else None. A compact value of
    another partition is passed over without being decoded."""
    if value[:1] == ENTRY_MARK:  # the partition in decimal, RS, the state
        end = value.find(_RS, 1, _PARTITION_ENDS)
        if end > 0 and value[1:end] != str(partition).encode():
            return None
    belongs, state = decode_value(value)
    return state if belongs == partition else None

