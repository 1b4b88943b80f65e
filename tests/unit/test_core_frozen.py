"""Frozen closed calls (Correlator(freeze=...)): the same CDRs, rejects and open calls as
with every call held as a CallState, in any arrival order, with calls forgotten and
late events; closed calls held as bytes, open ones as CallStates."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig
from pipeline.core.correlator import Correlator, LateEvent, newest_ts_ms
from pipeline.core.events import CallEvent
from pipeline.core.state import CallState
from pipeline.core.state_codec import decode_state, encode_entry, encode_state, peek
from tests.unit.test_properties import (
    LONG,
    SETTINGS,
    SHORT,
    T0,
    _hangup,
    _setup,
    make_config,
    traffic,
    with_resends,
)

# Calls are forgotten within the generated span (5 minutes): late events happen.
FORGETFUL = make_config(max_call_duration_s=60, reorder_grace_s=10, closed_retention_s=30)


def _json_freeze(state: CallState) -> bytes:
    """A frozen value in the JSON form (no head to peek at): the slow path."""
    return json.dumps(state.to_dict()).encode()


FREEZERS: dict[str, Callable[[CallState], bytes]] = {
    "state": encode_state,
    "entry": partial(encode_entry, 3),  # the worker's table entry
    "json": _json_freeze,
}


Step = tuple[str, Any]  # ("event", CallEvent) or ("advance", watermark_ms)


def drive(correlator: Correlator, steps: Sequence[Step]) -> list[Any]:
    """What each step gives: its CDRs, or the LateEvent's message."""
    out: list[Any] = []
    for position, (kind, value) in enumerate(steps):
        try:
            if kind == "event":
                out.append(correlator.on_event(value, position))
            else:
                out.append(correlator.advance(value, position))
        except LateEvent as exc:
            out.append(str(exc))
    return out


def held(correlator: Correlator) -> dict[str, CallState]:
    """The store's calls as CallStates, frozen ones thawed."""
    return {call_id: decode_state(v) if isinstance(v, bytes) else v
            for call_id, v in correlator.store.items()}


@st.composite
def steps(draw: st.DrawFn) -> list[Step]:
    events: list[CallEvent] = draw(traffic(max_calls=8))
    events = with_resends(draw, draw(st.permutations(events)))
    out: list[Step] = []
    for event in events:
        out.append(("event", event))
        if draw(st.integers(0, 4)) == 0:  # event time moves on without events now and then
            out.append(("advance", event.ts_ms + draw(st.sampled_from([0, 20_000, 90_000]))))
    return out


@SETTINGS
@given(data=st.data())
@pytest.mark.parametrize("freezer", sorted(FREEZERS))
@pytest.mark.parametrize("config", [SHORT, LONG, FORGETFUL], ids=["short", "long", "forgetful"])
def test_frozen_closed_calls_change_nothing_but_how_they_are_held(
    freezer: str, config: BillingConfig, data: st.DataObject
) -> None:
    run = data.draw(steps())
    plain, frozen = Correlator(config), Correlator(config, freeze=FREEZERS[freezer])
    assert drive(frozen, run) == drive(plain, run)
    assert held(frozen) == held(plain)
    for call_id, value in frozen.store.items():
        # closed calls frozen, open ones not
        assert isinstance(value, bytes) == plain.store[call_id].closed, call_id
        assert frozen.call_start_ms(call_id) == plain.call_start_ms(call_id)
    assert ({s.call_id for s in frozen.open_calls()}
            == {s.call_id for s in plain.open_calls()})
    assert newest_ts_ms(frozen.store) == newest_ts_ms(plain.store)
    for position in (0, len(run) // 2, len(run)):
        assert frozen.reemit_from(position) == plain.reemit_from(position)
    # a restore from the store: the deadline index rebuilt from frozen values
    restored = Correlator(config, dict(frozen.store), frozen.watermark_ms,
                          freeze=FREEZERS[freezer])
    plain_restored = Correlator(config, dict(plain.store), plain.watermark_ms)
    assert restored.finish() == plain_restored.finish()
    assert frozen.finish() == plain.finish()
    assert held(frozen) == held(plain)


def test_a_frozen_call_is_thawed_for_its_duplicates_and_corrections_only() -> None:
    config = make_config(max_call_duration_s=60, reorder_grace_s=10, closed_retention_s=100)
    correlator = Correlator(config, freeze=encode_state)
    assert correlator.on_event(_setup("a", T0)) == []
    assert isinstance(correlator.store["a"], CallState)  # open: as it is
    cdrs: list[RatedCdr] = correlator.on_event(_hangup("a", T0 + 5_000))
    assert [c.status for c in cdrs] == ["COMPLETE"]
    frozen = correlator.store["a"]
    assert isinstance(frozen, bytes)
    assert peek(frozen) == ("a", T0 + 5_000, T0 + 5_000, None, T0)
    # a duplicate: nothing emitted, the frozen value untouched (the same object)
    assert correlator.on_event(_hangup("a", T0 + 5_000)) == []
    assert correlator.store["a"] is frozen
    # a correction (the other leg's HANGUP): a new version, frozen again
    again = correlator.on_event(_hangup("a", T0 + 6_000, "a-h2"))
    assert [c.version for c in again] == [3000]
    assert isinstance(correlator.store["a"], bytes) and correlator.store["a"] != frozen
    # retention over: forgotten without thawing, and a late event is refused
    correlator.on_event(_setup("b", T0 + 200_000))
    assert "a" not in correlator.store
    with pytest.raises(LateEvent):
        correlator.on_event(_hangup("a", T0 + 6_000, "a-h3"))


def test_peek_reads_the_head_of_both_compact_formats_and_not_json() -> None:
    state = CallState("c1")
    state.add(_setup("c1", T0))
    state.emitted(1000, T0 + 10, 42)
    state.call_start_ms = T0
    want = ("c1", T0, T0 + 10, 42, T0)
    assert peek(encode_state(state)) == want
    assert peek(encode_entry(5, state)) == want
    assert peek(_json_freeze(state)) is None
