"""Avro wire primitives for the generated codecs: varints, decimals, small caches.

Every codec module that compiled.py generates starts with this file's text, so the
generated functions call these as functions of their own module: natively when
deploy/local/bootstrap.sh has compiled the module with mypyc, as plain Python
otherwise. Keep it self-contained (the standard library and pipeline.avro.errors)
and typed: mypyc compiles it as it is.
"""

from __future__ import annotations

from decimal import (
    MAX_EMAX,
    MIN_EMIN,
    Clamped,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    Subnormal,
    Underflow,
)
from typing import Any, Final

from pipeline.avro.errors import CorruptBody


class Defer(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a generated encoder: this datum is not in the canonical shape."""


BYTE: Final = tuple(bytes((i,)) for i in range(256))  # byte value -> a bytes of it


# -- varints -------------------------------------------------------------------------


def write_varint(z: int) -> bytes:
    """The varint of zigzagged `z`; a value outside 64 bits is fastavro's error (Defer)."""
    if z >> 64:
        raise Defer
    if z < 0x80:
        return BYTE[z]
    # the bytes gathered in one int, little-endian: no bytearray method calls (compiled,
    # a third of the cost of appending to a bytearray)
    acc = 0
    shift = 0
    while z > 0x7F:
        acc |= ((z & 0x7F) | 0x80) << shift
        z >>= 7
        shift += 8
    return (acc | z << shift).to_bytes((shift >> 3) + 1, "little")


def zigzag_bytes(value: int) -> bytes:
    """The Avro encoding of a long (tags, enum indexes, lengths)."""
    return write_varint((value << 1) ^ (value >> 63))


def read_long_slow(buf: bytes, pos: int) -> tuple[int, int]:
    """Read a zigzag varint at `pos`: (value, next pos). At most 10 bytes, 64 bits."""
    start = pos
    b = buf[pos]
    n = b & 0x7F
    shift = 7
    while b & 0x80:
        pos += 1
        if shift > 63:
            raise CorruptBody(f"varint at byte {start} is longer than 10 bytes")
        b = buf[pos]
        n |= (b & 0x7F) << shift
        shift += 7
    if n >> 64:
        raise CorruptBody(f"varint at byte {start} overflows 64 bits")
    return (n >> 1) ^ -(n & 1), pos + 1


def read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """read_long_slow unrolled for up to 7 bytes (epoch milliseconds take 6)."""
    b = buf[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    n = b & 0x7F
    b = buf[pos + 1]
    if b < 0x80:
        n |= b << 7
        return (n >> 1) ^ -(n & 1), pos + 2
    n |= (b & 0x7F) << 7
    b = buf[pos + 2]
    if b < 0x80:
        n |= b << 14
        return (n >> 1) ^ -(n & 1), pos + 3
    n |= (b & 0x7F) << 14
    b = buf[pos + 3]
    if b < 0x80:
        n |= b << 21
        return (n >> 1) ^ -(n & 1), pos + 4
    n |= (b & 0x7F) << 21
    b = buf[pos + 4]
    if b < 0x80:
        n |= b << 28
        return (n >> 1) ^ -(n & 1), pos + 5
    n |= (b & 0x7F) << 28
    b = buf[pos + 5]
    if b < 0x80:
        n |= b << 35
        return (n >> 1) ^ -(n & 1), pos + 6
    n |= (b & 0x7F) << 35
    b = buf[pos + 6]
    if b < 0x80:
        n |= b << 42
        return (n >> 1) ^ -(n & 1), pos + 7
    return read_long_slow(buf, pos)


def read_index(buf: bytes, pos: int, count: int, what: str) -> tuple[int, int]:
    """The slow path of a union branch or enum index: any varint form, range-checked."""
    index, after = read_long(buf, pos)
    if not 0 <= index < count:
        raise CorruptBody(f"{what}: index {index} at byte {pos} is out of range 0..{count - 1}")
    return index, after


# -- decimals ------------------------------------------------------------------------
# Both directions are pure functions of a small key (the Decimal's str, the bytes), and
# money values repeat (rates from a deck, fees of common durations), so results are
# kept in a small per-field cache, emptied when full.
CACHE_SIZE: Final = 4096


def remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value


def exact_context(precision: int) -> Context:
    """A context in which any rounding or range condition raises (the encoder defers)."""
    return Context(prec=precision, Emax=MAX_EMAX, Emin=MIN_EMIN,
                   traps=[Clamped, DivisionByZero, Inexact, InvalidOperation, Overflow,
                          Rounded, Subnormal, Underflow])


EXACT: Final = [exact_context(p) for p in range(1, 40)]


def decimal_bytes(value: Decimal, precision: int, scale: int) -> bytes:
    """Length-prefixed two's complement of `value` at `scale`, as fastavro's
    prepare_bytes_decimal computes it; raises Defer where fastavro raises."""
    _sign, digits, exp = value.as_tuple()
    if len(digits) > precision or type(exp) is not int or exp + scale < 0:
        raise Defer  # fastavro: ValueError (precision, scale) or TypeError (NaN, Infinity)
    # exact: at most `precision` digits, and the exponent stays >= 0
    ctx = EXACT[precision - 1] if precision <= len(EXACT) else exact_context(precision)
    unscaled = int(ctx.scaleb(value, scale))
    body = unscaled.to_bytes((unscaled.bit_length() + 8) >> 3, "big", signed=True)
    return zigzag_bytes(len(body)) + body


def read_decimal(raw: bytes, ctx: Context, scale: int) -> Decimal:
    """fastavro's read_decimal: `ctx` has the field's precision (and default settings)."""
    return ctx.create_decimal(int.from_bytes(raw, "big", signed=True)).scaleb(-scale, ctx)
