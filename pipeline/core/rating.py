"""From a call's winning events to a RatedCdr: durations, rating, policy (billing.md 3-5)."""

from __future__ import annotations

from decimal import Decimal
from typing import NamedTuple

from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig, Gateway, RateTable
from pipeline.core.events import CallEvent
from pipeline.core.money import charge, increments, zero
from pipeline.core.numbers import normalize, strip_route_prefix
from pipeline.core.policy import PolicyFacts, decide


class CallView(NamedTuple):
    """The winning event of each type for one call, and how the call was closed."""

    call_id: str
    setup: CallEvent | None
    ringing: CallEvent | None
    answer: CallEvent | None
    hangup: CallEvent | None
    last_ts_ms: int


class Rate(NamedTuple):
    table: str | None
    currency: str | None
    prefix: str | None
    rate_per_min: Decimal | None
    billable_s: int | None
    amount: Decimal | None


_NO_RATE = Rate(None, None, None, None, None, None)


def hold_seconds(hold_ms: int, precision_ms: int) -> int:
    """Whole seconds, plus one if the remaining ms reach max(1, precision)."""
    seconds, rest = divmod(hold_ms, 1000)
    return seconds + 1 if rest >= max(1, precision_ms) else seconds


def _rate(
    table: RateTable | None, number: str | None, ts_ms: int, seconds: int, config: BillingConfig
) -> Rate:
    if table is None:
        return _NO_RATE
    if number is None:
        return Rate(table.name, table.currency, None, None, None, None)
    row = table.deck.lookup(number, ts_ms)
    if row is None:
        return Rate(table.name, table.currency, None, None, None, None)
    billable = increments(seconds, row.first_increment_s, row.next_increment_s)
    policy = config.policy
    amount = charge(row.connect_fee, row.rate_per_min, billable, policy.fee_precision,
                    policy.fee_rounding)
    return Rate(table.name, table.currency, row.prefix, row.rate_per_min, billable, amount)


def _gateway_number(number: str, gateway: Gateway | None, config: BillingConfig) -> str:
    number = normalize(number)
    if gateway is not None and config.policy.gateway_route_prefix_billing:
        return strip_route_prefix(number, gateway.route_prefix)
    return number


def _egress_gateway(
    answer: CallEvent | None, hangup: CallEvent | None, ringing: CallEvent | None
) -> str | None:
    """The answering gateway; for a call not answered, the last one tried (docs/billing.md 6)."""
    for event in (answer, hangup, ringing):
        if event is not None and event.egress_gateway is not None:
            return event.egress_gateway
    return None


def rate_call(view: CallView, status: str, version: int, config: BillingConfig) -> RatedCdr:
    """Build one CDR version for a call in the given status. Pure and deterministic."""
    policy = config.policy
    setup, ringing, answer, hangup = view.setup, view.ringing, view.answer, view.hangup
    flags: list[str] = []

    answer_ts = answer.ts_ms if answer is not None else None
    if hangup is not None:
        answered = bool(hangup.answered)
        end_ts: int | None = hangup.ts_ms
        source = hangup.hangup_source or "SERVER"
    else:  # HANGUP_MISSING: closed by the server side of the pipeline
        answered = answer is not None
        end_ts = (answer_ts + policy.max_call_duration_s * 1000
                  if answer_ts is not None else view.last_ts_ms)
        source = "SERVER"
    hold_ms = 0
    if answered and answer_ts is not None and end_ts is not None:
        hold_ms = end_ts - answer_ts
        if hold_ms < 0:
            flags.append("NEGATIVE_HOLD")
            hold_ms = 0
    hold_s = hold_seconds(hold_ms, policy.hold_time_precision_ms)
    rated_s = max(0, hold_s - policy.free_time_s)
    pdd_ms = None
    if setup is not None and ringing is not None:
        pdd_ms = ringing.ts_ms - setup.ts_ms
        if pdd_ms < 0:
            flags.append("NEGATIVE_PDD")
            pdd_ms = 0

    # Customer side.
    customer_number = None
    table = None
    mode = "NORMAL"
    if setup is not None:
        ingress = config.gateways.get(setup.ingress_gateway) if setup.ingress_gateway else None
        if setup.ingress_gateway and ingress is None:
            flags.append("UNKNOWN_INGRESS_GATEWAY")
        customer_number = _gateway_number(setup.callee or "", ingress, config)
        table = config.accounts.get(setup.account_id or "")
        if table is None:
            flags.append("UNKNOWN_ACCOUNT")
        if setup.illegal_reason is not None:
            mode = "ILLEGAL"
        elif policy.free_e164s.matches(customer_number):
            mode = "FREE"
    rating_ts = setup.ts_ms if setup is not None else (answer_ts or view.last_ts_ms)
    if mode == "FREE":
        fee_rate = Rate(table.name if table else None, table.currency if table else None,
                        None, None, None, zero(policy.fee_precision))
    else:
        fee_rate = _rate(table, customer_number, rating_ts, rated_s, config)
        if mode == "ILLEGAL":
            fee_rate = fee_rate._replace(amount=zero(policy.fee_precision))

    # Vendor side.
    callee_gateway = None
    cost_rate = _NO_RATE
    if answer is not None:
        callee_gateway = answer.callee_gateway or (setup.callee if setup is not None else None)
        egress = config.gateways.get(answer.egress_gateway or "")
        if egress is None:
            flags.append("UNKNOWN_EGRESS_GATEWAY")
        elif callee_gateway is not None:
            vendor_number = _gateway_number(callee_gateway, egress, config)
            cost_rate = _rate(egress.rate_table, vendor_number, rating_ts, hold_s, config)

    server_reason = hangup.server_reason if hangup is not None else None
    decision = decide(
        PolicyFacts(
            customer_number=customer_number,
            illegal=mode == "ILLEGAL",
            complete=status == "COMPLETE",
            hangup_source=source,
            server_reason=server_reason,
            hold_s=hold_s,
            answered=answered,
            rated_s=rated_s,
            billing_mode=mode,
            has_customer_rate=fee_rate.prefix is not None,
        ),
        policy,
    )
    first = setup or answer or hangup or ringing
    assert first is not None  # a call exists because an event arrived
    return RatedCdr(
        call_id=view.call_id,
        version=version,
        status=status,
        record_decision=decision.record_decision,
        decision_reason=decision.decision_reason,
        billing_mode=mode,
        account_id=setup.account_id if setup is not None else None,
        caller=setup.caller if setup is not None else None,
        callee=setup.callee if setup is not None else None,
        callee_gateway=callee_gateway,
        ingress_gateway=setup.ingress_gateway if setup is not None else None,
        egress_gateway=_egress_gateway(answer, hangup, ringing),
        switch_id=first.switch_id,
        setup_ts_ms=setup.ts_ms if setup is not None else None,
        answer_ts_ms=answer_ts,
        end_ts_ms=end_ts,
        pdd_ms=pdd_ms,
        answered=answered,
        hold_ms=hold_ms,
        hold_s=hold_s,
        rated_s=rated_s,
        billable_s=fee_rate.billable_s,
        hangup_source=source,
        sip_code=hangup.sip_code if hangup is not None else None,
        q850_cause=hangup.q850_cause if hangup is not None else None,
        server_reason=server_reason,
        illegal_reason=setup.illegal_reason if setup is not None else None,
        rate_table=fee_rate.table,
        rate_prefix=fee_rate.prefix,
        rate_per_min=fee_rate.rate_per_min,
        currency=fee_rate.currency,
        fee=fee_rate.amount,
        cost_rate_table=cost_rate.table,
        cost_prefix=cost_rate.prefix,
        cost=cost_rate.amount,
        cost_currency=cost_rate.currency,
        tariff_version=config.tariff_version,
        flags=tuple(flags),
    )
