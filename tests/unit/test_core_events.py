"""parse_event's one-pass check of a valid dict (events._parse_valid) against the rules
checked field by field (events._parse_checked): same events, and whatever the one-pass
check refuses is refused with the field-by-field reason."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.events import (
    EVENT_TYPES,
    FIELD_NAMES,
    HANGUP_SOURCES,
    ILLEGAL_REASONS,
    SERVER_REASONS,
    _parse_checked,
    _parse_valid,
    parse_event,
)
from pipeline.errors import InvalidEvent

SETTINGS = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ODD = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.floats(allow_nan=False), st.just(""),
    st.lists(st.integers(), max_size=1), st.dictionaries(st.text(max_size=1), st.integers(),
                                                         max_size=1),
)
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "event_type": st.sampled_from(EVENT_TYPES),
    "ts_ms": st.one_of(st.integers(0, 4_102_444_800_000), st.integers(-5, 5_000_000_000_000)),
    "answered": st.booleans(),
    "hangup_source": st.sampled_from(sorted(HANGUP_SOURCES)),
    "server_reason": st.sampled_from(sorted(SERVER_REASONS)),
    "illegal_reason": st.sampled_from(sorted(ILLEGAL_REASONS)),
    "sip_code": st.integers(90, 710),
    "q850_cause": st.integers(-2, 130),
}


@st.composite
def raw_events(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid events of every type, each field now and then absent or odd."""
    raw: dict[str, Any] = {}
    for name in [*FIELD_NAMES, "unknown_extra"]:
        roll = draw(st.integers(0, 19))
        if roll < 2:
            continue  # absent
        good = GOOD.get(name, st.text(min_size=1, max_size=4))
        raw[name] = draw(ODD if roll == 2 else good)
    if draw(st.booleans()) and raw.get("hangup_source") != "SERVER":
        raw.pop("server_reason", None)  # often the consistent case
    return raw


def outcome(parse: Any, raw: Any) -> tuple[str, Any]:
    try:
        return "event", parse(raw)
    except InvalidEvent as exc:
        return "rejected", (exc.reason, exc.category)


@SETTINGS
@given(raw=raw_events())
def test_the_one_pass_check_accepts_exactly_what_the_rules_accept(raw: dict[str, Any]) -> None:
    want = outcome(_parse_checked, raw)
    fast = _parse_valid(raw)
    if want[0] == "event":
        assert fast == want[1]
        assert type(fast[4]) is int and fast.event_type in EVENT_TYPES  # type: ignore[index]
    else:
        assert fast is None
    assert outcome(parse_event, raw) == want


def test_other_mappings_take_the_rules_path() -> None:
    from types import MappingProxyType

    raw = {"event_id": "e", "call_id": "c", "switch_id": "s", "event_type": "RINGING",
           "ts_ms": 5}
    assert parse_event(MappingProxyType(raw)) == parse_event(raw)
    assert outcome(parse_event, ["not", "a", "mapping"])[0] == "rejected"
