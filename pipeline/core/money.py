"""Exact money arithmetic: Decimal only, rounded once at the end."""

from __future__ import annotations

import decimal
from decimal import Decimal

ROUNDING_MODES = {
    "half_up": decimal.ROUND_HALF_UP,
    "half_even": decimal.ROUND_HALF_EVEN,
    "up": decimal.ROUND_UP,
    "down": decimal.ROUND_DOWN,
}

# Wide enough that connect_fee * 60 + rate * seconds is exact for any deck we accept
# (rates up to 12 integer digits and 8 places, calls up to 10^9 s). The quotient by
# 60 is exact when it terminates; otherwise its tail repeats 3s or 6s (60 = 2^2*3*5),
# so it never lies near a rounding boundary and rounding it at 60 digits then
# quantizing equals rounding the exact rational (tests/unit/test_money.py checks
# this against fractions.Fraction).
_CTX = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
_SIXTY = Decimal(60)
_QUANTA = {places: Decimal(1).scaleb(-places) for places in range(0, 7)}


def increments(rated_s: int, first_s: int, next_s: int) -> int:
    """Billable seconds under first/next increments (billing.md section 4)."""
    if rated_s <= 0:
        return 0
    if rated_s <= first_s:
        return first_s
    rest = rated_s - first_s
    return first_s + -(-rest // next_s) * next_s


def charge(
    connect_fee: Decimal,
    rate_per_min: Decimal,
    billable_s: int,
    places: int,
    rounding: str,
) -> Decimal:
    """connect_fee + rate_per_min * billable_s / 60, rounded once; 0 when nothing is billable."""
    quantum = _QUANTA[places]
    if billable_s <= 0:
        return Decimal(0).quantize(quantum)
    numerator = _CTX.add(_CTX.multiply(connect_fee, _SIXTY),
                         _CTX.multiply(rate_per_min, billable_s))
    return _CTX.divide(numerator, _SIXTY).quantize(quantum, rounding=ROUNDING_MODES[rounding])


def zero(places: int) -> Decimal:
    return Decimal(0).quantize(_QUANTA[places])
