"""Kamailio's event JSON -> CallEvent: names, formats, placeholders, and every reject
with the reason and category its dead letter carries."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.errors import InvalidEvent
from pipeline.ingest.kamailio import event_id, map_frame, q850_cause, ts_to_ms

COMMON = {"call_id": "abc@10.0.0.1", "ts": "1764750000.123456", "node": "kam1"}
SETUP = {**COMMON, "kind": "SETUP", "caller": "4930111", "callee": "4989222",
         "src": "192.0.2.7:5060", "account": "acme", "ingress_gw": "", "illegal": ""}
RINGING = {**COMMON, "kind": "RINGING", "code": 180, "egress_gw": "gw-a"}
ANSWER = {**COMMON, "kind": "ANSWER", "egress_gw": "gw-a", "callee_gw": "99#4989222"}
HANGUP = {**COMMON, "kind": "HANGUP", "answered": True, "by": "CALLEE", "server_reason": "",
          "sip_code": 486, "reason": 'Q.850;cause=17;text="busy"', "egress_gw": "gw-a"}


def frame(obj: Any) -> bytes:
    return orjson.dumps(obj)


def test_setup() -> None:
    e = map_frame(frame(SETUP))
    assert e.event_type == "SETUP"
    assert e.switch_id == "kam1"
    assert e.call_id == "abc@10.0.0.1"
    assert e.ts_ms == 1_764_750_000_123
    assert (e.account_id, e.caller, e.callee) == ("acme", "4930111", "4989222")
    assert e.caller_ip == "192.0.2.7"
    assert e.ingress_gateway is None and e.illegal_reason is None


def test_setup_from_an_unknown_source_gets_the_placeholder_account() -> None:
    raw = {**SETUP, "account": "", "illegal": "UNAUTHORIZED_SOURCE", "src": "[2001:db8::1]:5060"}
    e = map_frame(frame(raw))
    assert e.account_id == "UNIDENTIFIED"
    assert e.illegal_reason == "UNAUTHORIZED_SOURCE"
    assert e.caller_ip == "2001:db8::1"
    assert map_frame(frame(raw), unknown_account="unknown_account").account_id == \
        "unknown_account"


def test_ringing_and_answer_keep_the_gateway() -> None:
    assert map_frame(frame(RINGING)).to_dict()["egress_gateway"] == "gw-a"
    a = map_frame(frame(ANSWER))
    assert (a.egress_gateway, a.callee_gateway) == ("gw-a", "99#4989222")


def test_hangup() -> None:
    e = map_frame(frame(HANGUP))
    assert (e.answered, e.hangup_source, e.sip_code, e.q850_cause) == (True, "CALLEE", 486, 17)
    assert e.server_reason is None
    assert e.to_dict()["egress_gateway"] == "gw-a"


def test_hangup_by_the_server() -> None:
    raw = {**HANGUP, "by": "SERVER", "server_reason": "MAX_DURATION", "reason": "",
           "egress_gw": ""}
    del raw["sip_code"]
    e = map_frame(frame(raw))
    assert (e.hangup_source, e.server_reason) == ("SERVER", "MAX_DURATION")
    assert e.sip_code is None and e.q850_cause is None and e.egress_gateway is None


@pytest.mark.parametrize("code", [0, 99, 700])
def test_hangup_sip_code_outside_100_699_is_dropped(code: int) -> None:
    assert map_frame(frame({**HANGUP, "sip_code": code})).sip_code is None


def test_event_id_is_deterministic_per_node_call_and_kind() -> None:
    a, b = map_frame(frame(SETUP)), map_frame(frame({**SETUP, "ts": "1764750001.0"}))
    assert a.event_id == b.event_id == event_id("kam1", "abc@10.0.0.1", "SETUP")
    ids = {map_frame(frame(x)).event_id for x in (SETUP, RINGING, ANSWER, HANGUP)}
    assert len(ids) == 4
    assert event_id("kam2", "abc@10.0.0.1", "SETUP") != a.event_id
    assert event_id("kam1", "abc@10.0.0.2", "SETUP") != a.event_id


@pytest.mark.parametrize(
    ("ts", "ms"),
    [("1764750000.123456", 1_764_750_000_123), ("1764750000.999999", 1_764_750_000_999),
     ("1764750000", 1_764_750_000_000), ("1764750000.5", 1_764_750_000_500),
     ("1764750000.000999", 1_764_750_000_000), ("0.001", 1)],
)
def test_ts_is_exact(ts: str, ms: int) -> None:
    assert ts_to_ms(ts) == ms


@pytest.mark.parametrize(
    ("reason", "cause"),
    [('Q.850;cause=16;text="Normal call clearing"', 16), ("q.850 ; cause = 34", 34),
     ('SIP;cause=200;text="elsewhere", Q.850;cause=26', 26), ("", None),
     ('SIP;cause=486;text="Busy"', None), ("Q.850;cause=200", None)],
)
def test_q850_cause(reason: str, cause: int | None) -> None:
    assert q850_cause(reason) == cause


def _reject(payload: bytes) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        map_frame(payload)
    return info.value


@pytest.mark.parametrize(
    ("payload", "category", "words"),
    [
        (b"not json", "undecodable", "not JSON"),
        (b"[1, 2]", "undecodable", "not a JSON object"),
        (frame({**SETUP, "kind": "REFER"}), "bad kind", "'kind' is 'REFER'"),
        (frame({**SETUP, "x_new": "1"}), "unknown field", "unknown field(s) on SETUP: x_new"),
        (frame({**RINGING, "caller": "1"}), "unknown field", "caller"),
        (frame({**SETUP, "callee": ""}), "bad callee", "SETUP without a callee"),
        (frame({k: v for k, v in SETUP.items() if k != "callee"}), "bad callee", "callee"),
        (frame({**SETUP, "ts": 1764750000.5}), "bad ts", "must be a string"),
        (frame({**SETUP, "ts": "1764750000,5"}), "bad ts", "seconds[.micros]"),
        (frame({**HANGUP, "answered": "yes"}), "bad answered", "true or false"),
        (frame({**RINGING, "code": "180"}), "bad code", "must be an integer"),
        (frame({**SETUP, "node": ""}), "bad node", "missing field 'node'"),
        (frame({**SETUP, "caller": ""}), "bad caller", "caller"),
        (frame({**HANGUP, "by": "NOBODY"}), "bad hangup_source", "hangup_source"),
        (frame({**HANGUP, "server_reason": "MAX_DURATION"}), "bad server_reason",
         "only valid with hangup_source SERVER"),
        (frame({**SETUP, "illegal": "WHATEVER"}), "bad illegal_reason", "illegal_reason"),
        (frame({**ANSWER, "egress_gw": ""}), "bad egress_gateway", "egress_gateway"),
    ],
)
def test_rejects_name_what_is_wrong(payload: bytes, category: str, words: str) -> None:
    exc = _reject(payload)
    assert exc.category == category
    assert words in exc.reason
