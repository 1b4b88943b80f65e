"""From a call's winning events to a RatedCdr: durations, rating, policy (billing.md 3-5).

One implementation, two ways in: `rate_call` takes CallEvents (a CallView; re-rating
builds those), the correlator gives its packed events' fields (packed.fields), and
both end in `rate_fields`. What rating needs from the configuration is looked up once
per configuration (`Rater`), not per call.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple, cast

from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig, Gateway, RateTable
from pipeline.core.events import CallEvent
from pipeline.core.money import ROUNDING_CODES, charge, charge_units, increments, zero
from pipeline.core.numbers import normalize, strip_route_prefix
from pipeline.core.packed import (
    ACCOUNT,
    ANSWERED,
    CALLEE,
    CALLEE_GW,
    CALLER,
    EGRESS,
    ILLEGAL,
    INGRESS,
    Q850,
    REASON,
    SIP,
    SOURCE,
    SWITCH,
    TS,
    event_fields,
)
from pipeline.core.policy import decide_values


class CallView(NamedTuple):
    """The winning event of each type for one call, and how the call was closed."""

    call_id: str
    setup: CallEvent | None
    ringing: CallEvent | None
    answer: CallEvent | None
    hangup: CallEvent | None
    last_ts_ms: int


# One side's rating: (table, currency, prefix, rate_per_min, billable_s, amount).
Price = tuple[str | None, str | None, str | None, Decimal | None, int | None, Decimal | None]
_NO_RATE: Price = (None, None, None, None, None, None)
# A RatedCdr from its 38 values, without keyword handling.
_new_cdr = cast(Callable[[type[RatedCdr], tuple[Any, ...]], RatedCdr], tuple.__new__)


def hold_seconds(hold_ms: int, precision_ms: int) -> int:
    """Whole seconds, plus one if the remaining ms reach max(1, precision)."""
    seconds, rest = divmod(hold_ms, 1000)
    return seconds + 1 if rest >= max(1, precision_ms) else seconds


class Rater:
    """A BillingConfig's rating inputs, read once: policy values, tables, gateways."""

    __slots__ = (
        "accounts",
        "config",
        "free_e164s",
        "free_s",
        "gateways",
        "hold_precision_ms",
        "max_call_ms",
        "mode",
        "places",
        "policy",
        "rounding",
        "strip_route",
        "tariff_version",
        "zero_fee",
    )

    def __init__(self, config: BillingConfig) -> None:
        policy = config.policy
        self.config = config
        self.policy = policy
        self.places = policy.fee_precision
        self.rounding = policy.fee_rounding
        self.mode = ROUNDING_CODES[policy.fee_rounding]
        self.zero_fee = zero(policy.fee_precision)
        self.hold_precision_ms = policy.hold_time_precision_ms
        self.free_s = policy.free_time_s
        self.max_call_ms = policy.max_call_duration_s * 1000
        self.strip_route = policy.gateway_route_prefix_billing
        self.free_e164s = policy.free_e164s
        self.gateways = dict(config.gateways)  # plain dicts: the cheapest lookups
        self.accounts = dict(config.accounts)
        self.tariff_version = config.tariff_version

    def number(self, number: str, gateway: Gateway | None) -> str:
        """The number as rated: digits, without the gateway's route prefix (section 4)."""
        number = normalize(number)
        if gateway is not None and self.strip_route:
            return strip_route_prefix(number, gateway.route_prefix)
        return number

    def price(self, table: RateTable | None, number: str, ts_ms: int, seconds: int) -> Price:
        """One side's rate and amount for `seconds` at `ts_ms` (section 4)."""
        if table is None:
            return _NO_RATE
        row = table.deck.lookup(number, ts_ms)
        if row is None:
            return (table.name, table.currency, None, None, None, None)
        billable = increments(seconds, row.first_increment_s, row.next_increment_s)
        rate_units, connect_units = row.rate_units, row.connect_units
        if rate_units is not None and connect_units is not None:
            amount = charge_units(connect_units, rate_units, billable, self.places, self.mode)
        else:
            amount = charge(row.connect_fee, row.rate_per_min, billable, self.places,
                            self.rounding)
        return (table.name, table.currency, row.prefix, row.rate_per_min, billable, amount)


_last_rater: Rater | None = None


def rater_for(config: BillingConfig) -> Rater:
    """The Rater of `config` (the last one is kept: callers rate with one config)."""
    global _last_rater
    rater = _last_rater
    if rater is None or rater.config is not config:
        rater = _last_rater = Rater(config)
    return rater


def rate_call(view: CallView, status: str, version: int, config: BillingConfig) -> RatedCdr:
    """Build one CDR version for a call in the given status. Pure and deterministic."""
    return rate_fields(
        rater_for(config), view.call_id, status, version, view.last_ts_ms,
        None if view.setup is None else event_fields(view.setup),
        None if view.ringing is None else event_fields(view.ringing),
        None if view.answer is None else event_fields(view.answer),
        None if view.hangup is None else event_fields(view.hangup),
    )


def rate_fields(
    rater: Rater,
    call_id: str,
    status: str,
    version: int,
    last_ts_ms: int,
    setup: list[Any] | None,
    ringing: list[Any] | None,
    answer: list[Any] | None,
    hangup: list[Any] | None,
) -> RatedCdr:
    """`rate_call` on the winning events' fields in packed.fields' layout."""
    flags: list[str] = []

    answer_ts: int | None = answer[TS] if answer is not None else None
    if hangup is not None:
        answered = bool(hangup[ANSWERED])
        end_ts: int | None = hangup[TS]
        source = hangup[SOURCE] or "SERVER"
    else:  # HANGUP_MISSING: closed by the server side of the pipeline
        answered = answer is not None
        end_ts = answer_ts + rater.max_call_ms if answer_ts is not None else last_ts_ms
        source = "SERVER"
    hold_ms = 0
    if answered and answer_ts is not None and end_ts is not None:
        hold_ms = end_ts - answer_ts
        if hold_ms < 0:
            flags.append("NEGATIVE_HOLD")
            hold_ms = 0
    hold_s = hold_seconds(hold_ms, rater.hold_precision_ms)
    rated_s = max(0, hold_s - rater.free_s)
    pdd_ms = None
    if setup is not None and ringing is not None:
        pdd_ms = ringing[TS] - setup[TS]
        if pdd_ms < 0:
            flags.append("NEGATIVE_PDD")
            pdd_ms = 0

    # Customer side.
    customer_number = None
    table = None
    mode = "NORMAL"
    if setup is not None:
        ingress_name = setup[INGRESS]
        ingress = rater.gateways.get(ingress_name) if ingress_name else None
        if ingress_name and ingress is None:
            flags.append("UNKNOWN_INGRESS_GATEWAY")
        customer_number = rater.number(setup[CALLEE] or "", ingress)
        table = rater.accounts.get(setup[ACCOUNT] or "")
        if table is None:
            flags.append("UNKNOWN_ACCOUNT")
        if setup[ILLEGAL] is not None:
            mode = "ILLEGAL"
        elif rater.free_e164s.matches(customer_number):
            mode = "FREE"
    rating_ts = setup[TS] if setup is not None else (answer_ts or last_ts_ms)
    if mode == "FREE":
        fee: Price = (table.name if table else None, table.currency if table else None,
                      None, None, None, rater.zero_fee)
    else:
        if table is not None and customer_number is not None:
            fee = rater.price(table, customer_number, rating_ts, rated_s)
        elif table is not None:
            fee = (table.name, table.currency, None, None, None, None)
        else:
            fee = _NO_RATE
        if mode == "ILLEGAL":
            fee = (*fee[:5], rater.zero_fee)

    # Vendor side.
    callee_gateway = None
    cost = _NO_RATE
    if answer is not None:
        callee_gateway = answer[CALLEE_GW] or (setup[CALLEE] if setup is not None else None)
        egress = rater.gateways.get(answer[EGRESS] or "")
        if egress is None:
            flags.append("UNKNOWN_EGRESS_GATEWAY")
        elif callee_gateway is not None:
            vendor_number = rater.number(callee_gateway, egress)
            cost = rater.price(egress.rate_table, vendor_number, rating_ts, hold_s)

    server_reason = hangup[REASON] if hangup is not None else None
    decision = decide_values(
        rater.policy, customer_number, mode == "ILLEGAL", status == "COMPLETE", source,
        server_reason, hold_s, answered, rated_s, mode, fee[2] is not None,
    )
    first = setup or answer or hangup or ringing
    assert first is not None  # a call exists because an event arrived
    egress_gateway = None
    for event in (answer, hangup, ringing):  # the answering gateway, else the last tried
        if event is not None and event[EGRESS] is not None:
            egress_gateway = event[EGRESS]
            break
    return _new_cdr(RatedCdr, (
        call_id,
        version,
        status,
        decision[0],
        decision[1],
        mode,
        setup[ACCOUNT] if setup is not None else None,
        setup[CALLER] if setup is not None else None,
        setup[CALLEE] if setup is not None else None,
        callee_gateway,
        setup[INGRESS] if setup is not None else None,
        egress_gateway,
        first[SWITCH],
        setup[TS] if setup is not None else None,
        answer_ts,
        end_ts,
        pdd_ms,
        answered,
        hold_ms,
        hold_s,
        rated_s,
        fee[4],
        source,
        hangup[SIP] if hangup is not None else None,
        hangup[Q850] if hangup is not None else None,
        server_reason,
        setup[ILLEGAL] if setup is not None else None,
        fee[0],
        fee[2],
        fee[3],
        fee[1],
        fee[5],
        cost[0],
        cost[2],
        cost[5],
        cost[1],
        rater.tariff_version,
        tuple(flags),
    ))
