"""CallState with packed events (pipeline/core/packed.py, state.py) against the plain
model it replaced: a list of four CallEvents and a set of ids. Same answers to every
question, for events parse_event lets through and for odd ones built by hand (those
stay CallEvents inside, see packed.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core import packed
from pipeline.core.events import CallEvent
from pipeline.core.state import CallState

SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T0 = 1_764_000_000_000
SLOTS = {"SETUP": 0, "RINGING": 1, "ANSWER": 2, "HANGUP": 3}


@dataclass
class Model:
    """The state before packing, as state.py had it."""

    call_id: str
    events: list[CallEvent | None] = field(default_factory=lambda: [None] * 4)
    seen: set[Any] = field(default_factory=set)
    last_ts_ms: int = 0

    def add(self, event: CallEvent) -> bool:
        if event.event_id in self.seen:
            return False
        self.seen.add(event.event_id)
        self.last_ts_ms = max(self.last_ts_ms, event.ts_ms)
        slot = SLOTS[event.event_type]
        current = self.events[slot]
        if current is None or (event.ts_ms, event.event_id) < (current.ts_ms, current.event_id):
            self.events[slot] = event
        return True

    def status(self) -> str | None:
        setup, _, answer, hangup = self.events
        if hangup is None:
            return None
        if setup is None:
            return "SETUP_MISSING"
        if hangup.answered and answer is None:
            return "ANSWER_MISSING"
        return "COMPLETE"


# Text that now and then holds the packing's own separators or is empty.
TEXT = st.one_of(st.text(min_size=1, max_size=4),
                 st.sampled_from(["", packed.SEP, "a" + packed.SEP, packed.ID_MARK + "x",
                                  "\x1e", "é", "0"]))


@st.composite
def events(draw: st.DrawFn, call_id: str) -> CallEvent:
    event_type = draw(st.sampled_from(list(SLOTS)))
    odd = draw(st.integers(0, 9)) == 0  # a field of another type, or a value of another type
    values: dict[str, Any] = {
        "event_id": draw(st.one_of(st.sampled_from([f"{call_id}-1", f"{call_id}-2", "x-1",
                                                    call_id, "x-2"]), TEXT)),
        "call_id": call_id,
        "switch_id": draw(TEXT),
        "event_type": event_type,
        "ts_ms": T0 + draw(st.sampled_from([0, 0, 1, -1, 5_000, 10**9])),
    }
    if event_type == "SETUP" or odd:
        values.update(account_id=draw(TEXT), caller=draw(TEXT), callee=draw(TEXT))
        values["ingress_gateway"] = draw(st.one_of(st.none(), TEXT))
        values["illegal_reason"] = draw(st.one_of(st.none(), st.just("UNREGISTERED")))
    if event_type in ("RINGING", "ANSWER", "HANGUP") or odd:
        values["egress_gateway"] = draw(st.one_of(st.none(), TEXT))
    if event_type == "ANSWER":
        values["callee_gateway"] = draw(st.one_of(st.none(), TEXT))
    if event_type == "HANGUP" or odd:
        values["answered"] = draw(st.one_of(st.booleans(), st.just(None) if odd else st.booleans()))
        values["hangup_source"] = draw(st.sampled_from(["CALLER", "SERVER"]))
        values["sip_code"] = draw(st.one_of(st.none(), st.integers(100, 699),
                                            st.just(True) if odd else st.none()))
        values["q850_cause"] = draw(st.one_of(st.none(), st.integers(0, 127)))
    if odd and draw(st.booleans()):
        values["event_id"] = draw(st.sampled_from([7, ("t",)]))  # not even a string
    return CallEvent(**values)


@SETTINGS
@given(data=st.data())
def test_packed_state_answers_as_the_plain_model(data: st.DataObject) -> None:
    call_id = data.draw(st.sampled_from(["c1", "call-β", "c" + packed.ID_MARK]))
    state, model = CallState(call_id), Model(call_id)
    for event in data.draw(st.lists(events(call_id), min_size=1, max_size=8)):
        try:
            added = model.add(event)
        except TypeError:  # an id that is not a string met one that is, at the same time
            try:
                state.add(event)
            except TypeError:
                return
            raise AssertionError("the model could not compare the ids, the state did") from None
        assert state.add(event) == added
        assert state.events == model.events
        assert state.seen == model.seen
        assert state.event_count == len(model.seen)
        assert state.last_ts_ms == model.last_ts_ms
        assert state.status() == model.status()
        if all(type(i) is str for i in model.seen):  # to_dict sorts the ids
            assert CallState.from_dict(state.to_dict()) == state
    for kind, event in enumerate(model.events):
        slot = state.slot(kind)
        if event is not None:
            assert slot is not None and packed.unpack(slot, kind, call_id) == event
            assert packed.event_ts(slot) == event.ts_ms


def test_an_event_from_parse_event_is_one_string() -> None:
    from pipeline.core.events import parse_event

    state = CallState("c1")
    state.add(parse_event({"event_id": "c1-s", "call_id": "c1", "switch_id": "sw1",
                           "event_type": "SETUP", "ts_ms": T0, "account_id": "acme",
                           "caller": "15550001111", "callee": "442071234567"}))
    assert state.slot(packed.SETUP) == packed.SEP.join(
        [packed.ID_MARK + "-s", str(T0), "sw1", "acme", "15550001111", "442071234567", "",
         "", ""])
