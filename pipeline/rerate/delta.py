"""The delta report of a re-rating run: what billing gains or loses, and where.

Per account and currency: the revenue before and after (fees of RECORDED calls, the
figure an invoice is built from), the difference, how many calls were re-rated and
how many changed, and the destinations (customer rate prefixes) that moved most.
Besides: record-decision transitions (SKIPPED -> RECORDED is recovered revenue) and
the vendor cost per egress gateway (every call's cost: the vendor bills answered
calls whatever our record decision). Pure: fed one call at a time by the runner.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipeline.core.cdr import RatedCdr
from pipeline.rerate.facts import (
    I_ACCOUNT,
    I_COST,
    I_COST_CURRENCY,
    I_CURRENCY,
    I_DECISION,
    I_EGRESS,
    I_FEE,
    I_RATE_PREFIX,
    StoredRow,
)

ZERO = Decimal(0)
TOP_DESTINATIONS = 5


def _revenue(decision: str, fee: Decimal | None) -> Decimal:
    return fee if fee is not None and decision == "RECORDED" else ZERO


@dataclass
class Line:
    """One (account, currency) or one (destination) or one (gateway, currency) row."""

    old_total: Decimal = ZERO
    new_total: Decimal = ZERO
    calls: int = 0
    calls_changed: int = 0

    @property
    def difference(self) -> Decimal:
        return self.new_total - self.old_total

    def as_dict(self) -> dict[str, Any]:
        return {
            "old_total": str(self.old_total),
            "new_total": str(self.new_total),
            "difference": str(self.difference),
            "calls": self.calls,
            "calls_changed": self.calls_changed,
        }


def _merge_lines(mine: dict[Any, Line], theirs: dict[Any, Line]) -> None:
    for key, line in theirs.items():
        held = mine.setdefault(key, Line())
        held.old_total += line.old_total
        held.new_total += line.new_total
        held.calls += line.calls
        held.calls_changed += line.calls_changed


@dataclass
class DeltaReport:
    accounts: dict[tuple[str, str], Line] = field(default_factory=dict)
    destinations: dict[tuple[str, str, str], Line] = field(default_factory=dict)
    vendor_cost: dict[tuple[str, str], Line] = field(default_factory=dict)
    decisions: Counter[str] = field(default_factory=Counter)
    recovered: dict[str, Decimal] = field(default_factory=dict)  # currency -> revenue
    changed_fields: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    calls_changed: int = 0

    def merge(self, other: DeltaReport) -> None:
        """Add another share's report to this one."""
        _merge_lines(self.accounts, other.accounts)
        _merge_lines(self.destinations, other.destinations)
        _merge_lines(self.vendor_cost, other.vendor_cost)
        self.decisions.update(other.decisions)
        for currency, amount in other.recovered.items():
            self.recovered[currency] = self.recovered.get(currency, ZERO) + amount
        self.changed_fields.update(other.changed_fields)
        self.calls += other.calls
        self.calls_changed += other.calls_changed

    def add(self, old: StoredRow, new: RatedCdr, changed: tuple[str, ...] | None) -> None:
        """Account one re-rated call; `changed` is None (or empty) when it did not change."""
        self.calls += 1
        old_fee = old[I_FEE]
        old_rev = old_fee if old_fee is not None and old[I_DECISION] == "RECORDED" else ZERO
        key = (new.account_id or "", new.currency or "")
        line = self.accounts.get(key)
        if line is None:
            line = self.accounts[key] = Line()
        line.calls += 1
        if not changed:
            line.old_total += old_rev
            line.new_total += old_rev
            if new.cost is not None or new.egress_gateway is not None:
                self._cost(new)
            return
        self.calls_changed += 1
        self.changed_fields.update(changed)
        new_rev = _revenue(new.record_decision, new.fee)
        line.new_total += new_rev
        line.calls_changed += 1
        old_key = (old[I_ACCOUNT] or "", old[I_CURRENCY] or "")
        old_line = line if old_key == key else self.accounts.setdefault(old_key, Line())
        old_line.old_total += old_rev
        if old_line is not line:
            old_line.calls_changed += 1
        prefix = new.rate_prefix or old[I_RATE_PREFIX] or "-"
        dest = self.destinations.get((*key, prefix))
        if dest is None:
            dest = self.destinations[(*key, prefix)] = Line()
        dest.calls_changed += 1
        dest.old_total += old_rev
        dest.new_total += new_rev
        if old[I_DECISION] != new.record_decision:
            self.decisions[f"{old[I_DECISION]}->{new.record_decision}"] += 1
            if new.record_decision == "RECORDED" and new.fee is not None and new.currency:
                self.recovered[new.currency] = self.recovered.get(new.currency, ZERO) + new.fee
        self._cost_changed(old, new)

    def _cost(self, new: RatedCdr) -> None:
        line = self.vendor_cost.setdefault(
            (new.egress_gateway or "", new.cost_currency or ""), Line()
        )
        line.calls += 1
        amount = new.cost if new.cost is not None else ZERO
        line.old_total += amount
        line.new_total += amount

    def _cost_changed(self, old: StoredRow, new: RatedCdr) -> None:
        old_key = (old[I_EGRESS] or "", old[I_COST_CURRENCY] or "")
        new_key = (new.egress_gateway or "", new.cost_currency or "")
        if old[I_EGRESS] is not None or old[I_COST] is not None:
            line = self.vendor_cost.setdefault(old_key, Line())
            line.old_total += old[I_COST] if old[I_COST] is not None else ZERO
            if old_key != new_key:
                line.calls_changed += 1
        if new.egress_gateway is not None or new.cost is not None:
            line = self.vendor_cost.setdefault(new_key, Line())
            line.calls += 1
            line.new_total += new.cost if new.cost is not None else ZERO
            if old[I_COST] != new.cost:
                line.calls_changed += 1

    # -- output -------------------------------------------------------------------------

    def top_destinations(self, account: str, currency: str) -> list[tuple[str, Line]]:
        rows = [
            (p, line)
            for (a, c, p), line in self.destinations.items()
            if (a, c) == (account, currency)
        ]
        rows.sort(key=lambda item: (-abs(item[1].difference), -item[1].calls_changed, item[0]))
        return rows[:TOP_DESTINATIONS]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (decimals as strings); what `rerate_runs.delta_summary` stores."""
        return {
            "calls": self.calls,
            "calls_changed": self.calls_changed,
            "accounts": [
                {
                    "account_id": account,
                    "currency": currency,
                    **line.as_dict(),
                    "top_destinations": [
                        {"prefix": prefix, **dest.as_dict()}
                        for prefix, dest in self.top_destinations(account, currency)
                    ],
                }
                for (account, currency), line in sorted(self.accounts.items())
            ],
            "decision_changes": dict(sorted(self.decisions.items())),
            "recovered_revenue": {cur: str(v) for cur, v in sorted(self.recovered.items())},
            "vendor_cost": [
                {"egress_gateway": gw, "currency": cur, **line.as_dict()}
                for (gw, cur), line in sorted(self.vendor_cost.items())
                if line.calls_changed or line.difference
            ],
            "changed_fields": dict(self.changed_fields.most_common()),
        }


def _signed(value: Decimal) -> str:
    return f"+{value}" if value > 0 else str(value)


def format_report(report: DeltaReport) -> str:
    """The delta report as a plain-text table for the terminal."""
    lines = [
        f"calls re-rated {report.calls}, changed {report.calls_changed}",
        "",
        f"{'account':<16} {'currency':<8} {'calls':>9} {'changed':>9} "
        f"{'old total':>16} {'new total':>16} {'difference':>14}",
    ]
    for (account, currency), line in sorted(report.accounts.items()):
        lines.append(
            f"{account or '-':<16} {currency or '-':<8} {line.calls:>9} {line.calls_changed:>9} "
            f"{line.old_total!s:>16} {line.new_total!s:>16} {_signed(line.difference):>14}"
        )
        for prefix, dest in report.top_destinations(account, currency):
            lines.append(
                f"    destination {prefix:<12} changed {dest.calls_changed:>7}   "
                f"{dest.old_total} -> {dest.new_total} ({_signed(dest.difference)})"
            )
    if report.decisions:
        lines.append("")
        lines.append(
            "record decisions: "
            + ", ".join(f"{k} {v}" for k, v in sorted(report.decisions.items()))
        )
    if report.recovered:
        lines.append(
            "recovered revenue (now RECORDED): "
            + ", ".join(f"{cur} {v}" for cur, v in sorted(report.recovered.items()))
        )
    cost_lines = [
        (key, line)
        for key, line in sorted(report.vendor_cost.items())
        if line.calls_changed or line.difference
    ]
    if cost_lines:
        lines.append("")
        lines.append("vendor cost by egress gateway:")
        for (gw, cur), line in cost_lines:
            lines.append(
                f"    {gw or '-':<16} {cur or '-':<4} changed {line.calls_changed:>7}   "
                f"{line.old_total} -> {line.new_total} ({_signed(line.difference)})"
            )
    if report.changed_fields:
        lines.append("")
        lines.append(
            "fields changed: "
            + ", ".join(f"{k} {v}" for k, v in report.changed_fields.most_common())
        )
    return "\n".join(lines)
