"""Totals over final CDRs: what the offline summary and the demo report print."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from pipeline.core.cdr import RatedCdr


def newest_versions(cdrs: Iterable[RatedCdr]) -> dict[str, RatedCdr]:
    """The newest version of each call (the truth)."""
    newest: dict[str, RatedCdr] = {}
    for cdr in cdrs:
        held = newest.get(cdr.call_id)
        if held is None or cdr.version > held.version:
            newest[cdr.call_id] = cdr
    return newest


@dataclass
class Totals:
    calls: int = 0
    by_decision: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    flags: Counter[str] = field(default_factory=Counter)
    revenue: dict[str, Decimal] = field(default_factory=dict)
    at_risk: dict[str, Decimal] = field(default_factory=dict)
    cost: dict[str, Decimal] = field(default_factory=dict)

    def add(self, cdr: RatedCdr) -> None:
        self.calls += 1
        self.by_decision[cdr.record_decision] += 1
        self.by_status[cdr.status] += 1
        if cdr.decision_reason:
            self.by_reason[cdr.decision_reason] += 1
        self.flags.update(cdr.flags)
        if cdr.fee is not None and cdr.currency:
            bucket = self.revenue if cdr.record_decision == "RECORDED" else self.at_risk
            bucket[cdr.currency] = bucket.get(cdr.currency, Decimal(0)) + cdr.fee
        if cdr.cost is not None and cdr.cost_currency and cdr.record_decision == "RECORDED":
            self.cost[cdr.cost_currency] = self.cost.get(cdr.cost_currency, Decimal(0)) + cdr.cost


def totals(final_cdrs: Iterable[RatedCdr]) -> Totals:
    result = Totals()
    for cdr in final_cdrs:
        result.add(cdr)
    return result
