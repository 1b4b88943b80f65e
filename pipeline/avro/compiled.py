"""Avro binary encoders and decoders compiled from a parsed record schema.

fastavro interprets the schema for every datum: per field it dispatches on the type,
validates union branches (a decimal in a nullable union is converted to bytes twice)
and reads through a file object. For the flat records of this pipeline that is most of
the cost, so at import this module turns a parsed schema into Python source, one
straight-line function per direction, and `exec`s it once. Nothing is written per
field by hand: the `.avsc` files stay the single source of truth.

Only the types the pipeline's schemas use are compiled: a top-level record whose fields
are string, long, int, boolean, enum, bytes with logicalType decimal, array of string,
or a union of null and one of those (not array). Anything else raises
`UnsupportedSchema` at compile time and the caller keeps fastavro for that schema.

Fidelity to fastavro, which stays the reference:

- encoding: the compiled path only takes the canonical Python types (str, int in range,
  bool, a symbol, Decimal, a list or tuple of str, None in a union). Any other datum,
  and any datum fastavro would reject, makes the compiled function hand the record to
  the caller's fallback (fastavro), so odd-but-accepted inputs (a float for a long, the
  tuple notation of unions, raw bytes for a decimal) still give fastavro's bytes, and
  invalid ones fastavro's own exception. Decimals are converted exactly as fastavro's
  `prepare_bytes_decimal` does: more digits than the precision or an exponent below
  -scale is an error, a coarser exponent is rescaled (Decimal("0.01") at scale 8 is
  1000000 unscaled), and the two's-complement width is (bit_length + 8) // 8 bytes.
- decoding: values, types and key order are fastavro's (enums as symbols, decimals
  built with a context of the field's precision and `scaleb(-scale)`, as its
  `read_decimal`). Corrupt input raises `CorruptBody` where fastavro would raise, and
  also where it would silently return something: a negative union or enum index
  (fastavro indexes the Python list from the end) and a varint longer than 10 bytes or
  above 64 bits (fastavro's C code wraps around).
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable
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
from typing import Any

Decoder = Callable[[bytes, int], tuple[dict[str, Any], int]]
Encoder = Callable[[Any], bytes]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PRIMITIVES = ("string", "long", "int", "boolean")


class UnsupportedSchema(ValueError):
    """The schema uses an Avro type (or shape) this compiler does not handle."""


class CorruptBody(ValueError):
    """The bytes are not a valid Avro body for the compiled schema."""


class _Defer(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside a compiled encoder: this datum is not in the canonical shape."""


# -- schema analysis -----------------------------------------------------------------


class _Field:
    """One record field reduced to what code generation needs."""

    def __init__(self, index: int, name: str, kind: str, spec: Any, null_index: int | None):
        self.index = index
        self.name = name
        self.kind = kind  # string | long | int | boolean | enum | decimal | array
        self.spec = spec  # enum symbols, (precision, scale) or None
        self.null_index = null_index  # position of "null" in a [null, X] union, else None


def _leaf(schema: Any, where: str) -> tuple[str, Any]:
    """Classify a non-union type: (kind, spec), or raise UnsupportedSchema."""
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return schema, None
        raise UnsupportedSchema(f"{where}: type {schema!r} is not compiled")
    if not isinstance(schema, dict):
        raise UnsupportedSchema(f"{where}: unexpected schema {schema!r}")
    kind = schema.get("type")
    logical = schema.get("logicalType")
    if kind == "bytes" and logical == "decimal":
        precision = schema.get("precision")
        scale = schema.get("scale", 0)
        if not isinstance(precision, int) or not isinstance(scale, int) or precision < 1:
            raise UnsupportedSchema(f"{where}: decimal needs integer precision and scale")
        if not 0 <= scale <= precision:
            raise UnsupportedSchema(f"{where}: decimal scale {scale} outside 0..{precision}")
        return "decimal", (precision, scale)
    if logical is not None:
        raise UnsupportedSchema(f"{where}: logicalType {logical!r} on {kind!r} is not compiled")
    if kind in _PRIMITIVES:
        return kind, None
    if kind == "enum":
        symbols = schema.get("symbols")
        if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
            raise UnsupportedSchema(f"{where}: enum symbols must be strings")
        return "enum", tuple(symbols)
    if kind == "array":
        items = schema.get("items")
        if items != "string" and not (isinstance(items, dict) and set(items) == {"type"}
                                      and items["type"] == "string"):
            raise UnsupportedSchema(f"{where}: only arrays of string are compiled")
        return "array", None
    raise UnsupportedSchema(f"{where}: type {kind!r} is not compiled")


def _fields(schema: Any) -> list[_Field]:
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise UnsupportedSchema("only a record schema at the top level is compiled")
    out: list[_Field] = []
    for index, field in enumerate(schema.get("fields", [])):
        name = field["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise UnsupportedSchema(f"field name {name!r} is not an Avro name")
        ftype = field["type"]
        where = f"{schema.get('name')}.{name}"
        if isinstance(ftype, list):
            if len(ftype) != 2 or ftype.count("null") != 1:
                raise UnsupportedSchema(f"{where}: only unions of null and one type are compiled")
            null_index = ftype.index("null")
            kind, spec = _leaf(ftype[1 - null_index], where)
            if kind == "array":
                raise UnsupportedSchema(f"{where}: a nullable array is not compiled")
        else:
            null_index = None
            kind, spec = _leaf(ftype, where)
        out.append(_Field(index, name, kind, spec, null_index))
    return out


# -- varints -------------------------------------------------------------------------


def _write_varint(out: bytearray, z: int) -> None:
    """Append the varint of zigzagged `z`; a value outside 64 bits is fastavro's error."""
    if z >> 64:
        raise _Defer
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)


def _zigzag_bytes(value: int) -> bytes:
    """The Avro encoding of a long known at compile time (tags, enum indexes)."""
    out = bytearray()
    _write_varint(out, (value << 1) ^ (value >> 63))
    return bytes(out)


def _read_long_slow(buf: bytes, pos: int) -> tuple[int, int]:
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


def _read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """_read_long_slow unrolled for up to 7 bytes (epoch milliseconds take 6)."""
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
    return _read_long_slow(buf, pos)


def _read_index(buf: bytes, pos: int, count: int, what: str) -> tuple[int, int]:
    """The slow path of a union branch or enum index: any varint form, range-checked."""
    index, after = _read_long(buf, pos)
    if not 0 <= index < count:
        raise CorruptBody(f"{what}: index {index} at byte {pos} is out of range 0..{count - 1}")
    return index, after


def _one_byte_table(count: int, values: tuple[Any, ...]) -> tuple[Any, ...]:
    """byte -> value for the canonical one-byte encodings of indexes 0..count-1, else None."""
    table: list[Any] = [None] * 256
    for i in range(min(count, 64)):
        table[i << 1] = values[i]
    return tuple(table)


# -- decimals ------------------------------------------------------------------------
# Both directions are pure functions of a small key (the Decimal's str, the bytes), and
# money values repeat (rates from a deck, fees of common durations), so results are
# kept in a small per-field cache, emptied when full.
_CACHE_SIZE = 4096


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value


def _exact_context(precision: int) -> Context:
    """A context in which any rounding or range condition raises (the encoder defers)."""
    return Context(prec=precision, Emax=MAX_EMAX, Emin=MIN_EMIN,
                   traps=[Clamped, DivisionByZero, Inexact, InvalidOperation, Overflow,
                          Rounded, Subnormal, Underflow])


_EXACT = [_exact_context(p) for p in range(1, 40)]


def _decimal_bytes(value: Decimal, precision: int, scale: int) -> bytes:
    """Length-prefixed two's complement of `value` at `scale`, as fastavro's
    prepare_bytes_decimal computes it; raises _Defer where fastavro raises."""
    _sign, digits, exp = value.as_tuple()
    if len(digits) > precision or type(exp) is not int or exp + scale < 0:
        raise _Defer  # fastavro: ValueError (precision, scale) or TypeError (NaN, Infinity)
    # exact: at most `precision` digits, and the exponent stays >= 0
    ctx = _EXACT[precision - 1] if precision <= len(_EXACT) else _exact_context(precision)
    unscaled = int(ctx.scaleb(value, scale))
    body = unscaled.to_bytes((unscaled.bit_length() + 8) >> 3, "big", signed=True)
    return _zigzag_bytes(len(body)) + body


def _read_decimal(raw: bytes, ctx: Context, scale: int) -> Decimal:
    """fastavro's read_decimal: `ctx` has the field's precision (and default settings)."""
    return ctx.create_decimal(int.from_bytes(raw, "big", signed=True)).scaleb(-scale, ctx)


# -- code generation -----------------------------------------------------------------


class _Source:
    """Indented source lines plus the constants they refer to by name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {}

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def const(self, prefix: str, value: Any) -> str:
        name = f"_{prefix}{len(self.names)}"
        self.names[name] = value
        return name


def _exec(src: _Source, func: str, env: dict[str, Any]) -> Any:
    namespace: dict[str, Any] = {**env, **src.names}
    code = compile("\n".join(src.lines) + "\n", f"<avro_compiled {func}>", "exec")
    exec(code, namespace)  # noqa: S102 - source built above from a validated schema only
    return namespace[func]


# -- decoder -------------------------------------------------------------------------


def _dec_length(s: _Source, d: int, what: str) -> None:
    """Read a non-negative byte length into n, then check the bytes are there (into e)."""
    s.emit(d, "b = buf[pos]")
    s.emit(d, "if b & 0x81:")
    s.emit(d + 1, "n, pos = _read_long(buf, pos)")
    s.emit(d + 1, "if n < 0:")
    s.emit(d + 2, f"raise CorruptBody(f'{what}: negative length {{n}} before byte {{pos}}')")
    s.emit(d, "else:")
    s.emit(d + 1, "n = b >> 1")
    s.emit(d + 1, "pos += 1")
    s.emit(d, "e = pos + n")
    s.emit(d, "if e > end:")
    s.emit(d + 1, f"raise CorruptBody(f'truncated: {what} has {{n}} bytes at byte {{pos}}, "
                  f"past the end ({{end}})')")


def _dec_value(s: _Source, d: int, f: _Field, target: str) -> None:
    what = f"field {f.name}"
    if f.kind == "string":
        _dec_length(s, d, what)
        s.emit(d, f"{target} = buf[pos:e].decode()")
        s.emit(d, "pos = e")
    elif f.kind in ("long", "int"):
        # fastavro reads an int as a long, without a 32-bit range check: so do we.
        s.emit(d, "b = buf[pos]")
        s.emit(d, "if b < 0x80:")
        s.emit(d + 1, f"{target} = (b >> 1) ^ -(b & 1)")
        s.emit(d + 1, "pos += 1")
        s.emit(d, "else:")
        s.emit(d + 1, f"{target}, pos = _read_long(buf, pos)")
    elif f.kind == "boolean":
        s.emit(d, f"{target} = buf[pos] != 0")  # fastavro: any non-zero byte is true
        s.emit(d, "pos += 1")
    elif f.kind == "enum":
        symbols = f.spec
        table = s.const("enum", _one_byte_table(len(symbols), symbols))
        syms = s.const("symbols", symbols)
        s.emit(d, f"{target} = {table}[buf[pos]]")
        s.emit(d, f"if {target} is None:")
        s.emit(d + 1, f"i, pos = _read_index(buf, pos, {len(symbols)}, {what + ' enum'!r})")
        s.emit(d + 1, f"{target} = {syms}[i]")
        s.emit(d, "else:")
        s.emit(d + 1, "pos += 1")
    elif f.kind == "decimal":
        precision, scale = f.spec
        ctx = s.const("ctx", Context(prec=precision))
        cache = s.const("cache", {})
        _dec_length(s, d, what)
        s.emit(d, "raw = buf[pos:e]")
        s.emit(d, f"{target} = {cache}.get(raw)")
        s.emit(d, f"if {target} is None:")
        s.emit(d + 1, f"{target} = _remember({cache}, raw, _read_decimal(raw, {ctx}, {scale}))")
        s.emit(d, "pos = e")
    elif f.kind == "array":
        s.emit(d, f"{target} = []")
        s.emit(d, "count, pos = _read_long(buf, pos)")
        s.emit(d, "while count:")
        s.emit(d + 1, "if count < 0:")  # a block with its byte size, which we do not need
        s.emit(d + 2, "count = -count")
        s.emit(d + 2, "_size, pos = _read_long(buf, pos)")
        s.emit(d + 1, "for _ in range(count):")
        _dec_length(s, d + 2, what + " item")
        s.emit(d + 2, f"{target}.append(buf[pos:e].decode())")
        s.emit(d + 2, "pos = e")
        s.emit(d + 1, "count, pos = _read_long(buf, pos)")
    else:  # pragma: no cover - _leaf admits nothing else
        raise UnsupportedSchema(f.kind)


def compile_decoder(schema: Any) -> Decoder:
    """decode(buf, pos) -> (record dict, position after the record), for the writer
    schema `schema` read as itself (no schema resolution). `buf` must be `bytes`."""
    fields = _fields(schema)
    s = _Source()
    s.emit(0, "def decode(buf, pos):")
    s.emit(1, "end = len(buf)")
    s.emit(1, "try:")
    for f in fields:
        target = f"v{f.index}"
        if f.null_index is None:
            _dec_value(s, 2, f, target)
            continue
        # the canonical one-byte tags inline; any other form of the index (an over-long
        # varint) or an invalid one through _read_index, then the same value code
        value_index = 1 - f.null_index
        s.emit(2, "b = buf[pos]")
        s.emit(2, f"if b == {f.null_index << 1}:")
        s.emit(3, f"{target} = None")
        s.emit(3, "pos += 1")
        s.emit(2, f"elif b == {value_index << 1}:")
        s.emit(3, "pos += 1")
        _dec_value(s, 3, f, target)
        s.emit(2, "else:")
        s.emit(3, f"i, pos = _read_index(buf, pos, 2, {'field ' + f.name + ' union'!r})")
        s.emit(3, f"if i == {value_index}:")
        _dec_value(s, 4, f, target)
        s.emit(3, "else:")
        s.emit(4, f"{target} = None")
    s.emit(1, "except IndexError:")
    s.emit(2, "raise CorruptBody(f'truncated: the body ends at byte {end} inside the record') "
              "from None")
    s.emit(1, "except UnicodeDecodeError as exc:")
    s.emit(2, "raise CorruptBody(f'invalid UTF-8 in a string: {exc}') from None")
    items = ", ".join(f"{f.name!r}: v{f.index}" for f in fields)
    s.emit(1, f"return {{{items}}}, pos")
    env = {"_read_long": _read_long, "_read_index": _read_index, "_read_decimal": _read_decimal,
           "_remember": _remember, "CorruptBody": CorruptBody}
    return _exec(s, "decode", env)  # type: ignore[no-any-return]


# -- encoder -------------------------------------------------------------------------


def _enc_string(s: _Source, d: int, value: str) -> None:
    s.emit(d, f"b = {value}.encode()")
    s.emit(d, "n = len(b)")
    s.emit(d, "if n < 64:")
    s.emit(d + 1, "out.append(n << 1)")
    s.emit(d, "else:")
    s.emit(d + 1, "_write_varint(out, n << 1)")
    s.emit(d, "out += b")


def _enc_value(s: _Source, d: int, f: _Field, tag: bytes) -> None:
    """Encode `v` (not None) of field f, after the union tag `tag` (b"" outside a union).
    Anything but the canonical Python type raises _Defer."""
    put_tag = f"out += {tag!r}" if tag else None
    if f.kind == "string":
        s.emit(d, "if type(v) is not str:")
        s.emit(d + 1, "raise _Defer")
        if put_tag:
            s.emit(d, put_tag)
        _enc_string(s, d, "v")
    elif f.kind in ("long", "int"):
        s.emit(d, "if type(v) is not int:")
        s.emit(d + 1, "raise _Defer")
        if f.kind == "int" and f.null_index is not None:
            # fastavro picks the int branch only for 32-bit values
            s.emit(d, "if not -0x80000000 <= v <= 0x7FFFFFFF:")
            s.emit(d + 1, "raise _Defer")
        if put_tag:
            s.emit(d, put_tag)
        s.emit(d, "z = (v << 1) ^ (v >> 63)")
        s.emit(d, "if z < 0x80:")
        s.emit(d + 1, "out.append(z)")
        s.emit(d, "else:")
        s.emit(d + 1, "_write_varint(out, z)")
    elif f.kind == "boolean":
        true, false = tag + b"\x01", tag + b"\x00"
        s.emit(d, "if v is True:")
        s.emit(d + 1, f"out += {true!r}")
        s.emit(d, "elif v is False:")
        s.emit(d + 1, f"out += {false!r}")
        s.emit(d, "else:")
        s.emit(d + 1, "raise _Defer")
    elif f.kind == "enum":
        encoded = {sym: tag + _zigzag_bytes(i) for i, sym in enumerate(f.spec)}
        table = s.const("symbols", encoded)
        s.emit(d, f"b = {table}.get(v) if type(v) is str else None")
        s.emit(d, "if b is None:")
        s.emit(d + 1, "raise _Defer")
        s.emit(d, "out += b")
    elif f.kind == "decimal":
        precision, scale = f.spec
        cache = s.const("cache", {})
        s.emit(d, "if type(v) is not Decimal:")
        s.emit(d + 1, "raise _Defer")
        # str() is exact and reversible (sign, digits, exponent), so it keys the result
        s.emit(d, "k = str(v)")
        s.emit(d, f"b = {cache}.get(k)")
        s.emit(d, "if b is None:")
        s.emit(d + 1, f"b = _remember({cache}, k, _decimal_bytes(v, {precision}, {scale}))")
        if put_tag:
            s.emit(d, put_tag)
        s.emit(d, "out += b")
    elif f.kind == "array":
        s.emit(d, "if type(v) is not list and type(v) is not tuple:")
        s.emit(d + 1, "raise _Defer")
        s.emit(d, "if v:")
        s.emit(d + 1, "_write_varint(out, len(v) << 1)")
        s.emit(d + 1, "for item in v:")
        s.emit(d + 2, "if type(item) is not str:")
        s.emit(d + 3, "raise _Defer")
        _enc_string(s, d + 2, "item")
        s.emit(d, "out.append(0)")
    else:  # pragma: no cover - _leaf admits nothing else
        raise UnsupportedSchema(f.kind)


def compile_encoder(
    schema: Any,
    fallback: Callable[[Any], bytes],
    *,
    prefix: bytes = b"",
    by_attribute: bool = False,
) -> Encoder:
    """encode(datum) -> prefix + Avro body of `datum` under `schema`.

    `datum` is a mapping keyed by field name, or with `by_attribute` any object with
    the fields as attributes (a NamedTuple). When the datum is not in the canonical
    shape (see the module docstring) `fallback(datum)` is returned instead: it must
    produce the same message with fastavro, or raise fastavro's error.
    """
    fields = _fields(schema)
    s = _Source()
    s.emit(0, "def encode(r):")
    s.emit(1, f"out = bytearray({prefix!r})")
    s.emit(1, "try:")
    for f in fields:
        if by_attribute:
            ok = f.name.isidentifier() and not keyword.iskeyword(f.name)
            s.emit(2, f"v = r.{f.name}" if ok else f"v = getattr(r, {f.name!r})")
        else:
            s.emit(2, f"v = r[{f.name!r}]")  # a missing field: fastavro applies the default
        if f.null_index is None:
            _enc_value(s, 2, f, b"")
            continue
        null_tag = _zigzag_bytes(f.null_index)
        value_tag = _zigzag_bytes(1 - f.null_index)
        s.emit(2, "if v is None:")
        s.emit(3, f"out += {null_tag!r}")
        s.emit(2, "else:")
        _enc_value(s, 3, f, value_tag)
    s.emit(2, "return bytes(out)")
    # Anything the straight-line code does not take, fastavro decides: its bytes, or its
    # own exception (class and message), so callers see exactly what they saw before.
    # (Called after the except block, so its exception is not chained to ours.)
    s.emit(1, "except Exception:")
    s.emit(2, "pass")
    s.emit(1, "return _fallback(r)")
    env = {"_write_varint": _write_varint, "_decimal_bytes": _decimal_bytes,
           "_remember": _remember, "_Defer": _Defer, "Decimal": Decimal, "_fallback": fallback}
    return _exec(s, "encode", env)  # type: ignore[no-any-return]

