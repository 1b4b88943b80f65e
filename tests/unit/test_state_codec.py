"""The changelog value codec (pipeline/core/state_codec.py): compact, exact, and it still
reads the JSON values written before it (bytes below are orjson.dumps(state.to_dict())
as the worker wrote them before issue 17, copied literally)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.events import CallEvent, parse_event
from pipeline.core.state import CallState
from pipeline.core.state_codec import (
    StateCodecError,
    decode_entry,
    decode_state,
    encode_entry,
    encode_state,
)

T0 = 1_764_000_000_000

# An open call: one SETUP.
OLD_OPEN = (
    b'{"call_id":"c1","events":[{"event_id":"c1-s","call_id":"c1","switch_id":"sw1",'
    b'"event_type":"SETUP","ts_ms":1764000000000,"account_id":"acme","caller":"15550001111",'
    b'"callee":"+447700900123","caller_ip":"10.0.0.1"},null,null,null],"seen":["c1-s"],'
    b'"last_ts_ms":1764000000000,"version":0,"closed_at_ms":null,"emitted_at":null,'
    b'"call_start_ms":null}'
)
# A closed call with all four events and a second HANGUP that lost (only in "seen").
OLD_CLOSED = (
    b'{"call_id":"c2","events":[{"event_id":"c2-s","call_id":"c2","switch_id":"sw1",'
    b'"event_type":"SETUP","ts_ms":1764000000000,"account_id":"acme","caller":"15550001111",'
    b'"callee":"7774471234567","ingress_gateway":"in","illegal_reason":"UNREGISTERED"},'
    b'{"event_id":"c2-r","call_id":"c2","switch_id":"sw2","event_type":"RINGING",'
    b'"ts_ms":1764000001500,"egress_gateway":"out"},{"event_id":"c2-a","call_id":"c2",'
    b'"switch_id":"sw2","event_type":"ANSWER","ts_ms":1764000004000,"egress_gateway":"out",'
    b'"callee_gateway":"00114471234567"},{"event_id":"c2-h","call_id":"c2","switch_id":"sw2",'
    b'"event_type":"HANGUP","ts_ms":1764000099000,"answered":true,"hangup_source":"SERVER",'
    b'"sip_code":200,"q850_cause":0,"server_reason":"MAX_DURATION"}],'
    b'"seen":["c2-a","c2-h","c2-h2","c2-r","c2-s"],"last_ts_ms":1764000099500,'
    b'"version":5000,"closed_at_ms":1764000099500,"emitted_at":4242,'
    b'"call_start_ms":1764000000000}'
)
# A SETUP_MISSING call: its HANGUP's id does not start with the call id; non-ASCII.
OLD_HANGUP_ONLY = (
    b'{"call_id":"c3","events":[null,null,null,{"event_id":"x-77","call_id":"c3",'
    b'"switch_id":"sw9","event_type":"HANGUP","ts_ms":1764000000005,'
    b'"egress_gateway":"gw-\xc3\xa9","answered":false,"hangup_source":"CALLER",'
    b'"sip_code":486}],"seen":["x-77"],"last_ts_ms":1764000000005,"version":1000,'
    b'"closed_at_ms":1764000010005,"emitted_at":null,"call_start_ms":1764000000005}'
)
# The same, written when the pinned start was called "anchor_ms".
OLD_ANCHOR = OLD_HANGUP_ONLY.replace(b'"call_start_ms"', b'"anchor_ms"')
# The same, written before the pinned start and emitted_at existed.
OLD_OLDEST = (
    b'{"call_id":"c3","events":[null,null,null,{"event_id":"x-77","call_id":"c3",'
    b'"switch_id":"sw9","event_type":"HANGUP","ts_ms":1764000000005,'
    b'"egress_gateway":"gw-\xc3\xa9","answered":false,"hangup_source":"CALLER",'
    b'"sip_code":486}],"seen":["x-77"],"last_ts_ms":1764000000005,"version":1000,'
    b'"closed_at_ms":1764000010005}'
)


def _event(**fields: Any) -> CallEvent:
    return parse_event(fields)


def open_state() -> CallState:
    state = CallState("c1")
    state.add(_event(event_id="c1-s", call_id="c1", switch_id="sw1", event_type="SETUP",
                     ts_ms=T0, account_id="acme", caller="15550001111",
                     callee="+447700900123", caller_ip="10.0.0.1"))
    return state


def closed_state() -> CallState:
    state = CallState("c2")
    for event in (
        _event(event_id="c2-s", call_id="c2", switch_id="sw1", event_type="SETUP", ts_ms=T0,
               account_id="acme", caller="15550001111", callee="7774471234567",
               ingress_gateway="in", illegal_reason="UNREGISTERED"),
        _event(event_id="c2-r", call_id="c2", switch_id="sw2", event_type="RINGING",
               ts_ms=T0 + 1500, egress_gateway="out"),
        _event(event_id="c2-a", call_id="c2", switch_id="sw2", event_type="ANSWER",
               ts_ms=T0 + 4000, egress_gateway="out", callee_gateway="00114471234567"),
        _event(event_id="c2-h", call_id="c2", switch_id="sw2", event_type="HANGUP",
               ts_ms=T0 + 99000, answered=True, hangup_source="SERVER",
               server_reason="MAX_DURATION", sip_code=200, q850_cause=0),
        _event(event_id="c2-h2", call_id="c2", switch_id="sw1", event_type="HANGUP",
               ts_ms=T0 + 99500, answered=True, hangup_source="CALLEE"),
    ):
        assert state.add(event)
    state.version, state.closed_at_ms, state.emitted_at = 5000, T0 + 99500, 4242
    state.call_start_ms = T0
    return state


def hangup_only_state(with_start: bool = True) -> CallState:
    state = CallState("c3")
    state.add(_event(event_id="x-77", call_id="c3", switch_id="sw9", event_type="HANGUP",
                     ts_ms=T0 + 5, answered=False, hangup_source="CALLER", sip_code=486,
                     egress_gateway="gw-é"))
    state.version, state.closed_at_ms = 1000, T0 + 10005
    if with_start:
        state.call_start_ms = T0 + 5
    return state


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (OLD_OPEN, open_state),
        (OLD_CLOSED, closed_state),
        (OLD_HANGUP_ONLY, hangup_only_state),
        (OLD_ANCHOR, hangup_only_state),
        (OLD_OLDEST, lambda: hangup_only_state(with_start=False)),
    ],
)
def test_values_written_before_still_load(value: bytes, want: Any) -> None:
    state = decode_state(value)
    assert state == want()
    assert decode_state(encode_state(state)) == state
    # The worker's table value wrapped the state with its partition.
    envelope = b'{"p":7,"s":' + value + b"}"
    assert decode_entry(envelope) == (7, want())


@pytest.mark.parametrize("value", [OLD_OPEN, OLD_CLOSED, OLD_HANGUP_ONLY])
def test_to_dict_still_writes_the_same_json(value: bytes) -> None:
    assert orjson.dumps(decode_state(value).to_dict()) == value


def test_the_compact_value_starts_with_its_format_and_is_a_quarter_of_the_json() -> None:
    for state in (open_state(), closed_state(), hangup_only_state()):
        value = encode_state(state)
        assert value[0] == 0x01
        assert len(value) * 3 < len(orjson.dumps(state.to_dict()))
        assert decode_state(value) == state
    entry = encode_entry(12, closed_state())
    assert entry[0] == 0x02 and decode_entry(entry) == (12, closed_state())
    assert decode_state(entry) == closed_state()
    assert decode_entry(encode_state(open_state())) == (None, open_state())


def test_a_state_the_text_cannot_hold_is_written_as_json() -> None:
    state = CallState("odd\x1eid")
    state.add(_event(event_id="e1", call_id="odd\x1eid", switch_id="sw1", event_type="RINGING",
                     ts_ms=T0))
    value = encode_state(state)
    assert value.startswith(b"{") and decode_state(value) == state
    lone = CallState("c\ud800")  # a lone surrogate: no UTF-8 for it
    lone.add(_event(event_id="e1", call_id="c\ud800", switch_id="sw1", event_type="RINGING",
                    ts_ms=T0))
    assert decode_state(encode_state(lone)) == lone
    assert decode_entry(encode_entry(3, lone)) == (3, lone)


def test_an_event_that_is_not_packed_is_carried_as_json() -> None:
    """An event parse_event would not let through (built by hand) keeps every field."""
    odd = CallEvent("c9-x", "c9", "sw1", "ANSWER", T0, account_id="stray",
                    egress_gateway="out")
    state = CallState("c9")
    state.add(odd)
    assert state.events[2] == odd
    back = decode_state(encode_state(state))
    assert back == state and back.events[2] == odd


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "empty"),
        (b"\x07abc", "unknown format marker 0x07"),
        (b"\x01c1\x1e12", "has 2 fields"),
        (b"\x01c1\x1enot-a-number\x1e0\x1e\x1e\x1e\x1e\x1e\x1e\x1e\x1e", "corrupt"),
        (b"{not json", "corrupt"),
        (b"[1, 2]", "unknown format marker 0x5b"),
        (b'{"call_id": "c1"}', "corrupt"),
    ],
)
def test_bad_values_raise_one_clear_error(value: bytes, message: str) -> None:
    with pytest.raises(StateCodecError, match=message) as caught:
        decode_state(value)
    assert "\n" not in str(caught.value)


# -- round trips of generated states ----------------------------------------------------

TEXT = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=6)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def states(draw: st.DrawFn) -> CallState:
    call_id = draw(st.one_of(st.just("c1"), TEXT))
    state = CallState(call_id)
    for _ in range(draw(st.integers(1, 6))):
        event_type = draw(st.sampled_from(["SETUP", "RINGING", "ANSWER", "HANGUP"]))
        raw: dict[str, Any] = {
            "event_id": draw(st.one_of(st.just(call_id + "-" + event_type), TEXT)),
            "call_id": call_id,
            "switch_id": draw(TEXT),
            "event_type": event_type,
            "ts_ms": T0 + draw(st.integers(-10**9, 10**9)),
        }
        if event_type == "SETUP":
            raw.update(account_id=draw(TEXT), caller=draw(TEXT), callee=draw(TEXT))
            if draw(st.booleans()):
                raw["ingress_gateway"] = draw(TEXT)
        elif event_type == "ANSWER":
            raw["egress_gateway"] = draw(TEXT)
        elif event_type == "HANGUP":
            raw.update(answered=draw(st.booleans()), hangup_source="SERVER",
                       q850_cause=draw(st.one_of(st.none(), st.integers(0, 127))))
        state.add(parse_event(raw))
    if draw(st.booleans()):
        state.version = draw(st.integers(0, 10**6))
        state.closed_at_ms = draw(st.one_of(st.none(), st.integers(0, 2 * T0)))
        state.emitted_at = draw(st.one_of(st.none(), st.integers(0, 2**63)))
        state.call_start_ms = draw(st.one_of(st.none(), st.integers(0, 2 * T0)))
    return state


@SETTINGS
@given(state=states(), partition=st.integers(0, 10_000))
def test_every_state_round_trips(state: CallState, partition: int) -> None:
    assert decode_state(encode_state(state)) == state
    assert decode_entry(encode_entry(partition, state)) == (partition, state)
    # ... and through the JSON form of before.
    assert decode_state(json.dumps(state.to_dict()).encode()) == state
