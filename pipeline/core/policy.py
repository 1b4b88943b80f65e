"""The recording policy: does this call make a billing CDR? (billing.md section 5)"""

from __future__ import annotations

from typing import NamedTuple

from pipeline.core.config import Policy


class Decision(NamedTuple):
    record_decision: str  # RECORDED, SKIPPED or AUDIT
    decision_reason: str | None


RECORDED = Decision("RECORDED", None)


class PolicyFacts(NamedTuple):
    """What the policy looks at, computed by the rater."""

    customer_number: str | None
    illegal: bool
    complete: bool
    hangup_source: str
    server_reason: str | None
    hold_s: int
    answered: bool
    rated_s: int
    billing_mode: str
    has_customer_rate: bool


def decide(facts: PolicyFacts, policy: Policy) -> Decision:
    """The first rule that matches decides."""
    if policy.no_cdr_e164s.matches(facts.customer_number):
        return Decision("SKIPPED", "NO_CDR_E164")
    if facts.illegal:
        if policy.record_illegal_call:
            return RECORDED
        return Decision("SKIPPED", "ILLEGAL_CALL_POLICY")
    if not facts.complete:
        return Decision("AUDIT", "INCOMPLETE")
    if facts.hangup_source == "SERVER" and not policy.records_server_hangup(facts.server_reason):
        return Decision("SKIPPED", "SERVER_HANGUP_POLICY")
    if facts.hold_s == 0 and not policy.record_zero_hold_time:
        return Decision("SKIPPED", "ZERO_HOLD_TIME_POLICY")
    if (
        facts.answered
        and facts.rated_s > 0
        and facts.billing_mode == "NORMAL"
        and not facts.has_customer_rate
    ):
        return Decision("AUDIT", "RATE_NOT_FOUND")
    return RECORDED
