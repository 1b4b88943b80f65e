"""The schema-compiled Avro codec (pipeline.avro.compiled) against fastavro, the reference.

- encoding: byte-identical to fastavro.schemaless_writer for random valid CallEvent and
  RatedCdr records, through the compiled fast path alone (its fallback raises);
- decoding: the same dict (keys, order, value types, Decimal exponents) as
  fastavro.schemaless_reader, on each other's output;
- decimals: fastavro's own rules (rescale a coarser exponent, reject a finer one or
  more digits than the precision) and its exception classes;
- corrupt bodies (truncated anywhere, bad union or enum index, invalid UTF-8, varint
  overflow, trailing bytes) are InvalidEvent and nothing else;
- messages of an older writer schema still go through fastavro's schema resolution.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.avro import compiled as avro_compiled, codec
from pipeline.core.cdr import RatedCdr
from pipeline.core.events import CallEvent
from pipeline.errors import InvalidEvent

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EVENT = codec.CALL_EVENT.schema
CDR = codec.RATED_CDR.schema
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
INT_MIN, INT_MAX = -(2**31), 2**31 - 1


def _no_fallback(datum: Any) -> bytes:
    raise AssertionError(f"the compiled encoder deferred to fastavro for {datum!r}")


ENCODE_EVENT = avro_compiled.compile_encoder(EVENT, _no_fallback)
ENCODE_CDR = avro_compiled.compile_encoder(CDR, _no_fallback)
ENCODE_CDR_TUPLE = avro_compiled.compile_encoder(CDR, _no_fallback, by_attribute=True)
DECODE_EVENT = avro_compiled.compile_decoder(EVENT)
DECODE_CDR = avro_compiled.compile_decoder(CDR)


def fa_write(schema: Any, record: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


def fa_read(schema: Any, body: bytes) -> dict[str, Any]:
    buffer = io.BytesIO(body)
    record = cast(dict[str, Any], fastavro.schemaless_reader(buffer, schema, schema))
    assert buffer.tell() == len(body)
    return record


def compiled_read(decoder: avro_compiled.Decoder, body: bytes) -> dict[str, Any]:
    record, end = decoder(body, 0)
    assert end == len(body)
    return record


def assert_identical(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Same keys in the same order, same values of the same types; Decimals with the
    same sign, digits and exponent (Decimal equality alone ignores the exponent)."""
    assert list(got) == list(want)
    for key, value in want.items():
        assert type(got[key]) is type(value), key
        if isinstance(value, Decimal):
            assert got[key].as_tuple() == value.as_tuple(), key
        else:
            assert got[key] == value, key
        if isinstance(value, list):
            assert all(type(a) is type(b) for a, b in zip(got[key], value, strict=True))


# -- records generated from the schema ------------------------------------------------

LONGS = st.integers(LONG_MIN, LONG_MAX) | st.sampled_from(
    [0, 1, -1, 63, 64, -64, -65, 8191, 8192, LONG_MIN, LONG_MAX, LONG_MIN + 1, LONG_MAX - 1,
     1_764_000_000_000, 2**32, -(2**32)]
)
INTS = st.integers(INT_MIN, INT_MAX) | st.sampled_from([0, -1, 200, 487, INT_MIN, INT_MAX])
TEXT = st.text() | st.sampled_from(["", "é", "日本語", "😀", "x" * 63, "y" * 64, "z" * 300])


@st.composite
def decimals(draw: st.DrawFn, precision: int, scale: int) -> Decimal:
    """Decimals fastavro encodes: at most `precision` digits, exponent >= -scale. Mostly
    at the schema scale, some coarser (rescaled on encoding), near the digit limit too."""
    top = 10**precision - 1
    coefficient = draw(
        st.integers(0, top) | st.sampled_from([0, 1, top, top - 1, 10 ** (precision - 1), 127, 128])
    )
    exponent = draw(st.just(-scale) | st.integers(-scale, 4))
    sign = draw(st.integers(0, 1))
    return Decimal((sign, tuple(int(c) for c in str(coefficient)), exponent))


def _value(schema: Any) -> st.SearchStrategy[Any]:
    if isinstance(schema, list):
        (other,) = [s for s in schema if s != "null"]
        return st.none() | _value(other)
    kind = schema if isinstance(schema, str) else schema["type"]
    if isinstance(schema, dict) and schema.get("logicalType") == "decimal":
        return decimals(schema["precision"], schema.get("scale", 0))
    strategies: dict[str, Any] = {
        "string": lambda: TEXT,
        "long": lambda: LONGS,
        "int": lambda: INTS,
        "boolean": st.booleans,
        "enum": lambda: st.sampled_from(schema["symbols"]),
        "array": lambda: st.lists(TEXT, max_size=4),
    }
    return strategies[kind]()  # type: ignore[no-any-return]


def records(schema: Any) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({f["name"]: _value(f["type"]) for f in schema["fields"]})


# -- encoding and decoding agree with fastavro -----------------------------------------


@SETTINGS
@given(records(EVENT))
def test_call_event_matches_fastavro(record: dict[str, Any]) -> None:
    body = fa_write(EVENT, record)
    assert ENCODE_EVENT(record) == body
    header = codec.MAGIC + codec.CALL_EVENT.fingerprint
    assert codec.encode_event_dict(record) == header + body
    assert codec.encode_event(CallEvent(**record)) == header + body
    want = fa_read(EVENT, body)
    assert_identical(compiled_read(DECODE_EVENT, body), want)
    assert_identical(codec.decode_event_dict(header + body), want)


@SETTINGS
@given(records(CDR))
def test_rated_cdr_matches_fastavro(record: dict[str, Any]) -> None:
    body = fa_write(CDR, record)
    assert ENCODE_CDR(record) == body
    cdr = RatedCdr(**{**record, "flags": tuple(record["flags"])})
    assert ENCODE_CDR_TUPLE(cdr) == body  # a tuple of flags encodes like the list
    header = codec.MAGIC + codec.RATED_CDR.fingerprint
    assert codec.encode_cdr(cdr) == header + body
    want = fa_read(CDR, body)
    got = compiled_read(DECODE_CDR, body)
    assert_identical(got, want)
    assert_identical(codec.decode_cdr_record(header + body), want)
    # and the other way round: fastavro reads the compiled bytes into the same record
    assert_identical(fa_read(CDR, ENCODE_CDR(got)), want)
    assert codec.decode_cdr(header + body) == RatedCdr(**{**want, "flags": tuple(want["flags"])})


def test_realistic_cdr_matches_fastavro(tmp_path: Path) -> None:
    from pipeline.core.correlator import Correlator
    from tests.unit.builders import call, make_config

    correlator = Correlator(make_config(tmp_path))
    for cdr in [c for e in call() for c in correlator.on_event(e)]:
        cdr = cdr._replace(flags=("NEGATIVE_PDD", "é"))
        record = {**cdr._asdict(), "flags": list(cdr.flags)}
        assert ENCODE_CDR_TUPLE(cdr) == fa_write(CDR, record)
        want = fa_read(CDR, fa_write(CDR, record))
        assert_identical(compiled_read(DECODE_CDR, ENCODE_CDR(record)), want)


# -- decimals: fastavro's rules and exceptions -----------------------------------------

# rate_per_min is bytes/decimal(20, 8); fee and cost are decimal(18, 6)
DECIMAL_CASES = [
    Decimal("0.01"),  # coarser than the scale: rescaled to 1000000 unscaled
    Decimal("0.0100"),
    Decimal("5"),
    Decimal("1E+3"),
    Decimal("1E+25"),  # one digit: fastavro does not check the rescaled value's digits
    Decimal("0E-8"),
    Decimal("0E+5"),
    Decimal("-0"),
    Decimal("-0.00000001"),
    Decimal("99999999999.99999999"),  # 20 digits at scale 8
    Decimal("-99999999999.99999999"),
    Decimal("0.00000127"),
    Decimal("0.00000128"),  # widths around a two's-complement byte boundary
    Decimal("-0.00000128"),
    Decimal("-0.00000129"),
    Decimal("1.123456789"),  # finer than the scale: ValueError
    Decimal("0E-9"),  # zero, but still an exponent below -scale: ValueError
    Decimal("999999999999.99999999"),  # 21 digits: ValueError
    Decimal("1.000000000000000000000"),  # 22 digits, trailing zeros count: ValueError
    Decimal("NaN"),  # TypeError
    Decimal("-Infinity"),  # TypeError
    Decimal("sNaN"),
    1.5,  # not a Decimal: ValueError (no union branch)
    7,
    b"\x01\x02",  # raw bytes are written as they are
    ("bytes", b"\x05"),  # fastavro's union tuple notation
    "0.1",
]


def _cdr_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {f["name"]: None for f in CDR["fields"]}
    record.update(call_id="c", version=1, status="COMPLETE", record_decision="RECORDED",
                  billing_mode="NORMAL", switch_id="sw1", answered=True, hold_ms=0, hold_s=0,
                  rated_s=0, hangup_source="CALLER", tariff_version="t", flags=[])
    record.update(changes)
    return record


def _outcome(encode: Any, record: Any) -> tuple[str, str]:
    try:
        return "ok", encode(record).hex()
    except Exception as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("value", DECIMAL_CASES, ids=repr)
@pytest.mark.parametrize("field", ["rate_per_min", "fee"])
def test_decimals_follow_fastavro(field: str, value: Any) -> None:
    record = _cdr_record(**{field: value})
    header = codec.MAGIC + codec.RATED_CDR.fingerprint
    want = _outcome(lambda r: header + fa_write(CDR, r), record)
    assert _outcome(codec.RATED_CDR.encoder, record) == want
    assert _outcome(codec.encode_cdr, RatedCdr(**{**record, "flags": ()})) == want
    if want[0] == "ok":
        body = bytes.fromhex(want[1])[len(header):]
        assert_identical(compiled_read(DECODE_CDR, body), fa_read(CDR, body))


def test_decimal_rules_are_fastavros() -> None:
    """The cases the brief asks about, spelled out (fastavro 1.x prepare_bytes_decimal)."""
    fee = Decimal("0.61")  # exponent -2 at scale 6: rescaled, not rejected
    body = ENCODE_CDR(_cdr_record(fee=fee))
    assert body == fa_write(CDR, _cdr_record(fee=fee))
    back = compiled_read(DECODE_CDR, body)["fee"]
    assert back == fee and back.as_tuple().exponent == -6  # read back at the schema scale
    with pytest.raises(ValueError, match="Scale provided in schema does not match"):
        codec.encode_cdr(RatedCdr(**{**_cdr_record(fee=Decimal("0.6100001")), "flags": ()}))
    with pytest.raises(ValueError, match="precision is bigger than allowed"):
        codec.encode_cdr(RatedCdr(**{**_cdr_record(fee=Decimal("1" * 19)), "flags": ()}))


# -- other inputs: fastavro's result, bytes or exception --------------------------------

ODD_EVENT_FIELDS = [
    ("ts_ms", 1.5),  # fastavro truncates a float written as a long
    ("ts_ms", True),
    ("ts_ms", Decimal(3)),
    ("ts_ms", 2**63),  # OverflowError
    ("ts_ms", None),  # TypeError
    ("ts_ms", "1"),
    ("sip_code", 2**31),  # no union branch: ValueError
    ("sip_code", True),
    ("sip_code", ("int", 3)),
    ("answered", 1),
    ("answered", ("boolean", True)),
    ("event_type", "DIALING"),  # ValueError
    ("event_type", 0),
    ("illegal_reason", "NOPE"),
    ("caller", b"123"),
    ("caller", 123),
    ("caller", "\ud800"),  # UnicodeEncodeError
    ("call_id", None),
    ("call_id", "\ud800"),
]


def _event_record(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {f["name"]: None for f in EVENT["fields"]}
    record.update(event_id="e", call_id="c", switch_id="s", event_type="SETUP", ts_ms=0)
    record.update(changes)
    return record


@pytest.mark.parametrize(("field", "value"), ODD_EVENT_FIELDS, ids=repr)
def test_other_inputs_give_fastavros_result(field: str, value: Any) -> None:
    record = _event_record(**{field: value})
    header = codec.MAGIC + codec.CALL_EVENT.fingerprint
    want = _outcome(lambda r: header + fa_write(EVENT, r), record)
    assert _outcome(codec.CALL_EVENT.encoder, record) == want
    assert _outcome(codec.encode_event, CallEvent(**record)) == want
    if want[0] in ("ValueError", "TypeError", "AttributeError", "UnicodeEncodeError"):
        with pytest.raises(InvalidEvent, match="cannot encode as CallEvent"):
            codec.encode_event_dict(record)


def test_missing_fields_are_fastavros_business() -> None:
    record = _event_record()
    del record["call_id"]
    with pytest.raises(ValueError, match="no value and no default for call_id"):
        codec.CALL_EVENT.encoder(record)  # type: ignore[misc]
    del record["caller"]  # has a default: null
    record["call_id"] = "c"
    assert codec.CALL_EVENT.encoder(record) == codec.encode_event_dict(_event_record())  # type: ignore[misc]
    cdr = _cdr_record()
    del cdr["flags"]  # default []
    assert codec.RATED_CDR.encoder(cdr) == codec.RATED_CDR.encoder(_cdr_record())  # type: ignore[misc]


# -- corrupt bodies ------------------------------------------------------------------


def _full_event() -> bytes:
    record = _event_record(
        event_id="ev-1", call_id="call-ü", event_type="HANGUP", ts_ms=1_764_000_000_123,
        account_id="acme", caller="4420", callee="4930", ingress_gateway="in",
        caller_ip="10.0.0.1", illegal_reason="BLACKLISTED", egress_gateway="out",
        callee_gateway="gw", answered=True, hangup_source="SERVER", sip_code=487,
        q850_cause=-16, server_reason="OTHER",
    )
    return codec.encode_event_dict(record)


def _full_cdr() -> bytes:
    record: dict[str, Any] = {name: f"x{name}" for name in RatedCdr._fields}
    record.update(
        version=3000, status="HANGUP_MISSING", record_decision="AUDIT",
        decision_reason="RATE_NOT_FOUND", billing_mode="ILLEGAL", setup_ts_ms=LONG_MIN,
        answer_ts_ms=LONG_MAX, end_ts_ms=1_764_000_000_000, pdd_ms=-5, answered=False,
        hold_ms=70_000, hold_s=70, rated_s=72, billable_s=72, hangup_source="CALLEE",
        sip_code=200, q850_cause=16, server_reason="MAX_DURATION", illegal_reason="UNREGISTERED",
        rate_per_min=Decimal("0.0100"), fee=Decimal("-0.012000"),
        cost=Decimal("123456789012.345678"),
        flags=("NEGATIVE_PDD", "", "ünï"),
    )
    return codec.encode_cdr(RatedCdr(**record))


@pytest.mark.parametrize(
    ("message", "decode"),
    [(_full_event, codec.decode_event_dict), (_full_cdr, codec.decode_cdr_record)],
    ids=["CallEvent", "RatedCdr"],
)
def test_truncated_anywhere_is_an_invalid_event(message: Any, decode: Any) -> None:
    data = message()
    decode(data)
    for cut in range(len(data)):
        with pytest.raises(InvalidEvent):
            decode(data[:cut])
    for cut in range(codec._HEADER, len(data)):
        with pytest.raises(InvalidEvent, match="corrupt Avro (CallEvent|RatedCdr) body: truncated"):
            decode(data[:cut])


# A small CallEvent whose layout is known: 3 one-byte strings, enum, ts_ms=0, then unions.
SMALL = codec.encode_event_dict(_event_record(account_id="a"))
ENUM_AT = codec._HEADER + 6  # event_type
TS_AT = ENUM_AT + 1
UNION_AT = TS_AT + 1  # account_id


def test_small_event_layout() -> None:
    assert SMALL[codec._HEADER:UNION_AT + 1] == b"\x02e\x02c\x02s\x00\x00\x02"


def _patched(at: int, replacement: bytes, width: int = 1) -> bytes:
    return SMALL[:at] + replacement + SMALL[at + width:]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_patched(UNION_AT, b"\x04"), "^corrupt Avro CallEvent body: field account_id union: "),
        (_patched(UNION_AT, b"\x01"), "field account_id union: index -1"),  # fastavro: branch -1
        (_patched(ENUM_AT, b"\x08"), "field event_type enum: index 4"),
        (_patched(ENUM_AT, b"\x01"), "field event_type enum: index -1"),  # fastavro: HANGUP
        (_patched(ENUM_AT, b"\x80\x80\x01"), "field event_type enum: index 8192"),
        (_patched(codec._HEADER + 1, b"\xff"), "invalid UTF-8"),
        (_patched(codec._HEADER, b"\x03"), "negative length -2"),
        (_patched(codec._HEADER, b"\x7e"), "truncated: field event_id has 63 bytes at byte 11"),
        (_patched(TS_AT, b"\xff" * 10 + b"\x01"), "longer than 10 bytes"),
        (_patched(TS_AT, b"\xff" * 9 + b"\x7f"), "overflows 64 bits"),
        (SMALL + b"\x00", "CallEvent body has 1 trailing bytes"),
        (SMALL + b"\x00\x00", "2 trailing bytes"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_corrupt_bodies_are_invalid_events(data: bytes, match: str) -> None:
    with pytest.raises(InvalidEvent, match=match):
        codec.decode_event_dict(data)


def test_long_varints_at_the_limits_decode() -> None:
    # ts_ms = LONG_MIN as the 10-byte varint, and 0 as an over-long (but 64-bit) one
    for varint, value in [(b"\xff" * 9 + b"\x01", LONG_MIN), (b"\x80\x80\x00", 0)]:
        data = _patched(TS_AT, varint)
        assert codec.decode_event_dict(data)["ts_ms"] == value
        assert fa_read(EVENT, data[codec._HEADER:])["ts_ms"] == value


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_mutated_bodies_decode_like_fastavro_or_fail_cleanly(data: st.DataObject) -> None:
    """Bytes changed at random: the compiled decoder raises InvalidEvent (nothing else),
    or returns exactly what fastavro returns for them."""
    message = bytearray(data.draw(st.sampled_from([SMALL, _full_event(), _full_cdr()])))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(codec._HEADER, len(message) - 1))
        message[at] = data.draw(st.integers(0, 255))
    kind, decoder = (
        (EVENT, codec.decode_event_dict)
        if message[:codec._HEADER] == codec.MAGIC + codec.CALL_EVENT.fingerprint
        else (CDR, codec.decode_cdr_record)
    )
    try:
        got = decoder(bytes(message))
    except InvalidEvent:
        return
    assert_identical(got, fa_read(kind, bytes(message[codec._HEADER:])))


# -- the current schema is compiled; older writers go to fastavro -----------------------


def test_current_schema_does_not_use_fastavro(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("fastavro was used")

    monkeypatch.setattr(fastavro, "schemaless_reader", refuse)  # the module codec calls
    monkeypatch.setattr(fastavro, "schemaless_writer", refuse)
    data = _full_cdr()
    assert codec.encode_cdr(codec.decode_cdr(data)) == data
    assert codec.encode_event_dict(codec.decode_event_dict(_full_event())) == _full_event()


def test_history_writer_schema_still_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """schemas/history has no versions yet: an older CallEvent (no server_reason or
    q850_cause, account_id last) is registered the way _load would register it."""
    current = json.loads((codec.schema_dir() / "call_event.avsc").read_text())
    fields = [f for f in current["fields"] if f["name"] not in ("server_reason", "q850_cause")]
    fields.append(fields.pop(next(i for i, f in enumerate(fields) if f["name"] == "account_id")))
    older = fastavro.parse_schema({**current, "fields": fields})
    fingerprint = codec._fingerprint(older)
    assert fingerprint != codec.CALL_EVENT.fingerprint
    monkeypatch.setitem(codec.CALL_EVENT.writers, fingerprint, older)

    record: dict[str, Any] = {f["name"]: None for f in fields}
    record.update(event_id="e", call_id="c", switch_id="s", event_type="HANGUP", ts_ms=5,
                  account_id="acme", hangup_source="SERVER", answered=False)
    data = codec.MAGIC + fingerprint + fa_write(older, record)
    decoded = codec.decode_event_dict(data)
    # resolved to the current schema (fastavro's key order: the writer's, then defaults)
    assert sorted(decoded) == sorted(f["name"] for f in EVENT["fields"])
    assert decoded == {**_event_record(), **record, "server_reason": None, "q850_cause": None}
    with pytest.raises(InvalidEvent, match="corrupt Avro CallEvent body"):
        codec.decode_event_dict(data[:-1])
    with pytest.raises(InvalidEvent, match="trailing bytes"):
        codec.decode_event_dict(data + b"\x00")


# -- what the compiler refuses --------------------------------------------------------


def _with_field(ftype: Any) -> Any:
    return fastavro.parse_schema(
        {"type": "record", "name": "R", "fields": [{"name": "f", "type": ftype}]}
    )


@pytest.mark.parametrize(
    "ftype",
    [
        "float",
        "double",
        "bytes",
        "null",
        {"type": "fixed", "name": "F", "size": 4},
        {"type": "map", "values": "string"},
        {"type": "array", "items": "long"},
        {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "long"}]},
        ["null", "string", "long"],
        ["string", "long"],
        ["null", {"type": "array", "items": "string"}],
        {"type": "long", "logicalType": "timestamp-millis"},
        {"type": "string", "logicalType": "uuid"},
        {"type": "fixed", "name": "D", "size": 8, "logicalType": "decimal", "precision": 10},
    ],
    ids=repr,
)
def test_unsupported_types_are_refused(ftype: Any) -> None:
    schema = _with_field(ftype)
    with pytest.raises(avro_compiled.UnsupportedSchema):
        avro_compiled.compile_decoder(schema)
    with pytest.raises(avro_compiled.UnsupportedSchema):
        avro_compiled.compile_encoder(schema, _no_fallback)
    assert codec.compiled_decoder(schema) is None  # codec keeps fastavro for it


def test_named_type_reference_is_refused() -> None:
    enum = {"type": "enum", "name": "E", "symbols": ["A"]}
    schema = fastavro.parse_schema(
        {"type": "record", "name": "R",
         "fields": [{"name": "a", "type": enum}, {"name": "b", "type": "E"}]}
    )
    with pytest.raises(avro_compiled.UnsupportedSchema, match="'E' is not compiled"):
        avro_compiled.compile_decoder(schema)


def test_pipeline_schemas_are_compiled() -> None:
    for kind in (codec.CALL_EVENT, codec.RATED_CDR):
        assert kind.decoder is not None and kind.encoder is not None
