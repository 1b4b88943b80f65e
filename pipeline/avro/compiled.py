"""Avro binary encoders and decoders compiled from a parsed record schema.

fastavro interprets the schema for every datum: per field it dispatches on the type,
validates union branches (a decimal in a nullable union is converted to bytes twice)
and reads through a file object. For the flat records of this pipeline that is most of
the cost, so this module turns parsed schemas into the source of a Python module, one
straight-line function per schema and direction, typed. Nothing is written per field by
hand: the `.avsc` files stay the single source of truth.

A module's source is the text of wire.py (varints, decimals) followed by the generated
functions and their constants. `load` runs it: exec'd as Python, or, when
deploy/local/bootstrap.sh --dev has compiled that very source with mypyc (the codec's
module of the current schemas, `build.py`), the compiled extension, several times
faster. The build is used only while its stamp matches the source (schemas, this
generator and wire.py) and the interpreter, as the billing core's build is; with
CDR_PURE_AVRO=1 in the environment the source is always exec'd. One source, two ways
to run it: they cannot diverge.

Only the types the pipeline's schemas use are compiled: a top-level record whose fields
are string, long, int, boolean, enum, bytes with logicalType decimal, array of string,
or a union of null and one of those (not array). Anything else raises
`UnsupportedSchema` at compile time and the caller keeps fastavro for that schema.

Fidelity to fastavro, which stays the reference:

- encoding: the compiled path only takes the canonical Python types (str, int in range,
  bool, a symbol, Decimal, a list or tuple of str, None in a union). Any other datum,
  and any datum fastavro would reject, makes the generated function return None and the
  caller's fallback (fastavro) encode it, so odd-but-accepted inputs (a float for a
  long, the tuple notation of unions, raw bytes for a decimal) still give fastavro's
  bytes, and invalid ones fastavro's own exception. Decimals are converted exactly as
  fastavro's `prepare_bytes_decimal` does: more digits than the precision or an exponent
  below -scale is an error, a coarser exponent is rescaled (Decimal("0.01") at scale 8
  is 1000000 unscaled), and the two's-complement width is (bit_length + 8) // 8 bytes.
- decoding: values, types and key order are fastavro's (enums as symbols, decimals
  built with a context of the field's precision and `scaleb(-scale)`, as its
  `read_decimal`). Corrupt input raises `CorruptBody` where fastavro would raise, and
  also where it would silently return something: a negative union or enum index
  (fastavro indexes the Python list from the end) and a varint longer than 10 bytes or
  above 64 bits (fastavro's C code wraps around).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import keyword
import os
import re
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.avro import wire
from pipeline.avro.errors import CorruptBody, UnsupportedSchema

__all__ = ["CorruptBody", "Decoder", "Encoder", "Unit", "UnsupportedSchema", "compile_decoder",
           "compile_encoder", "load", "module_source"]

Decoder = Callable[[bytes, int], tuple[dict[str, Any], int]]
Encoder = Callable[[Any], bytes]
Generated = Callable[[Any], bytes | None]  # a generated encoder: None means "defer"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_PRIMITIVES = ("string", "long", "int", "boolean")

# Where bootstrap.sh puts the mypyc build of the codec's module, and its module name.
BUILD_DIR = Path(sys.prefix) / "cdr-avro-mypyc"
MODULE = "cdr_avro_codec"


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


# -- the module's source ---------------------------------------------------------------


class Unit(NamedTuple):
    """One generated function: `name`, what it does with the record schema `schema`.

    `direction` is "decode" (buf, pos) -> (record dict, end), or "encode" datum ->
    prefix + body, or None when the datum is not in the canonical shape. An encoder reads
    the fields by `access`: "key" (a mapping), "attribute" (any object, a NamedTuple),
    or "position" (a tuple whose items are the schema's fields in order; the caller
    checks the tuple's type)."""

    name: str
    direction: str
    schema: Any
    prefix: bytes = b""
    access: str = "key"


def module_source(units: Sequence[Unit]) -> str:
    """The source of a module holding the functions of `units` (wire.py's text first).
    Raises UnsupportedSchema for a schema the compiler does not handle."""
    s = _Source()
    for unit in units:
        if not unit.name.isidentifier() or unit.name.startswith("_"):
            raise ValueError(f"not a public function name: {unit.name!r}")
        if unit.direction == "decode":
            _decoder(s, unit)
        elif unit.direction == "encode":
            _encoder(s, unit)
        else:
            raise ValueError(f"direction must be decode or encode, got {unit.direction!r}")
    wire_text = Path(wire.__file__).read_text()
    banner = "# -- generated by pipeline/avro/compiled.py from the record schemas --"
    return "\n".join([wire_text.rstrip(), "", "", banner, "", *s.consts, "", *s.lines, ""])


def source_stamp(source: str) -> str:
    """What a build of `source` must carry: the source's and the interpreter's hash."""
    digest = hashlib.sha256(sys.implementation.cache_tag.encode())
    digest.update(source.encode())
    return digest.hexdigest()


_BUILT: dict[str, types.ModuleType] = {}  # stamp -> the extension, loaded once


def load(source: str, name: str = "avro_generated") -> types.ModuleType:
    """The module of `source`: the mypyc build when it was built from this very source
    (and CDR_PURE_AVRO is not set), else the source exec'd as Python."""
    if not os.environ.get("CDR_PURE_AVRO"):
        built = _built(source)
        if built is not None:
            return built
    module = types.ModuleType(name)
    code = compile(source, f"<{name}>", "exec")
    exec(code, module.__dict__)  # noqa: S102 - source generated above from validated schemas
    return module


def is_built(module: types.ModuleType) -> bool:
    """Whether `module` (from `load`) is the mypyc build."""
    return module in _BUILT.values()


def _built(source: str) -> types.ModuleType | None:
    stamp = source_stamp(source)
    if stamp in _BUILT:
        return _BUILT[stamp]
    try:
        if (BUILD_DIR / "STAMP").read_text().strip() != stamp:
            return None
    except OSError:
        return None
    path = BUILD_DIR / f"{MODULE}{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    spec = importlib.util.spec_from_file_location(MODULE, path)
    if spec is None or spec.loader is None or not path.exists():
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _BUILT[stamp] = module
    return module


# -- one function, for a schema on its own (tests, and schemas outside the codec) -------


def compile_decoder(schema: Any) -> Decoder:
    """decode(buf, pos) -> (record dict, position after the record), for the writer
    schema `schema` read as itself (no schema resolution). `buf` must be `bytes`."""
    module = load(module_source([Unit("decode", "decode", schema)]))
    return module.decode  # type: ignore[no-any-return]


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
    access = "attribute" if by_attribute else "key"
    module = load(module_source([Unit("encode", "encode", schema, prefix, access)]))
    return with_fallback(module.encode, fallback)


def with_fallback(encode: Generated, fallback: Callable[[Any], bytes]) -> Encoder:
    """A generated encoder that hands what it does not take to `fallback` (fastavro):
    its bytes, or its own exception, so callers see exactly what they saw before."""

    def encoder(datum: Any) -> bytes:
        out = encode(datum)
        return fallback(datum) if out is None else out

    return encoder


# -- code generation -----------------------------------------------------------------


class _Source:
    """Indented source lines, and the module constants they refer to by name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: list[str] = []
        self._named: dict[tuple[str, str], str] = {}  # (annotation, value) -> its name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def const(self, prefix: str, annotation: str, value: str) -> str:
        """A module constant of `value` (its source), annotated Final[`annotation`]; one
        constant for equal values, but for mutable ones (a cache per field)."""
        key = (annotation, value)
        if key in self._named and value != "{}":
            return self._named[key]
        name = self._named[key] = f"_{prefix}{len(self.consts)}"
        self.consts.append(f"{name}: Final[{annotation}] = {value}")
        return name


def _one_byte_table(count: int, values: tuple[str, ...]) -> tuple[str | None, ...]:
    """byte -> value for the canonical one-byte encodings of indexes 0..count-1, else None."""
    table: list[str | None] = [None] * 256
    for i in range(min(count, 64)):
        table[i << 1] = values[i]
    return tuple(table)


_DECODED_TYPE = {"string": "str", "long": "int", "int": "int", "boolean": "bool",
                 "enum": "str", "decimal": "Decimal", "array": "list[str]"}


def _decoder(s: _Source, unit: Unit) -> None:
    fields = _fields(unit.schema)
    s.emit(0, f"def {unit.name}(buf: bytes, pos: int) -> tuple[dict[str, Any], int]:")
    for line in ("end: int = len(buf)", "b: int", "n: int", "e: int", "i: int",
                 "sym: str | None", "dec: Decimal | None", "count: int", "size: int"):
        s.emit(1, line)
    for f in fields:
        kind = _DECODED_TYPE[f.kind]
        s.emit(1, f"v{f.index}: {kind if f.null_index is None else kind + ' | None'}")
    s.emit(1, "try:")
    for f in fields:
        target = f"v{f.index}"
        if f.null_index is None:
            _dec_value(s, 2, f, target)
            continue
        # the canonical one-byte tags inline; any other form of the index (an over-long
        # varint) or an invalid one through read_index, then the same value code
        value_index = 1 - f.null_index
        s.emit(2, "b = buf[pos]")
        s.emit(2, f"if b == {f.null_index << 1}:")
        s.emit(3, f"{target} = None")
        s.emit(3, "pos += 1")
        s.emit(2, f"elif b == {value_index << 1}:")
        s.emit(3, "pos += 1")
        _dec_value(s, 3, f, target)
        s.emit(2, "else:")
        s.emit(3, f"i, pos = read_index(buf, pos, 2, {'field ' + f.name + ' union'!r})")
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
    s.emit(0, "")


def _dec_length(s: _Source, d: int, what: str) -> None:
    """Read a non-negative byte length into n, then check the bytes are there (into e)."""
    s.emit(d, "b = buf[pos]")
    s.emit(d, "if b & 0x81:")
    s.emit(d + 1, "n, pos = read_long(buf, pos)")
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
        s.emit(d + 1, f"{target}, pos = read_long(buf, pos)")
    elif f.kind == "boolean":
        s.emit(d, f"{target} = buf[pos] != 0")  # fastavro: any non-zero byte is true
        s.emit(d, "pos += 1")
    elif f.kind == "enum":
        symbols = f.spec
        table = s.const("enum", "tuple[str | None, ...]",
                        repr(_one_byte_table(len(symbols), symbols)))
        syms = s.const("symbols", "tuple[str, ...]", repr(tuple(symbols)))
        s.emit(d, f"sym = {table}[buf[pos]]")
        s.emit(d, "if sym is None:")
        s.emit(d + 1, f"i, pos = read_index(buf, pos, {len(symbols)}, {what + ' enum'!r})")
        s.emit(d + 1, f"sym = {syms}[i]")
        s.emit(d, "else:")
        s.emit(d + 1, "pos += 1")
        s.emit(d, f"{target} = sym")
    elif f.kind == "decimal":
        precision, scale = f.spec
        ctx = s.const("ctx", "Context", f"Context(prec={precision})")
        cache = s.const("cache", "dict[bytes, Decimal]", "{}")
        _dec_length(s, d, what)
        s.emit(d, "raw = buf[pos:e]")
        s.emit(d, f"dec = {cache}.get(raw)")
        s.emit(d, "if dec is None:")
        s.emit(d + 1, f"dec = remember({cache}, raw, read_decimal(raw, {ctx}, {scale}))")
        s.emit(d, f"{target} = dec")
        s.emit(d, "pos = e")
    elif f.kind == "array":
        s.emit(d, f"{target} = []")
        s.emit(d, "count, pos = read_long(buf, pos)")
        s.emit(d, "while count:")
        s.emit(d + 1, "if count < 0:")  # a block with its byte size, which we do not need
        s.emit(d + 2, "count = -count")
        s.emit(d + 2, "size, pos = read_long(buf, pos)")
        s.emit(d + 1, "for _ in range(count):")
        _dec_length(s, d + 2, what + " item")
        s.emit(d + 2, f"{target}.append(buf[pos:e].decode())")
        s.emit(d + 2, "pos = e")
        s.emit(d + 1, "count, pos = read_long(buf, pos)")
    else:  # pragma: no cover - _leaf admits nothing else
        raise UnsupportedSchema(f.kind)


def _encoder(s: _Source, unit: Unit) -> None:
    fields = _fields(unit.schema)
    datum = "tuple[Any, ...]" if unit.access == "position" else "Any"
    s.emit(0, f"def {unit.name}(r: {datum}) -> bytes | None:")
    for line in ("v: object", "item: object", "b: bytes", "tagged: bytes | None", "n: int",
                 "z: int", "k: str"):
        s.emit(1, line)
    s.emit(1, f"out: list[bytes] = [{unit.prefix!r}]" if unit.prefix else "out: list[bytes] = []")
    s.emit(1, "try:")
    if unit.access == "position":
        s.emit(2, f"if len(r) != {len(fields)}:")
        s.emit(3, "return None")
    for f in fields:
        if unit.access == "position":
            s.emit(2, f"v = r[{f.index}]")
        elif unit.access == "attribute":
            ok = f.name.isidentifier() and not keyword.iskeyword(f.name)
            s.emit(2, f"v = r.{f.name}" if ok else f"v = getattr(r, {f.name!r})")
        else:
            s.emit(2, f"v = r[{f.name!r}]")  # a missing field: fastavro applies the default
        if f.null_index is None:
            _enc_value(s, 2, f, b"")
            continue
        null_tag = wire.zigzag_bytes(f.null_index)
        value_tag = wire.zigzag_bytes(1 - f.null_index)
        s.emit(2, "if v is None:")
        s.emit(3, f"out.append({null_tag!r})")
        s.emit(2, "else:")
        _enc_value(s, 3, f, value_tag)
    s.emit(2, "return b''.join(out)")
    # Anything the straight-line code does not take, fastavro decides (the caller's
    # fallback): its bytes, or its own exception.
    s.emit(1, "except Exception:")
    s.emit(2, "return None")
    s.emit(0, "")


def _enc_string(s: _Source, d: int, value: str, tag: bytes) -> None:
    """Append the length-prefixed UTF-8 of `value` (a str), after `tag`: the tag and a
    length under 64 as one constant."""
    lengths = s.const("len", "tuple[bytes, ...]",
                      repr(tuple(tag + bytes((n << 1,)) for n in range(64))))
    s.emit(d, f"b = {value}.encode()")
    s.emit(d, "n = len(b)")
    long_form = f"{tag!r} + write_varint(n << 1)" if tag else "write_varint(n << 1)"
    s.emit(d, f"out.append({lengths}[n] if n < 64 else {long_form})")
    s.emit(d, "out.append(b)")


def _enc_value(s: _Source, d: int, f: _Field, tag: bytes) -> None:
    """Encode `v` (not None) of field f, after the union tag `tag` (b"" outside a union).
    Anything but the canonical Python type raises Defer."""
    put_tag = f"out.append({tag!r})" if tag else None
    if f.kind == "string":
        s.emit(d, "if type(v) is not str:")
        s.emit(d + 1, "raise Defer")
        _enc_string(s, d, "v", tag)
    elif f.kind in ("long", "int"):
        s.emit(d, "if type(v) is not int:")
        s.emit(d + 1, "raise Defer")
        if f.kind == "int" and f.null_index is not None:
            # fastavro picks the int branch only for 32-bit values
            s.emit(d, "if not -0x80000000 <= v <= 0x7FFFFFFF:")
            s.emit(d + 1, "raise Defer")
        if put_tag:
            s.emit(d, put_tag)
        s.emit(d, "z = (v << 1) ^ (v >> 63)")
        s.emit(d, "out.append(BYTE[z] if z < 0x80 else write_varint(z))")
    elif f.kind == "boolean":
        true, false = tag + b"\x01", tag + b"\x00"
        s.emit(d, "if v is True:")
        s.emit(d + 1, f"out.append({true!r})")
        s.emit(d, "elif v is False:")
        s.emit(d + 1, f"out.append({false!r})")
        s.emit(d, "else:")
        s.emit(d + 1, "raise Defer")
    elif f.kind == "enum":
        encoded = {sym: tag + wire.zigzag_bytes(i) for i, sym in enumerate(f.spec)}
        table = s.const("symbols", "dict[str, bytes]", repr(encoded))
        s.emit(d, f"tagged = {table}.get(v) if type(v) is str else None")
        s.emit(d, "if tagged is None:")
        s.emit(d + 1, "raise Defer")
        s.emit(d, "out.append(tagged)")
    elif f.kind == "decimal":
        precision, scale = f.spec
        cache = s.const("cache", "dict[str, bytes]", "{}")
        s.emit(d, "if type(v) is not Decimal:")
        s.emit(d + 1, "raise Defer")
        # str() is exact and reversible (sign, digits, exponent), so it keys the result
        s.emit(d, "k = str(v)")
        s.emit(d, f"tagged = {cache}.get(k)")
        s.emit(d, "if tagged is None:")
        s.emit(d + 1, f"tagged = remember({cache}, k, {tag!r} + decimal_bytes(v, {precision}, "
                      f"{scale}))")
        s.emit(d, "out.append(tagged)")
    elif f.kind == "array":
        s.emit(d, "if type(v) is not list and type(v) is not tuple:")
        s.emit(d + 1, "raise Defer")
        s.emit(d, "if v:")
        s.emit(d + 1, "out.append(write_varint(len(v) << 1))")
        s.emit(d + 1, "for item in v:")
        s.emit(d + 2, "if type(item) is not str:")
        s.emit(d + 3, "raise Defer")
        _enc_string(s, d + 2, "item", b"")
        s.emit(d, "out.append(BYTE[0])")
    else:  # pragma: no cover - _leaf admits nothing else
        raise UnsupportedSchema(f.kind)
