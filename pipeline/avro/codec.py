"""Avro bodies for CallEvent and RatedCdr with fastavro, in single-object encoding.

A message is C3 01, the 8-byte little-endian CRC-64-AVRO fingerprint of the
writer schema's canonical form, then the Avro body. Every schema version kept in
`schemas/` (current ones and `schemas/history/`) can be read; records are
resolved to the current schema. Schemas are parsed once, at import.

The current schema of each kind is also compiled at import (pipeline.avro.compiled)
into specialised encode/decode functions, byte- and value-identical to fastavro but
several times faster (and several times more again when bootstrap.sh --dev has
compiled them with mypyc, `GENERATED_BUILT`): encoding always goes through them (they
hand any datum not in the canonical shape to fastavro), and so does decoding a message
written with the current schema. Older writer schemas are read by fastavro with schema
resolution. A schema the compiler does not support is left to fastavro entirely.
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from pipeline.avro import compiled as avro_compiled
from pipeline.core.cdr import RatedCdr
from pipeline.core.events import FIELD_NAMES, CallEvent
from pipeline.errors import InvalidEvent, PipelineError

MAGIC = b"\xc3\x01"
_HEADER = len(MAGIC) + 8


def schema_dir() -> Path:
    override = os.environ.get("CDR_SCHEMA_DIR")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "schemas"


@dataclass(frozen=True)
class AvroType:
    name: str  # the record name, e.g. CallEvent
    schema: Any  # parsed current schema
    fingerprint: bytes
    writers: dict[bytes, Any]  # fingerprint -> parsed writer schema (all known versions)
    # compiled from `schema`, None when it uses a type the compiler does not support
    decoder: avro_compiled.Decoder | None = None  # (message, offset) -> (record, end)
    encoder: avro_compiled.Encoder | None = None  # record dict -> whole message


def _fingerprint(parsed: Any) -> bytes:
    hex_digest = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
    return bytes.fromhex(hex_digest)


def _load(name: str) -> AvroType:
    """The kind's schemas, current and older (not compiled yet: `_compile`)."""
    base = schema_dir()
    current_path = base / f"{name}.avsc"
    try:
        current = fastavro.parse_schema(json.loads(current_path.read_text()))
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{current_path}: cannot load Avro schema: {exc}") from exc
    writers = {_fingerprint(current): current}
    for older in sorted((base / "history").glob(f"{name}.*.avsc")):
        parsed = fastavro.parse_schema(json.loads(older.read_text()))
        writers[_fingerprint(parsed)] = parsed
    full_name = cast(dict[str, Any], current)["name"]
    return AvroType(full_name.rsplit(".", 1)[-1], current, _fingerprint(current), writers)


def compiled_decoder(schema: Any) -> avro_compiled.Decoder | None:
    """The compiled decoder of `schema`, or None if it uses a type the compiler refuses
    (then fastavro does all the work for that kind, as before)."""
    try:
        return avro_compiled.compile_decoder(schema)
    except avro_compiled.UnsupportedSchema:
        return None


def _units(kind: AvroType, tuple_type: type[tuple[Any, ...]]) -> list[avro_compiled.Unit]:
    """The generated functions of a kind: its decoder, its encoder of a record dict and of
    its NamedTuple (by position when the tuple's fields are the schema's, in order), each
    writing the whole message; [] when the compiler does not support the schema."""
    prefix = MAGIC + kind.fingerprint
    fields = tuple(f["name"] for f in kind.schema["fields"])
    access = "position" if getattr(tuple_type, "_fields", None) == fields else "attribute"
    units = [avro_compiled.Unit(f"decode_{kind.name}", "decode", kind.schema),
             avro_compiled.Unit(f"encode_{kind.name}", "encode", kind.schema, prefix),
             avro_compiled.Unit(f"encode_{kind.name}_{access}", "encode", kind.schema, prefix,
                                access)]
    try:
        avro_compiled.module_source(units)
    except avro_compiled.UnsupportedSchema:
        return []
    return units


def _compile(kind: AvroType, module: Any) -> AvroType:
    decoder = getattr(module, f"decode_{kind.name}", None)
    encoder = getattr(module, f"encode_{kind.name}", None)
    if decoder is None or encoder is None:
        return kind
    fallback = functools.partial(fastavro_encode, kind)
    return AvroType(kind.name, kind.schema, kind.fingerprint, kind.writers, decoder,
                    avro_compiled.with_fallback(encoder, fallback))


def fastavro_encode(kind: AvroType, record: dict[str, Any]) -> bytes:
    """The reference encoding of a record dict, all fastavro: magic, fingerprint, body.
    The compiled encoder's fallback, and the plain-fastavro codec of the benchmarks."""
    buffer = io.BytesIO()
    buffer.write(MAGIC)
    buffer.write(kind.fingerprint)
    fastavro.schemaless_writer(buffer, kind.schema, record)
    return buffer.getvalue()


def fastavro_decode(kind: AvroType, data: bytes) -> dict[str, Any]:
    """The reference decoding, all fastavro (with schema resolution from the writer's
    schema), with the same checks and InvalidEvent errors as the codec's own."""
    _check_magic(kind, data)
    return _fastavro_decode(kind, data)


_KINDS = ((_load("call_event"), CallEvent), (_load("rated_cdr"), RatedCdr))
# The source of the generated codec of the current schemas (bootstrap.sh --dev compiles
# exactly this with mypyc: pipeline/avro/build.py), and the module that runs it.
SOURCE = avro_compiled.module_source([u for kind, tuple_type in _KINDS
                                      for u in _units(kind, tuple_type)])
GENERATED = avro_compiled.load(SOURCE, "avro_codec")
GENERATED_BUILT = avro_compiled.is_built(GENERATED)
CALL_EVENT = _compile(_KINDS[0][0], GENERATED)
RATED_CDR = _compile(_KINDS[1][0], GENERATED)


def _encode(kind: AvroType, record: dict[str, Any]) -> bytes:
    if kind.encoder is not None:
        return kind.encoder(record)
    return fastavro_encode(kind, record)


def _decode(kind: AvroType, data: bytes) -> dict[str, Any]:
    _check_magic(kind, data)
    if kind.decoder is not None and data[2:_HEADER] == kind.fingerprint:
        return _decode_compiled(kind, kind.decoder, data)
    return _fastavro_decode(kind, data)


def _check_magic(kind: AvroType, data: bytes) -> None:
    if len(data) < _HEADER or data[:2] != MAGIC:
        raise InvalidEvent(f"not an Avro single-object encoded {kind.name} (bad magic bytes)")


def _check_consumed(kind: AvroType, end: int, data: bytes) -> None:
    if end != len(data):
        raise InvalidEvent(f"Avro {kind.name} body has {len(data) - end} trailing bytes")


def _fastavro_decode(kind: AvroType, data: bytes) -> dict[str, Any]:
    writer = kind.writers.get(bytes(data[2:_HEADER]))
    if writer is None:
        raise InvalidEvent(
            f"unknown {kind.name} schema fingerprint {bytes(data[2:_HEADER]).hex()} "
            f"(known: {', '.join(f.hex() for f in kind.writers)})"
        )
    buffer = io.BytesIO(data)
    buffer.seek(_HEADER)
    try:
        record = fastavro.schemaless_reader(buffer, writer, kind.schema)
    except Exception as exc:  # fastavro raises many types on corrupt bodies
        raise _corrupt(kind, exc) from None
    _check_consumed(kind, buffer.tell(), data)
    return record  # type: ignore[return-value]


def _corrupt(kind: AvroType, exc: Exception) -> InvalidEvent:
    return InvalidEvent(f"corrupt Avro {kind.name} body: {exc.__class__.__name__}: {exc}")


def _decode_compiled(kind: AvroType, decoder: avro_compiled.Decoder, data: bytes) -> dict[str, Any]:
    if type(data) is not bytes:
        data = bytes(data)
    try:
        record, end = decoder(data, _HEADER)
    except avro_compiled.CorruptBody as exc:
        raise InvalidEvent(f"corrupt Avro {kind.name} body: {exc}") from None
    except Exception as exc:  # not expected; the contract is InvalidEvent for any bad body
        raise _corrupt(kind, exc) from None
    _check_consumed(kind, end, data)
    return record


def _message_decoder(kind: AvroType) -> Callable[[bytes], dict[str, Any]]:
    """decode(message) -> record of a kind: a message of the current schema (its magic
    and fingerprint checked in one `startswith`) straight to `_decode_compiled`,
    anything else through `_decode`. Raises InvalidEvent like `_decode`."""
    decoder = kind.decoder
    if decoder is None:
        return functools.partial(_decode, kind)
    header = MAGIC + kind.fingerprint

    def decode(data: bytes) -> dict[str, Any]:
        if type(data) is not bytes or not data.startswith(header):
            return _decode(kind, data)
        return _decode_compiled(kind, decoder, data)

    return decode


def _tuple_encoder(kind: AvroType, tuple_type: type[Any],
                   to_record: Callable[[Any], dict[str, Any]]) -> Callable[[Any], bytes]:
    """An encoder of the kind's NamedTuple: the generated one reading its fields by
    position (or by attribute), one call; anything it does not take (not that exact
    type, a value not in the canonical shape) through `to_record` and the record
    encoder (the compiled one, then fastavro)."""

    def fallback(value: Any) -> bytes:
        return _encode(kind, to_record(value))

    by_position = getattr(GENERATED, f"encode_{kind.name}_position", None)
    if by_position is None:
        by_attribute = getattr(GENERATED, f"encode_{kind.name}_attribute", None)
        return fallback if by_attribute is None else avro_compiled.with_fallback(
            by_attribute, fallback)

    def encode(value: Any) -> bytes:
        if type(value) is tuple_type:
            out = by_position(value)
            if out is not None:
                return out  # type: ignore[no-any-return]
        return fallback(value)

    return encode


def cdr_record(cdr: RatedCdr) -> dict[str, Any]:
    """A RatedCdr as the Avro record its schema describes (`flags` a list)."""
    record = cdr._asdict()
    record["flags"] = list(cdr.flags)
    return record


encode_event: Callable[[CallEvent], bytes] = _tuple_encoder(
    CALL_EVENT, CallEvent, lambda event: event._asdict())

# Decode the Avro body only; validation is the core's parse_event.
decode_event_dict: Callable[[bytes], dict[str, Any]] = _message_decoder(CALL_EVENT)


def encode_event_dict(raw: dict[str, Any]) -> bytes:
    """Encode a JSON-style event dict (missing optional fields become null)."""
    record = {name: raw.get(name) for name in FIELD_NAMES}
    try:
        return _encode(CALL_EVENT, record)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidEvent(f"cannot encode as CallEvent: {exc}") from None


encode_cdr: Callable[[RatedCdr], bytes] = _tuple_encoder(RATED_CDR, RatedCdr, cdr_record)


def decode_cdr(data: bytes) -> RatedCdr:
    record = decode_cdr_record(data)
    record["flags"] = tuple(record.get("flags") or ())
    return RatedCdr(**record)


# Decode a RatedCdr message to the Avro record itself: a dict keyed by the RatedCdr field
# names with the Avro types (enums as their symbols, money as Decimal at the schema's
# scale, `flags` a list). For consumers that go straight to columns (the ClickHouse sink,
# `cdr_store.cdr_row`) and need no RatedCdr tuple; `decode_cdr` is this plus the tuple.
# Raises InvalidEvent like `decode_cdr`.
decode_cdr_record: Callable[[bytes], dict[str, Any]] = _message_decoder(RATED_CDR)


# -- watermark ticks ---------------------------------------------------------------
# A tick is a control record on the call-events topic that advances event time of
# its partition when no call traffic does (see docs/streaming.md). It is told apart
# from events by its header; its value is the tick time, epoch ms, as ASCII digits.
RECORD_HEADER = "cdr-record"
TICK = b"tick"


def encode_tick(ts_ms: int) -> bytes:
    return str(int(ts_ms)).encode("ascii")


def decode_tick(data: bytes) -> int:
    try:
        return int(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidEvent(f"tick record value {data[:32]!r} is not epoch milliseconds") from None


def is_tick(headers: list[tuple[str, bytes]] | dict[str, bytes] | None) -> bool:
    if not headers:
        return False
    items = headers.items() if isinstance(headers, dict) else headers
    return any(k == RECORD_HEADER and v == TICK for k, v in items)


# -- a CDR's storage anchor ----------------------------------------------------------
# The worker sends each CDR with a header naming its call's pinned start
# (CallState.call_start_ms, epoch ms as ASCII digits): the sink files every version of the
# call under it (`cdr.call_start_ms`), even one that gained an earlier time (a SETUP
# after a SETUP_MISSING CDR). A CDR without the header is filed under its own start.
CALL_START_HEADER = "cdr-call-start-ms"


def call_start_header(call_start_ms: int) -> tuple[str, bytes]:
    return (CALL_START_HEADER, str(int(call_start_ms)).encode("ascii"))


def call_start_from(headers: Any) -> int | None:
    """The pinned start a CDR record's headers (a list of pairs or a dict, values bytes
    or str, as Kafka clients give them) carry, None without one; InvalidEvent when the
    header is not epoch milliseconds."""
    if not headers:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for key, value in items:
        if key == CALL_START_HEADER:
            raw = value.encode() if isinstance(value, str) else (value or b"")
            if raw.isdigit() and len(raw) <= 16:  # ASCII digits, and no further than year 2286
                return int(raw)
            raise InvalidEvent(f"header {CALL_START_HEADER} {raw[:32]!r} is not epoch "
                               "milliseconds", CALL_START_HEADER)
    return None
