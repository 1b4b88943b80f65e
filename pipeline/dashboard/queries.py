"""The dashboard's panels as parameterised ClickHouse queries.

Every panel can be computed from two sources, with the same figures:

* `agg` (what the dashboard and `report` use): the aggregates `cdr_agg`
  for whole days, hours and minutes inside the time range, and the per-call
  table `cdr_newest` for the ragged ends and for filter combinations that
  have no aggregate; both hold the newest CDR versions only.
* `raw`: `cdr FINAL` directly (the reference the tests and the benchmark
  compare with; slow on millions of CDRs).

User input (time range, account, gateway) only ever reaches ClickHouse as
`{name:Type}` query parameters. What is pasted into the SQL text comes from
this module's own constants.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.dashboard.figures import MEASURES, Figures
from pipeline.dashboard.refresh import (
    ALL,
    BREAKDOWN_KEYS,
    GATEWAY_ROLES,
    PER_CALL_DIMENSIONS,
    PER_CALL_MEASURES,
    PLAN,
)
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.sql import check_identifier

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
GRAIN_MS = {"day": DAY_MS, "hour": HOUR_MS, "minute": MINUTE_MS}
SOURCES = ("agg", "raw")
MAX_POINTS = 200
STEPS_MS = (
    MINUTE_MS,
    5 * MINUTE_MS,
    15 * MINUTE_MS,
    HOUR_MS,
    3 * HOUR_MS,
    6 * HOUR_MS,
    DAY_MS,
    7 * DAY_MS,
)
MAX_FILTER_LENGTH = 200


class ScopeError(ValueError):
    """A time range or filter value the dashboard refuses."""


def check_filter_value(name: str, value: str | None) -> str | None:
    """A filter value is any printable text up to MAX_FILTER_LENGTH
    characters (it is bound as a parameter, so quotes are harmless); empty
    means no filter."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ScopeError(f"{name}: expected text")
    if len(value) > MAX_FILTER_LENGTH:
        raise ScopeError(f"{name}: longer than {MAX_FILTER_LENGTH} characters")
    if not value.isprintable():
        raise ScopeError(f"{name}: control characters are not allowed")
    if value == ALL:
        raise ScopeError(f"{name}: {ALL!r} is reserved")
    return value


@dataclass(frozen=True)
class Scope:
    """What the panels cover: calls that started in [from_ms, to_ms), of one
    account and/or through one gateway (ingress or egress) if given."""

    from_ms: int
    to_ms: int
    account: str | None = None
    gateway: str | None = None
    call_id_prefix: str | None = None  # raw source only (the demo's own calls)

    def __post_init__(self) -> None:
        if self.to_ms <= self.from_ms:
            raise ScopeError("the time range is empty: 'to' must be after 'from'")
        if not (0 <= self.from_ms < 2**42 and 0 < self.to_ms <= 2**42):
            raise ScopeError("the time range is out of bounds")
        object.__setattr__(self, "account", check_filter_value("account", self.account))
        object.__setattr__(self, "gateway", check_filter_value("gateway", self.gateway))
        object.__setattr__(
            self, "call_id_prefix", check_filter_value("call_id_prefix", self.call_id_prefix)
        )

    @property
    def span_ms(self) -> int:
        return self.to_ms - self.from_ms


def auto_step(span_ms: int) -> int:
    """The shortest step from STEPS_MS that draws at most MAX_POINTS points."""
    for step in STEPS_MS:
        if span_ms / step <= MAX_POINTS:
            return step
    return STEPS_MS[-1]


@dataclass(frozen=True)
class Segment:
    """Part of a time range read at one grain ('newest' = per call)."""

    grain: str
    lo_ms: int
    hi_ms: int


def cover(lo_ms: int, hi_ms: int, grains: Sequence[str]) -> list[Segment]:
    """Split [lo_ms, hi_ms) into whole buckets of `grains` (coarsest first)
    and per-call rest."""
    if lo_ms >= hi_ms:
        return []
    if not grains:
        return [Segment("newest", lo_ms, hi_ms)]
    size = GRAIN_MS[grains[0]]
    start = -(-lo_ms // size) * size
    end = hi_ms // size * size
    if start >= end:
        return cover(lo_ms, hi_ms, grains[1:])
    return [
        *cover(lo_ms, start, grains[1:]),
        Segment(grains[0], start, end),
        *cover(end, hi_ms, grains[1:]),
    ]


@dataclass(frozen=True)
class PanelSpec:
    name: str
    title: str
    breakdown: str
    keys: tuple[str, ...] = ()
    by: str | None = None  # "account" or "gateway": one row per account / gateway
    series: bool = False
    where: str = ""  # a constant condition on the breakdown's keys
    top: bool = False  # keep the largest groups only

    @property
    def group_columns(self) -> tuple[str, ...]:
        by = {"account": ("account_id",), "gateway": ("gateway", "gateway_role")}.get(
            self.by or "", ()
        )
        return by + self.keys


PANELS: dict[str, PanelSpec] = {
    spec.name: spec
    for spec in (
        PanelSpec("summary", "Totals", "traffic"),
        PanelSpec("traffic_series", "Calls and ASR over time", "traffic", series=True),
        PanelSpec("money_series", "Revenue and margin over time", "traffic", series=True),
        PanelSpec(
            "hangups",
            "Hangup sources and server reasons",
            "outcome",
            keys=("hangup_source", "server_reason"),
        ),
        PanelSpec(
            "at_risk",
            "Revenue at risk by decision reason",
            "outcome",
            keys=("record_decision", "decision_reason"),
            where="record_decision != 'RECORDED'",
        ),
        PanelSpec(
            "destinations", "Top destinations", "destination", keys=("rate_prefix",), top=True
        ),
        PanelSpec("gateways", "Top gateways", "traffic", by="gateway", top=True),
        PanelSpec("accounts", "Top accounts", "traffic", by="account", top=True),
    )
}


@dataclass
class PanelResult:
    """Rows of a panel: (key values, figures); `t` set for time series."""

    spec: PanelSpec
    scope: Scope
    source: str
    step_ms: int | None
    rows: list[tuple[tuple[Any, ...], Figures]]
    total_groups: int = 0  # before a top-N cut

    @property
    def total(self) -> Figures:
        out = Figures()
        for _, figures in self.rows:
            out.merge(figures)
        return out


# -- SQL ------------------------------------------------------------------------------


def _set_for(spec: PanelSpec, scope: Scope) -> str:
    account = scope.account is not None or spec.by == "account"
    gateway = scope.gateway is not None or spec.by == "gateway"
    return {
        (False, False): "all",
        (True, False): "account",
        (False, True): "gateway",
        (True, True): "account_gateway",
    }[(account, gateway)]


def plan_segments(spec: PanelSpec, scope: Scope, step_ms: int | None) -> list[Segment]:
    """Which grain serves which part of the range for this panel and scope."""
    kept = PLAN[spec.breakdown].get(_set_for(spec, scope))
    if kept is None:
        return [Segment("newest", scope.from_ms, scope.to_ms)]
    grains = [g for g in ("day", "hour", "minute") if g == "day" or g in kept]
    if step_ms is not None:
        grains = [g for g in grains if step_ms % GRAIN_MS[g] == 0]
    return cover(scope.from_ms, scope.to_ms, grains)


class _Params:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def add(self, value: Any, type_name: str) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{type_name}}}"


def _sums() -> str:
    return ", ".join(f"sum({m})" for m in MEASURES)


def _time_range(lo_ms: int, hi_ms: int, p: _Params) -> str:
    """cdr_newest rows of calls in [lo_ms, hi_ms): on the hour (the sorting
    key), the second (the partition) and the exact millisecond."""
    lo_h, hi_h = lo_ms // HOUR_MS * 3600, -(-hi_ms // HOUR_MS) * 3600
    lo_s, hi_s = lo_ms // 1000, -(-hi_ms // 1000)
    return (
        f"hour >= toDateTime({p.add(lo_h, 'Int64')}, 'UTC') AND "
        f"hour < toDateTime({p.add(hi_h, 'Int64')}, 'UTC') AND "
        f"bucket >= toDateTime({p.add(lo_s, 'Int64')}, 'UTC') AND "
        f"bucket < toDateTime({p.add(hi_s, 'Int64')}, 'UTC') AND "
        f"call_start_ms >= {p.add(lo_ms, 'Int64')} AND call_start_ms < {p.add(hi_ms, 'Int64')}"
    )


def _agg_part(
    db: str, spec: PanelSpec, scope: Scope, segments: list[Segment], columns: str, p: _Params
) -> str:
    ranges = []
    for seg in segments:
        ranges.append(
            f"(grain = '{seg.grain}' AND bucket >= toDateTime({p.add(seg.lo_ms // 1000, 'Int64')}, "
            f"'UTC') AND bucket < toDateTime({p.add(seg.hi_ms // 1000, 'Int64')}, 'UTC'))"
        )
    conditions = [f"breakdown = '{spec.breakdown}'", "(" + " OR ".join(ranges) + ")"]
    if scope.account is not None:
        conditions.append(f"account_id = {p.add(scope.account, 'String')}")
    else:
        conditions.append("account_id != '*'" if spec.by == "account" else "account_id = '*'")
    if scope.gateway is not None:
        conditions.append(f"gateway = {p.add(scope.gateway, 'String')}")
    else:
        conditions.append("gateway != '*'" if spec.by == "gateway" else "gateway = '*'")
    if spec.where:
        conditions.append(spec.where)
    return f"SELECT {columns} FROM {db}.cdr_agg WHERE " + " AND ".join(conditions)


def _call_part(
    source: str, spec: PanelSpec, scope: Scope, ranges: list[str], columns: str, p: _Params
) -> str:
    """Per-call rows (cdr_newest, or the normalised `cdr FINAL`)."""
    conditions = ["(" + " OR ".join(ranges) + ")"]
    if scope.account is not None:
        conditions.append(f"account_id = {p.add(scope.account, 'String')}")
    array_join = ""
    if spec.by == "gateway":
        array_join = f" ARRAY JOIN {GATEWAY_ROLES} AS g"
        if scope.gateway is not None:
            conditions.append(f"g.1 = {p.add(scope.gateway, 'String')}")
    elif scope.gateway is not None:
        gateway = p.add(scope.gateway, "String")
        conditions.append(f"(ingress_gateway = {gateway} OR egress_gateway = {gateway})")
    if spec.where:
        conditions.append(spec.where)
    return f"SELECT {columns} FROM {source}{array_join} WHERE " + " AND ".join(conditions)


def _raw_source(db: str, scope: Scope, p: _Params) -> str:
    """`cdr FINAL` in the shape of cdr_newest (newest version per call)."""
    d0 = dt.datetime.fromtimestamp(scope.from_ms // 1000, dt.UTC).date()
    d1 = dt.datetime.fromtimestamp((scope.to_ms - 1) // 1000, dt.UTC).date()
    inner = ", ".join(
        ["call_start AS x_bucket", "call_start_ms AS x_call_start_ms"]
        + [f"{expr} AS x_{name}" for name, expr in PER_CALL_DIMENSIONS.items()]
        + [f"{expr} AS x_{name}" for name, expr in PER_CALL_MEASURES.items()]
    )
    outer = ", ".join(
        ["x_bucket AS bucket", "x_call_start_ms AS call_start_ms"]
        + [f"x_{name} AS {name}" for name in (*PER_CALL_DIMENSIONS, *PER_CALL_MEASURES)]
    )
    where = (
        f"call_date >= {p.add(d0, 'Date')} AND call_date <= {p.add(d1, 'Date')} "
        f"AND call_start_ms >= {p.add(scope.from_ms, 'Int64')} "
        f"AND call_start_ms < {p.add(scope.to_ms, 'Int64')}"
    )
    if scope.call_id_prefix is not None:
        where += f" AND startsWith(call_id, {p.add(scope.call_id_prefix, 'String')})"
    return f"(SELECT {outer} FROM (SELECT {inner} FROM {db}.cdr FINAL WHERE {where}))"


def panel_sql(
    db: str, spec: PanelSpec, scope: Scope, source: str = "agg", step_ms: int | None = None
) -> tuple[str, dict[str, Any]]:
    """The query of one panel and its parameters."""
    check_identifier(db, "database name")
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    if scope.call_id_prefix is not None and source != "raw":
        raise ScopeError("a call id prefix can only be read from the raw CDRs (source raw)")
    if spec.series and step_ms is None:
        step_ms = auto_step(scope.span_ms)
    p = _Params()
    keys = spec.group_columns + _money_keys(spec)
    part_columns = ", ".join(("bucket",) + keys + MEASURES)
    call_columns = part_columns
    if spec.by == "gateway":
        call_columns = call_columns.replace(
            "gateway, gateway_role", "g.1 AS gateway, g.2 AS gateway_role", 1
        )
    parts: list[str] = []
    if source == "raw":
        ranges = ["1"]
        parts.append(_call_part(_raw_source(db, scope, p), spec, scope, ranges, call_columns, p))
    else:
        segments = plan_segments(spec, scope, step_ms)
        aggregated = [s for s in segments if s.grain != "newest"]
        per_call = [s for s in segments if s.grain == "newest"]
        if aggregated:
            parts.append(_agg_part(db, spec, scope, aggregated, part_columns, p))
        if per_call:
            ranges = ["(" + _time_range(s.lo_ms, s.hi_ms, p) + ")" for s in per_call]
            parts.append(_call_part(f"{db}.cdr_newest", spec, scope, ranges, call_columns, p))
    group = list(keys)
    select = list(keys)
    if spec.series:
        assert step_ms is not None
        step_s = step_ms // 1000
        select.insert(
            0, f"toDateTime(intDiv(toUInt32(bucket), {int(step_s)}) * {int(step_s)}, 'UTC') AS t"
        )
        group.insert(0, "t")
    source_sql = parts[0] if len(parts) == 1 else " UNION ALL ".join(parts)
    sql = f"SELECT {', '.join(select)}, {_sums()} FROM ({source_sql})"
    if group:
        sql += f" GROUP BY {', '.join(group)} ORDER BY {', '.join(group)}"
    return sql, p.values


def _money_keys(spec: PanelSpec) -> tuple[str, ...]:
    # Money is summed per currency; every breakdown keeps both currencies.
    assert {"currency", "cost_currency"} <= set(BREAKDOWN_KEYS[spec.breakdown])
    return ("currency", "cost_currency")


# -- running a panel --------------------------------------------------------------------


def run_panel(
    backend: ClickHouseBackend,
    db: str,
    name: str,
    scope: Scope,
    source: str = "agg",
    *,
    step_ms: int | None = None,
    top: int | None = 10,
) -> PanelResult:
    """Query one panel and fold its rows per group (money per currency)."""
    spec = PANELS[name]
    if spec.series and step_ms is None:
        step_ms = auto_step(scope.span_ms)
    sql, params = panel_sql(db, spec, scope, source, step_ms if spec.series else None)
    rows = backend.execute(sql, params)
    width = len(spec.group_columns) + (1 if spec.series else 0)
    grouped: dict[tuple[Any, ...], Figures] = {}
    for row in rows:
        key = tuple(row[:width])
        currency, cost_currency = str(row[width]), str(row[width + 1])
        figures = grouped.get(key)
        if figures is None:
            figures = grouped[key] = Figures()
        figures.add_row(currency, cost_currency, row[width + 2 :])
    items = list(grouped.items())
    total_groups = len(items)
    if spec.top:
        items.sort(key=lambda kv: (-kv[1].attempts, tuple(str(k) for k in kv[0])))
        if top is not None:
            items = items[:top]
    elif not spec.series:
        items.sort(key=lambda kv: (-kv[1].attempts, tuple(str(k) for k in kv[0])))
    return PanelResult(
        spec=spec,
        scope=scope,
        source=source,
        step_ms=step_ms if spec.series else None,
        rows=items,
        total_groups=total_groups,
    )


def data_bounds(backend: ClickHouseBackend, db: str, source: str = "agg") -> tuple[int, int] | None:
    """[first, last) call start in whole UTC days, or None without data."""
    check_identifier(db, "database name")
    if source == "raw":
        sql = f"SELECT count(), min(call_start_ms), max(call_start_ms) FROM {db}.cdr"
    else:
        sql = (
            f"SELECT count(), min(toUInt32(bucket)) * 1000, max(toUInt32(bucket)) * 1000 "
            f"FROM {db}.cdr_agg WHERE breakdown = 'traffic' AND grain = 'day' "
            "AND account_id = '*' AND gateway = '*'"
        )
    count, low, high = backend.execute(sql)[0]
    if not int(count):
        return None
    return int(low) // DAY_MS * DAY_MS, (int(high) // DAY_MS + 1) * DAY_MS


def known_values(backend: ClickHouseBackend, db: str, limit: int = 500) -> dict[str, list[str]]:
    """Accounts and gateways that have aggregates (for the filter pickers)."""
    check_identifier(db, "database name")
    out: dict[str, list[str]] = {}
    for label, column, other in (
        ("accounts", "account_id", "gateway"),
        ("gateways", "gateway", "account_id"),
    ):
        rows = backend.execute(
            f"SELECT DISTINCT {column} FROM {db}.cdr_agg WHERE breakdown = 'traffic' "
            f"AND grain = 'day' AND {column} != '*' AND {other} = '*' "
            f"ORDER BY {column} LIMIT {int(limit)}"
        )
        out[label] = [str(r[0]) for r in rows if str(r[0])]
    return out
