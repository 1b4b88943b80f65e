"""Exact money arithmetic: Decimal only, rounded once at the end.

Two ways to one result. `charge` is the reference, in Decimal. `charge_units` is the
one rating uses: a deck's money has at most 8 places (decks.MAX_MONEY_PLACES), so it is
an exact integer count of 10^-8 (`to_units`), and the fee connect_fee + rate *
billable_s / 60 is the integer fraction (connect_units * 60 + rate_units * billable_s) /
(60 * 10^8), rounded once to the fee's places by integer division with the mode's
rule. Python integers do not overflow, so this is exact for any input, and it skips
the Decimal context work of the reference (tests/unit/test_core_money.py checks both
agree, digit for digit and exponent for exponent, in every rounding mode).
"""

from __future__ import annotations

import decimal
from decimal import Decimal

ROUNDING_MODES = {
    "half_up": decimal.ROUND_HALF_UP,
    "half_even": decimal.ROUND_HALF_EVEN,
    "up": decimal.ROUND_UP,
    "down": decimal.ROUND_DOWN,
}
# The integer path's rounding rules, by the same names (see round_units).
HALF_UP, HALF_EVEN, UP, DOWN = 0, 1, 2, 3
ROUNDING_CODES = {"half_up": HALF_UP, "half_even": HALF_EVEN, "up": UP, "down": DOWN}

# Wide enough that connect_fee * 60 + rate * seconds is exact for any deck we accept
# (rates up to 12 integer digits and 8 places, calls up to 10^9 s). The quotient by
# 60 is exact when it terminates; otherwise its tail repeats 3s or 6s (60 = 2^2*3*5),
# so it never lies near a rounding boundary and rounding it at 60 digits then
# quantizing equals rounding the exact rational (tests/unit/test_money.py checks
# this against fractions.Fraction).
_CTX = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
_SIXTY = Decimal(60)
_QUANTA = {places: Decimal(1).scaleb(-places) for places in range(0, 7)}

UNIT_PLACES = 8  # money is held as an integer count of 10^-UNIT_PLACES
# Denominator of a fee at `places` places: value = units / (60 * 10^(8 - places)).
_DENOMINATORS = tuple(60 * 10 ** (UNIT_PLACES - places) for places in range(0, 7))
_ZEROS = tuple(Decimal(0).quantize(_QUANTA[places]) for places in range(0, 7))


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


def to_units(value: Decimal) -> int | None:
    """`value` as an exact count of 10^-8, or None when it has more places than that
    (a deck never does; a row built by hand might, and is then charged by `charge`)."""
    if not value.is_finite():
        return None
    scaled = value.scaleb(UNIT_PLACES, _CTX)
    units = int(scaled)
    return units if units == scaled else None


def round_units(numerator: int, denominator: int, mode: int) -> int:
    """numerator / denominator (both >= 0) rounded to an integer by `mode`, exactly."""
    quotient, rest = divmod(numerator, denominator)
    if rest:
        if mode == UP:
            quotient += 1
        elif mode == HALF_UP:
            if rest * 2 >= denominator:
                quotient += 1
        elif mode == HALF_EVEN:
            twice = rest * 2
            if twice > denominator or (twice == denominator and quotient & 1):
                quotient += 1
    return quotient


def charge_units(
    connect_units: int, rate_units: int, billable_s: int, places: int, mode: int
) -> Decimal:
    """`charge` on integer units (to_units) and a rounding code (ROUNDING_CODES): the same
    Decimal, with exponent -places, computed in integer arithmetic."""
    if billable_s <= 0:
        return _ZEROS[places]
    cents = round_units(connect_units * 60 + rate_units * billable_s,
                        _DENOMINATORS[places], mode)
    return Decimal(cents).scaleb(-places, _CTX)


def zero(places: int) -> Decimal:
    return _ZEROS[places]
