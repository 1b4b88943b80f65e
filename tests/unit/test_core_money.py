"""The integer fee path (money.charge_units) against the Decimal reference (money.charge).

Rating charges in integer units of 10^-8; the result must be the Decimal the reference
gives, digit for digit and exponent for exponent, in every rounding mode."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.money import (
    ROUNDING_CODES,
    ROUNDING_MODES,
    charge,
    charge_units,
    round_units,
    to_units,
)

SETTINGS = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def deck_money(draw: st.DrawFn) -> Decimal:
    """Money as a deck accepts it: >= 0, < 10^12, at most 8 places, any exponent form."""
    places = draw(st.integers(0, 8))
    units = draw(st.one_of(st.integers(0, 10**6), st.integers(0, 10**12 * 10**places - 1)))
    value = Decimal(units).scaleb(-places)
    if draw(st.booleans()):  # the same value written with trailing zeros, or none
        value = value.normalize() if value else value
    return value


@SETTINGS
@given(
    connect_fee=st.one_of(st.just(Decimal(0)), deck_money()),
    rate=deck_money(),
    billable=st.one_of(st.integers(-5, 10_000), st.integers(1, 10**9)),
    places=st.integers(0, 6),
    mode=st.sampled_from(sorted(ROUNDING_MODES)),
)
def test_integer_fee_equals_the_decimal_fee(
    connect_fee: Decimal, rate: Decimal, billable: int, places: int, mode: str
) -> None:
    fee_units, rate_units = to_units(connect_fee), to_units(rate)
    assert fee_units is not None and rate_units is not None
    want = charge(connect_fee, rate, billable, places, mode)
    got = charge_units(fee_units, rate_units, billable, places, ROUNDING_CODES[mode])
    assert got.as_tuple() == want.as_tuple()  # same digits, same exponent
    assert str(got) == str(want)


@SETTINGS
@given(numerator=st.integers(0, 10**30), denominator=st.integers(1, 10**12),
       mode=st.sampled_from(sorted(ROUNDING_MODES)))
def test_round_units_rounds_the_exact_fraction(numerator: int, denominator: int, mode: str) -> None:
    exact = Fraction(numerator, denominator)
    got = round_units(numerator, denominator, ROUNDING_CODES[mode])
    floor = numerator // denominator
    rest = exact - floor
    assert got in (floor, floor + 1)
    if rest == 0 or mode == "down":
        assert got == floor
    elif mode == "up":
        assert got == floor + 1
    elif rest != Fraction(1, 2):
        assert got == (floor + 1 if rest > Fraction(1, 2) else floor)
    elif mode == "half_up":
        assert got == floor + 1
    else:  # half_even at a tie
        assert got % 2 == 0


def test_units_are_exact_or_none() -> None:
    assert to_units(Decimal("0.0150")) == 1_500_000
    assert to_units(Decimal("1E+3")) == 100_000_000_000
    assert to_units(Decimal("0.12345678")) == 12_345_678
    assert to_units(Decimal("0.123456789")) is None  # 9 places: charged in Decimal
    assert to_units(Decimal("NaN")) is None


def test_documented_ties_in_every_mode() -> None:
    """billing.md 4a: 0.0100/min for 30 s is 0.005 exactly, at 2 places."""
    want = {"half_up": "0.01", "half_even": "0.00", "up": "0.01", "down": "0.00"}
    for mode, text in want.items():
        assert str(charge_units(0, 1_000_000, 30, 2, ROUNDING_CODES[mode])) == text
