"""The RatedCdr output record (docs/billing.md section 6)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, NamedTuple

STATUSES = ("COMPLETE", "ANSWER_MISSING", "SETUP_MISSING", "HANGUP_MISSING")
DECISIONS = ("RECORDED", "SKIPPED", "AUDIT")
DECISION_REASONS = (
    "NO_CDR_E164",
    "ILLEGAL_CALL_POLICY",
    "INCOMPLETE",
    "SERVER_HANGUP_POLICY",
    "ZERO_HOLD_TIME_POLICY",
    "RATE_NOT_FOUND",
)
BILLING_MODES = ("NORMAL", "FREE", "ILLEGAL")
MONEY_FIELDS = ("rate_per_min", "fee", "cost")

# version = distinct events folded in x VERSION_STRIDE (+ re-ratings of that
# version): the correlator's versions are multiples of the stride, a re-rating
# writes the stored version + 1, and a later correction from new events
# (one more event, one more stride) still outranks every re-rating before it.
VERSION_STRIDE = 1000


class RatedCdr(NamedTuple):
    """One version of a call's rated CDR. The newest version of a call is the truth.

    Beyond the classic CDR fields: `cost_currency` (the vendor table's currency) and
    `flags` (data-quality remarks such as NEGATIVE_HOLD), both documented in
    docs/billing.md.
    """

    call_id: str
    version: int
    status: str
    record_decision: str
    decision_reason: str | None
    billing_mode: str
    account_id: str | None
    caller: str | None
    callee: str | None
    callee_gateway: str | None
    ingress_gateway: str | None
    egress_gateway: str | None
    switch_id: str
    setup_ts_ms: int | None
    answer_ts_ms: int | None
    end_ts_ms: int | None
    pdd_ms: int | None
    answered: bool
    hold_ms: int
    hold_s: int
    rated_s: int
    billable_s: int | None
    hangup_source: str
    sip_code: int | None
    q850_cause: int | None
    server_reason: str | None
    illegal_reason: str | None
    rate_table: str | None
    rate_prefix: str | None
    rate_per_min: Decimal | None
    currency: str | None
    fee: Decimal | None
    cost_rate_table: str | None
    cost_prefix: str | None
    cost: Decimal | None
    cost_currency: str | None
    tariff_version: str
    flags: tuple[str, ...] = ()

    def to_json_dict(self) -> dict[str, Any]:
        """Spec field names; money as decimal strings, flags as a list (JSON Lines output)."""
        out = self._asdict()
        for name in MONEY_FIELDS:
            value = out[name]
            if value is not None:
                out[name] = str(value)
        out["flags"] = list(self.flags)
        return out

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> RatedCdr:
        """Inverse of to_json_dict."""
        values = dict(data)
        for name in MONEY_FIELDS:
            if values.get(name) is not None:
                values[name] = Decimal(values[name])
        values["flags"] = tuple(values.get("flags") or ())
        return cls(**values)


CDR_FIELDS: tuple[str, ...] = RatedCdr._fields


CALL_START_SOURCES: tuple[str, ...] = ("setup_ts_ms", "answer_ts_ms", "end_ts_ms")


def call_start_ms(cdr: RatedCdr | Mapping[str, Any]) -> int | None:
    """The one call-start rule: where a call is filed in time. Its SETUP time, else (a
    SETUP_MISSING call) its answer or end time; None for a CDR with none of them. It is
    the `cdr` table's `call_start_ms` and the `cdr-call-start-ms` record header. The
    correlator pins the value of a call's first CDR (CallState.call_start_ms), so that a
    later version that gains an earlier time is still filed with the first. Takes a
    RatedCdr or a mapping with its fields (a stored or decoded row)."""
    if type(cdr) is not RatedCdr and isinstance(cdr, Mapping):
        values: Any = (cdr.get(name) for name in CALL_START_SOURCES)
    else:
        values = (cdr.setup_ts_ms, cdr.answer_ts_ms, cdr.end_ts_ms)
    for value in values:
        if value is not None:
            return int(value)
    return None
