"""The figures of a group of calls, and how they add up.

Measures are sums (see schemas/clickhouse/0003_dashboard_aggregates.sql);
the ratios (ASR, ACD, PDD) and the margin are derived here, never stored.
Money is Decimal, per currency: revenue and revenue at risk in the customer
currency, cost in the vendor currency, margin in any currency that has one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

COUNT_MEASURES = (
    "attempts",
    "answered",
    "recorded",
    "hold_s",
    "pdd_ms_sum",
    "pdd_n",
    "billable_s",
)
MONEY_MEASURES = ("revenue", "cost", "at_risk")
MEASURES = COUNT_MEASURES + MONEY_MEASURES
_ZERO = Decimal(0)


def _add(book: dict[str, Decimal], currency: str, amount: Decimal) -> None:
    if not currency and amount == 0:
        return  # calls without a currency (no rate, no vendor) and nothing to count
    key = currency or "-"
    book[key] = book.get(key, _ZERO) + amount


@dataclass
class Figures:
    """Summed measures of some calls, money per currency."""

    attempts: int = 0
    answered: int = 0
    recorded: int = 0
    hold_s: int = 0
    pdd_ms_sum: int = 0
    pdd_n: int = 0
    billable_s: int = 0
    revenue: dict[str, Decimal] = field(default_factory=dict)
    cost: dict[str, Decimal] = field(default_factory=dict)
    at_risk: dict[str, Decimal] = field(default_factory=dict)

    def add_row(self, currency: str, cost_currency: str, values: Sequence[Any]) -> None:
        """Add one result row: `values` are the MEASURES in order."""
        for name, value in zip(COUNT_MEASURES, values, strict=False):
            setattr(self, name, getattr(self, name) + int(value or 0))
        revenue, cost, at_risk = (_decimal(v) for v in values[len(COUNT_MEASURES) :])
        _add(self.revenue, currency, revenue)
        _add(self.at_risk, currency, at_risk)
        _add(self.cost, cost_currency, cost)

    def merge(self, other: Figures) -> None:
        for name in COUNT_MEASURES:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for book, theirs in (
            (self.revenue, other.revenue),
            (self.cost, other.cost),
            (self.at_risk, other.at_risk),
        ):
            for currency, amount in theirs.items():
                book[currency] = book.get(currency, _ZERO) + amount

    # -- derived ------------------------------------------------------------------

    @property
    def asr(self) -> float | None:
        """Answered / attempts; None without attempts."""
        return self.answered / self.attempts if self.attempts else None

    @property
    def acd_s(self) -> float | None:
        """Average hold time of answered calls, seconds."""
        return self.hold_s / self.answered if self.answered else None

    @property
    def pdd_ms(self) -> float | None:
        """Average post-dial delay of the calls that have one, ms."""
        return self.pdd_ms_sum / self.pdd_n if self.pdd_n else None

    @property
    def billable_minutes(self) -> Decimal:
        return (Decimal(self.billable_s) / 60).quantize(Decimal("0.01"))

    @property
    def currencies(self) -> list[str]:
        return sorted(set(self.revenue) | set(self.cost) | set(self.at_risk))

    @property
    def margin(self) -> dict[str, Decimal]:
        return {
            c: self.revenue.get(c, _ZERO) - self.cost.get(c, _ZERO)
            for c in sorted(set(self.revenue) | set(self.cost))
        }

    def money(self, book: str, currency: str) -> Decimal:
        values: Mapping[str, Decimal] = self.margin if book == "margin" else getattr(self, book)
        return values.get(currency, _ZERO)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly: money as decimal strings."""
        return {
            "attempts": self.attempts,
            "answered": self.answered,
            "recorded": self.recorded,
            "asr": self.asr,
            "acd_s": self.acd_s,
            "pdd_ms": self.pdd_ms,
            "hold_s": self.hold_s,
            "billable_s": self.billable_s,
            "billable_minutes": str(self.billable_minutes),
            "revenue": _money_dict(self.revenue),
            "cost": _money_dict(self.cost),
            "margin": _money_dict(self.margin),
            "at_risk": _money_dict(self.at_risk),
        }


def _money_dict(book: Mapping[str, Decimal]) -> dict[str, str]:
    return {currency: str(amount) for currency, amount in sorted(book.items())}


def _decimal(value: Any) -> Decimal:
    if value is None:
        return _ZERO
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        raise TypeError("money came back as a float")
    return Decimal(str(value))
