"""Avro single-object encoding of CallEvent and RatedCdr round-trips exactly."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.avro import codec
from pipeline.core.cdr import RatedCdr
from pipeline.core.correlator import Correlator
from pipeline.core.events import parse_event
from pipeline.errors import InvalidEvent
from tests.paths import EXAMPLE
from tests.unit.builders import call, make_config


def _rabin(data: bytes) -> bytes:
    """CRC-64-AVRO as the Avro specification defines it, little-endian (Java's order)."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    result = empty
    for byte in data:
        result = (result >> 8) ^ table[(result ^ byte) & 0xFF]
    return result.to_bytes(8, "little")


def test_header_is_magic_and_fingerprint() -> None:
    from fastavro.schema import to_parsing_canonical_form

    (event,) = call(skip=("RINGING", "ANSWER", "HANGUP"))
    data = codec.encode_event(event)
    assert data[:2] == b"\xc3\x01"
    canonical = to_parsing_canonical_form(codec.CALL_EVENT.schema).encode()
    assert data[2:10] == _rabin(canonical)


def test_events_round_trip() -> None:
    for event in call(setup={"illegal_reason": "BLACKLISTED", "caller_ip": "10.0.0.1"}, source="SERVER", reason="ADMIN"):
        assert parse_event(codec.decode_event_dict(codec.encode_event(event))) == event


def test_cdrs_round_trip_with_exact_money(tmp_path: Path) -> None:
    correlator = Correlator(make_config(tmp_path))
    cdrs = [c for e in call() for c in correlator.on_event(e)]
    cdr = cdrs[-1]._replace(flags=("NEGATIVE_PDD",), fee=Decimal("0.1234"))
    back = codec.decode_cdr(codec.encode_cdr(cdr))
    assert back == cdr
    assert back.fee == Decimal("0.1234") and isinstance(back.fee, Decimal)


def test_example_cdrs_round_trip() -> None:
    example = EXAMPLE / "expected.jsonl"
    for line in example.read_text().splitlines():
        raw = json.loads(line)
        full = {name: None for name in RatedCdr._fields}
        full.update(raw, version=1, switch_id="sw1", tariff_version="t", flags=[])
        full["hangup_source"] = raw["hangup_source"]
        cdr = RatedCdr.from_json_dict(full)
        assert codec.decode_cdr(codec.encode_cdr(cdr)) == cdr


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not avro", "magic"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown CallEvent schema fingerprint"),
    ],
)
def test_bad_bytes_are_invalid_events(data: bytes, match: str) -> None:
    with pytest.raises(InvalidEvent, match=match):
        codec.decode_event_dict(data)


def test_truncated_body_is_an_invalid_event() -> None:
    data = codec.encode_event(call()[0])
    with pytest.raises(InvalidEvent, match="corrupt Avro"):
        codec.decode_event_dict(data[:-5])


def test_cdr_bytes_are_not_events(tmp_path: Path) -> None:
    correlator = Correlator(make_config(tmp_path))
    cdr = [c for e in call() for c in correlator.on_event(e)][-1]
    with pytest.raises(InvalidEvent, match="fingerprint"):
        codec.decode_event_dict(codec.encode_cdr(cdr))


def test_the_call_start_header_round_trips_and_a_bad_one_names_the_header() -> None:
    header = codec.call_start_header(1_764_201_605_000)
    assert header == ("cdr-call-start-ms", b"1764201605000")
    assert codec.call_start_from([("other", b"x"), header]) == 1_764_201_605_000
    assert codec.call_start_from({"cdr-call-start-ms": "42"}) == 42  # a client giving a dict of str
    assert codec.call_start_from([]) is None and codec.call_start_from(None) is None
    assert codec.call_start_from([("other", b"1")]) is None
    for bad in (b"", b"-5", b"1.5", b"12e3", "١٢".encode(), b"9" * 17):
        with pytest.raises(InvalidEvent, match="cdr-call-start-ms"):
            codec.call_start_from([("cdr-call-start-ms", bad)])
