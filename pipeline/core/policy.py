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
    return decide_values(policy, *facts)


_SKIP_NO_CDR = Decision("SKIPPED", "NO_CDR_E164")
_SKIP_ILLEGAL = Decision("SKIPPED", "ILLEGAL_CALL_POLICY")
_AUDIT_INCOMPLETE = Decision("AUDIT", "INCOMPLETE")
_SKIP_SERVER = Decision("SKIPPED", "SERVER_HANGUP_POLICY")
_SKIP_ZERO_HOLD = Decision("SKIPPED", "ZERO_HOLD_TIME_POLICY")
_AUDIT_NO_RATE = Decision("AUDIT", "RATE_NOT_FOUND")


def decide_values(
    policy: Policy,
    customer_number: str | None,
    illegal: bool,
    complete: bool,
    hangup_source: str,
    server_reason: str | None,
    hold_s: int,
    answered: bool,
    rated_s: int,
    billing_mode: str,
    has_customer_rate: bool,
) -> Decision:
    """`decide` on the PolicyFacts fields given positionally (the rater's call, which
    skips building the record). The first rule that matches decides."""
    if policy.no_cdr_e164s.matches(customer_number):
        return _SKIP_NO_CDR
    if illegal:
        if policy.record_illegal_call:
            return RECORDED
        return _SKIP_ILLEGAL
    if not complete:
        return _AUDIT_INCOMPLETE
    if hangup_source == "SERVER" and not policy.records_server_hangup(server_reason):
        return _SKIP_SERVER
    if hold_s == 0 and not policy.record_zero_hold_time:
        return _SKIP_ZERO_HOLD
    if answered and rated_s > 0 and billing_mode == "NORMAL" and not has_customer_rate:
        return _AUDIT_NO_RATE
    return RECORDED
