"""Every worked number in docs/billing.md, computed by the billing core.

The document promises these figures to operators; if the code and the page drift
apart, one of these fails. Each test names the section of the page it holds.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig, Policy, parse_policy
from pipeline.core.correlator import Correlator
from pipeline.core.events import CallEvent
from pipeline.core.money import charge, increments
from pipeline.core.rating import hold_seconds
from tests.paths import BILLING_DOC
from tests.unit.builders import call, make_config


def final(config: BillingConfig, events: list[CallEvent]) -> RatedCdr:
    correlator = Correlator(config)
    out = [cdr for event in events for cdr in correlator.on_event(event)]
    out.extend(correlator.finish())
    return max(out, key=lambda c: c.version)


def config(tmp_path: Path, **policy: Any) -> BillingConfig:
    return make_config(tmp_path, policy)


# -- section 3: hold time ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("hold_ms", "precision_ms", "hold_s"),
    [(21_049, 50, 21), (21_050, 50, 22), (21_000, 0, 21), (21_001, 0, 22), (21_998, 999, 21),
     (21_999, 999, 22)],
)
def test_hold_time_rounding(hold_ms: int, precision_ms: int, hold_s: int) -> None:
    assert hold_seconds(hold_ms, precision_ms) == hold_s


def test_a_21_049_s_call_end_to_end(tmp_path: Path) -> None:
    """21.049 s answered to the UK at 0.0600/min, 60/60 increments: 21 s held, 60 s billed."""
    cdr = final(config(tmp_path, fee_precision=4), call(hold_ms=21_049))
    assert (cdr.hold_ms, cdr.hold_s, cdr.rated_s, cdr.billable_s) == (21_049, 21, 21, 60)
    assert cdr.fee == Decimal("0.0600")
    assert final(config(tmp_path), call(hold_ms=21_050)).hold_s == 22


def test_free_time_is_taken_off_the_customer_side_only(tmp_path: Path) -> None:
    cdr = final(config(tmp_path, fee_precision=4, free_time_s=5), call(hold_ms=21_049))
    assert (cdr.hold_s, cdr.rated_s) == (21, 16)
    # The vendor bills the whole 21 s: 0.0300/min on 1/1 increments.
    assert cdr.cost == Decimal("0.0105")


# -- section 4: increments and fees ----------------------------------------------------------


def test_increments_worked_numbers() -> None:
    assert increments(95, 30, 6) == 96
    assert increments(20, 30, 6) == 30
    assert increments(61, 60, 60) == 120
    assert increments(0, 30, 6) == 0


def test_fee_worked_numbers() -> None:
    assert charge(Decimal(0), Decimal("0.1200"), 96, 4, "half_up") == Decimal("0.1920")
    assert charge(Decimal("0.0150"), Decimal("0.0100"), 600, 4, "half_up") == Decimal("0.1150")
    assert charge(Decimal("0.0150"), Decimal("0.0100"), 0, 4, "half_up") == Decimal("0.0000")


@pytest.mark.parametrize(
    ("rounding", "fee"),
    [("half_up", "0.01"), ("half_even", "0.00"), ("up", "0.01"), ("down", "0.00")],
)
def test_a_half_cent_tie_under_each_rounding(rounding: str, fee: str) -> None:
    """0.0100/min for 30 s is exactly 0.005: the tie that tells the rounding modes apart."""
    assert charge(Decimal(0), Decimal("0.0100"), 30, 2, rounding) == Decimal(fee)


def test_free_number_vendor_cost(tmp_path: Path) -> None:
    """A FREE call costs the customer 0 but the vendor still bills the whole hold time."""
    cfg = config(tmp_path, fee_precision=4, free_e164s=["1800*"])
    cdr = final(cfg, call(callee="18005550100", hold_ms=61_000))
    assert (cdr.billing_mode, cdr.record_decision) == ("FREE", "RECORDED")
    assert (cdr.fee, cdr.billable_s, cdr.rate_prefix) == (Decimal("0.0000"), None, None)
    assert (cdr.hold_s, cdr.cost_prefix, cdr.cost) == (61, "1", Decimal("0.0041"))


def test_illegal_beats_free(tmp_path: Path) -> None:
    cfg = config(tmp_path, free_e164s=["1800*"])
    events = call(callee="18005550100", setup={"illegal_reason": "BLACKLISTED"})
    cdr = final(cfg, events)
    assert (cdr.billing_mode, cdr.fee, cdr.rate_prefix) == ("ILLEGAL", Decimal("0.00"), "1")


# -- section 5: the server-hangup rule -----------------------------------------------------------


def test_max_duration_recorded_by_its_reason_override(tmp_path: Path) -> None:
    """SERVER_BILLING_RECORD_SERVER_HANG_UP = 0 with MAX_DURATION = true: recorded."""
    cfg = config(tmp_path, SERVER_BILLING_RECORD_SERVER_HANG_UP=0,
                 record_server_hangup_by_reason={"MAX_DURATION": True})
    cdr = final(cfg, call(source="SERVER", reason="MAX_DURATION"))
    assert (cdr.record_decision, cdr.decision_reason) == ("RECORDED", None)
    assert cdr.fee == Decimal("0.12")
    admin = final(cfg, call(source="SERVER", reason="ADMIN"))
    assert (admin.record_decision, admin.decision_reason) == ("SKIPPED", "SERVER_HANGUP_POLICY")
    assert admin.fee == Decimal("0.12")  # revenue at risk, still computed
    no_reason = final(cfg, call(source="SERVER"))
    assert no_reason.record_decision == "SKIPPED"


def test_a_server_closed_call_without_hangup_is_audited_first(tmp_path: Path) -> None:
    cfg = config(tmp_path, record_server_hangup=False)
    correlator = Correlator(cfg)
    for event in call(skip=("HANGUP",)):
        correlator.on_event(event)
    # Nothing is emitted until the watermark passes answer + max duration + grace.
    answer_ts = call()[2].ts_ms
    later = call("late")[0]._replace(ts_ms=answer_ts + (7200 + 10) * 1000)
    out = correlator.on_event(later)
    closed = [c for c in out if c.call_id == "c1"]
    assert [(c.status, c.record_decision, c.decision_reason) for c in closed] == [
        ("HANGUP_MISSING", "AUDIT", "INCOMPLETE")]


# -- section 7: the configuration table ---------------------------------------------------------


def _doc_table() -> dict[str, tuple[str, str]]:
    text = BILLING_DOC.read_text().split("## 7.", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| `")]
    return {c[0].strip().strip("`"): (c[1].strip(), c[2].strip()) for c in rows}


def test_every_policy_key_is_documented_with_its_default() -> None:
    table = _doc_table()
    assert set(table) == set(Policy.__dataclass_fields__)
    defaults = parse_policy({})
    for key, (default, _) in table.items():
        want = getattr(defaults, key)
        shown = default.split(" (")[0].strip("`")
        if isinstance(want, bool):
            assert shown == str(want).lower(), key
        elif isinstance(want, int):
            assert shown == str(want), key
        elif isinstance(want, str):
            assert shown == want, key
        else:
            assert shown in ("{}", "[]"), key


def test_every_vos3000_alias_is_documented() -> None:
    from pipeline.core.config import VOS3000_ALIASES

    table = _doc_table()
    for alias, key in VOS3000_ALIASES.items():
        if alias == "SERVER_BILLING_FEE_PRECISION":  # the spelling without VOS3000's typo
            continue
        assert alias in table[key][1], (alias, key)


# -- section 6: the gateway a failed call counts against ---------------------------------------


def test_egress_gateway_of_a_call_not_answered_is_the_last_tried(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    events = call(answer_after_ms=None, source="CALLEE")
    ringing = events[1]._replace(egress_gateway="gw-a")
    hangup = events[2]._replace(egress_gateway="gw-b", sip_code=486)
    cdr = final(cfg, [events[0], ringing, hangup])
    assert (cdr.egress_gateway, cdr.answered, cdr.cost, cdr.callee_gateway) == (
        "gw-b", False, None, None)
    assert final(cfg, [events[0], ringing, events[2]]).egress_gateway == "gw-a"


def test_egress_gateway_of_an_answered_call_is_the_answering_one(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    setup, ringing, answer, hangup = call()
    cdr = final(cfg, [setup, ringing._replace(egress_gateway="gw-a"), answer,
                      hangup._replace(egress_gateway="gw-b")])
    assert cdr.egress_gateway == "out" and cdr.cost == Decimal("0.03")


def test_ringing_and_hangup_keep_their_egress_gateway() -> None:
    from pipeline.core.events import parse_event

    base = {"event_id": "e", "call_id": "c", "switch_id": "s", "ts_ms": 1}
    ringing = parse_event({**base, "event_type": "RINGING", "egress_gateway": "gw-a"})
    hangup = parse_event({**base, "event_type": "HANGUP", "answered": False,
                          "hangup_source": "CALLEE", "egress_gateway": "gw-b"})
    assert (ringing.egress_gateway, hangup.egress_gateway) == ("gw-a", "gw-b")
