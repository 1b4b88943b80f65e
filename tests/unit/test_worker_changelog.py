"""The worker's changelog values (pipeline/worker/changelog.py) in both formats, and
what a rolling upgrade needs of them: a worker reads values of today's JSON format
(literal bytes below, written by the worker before the compact format existed), values
it writes as "json" are read by that older worker's reader, and values it writes as
"compact" are small and read back by itself only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from faust.serializers import codecs

from pipeline.core.config import load_config
from pipeline.core.correlator import Correlator
from pipeline.core.events import parse_event
from pipeline.core.state import CallState
from pipeline.core.state_codec import decode_state, encode_state
from pipeline.errors import ConfigError
from pipeline.runtime.settings import load_settings
from pipeline.switch.simulator import FaultMix, Tick, generate
from pipeline.worker import changelog
from pipeline.worker.call_store import CallStore

ROOT = Path(__file__).resolve().parents[2]

# Written by the worker before the compact format (commit 0c41c63, CallStore.drain:
# orjson.dumps({"p": partition, "s": state.to_dict()})) for two calls of the demo
# configuration's simulation: one closed (its CDR emitted), one still open.
TODAY_CLOSED = (
    b'{"p":1,"s":{"call_id":"3-00000004","events":[{"event_id":"3-00000004-s","call_id":'
    b'"3-00000004","switch_id":"sw2","event_type":"SETUP","ts_ms":1764000000487,"account_id"'
    b':"acme","caller":"12402007971","callee":"44386758139"},{"event_id":"3-00000004-r",'
    b'"call_id":"3-00000004","switch_id":"sw2","event_type":"RINGING","ts_ms":1764000003596,'
    b'"egress_gateway":"out-a"},{"event_id":"3-00000004-a","call_id":"3-00000004",'
    b'"switch_id":"sw2","event_type":"ANSWER","ts_ms":1764000017750,"egress_gateway":"out-a",'
    b'"callee_gateway":"001144386758139"},{"event_id":"3-00000004-h","call_id":"3-00000004",'
    b'"switch_id":"sw2","event_type":"HANGUP","ts_ms":1764000121685,"egress_gateway":"out-a",'
    b'"answered":true,"hangup_source":"CALLER","sip_code":200,"q850_cause":16}],"seen":'
    b'["3-00000004-a","3-00000004-h","3-00000004-r","3-00000004-s"],"last_ts_ms":'
    b'1764000121685,"version":4000,"closed_at_ms":1764000121685,"emitted_at":97,'
    b'"call_start_ms":1764000000487}}'
)
TODAY_OPEN = (
    b'{"p":2,"s":{"call_id":"3-00000001","events":[{"event_id":"3-00000001-s","call_id":'
    b'"3-00000001","switch_id":"sw1","event_type":"SETUP","ts_ms":1764000000035,"account_id"'
    b':"acme","caller":"15587864975","callee":"44638607429","caller_ip":"10.179.208.150"},'
    b'{"event_id":"3-00000001-r","call_id":"3-00000001","switch_id":"sw1","event_type":'
    b'"RINGING","ts_ms":1764000001179,"egress_gateway":"out-a"},null,null],"seen":'
    b'["3-00000001-r","3-00000001-s"],"last_ts_ms":1764000001179,"version":0,'
    b'"closed_at_ms":null,"emitted_at":null,"call_start_ms":null}}'
)


def todays_reader(value: bytes, partition: int) -> CallState | None:
    """How the worker before the compact format read a value: Faust's table decoded it
    with its JSON serializer, then CallStore.load did this (commit 0c41c63)."""
    decoded = codecs.loads("json", value)
    if isinstance(decoded, dict) and decoded.get("p") == partition:
        return CallState.from_dict(decoded["s"])
    return None


@pytest.fixture(scope="module")
def states() -> list[CallState]:
    """Call states of a simulation with the demo configuration, with its faults
    (duplicates, missing and late events), open and closed, as the core keeps them."""
    config = load_config(ROOT / "deploy" / "demo" / "demo.toml")
    store: dict[str, CallState] = {}
    correlator = Correlator(config, store)
    items = [i for i in generate(config, calls=400, switches=4, rate_cps=20, seed=11,
                                 start_ms=1_764_000_000_000, faults=FaultMix(), final_tick=False)
             if not isinstance(i, Tick)]
    seen: list[CallState] = []
    for offset, item in enumerate(items):
        try:
            correlator.on_event(parse_event(item), offset)
        except Exception:  # noqa: BLE001, S112 - a fault the simulator injects on purpose
            continue
        if offset % 7 == 0:  # states as they were mid-way, open ones among them
            seen += [_copy(s) for s in list(store.values())[-3:]]
    return seen + list(store.values())


def _copy(state: CallState) -> CallState:
    return CallState.from_dict(orjson.loads(orjson.dumps(state.to_dict())))


@pytest.mark.parametrize("value", [TODAY_CLOSED, TODAY_OPEN])
def test_a_value_written_by_today_s_worker_loads(value: bytes) -> None:
    written = orjson.loads(value)
    partition, state = changelog.decode_value(value)
    assert partition == written["p"]
    assert state == CallState.from_dict(written["s"])
    assert state.to_dict() == written["s"]
    assert changelog.decode_of(value, partition) == state
    assert changelog.decode_of(value, partition + 1) is None


def test_json_values_load_in_today_s_reader_and_in_the_new_one(states: list[CallState]) -> None:
    for n, state in enumerate(states):
        partition = n % 3
        value = changelog.encoder("json")(partition, state)
        assert todays_reader(value, partition) == state
        assert todays_reader(value, partition + 1) is None
        assert changelog.decode_value(value) == (partition, state)


def test_compact_values_are_small_and_load_in_the_new_reader(states: list[CallState]) -> None:
    encode = changelog.encoder("compact")
    sizes = []
    for n, state in enumerate(states):
        partition = (n % 3) if n % 5 else 300 + n  # partitions of one digit and of three
        value = encode(partition, state)
        sizes.append(len(value))
        assert len(value) * 3 < len(changelog.encode_json(partition, state))
        assert changelog.decode_value(value) == (partition, state)
        assert changelog.decode_of(value, partition) == state
        assert changelog.decode_of(value, partition + 1) is None
        assert changelog.decode_of(value, int(f"{partition}1")) is None  # not a prefix match
    assert sum(sizes) / len(sizes) <= 200, f"compact values of {sum(sizes) / len(sizes)} bytes"


def test_a_compact_value_is_not_read_by_today_s_worker(states: list[CallState]) -> None:
    """Why a rolling upgrade writes "json" until no older worker is left: an older worker
    that takes over a partition cannot decode a compact value."""
    value = changelog.encoder("compact")(1, states[0])
    with pytest.raises(Exception):  # noqa: B017, PT011 - Faust's decode error, whatever it is
        todays_reader(value, 1)


def test_a_partition_s_store_loads_from_a_table_of_both_formats(states: list[CallState]) -> None:
    # open calls (states mid-way) and closed ones (at the end), one value a call
    closed = [s for s in states[20:] if s.closed][-10:]
    mine = list({s.call_id: s for s in states[:10] + closed}.values())
    other = states[20:40]
    table: list[Any] = [changelog.encoder("json" if n % 2 else "compact")(1, s)
                        for n, s in enumerate(mine)]
    table += [changelog.encoder("compact")(0, s) for s in other] + [TODAY_CLOSED, TODAY_OPEN]
    store = CallStore(1, "json")
    store.load(table)
    want = {s.call_id: s for s in mine}
    want["3-00000004"] = changelog.decode_value(TODAY_CLOSED)[1]
    assert {k: decode_state(v) if isinstance(v, bytes) else v for k, v in store.items()} == want
    assert any(s.closed for s in mine) and any(not s.closed for s in mine)
    for n, state in enumerate(mine):
        held = store[state.call_id]
        assert isinstance(held, bytes) == state.closed  # closed calls frozen
        if state.closed and n % 2 == 0:  # a compact value: the table's bytes, not a copy
            assert held is table[n]
    assert isinstance(store["3-00000004"], bytes)  # a closed call of a JSON value too


@pytest.mark.parametrize("changelog_format", ["compact", "json"])
def test_a_frozen_call_drains_as_its_entry_or_in_json(changelog_format: str,
                                                      states: list[CallState]) -> None:
    closed = next(s for s in states if s.closed)
    store = CallStore(2, changelog_format)
    store[closed.call_id] = store.freeze(closed)
    (write,) = store.drain()
    want = changelog.encoder(changelog_format)(2, closed)
    assert write.value == write.record[1] == want
    if changelog_format == "compact":  # the frozen bytes themselves: no encoding again
        assert write.value is store[closed.call_id]


@pytest.mark.parametrize("changelog_format", ["compact", "json"])
def test_changed_calls_drain_in_the_store_s_format(changelog_format: str,
                                                   states: list[CallState]) -> None:
    store = CallStore(2, changelog_format)
    store[states[0].call_id] = states[0]
    (write,) = store.drain()
    assert write.record[0] == f'"{states[0].call_id}"'.encode()
    assert write.value == write.record[1] == changelog.encoder(changelog_format)(2, states[0])


@pytest.mark.parametrize("value, named", [
    (b"", "empty"),
    (b"\x07\x00abc", "unknown format marker 0x07"),  # a newer worker's, say
    (b'["p", 1]', "unknown format marker 0x5b"),
    (b"\x02", "corrupt"),
    (b"\x02x\x1eabc", "corrupt"),
    (b"{not json", "corrupt"),
    (b'{"p": 1, "s": {"call_id": "x"}}', "corrupt"),
    (b'{"call_id": "x"}', "corrupt"),
])
def test_a_value_that_is_no_call_state_is_named(value: bytes, named: str) -> None:
    with pytest.raises(changelog.BadChangelogValue, match=named):
        changelog.decode_value(value)


def test_a_state_without_its_partition_is_not_a_table_value(states: list[CallState]) -> None:
    with pytest.raises(changelog.BadChangelogValue, match="holds no partition"):
        changelog.decode_value(encode_state(states[0]))


def test_the_changelog_format_is_checked_at_load_naming_the_key(tmp_path: Path) -> None:
    toml = tmp_path / "pipeline.toml"
    toml.write_text('[worker]\nchangelog_format = "avro"\n')
    with pytest.raises(ConfigError, match=r"worker\.changelog_format: must be one of "
                                          r"compact, json, got 'avro'"):
        load_settings(toml, env={})
    assert load_settings(None, env={}).worker.changelog_format == "compact"
    assert load_settings(None, env={"CDR_WORKER_CHANGELOG_FORMAT": "json"}).worker \
        .changelog_format == "json"
    assert set(changelog.FORMATS) == {"compact", "json"}


@pytest.mark.parametrize("call_id", ["3-00000004", "a b", 'say "x"', "back\\slash", "tab\there",
                                     "del\x7f", "ünï", "☎", "", "\U0001f4de", "lone\ud800"])
def test_a_key_is_the_json_module_s_bytes(call_id: str) -> None:
    """The changelog is compacted by key bytes: one byte form across versions, the one
    the json module writes (today's workers' keys)."""
    assert changelog.encode_key(call_id) == json.dumps(call_id, separators=(",", ":")).encode()


@given(st.text(alphabet=st.characters(max_codepoint=0x7F)) | st.text())
def test_any_key_is_the_json_module_s_bytes(call_id: str) -> None:
    """Every ASCII character, escaped or not, and any other text: the json module's."""
    assert changelog.encode_key(call_id) == json.dumps(call_id, separators=(",", ":")).encode()
