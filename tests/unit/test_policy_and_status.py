"""Every recording-policy rule and every *_MISSING status (billing.md sections 2 and 5)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.core.cdr import VERSION_STRIDE, RatedCdr
from pipeline.core.config import BillingConfig
from pipeline.core.correlator import Correlator, LateEvent
from pipeline.core.events import CallEvent
from tests.unit.builders import T0, call, make_config


def final(config: BillingConfig, events: list[CallEvent], end: bool = True) -> RatedCdr:
    correlator = Correlator(config)
    out: list[RatedCdr] = []
    for event in events:
        out.extend(correlator.on_event(event))
    if end:
        out.extend(correlator.finish())
    assert out, "no CDR emitted"
    return max(out, key=lambda c: c.version)


@pytest.fixture
def cfg(tmp_path: Path) -> BillingConfig:
    return make_config(tmp_path)


def test_complete_answered_call_is_recorded(cfg: BillingConfig) -> None:
    cdr = final(cfg, call())
    assert (cdr.status, cdr.record_decision, cdr.decision_reason) == ("COMPLETE", "RECORDED", None)
    assert (cdr.hold_s, cdr.billable_s, cdr.fee, cdr.cost) == (61, 120, Decimal("0.12"), Decimal("0.03"))
    assert cdr.pdd_ms == 500 and cdr.version == 4 * VERSION_STRIDE


def test_rule1_no_cdr_number_wins_over_everything(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, {"no_cdr_e164s": ["4420*"]})
    events = call(setup={"illegal_reason": "BLACKLISTED"}, skip=("ANSWER",))
    cdr = final(cfg, events)
    assert (cdr.record_decision, cdr.decision_reason) == ("SKIPPED", "NO_CDR_E164")


@pytest.mark.parametrize(("record", "decision", "reason"), [(True, "RECORDED", None), (False, "SKIPPED", "ILLEGAL_CALL_POLICY")])
def test_rule2_illegal_calls(tmp_path: Path, record: bool, decision: str, reason: str | None) -> None:
    cfg = make_config(tmp_path, {"record_illegal_call": record})
    cdr = final(cfg, call(setup={"illegal_reason": "UNREGISTERED"}))
    assert (cdr.record_decision, cdr.decision_reason, cdr.billing_mode) == (decision, reason, "ILLEGAL")
    assert cdr.fee == Decimal("0.00") and cdr.billable_s == 120


def test_rule3_incomplete_goes_to_audit(cfg: BillingConfig) -> None:
    cdr = final(cfg, call(skip=("ANSWER",)))
    assert (cdr.status, cdr.record_decision, cdr.decision_reason) == ("ANSWER_MISSING", "AUDIT", "INCOMPLETE")


@pytest.mark.parametrize(
    ("policy", "reason", "decision"),
    [
        ({}, "MAX_DURATION", "RECORDED"),
        ({"record_server_hangup": False}, "CREDIT_EXHAUSTED", "SKIPPED"),
        ({"record_server_hangup": False, "record_server_hangup_by_reason": {"POLICY": True}}, "POLICY", "RECORDED"),
        ({"record_server_hangup_by_reason": {"ADMIN": False}}, "ADMIN", "SKIPPED"),
        ({"record_server_hangup_by_reason": {"ADMIN": False}}, "RESOURCE", "RECORDED"),
        ({"record_server_hangup": False}, None, "SKIPPED"),
    ],
)
def test_rule4_server_hangup(tmp_path: Path, policy: dict, reason: str | None, decision: str) -> None:
    cfg = make_config(tmp_path, policy)
    cdr = final(cfg, call(source="SERVER", reason=reason))
    assert cdr.record_decision == decision
    assert cdr.decision_reason == (None if decision == "RECORDED" else "SERVER_HANGUP_POLICY")
    assert cdr.fee == Decimal("0.12")  # computed whatever the decision


def test_server_hangup_of_caller_is_not_affected(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, {"record_server_hangup": False})
    assert final(cfg, call(source="CALLEE")).record_decision == "RECORDED"


@pytest.mark.parametrize(("record", "decision"), [(True, "RECORDED"), (False, "SKIPPED")])
def test_rule5_zero_hold_time(tmp_path: Path, record: bool, decision: str) -> None:
    cfg = make_config(tmp_path, {"record_zero_hold_time": record})
    cdr = final(cfg, call(answer_after_ms=None))
    assert cdr.hold_s == 0 and cdr.record_decision == decision
    assert cdr.fee == Decimal("0.00") and cdr.cost is None


def test_rule6_rate_not_found(cfg: BillingConfig) -> None:
    cdr = final(cfg, call(callee="61298765432"))
    assert (cdr.record_decision, cdr.decision_reason) == ("AUDIT", "RATE_NOT_FOUND")
    assert cdr.fee is None and cdr.rate_prefix is None and cdr.billable_s is None


def test_unknown_account_is_rated_without_a_table(cfg: BillingConfig) -> None:
    cdr = final(cfg, call(setup={"account_id": "nobody", "ingress_gateway": "ghost"}))
    assert cdr.decision_reason == "RATE_NOT_FOUND" and cdr.rate_table is None
    assert "UNKNOWN_ACCOUNT" in cdr.flags and "UNKNOWN_INGRESS_GATEWAY" in cdr.flags


def test_free_numbers(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, {"free_e164s": ["+44207*"]})
    cdr = final(cfg, call())
    assert (cdr.billing_mode, cdr.fee, cdr.record_decision) == ("FREE", Decimal("0.00"), "RECORDED")


def test_route_prefix_stripped_only_when_enabled(tmp_path: Path) -> None:
    on = final(make_config(tmp_path, {}), call(callee="777442071234567", setup={"ingress_gateway": "in"}))
    assert on.rate_prefix == "44"
    off = final(make_config(tmp_path, {"gateway_route_prefix_billing": False}),
                call(callee="777442071234567", setup={"ingress_gateway": "in"}))
    assert off.rate_prefix is None and off.decision_reason == "RATE_NOT_FOUND"


def test_free_time_reduces_rated_seconds(tmp_path: Path) -> None:
    cdr = final(make_config(tmp_path, {"free_time_s": 5}), call(hold_ms=65_000))
    assert (cdr.hold_s, cdr.rated_s, cdr.billable_s) == (65, 60, 60)


def test_negative_hold_is_zero_and_flagged(cfg: BillingConfig) -> None:
    cdr = final(cfg, call(hold_ms=-3_000))
    assert cdr.hold_ms == 0 and "NEGATIVE_HOLD" in cdr.flags


def test_setup_missing(cfg: BillingConfig) -> None:
    cdr = final(cfg, call(skip=("SETUP",)))
    assert (cdr.status, cdr.decision_reason, cdr.fee, cdr.account_id) == ("SETUP_MISSING", "INCOMPLETE", None, None)
    # Without SETUP and without callee_gateway on the ANSWER there is no number to cost.
    assert (cdr.callee_gateway, cdr.cost) == (None, None)
    assert cdr.hold_s == 61  # durations still come from ANSWER and HANGUP


def test_answer_missing_waits_for_grace_then_corrects(cfg: BillingConfig) -> None:
    events = call()
    answer = events.pop(2)
    correlator = Correlator(cfg)
    out = [c for e in events for c in correlator.on_event(e)]
    assert out == []  # waiting for the ANSWER within reorder_grace_s
    out = correlator.advance(events[-1].ts_ms + 10_000)
    assert [c.status for c in out] == ["ANSWER_MISSING"]
    corrected = correlator.on_event(answer)
    assert [(c.status, c.version) for c in corrected] == [("COMPLETE", 4 * VERSION_STRIDE)]
    assert corrected[0].fee == Decimal("0.12")


def test_hangup_missing_closed_when_stale(cfg: BillingConfig) -> None:
    correlator = Correlator(cfg)
    events = call(skip=("HANGUP",))
    for event in events:
        assert correlator.on_event(event) == []
    stale_at = events[-1].ts_ms + (7200 + 10) * 1000
    assert correlator.advance(stale_at - 1) == []
    (cdr,) = correlator.advance(stale_at)
    assert (cdr.status, cdr.hangup_source, cdr.server_reason) == ("HANGUP_MISSING", "SERVER", None)
    assert cdr.end_ts_ms == events[-1].ts_ms + 7200 * 1000 and cdr.hold_s == 7200
    assert cdr.record_decision == "AUDIT"


def test_open_calls_stay_open_offline(cfg: BillingConfig) -> None:
    correlator = Correlator(cfg)
    for event in call(skip=("HANGUP",)):
        correlator.on_event(event)
    assert correlator.finish() == []
    assert len(list(correlator.open_calls())) == 1


def test_duplicates_change_nothing_and_earliest_wins(cfg: BillingConfig) -> None:
    events = call()
    late_hangup = events[-1]._replace(event_id="c1-H2", ts_ms=events[-1].ts_ms + 5_000, hangup_source="CALLEE")
    correlator = Correlator(cfg)
    out = [c for e in events + events + [late_hangup] for c in correlator.on_event(e)]
    assert [c.version for c in out] == [4 * VERSION_STRIDE, 5 * VERSION_STRIDE]
    assert out[-1].hangup_source == "CALLER" and out[-1].hold_ms == out[0].hold_ms


def test_closed_calls_forgotten_and_late_events_rejected(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, {"closed_retention_s": 60})
    correlator = Correlator(cfg)
    events = call()
    for event in events:
        correlator.on_event(event)
    correlator.advance(events[-1].ts_ms + 60_000)
    assert len(correlator.store) == 0  # bounded memory
    with pytest.raises(LateEvent, match="late event"):
        correlator.on_event(events[0]._replace(event_id="again"))


def test_state_round_trips_through_a_dict(cfg: BillingConfig) -> None:
    from pipeline.core.state import CallState

    correlator = Correlator(cfg)
    for event in call(skip=("HANGUP",)):
        correlator.on_event(event)
    state = correlator.store["c1"]
    assert CallState.from_dict(state.to_dict()) == state


def test_rebuilt_index_still_fires_deadlines(cfg: BillingConfig) -> None:
    store: dict = {}
    first = Correlator(cfg, store)
    events = call(skip=("ANSWER",))
    for event in events:
        first.on_event(event)
    second = Correlator(cfg, store, watermark_ms=first.watermark_ms)  # e.g. after a restart
    assert [c.status for c in second.advance(T0 + 10**9)] == ["ANSWER_MISSING"]


def test_state_dict_follows_each_slot_when_an_earlier_event_wins(cfg: BillingConfig) -> None:
    """to_dict caches each event's dict; a slot taken over by an earlier event (or a
    newly filled slot) must show up in the next dict, not the cached one."""
    from pipeline.core.state import CallState

    setup, *_ = call()
    state = CallState(setup.call_id)
    later = setup._replace(event_id="s-late", ts_ms=setup.ts_ms + 500, caller="111")
    state.add(later)
    assert state.to_dict()["events"][0]["caller"] == "111"
    state.add(setup)  # earlier: wins the SETUP slot
    first = state.to_dict()
    assert first["events"][0] == setup.to_dict() and first["seen"] == sorted({"s-late", setup.event_id})
    assert CallState.from_dict(first) == state


def test_a_call_keeps_the_start_of_its_first_cdr_when_a_late_setup_moves_it(
    cfg: BillingConfig,
) -> None:
    """A SETUP that arrives after the call's SETUP_MISSING CDR gives the next version an
    earlier time; the call stays filed under the first CDR's start (storage collapses a
    call's versions only under one start)."""
    from pipeline.core.cdr import call_start_ms
    from pipeline.core.state import CallState

    setup, ringing, answer, hangup = call()
    correlator = Correlator(cfg)
    for event in (ringing, answer, hangup):
        correlator.on_event(event)
    grace_ms = cfg.policy.reorder_grace_s * 1000
    first = correlator.advance(hangup.ts_ms + grace_ms)  # the grace runs out: SETUP_MISSING
    assert [c.status for c in first] == ["SETUP_MISSING"]
    assert correlator.call_start_ms("c1") == call_start_ms(first[0]) == answer.ts_ms
    second = correlator.on_event(setup)
    assert [c.status for c in second] == ["COMPLETE"]
    assert call_start_ms(second[0]) == setup.ts_ms != answer.ts_ms  # the CDR's own start moved
    assert correlator.call_start_ms("c1") == answer.ts_ms  # the call's did not
    state = correlator.store["c1"]
    assert CallState.from_dict(state.to_dict()).call_start_ms == answer.ts_ms
    # A state written before the anchor existed loads without one.
    old = state.to_dict()
    del old["call_start_ms"]
    assert CallState.from_dict(old).call_start_ms is None
    # A state written under the field's former name still loads its start.
    old["anchor_ms"] = answer.ts_ms
    assert CallState.from_dict(old).call_start_ms == answer.ts_ms


def test_a_call_complete_at_first_is_filed_at_its_setup(cfg: BillingConfig) -> None:
    correlator = Correlator(cfg)
    events = call()
    for event in events:
        correlator.on_event(event)
    assert correlator.call_start_ms("c1") == events[0].ts_ms
    assert correlator.call_start_ms("unknown") is None
