"""Pure parts of the report and dashboard: range splitting, query building
(user input only as parameters), figures, time input, tables and charts."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.dashboard.charts import Bar, Series, bar_chart, nice_ticks, time_chart
from pipeline.dashboard.figures import MEASURES, Figures
from pipeline.dashboard.queries import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    PANELS,
    PanelResult,
    Scope,
    ScopeError,
    auto_step,
    cover,
    panel_sql,
    plan_segments,
)
from pipeline.dashboard.timeparse import parse_duration, parse_instant
from pipeline.dashboard.report import Report, as_dict, format_csv, format_report, panel_table
from pipeline.storage.sql import placeholders, render_params

JUNE_1 = 1717200000000  # 2024-06-01 00:00:00 UTC


# -- splitting a range into buckets ---------------------------------------------------------


@given(
    lo=st.integers(0, 40 * DAY_MS),
    length=st.integers(1, 20 * DAY_MS),
    grains=st.sampled_from([("day", "hour", "minute"), ("day", "hour"), ("day",), ("hour",), ()]),
)
def test_cover_tiles_the_range_exactly(lo: int, length: int, grains: tuple[str, ...]) -> None:
    hi = lo + length
    segments = cover(lo, hi, grains)
    assert segments[0].lo_ms == lo and segments[-1].hi_ms == hi
    for a, b in zip(segments, segments[1:], strict=False):
        assert a.hi_ms == b.lo_ms
    sizes = {"day": DAY_MS, "hour": HOUR_MS, "minute": MINUTE_MS}
    for seg in segments:
        assert seg.lo_ms < seg.hi_ms
        if seg.grain != "newest":
            assert seg.grain in grains
            assert seg.lo_ms % sizes[seg.grain] == 0 and seg.hi_ms % sizes[seg.grain] == 0
    # at most one per-call piece at each end
    assert sum(1 for s in segments if s.grain == "newest") <= 2


def test_cover_uses_the_coarsest_grain_inside() -> None:
    lo = JUNE_1 + 22 * HOUR_MS + 30 * MINUTE_MS + 1500
    hi = JUNE_1 + 3 * DAY_MS + 2 * HOUR_MS + 10 * MINUTE_MS
    got = [
        (s.grain, s.lo_ms - JUNE_1, s.hi_ms - JUNE_1)
        for s in cover(lo, hi, ("day", "hour", "minute"))
    ]
    assert got == [
        ("newest", lo - JUNE_1, 22 * HOUR_MS + 31 * MINUTE_MS),
        ("minute", 22 * HOUR_MS + 31 * MINUTE_MS, 23 * HOUR_MS),
        ("hour", 23 * HOUR_MS, DAY_MS),
        ("day", DAY_MS, 3 * DAY_MS),
        ("hour", 3 * DAY_MS, 3 * DAY_MS + 2 * HOUR_MS),
        ("minute", 3 * DAY_MS + 2 * HOUR_MS, 3 * DAY_MS + 2 * HOUR_MS + 10 * MINUTE_MS),
    ]


def test_plan_falls_back_to_calls_for_sets_without_aggregates_and_fine_steps() -> None:
    week = Scope(JUNE_1, JUNE_1 + 7 * DAY_MS)
    assert {s.grain for s in plan_segments(PANELS["summary"], week, None)} == {"day"}
    # a 15-minute step cannot use hour or day rows; traffic keeps minutes for everyone
    assert {s.grain for s in plan_segments(PANELS["traffic_series"], week, 15 * MINUTE_MS)} == {
        "minute"
    }
    # ... but not per account: those come from the per-call table
    by_account = Scope(JUNE_1, JUNE_1 + DAY_MS, account="acme")
    assert {
        s.grain for s in plan_segments(PANELS["traffic_series"], by_account, 15 * MINUTE_MS)
    } == {"newest"}


def test_auto_step_keeps_charts_readable() -> None:
    assert auto_step(HOUR_MS) == MINUTE_MS
    assert auto_step(DAY_MS) == 15 * MINUTE_MS
    assert auto_step(7 * DAY_MS) == HOUR_MS
    assert auto_step(30 * DAY_MS) == 6 * HOUR_MS
    assert auto_step(365 * DAY_MS) == 7 * DAY_MS


# -- user input stays out of the SQL text --------------------------------------------------------

NASTY = [
    "' OR 1=1 --",
    "x'); DROP TABLE cdr; --",
    "{account:String}",
    "\\' UNION SELECT * FROM system.users --",
    "acme` OR `1",
    "\u2019; SELECT 1",
]


@pytest.mark.parametrize("name", sorted(PANELS))
@pytest.mark.parametrize("source", ["agg", "raw"])
@pytest.mark.parametrize("value", NASTY)
def test_filter_values_are_parameters_never_sql_text(name: str, source: str, value: str) -> None:
    scope = Scope(JUNE_1 + 123, JUNE_1 + 2 * DAY_MS + 77, account=value, gateway=value)
    sql, params = panel_sql("cdr", PANELS[name], scope, source)
    assert value not in sql
    assert all(re.fullmatch(r"p\d+", p) for p in params)
    assert {n for n, _ in placeholders(sql)} == set(params)
    assert value in params.values()
    # rendered for servers without server-side parameters: quoted, escaped literals only
    rendered = render_params(sql, params)
    assert "DROP TABLE" not in rendered.replace("'x\\'); DROP TABLE cdr; --'", "")


def test_scope_rejects_bad_input() -> None:
    with pytest.raises(ScopeError):
        Scope(JUNE_1, JUNE_1)
    with pytest.raises(ScopeError):
        Scope(JUNE_1, JUNE_1 + 1, account="a" * 201)
    with pytest.raises(ScopeError):
        Scope(JUNE_1, JUNE_1 + 1, gateway="tab\there")
    with pytest.raises(ScopeError):
        Scope(JUNE_1, JUNE_1 + 1, account="*")
    assert Scope(JUNE_1, JUNE_1 + 1, account="").account is None


def test_call_id_prefix_reads_raw_only() -> None:
    scope = Scope(JUNE_1, JUNE_1 + DAY_MS, call_id_prefix="demo-")
    sql, params = panel_sql("cdr", PANELS["summary"], scope, "raw")
    assert "startsWith(call_id" in sql and "demo-" in params.values()
    with pytest.raises(ScopeError):
        panel_sql("cdr", PANELS["summary"], scope, "agg")


# -- time input ------------------------------------------------------------------------------------


def test_parse_instants_and_durations() -> None:
    assert parse_instant("2024-06-01") == JUNE_1
    assert parse_instant("2024-06-01T02:00+02:00") == JUNE_1
    assert parse_instant("2024-06-01 00:00:01Z") == JUNE_1 + 1000
    assert parse_instant("2024-06-01T00:30") == JUNE_1 + 30 * MINUTE_MS
    assert parse_instant(str(JUNE_1)) == JUNE_1
    assert parse_instant("now", now=42) == 42
    assert parse_duration("90m") == 90 * MINUTE_MS
    assert parse_duration("7d") == 7 * DAY_MS
    for bad in ("yesterday", "2024-13-01", "1" * 20):
        with pytest.raises(ScopeError):
            parse_instant(bad)
    for bad in ("", "7", "7x", "-1d"):
        with pytest.raises(ScopeError):
            parse_duration(bad)


# -- figures -------------------------------------------------------------------------------------


def _row(**money: str) -> list[object]:
    counts = [10, 6, 5, 300, 12000, 9, 360]
    return counts + [Decimal(money.get(k, "0")) for k in ("revenue", "cost", "at_risk")]


def test_figures_add_up_per_currency() -> None:
    f = Figures()
    f.add_row("USD", "USD", _row(revenue="1.50", cost="0.70", at_risk="0.25"))
    f.add_row("EUR", "USD", _row(revenue="2.00", cost="1.00"))
    f.add_row("", "", _row())  # unrated, no vendor: no currency, no money
    assert len(MEASURES) == 10
    assert (f.attempts, f.answered, f.recorded) == (30, 18, 15)
    assert f.asr == pytest.approx(0.6)
    assert f.acd_s == pytest.approx(50.0)
    assert f.pdd_ms == pytest.approx(12000 / 9)
    assert f.billable_minutes == Decimal("18.00")
    assert f.revenue == {"USD": Decimal("1.50"), "EUR": Decimal("2.00")}
    assert f.cost == {"USD": Decimal("1.70")}
    assert f.margin == {"EUR": Decimal("2.00"), "USD": Decimal("-0.20")}
    assert f.at_risk == {"USD": Decimal("0.25"), "EUR": Decimal("0")}
    assert f.as_dict()["margin"] == {"EUR": "2.00", "USD": "-0.20"}
    empty = Figures()
    assert (empty.asr, empty.acd_s, empty.pdd_ms) == (None, None, None)


# -- tables and charts -----------------------------------------------------------------------


def _result(name: str, rows: list[tuple[tuple[object, ...], Figures]]) -> PanelResult:
    scope = Scope(JUNE_1, JUNE_1 + DAY_MS)
    return PanelResult(PANELS[name], scope, "agg", None, rows, total_groups=len(rows))


def test_tables_csv_and_json_show_the_same_figures() -> None:
    f = Figures()
    f.add_row("USD", "USD", _row(revenue="1.5", cost="0.5"))
    result = _result("destinations", [(("4420",), f), (("",), Figures())])
    header, rows = panel_table(result)
    assert header[:3] == ["prefix", "attempts", "answered"]
    assert rows[0][:3] == ["4420", "10", "6"] and rows[1][0] == "(none)"
    assert "margin USD" in header and rows[0][header.index("margin USD")] == "1.0000"
    csv_text = format_csv(result)
    assert csv_text.splitlines()[0].startswith("prefix,attempts,answered,ASR %")
    report = Report(scope=result.scope, source="agg", panels={"destinations": result})
    text = format_report(report)
    assert "Top destinations" in text and "4420" in text
    data = as_dict(report)
    assert data["panels"]["destinations"]["rows"][0]["rate_prefix"] == "4420"
    assert data["panels"]["destinations"]["total"]["revenue"] == {"USD": "1.5"}


def test_charts_escape_text_and_carry_their_figures() -> None:
    evil = '<script>alert("x")</script>'
    svg = bar_chart("destinations", evil, [Bar(evil, 3, evil)], data={"attempts": 3})
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'data-attempts="3"' in svg and 'data-points="1"' in svg
    times = [dt.datetime(2024, 6, 1, h, tzinfo=dt.UTC) for h in range(3)]
    chart = time_chart(
        "traffic_series",
        "calls",
        times,
        3600,
        [
            Series("attempts", "c-attempts", [1, 2, 3], kind="bar"),
            Series("ASR", "c-asr", [0.5, None, 1.0], right_axis=True),
            Series("margin", "c-margin", [-2.0, 1.0, 0.0]),
        ],
        data={"attempts": 6},
    )
    assert chart.count('<rect class="c-attempts"') == 3 and 'data-attempts="6"' in chart
    assert "no calls" in time_chart("money_series", "m", [], 60, [])
    assert nice_ticks(0) == [0.0, 1.0]
    assert nice_ticks(97)[-1] >= 97
