"""The figures billing and the NOC ask for, as tables: `cdr-pipeline report`.

The same panels as the web dashboard (pipeline.dashboard.queries), read from
the aggregates by default (each call once, in its newest version) or from
`cdr FINAL` with `source="raw"`. Output as aligned text tables, CSV (one
panel) or JSON; money is exact (Decimal), per currency.

`Filters` / `build_report` / `format_report` are the programmatic entry
points (the demo uses them); filters are bound as query parameters.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipeline.dashboard.figures import Figures
from pipeline.dashboard.queries import (
    PANELS,
    PanelResult,
    Scope,
    data_bounds,
    run_panel,
)
from pipeline.dashboard.timeparse import format_instant, iso_instant
from pipeline.storage.backend import ClickHouseBackend

DEFAULT_PANELS = tuple(PANELS)


@dataclass(frozen=True)
class Filters:
    """Which calls a report covers. Times are epoch ms, [from_ms, to_ms);
    without them, every day that has calls. `call_id_prefix` (used by the
    demo to pick its own calls) can only be read from `cdr FINAL`."""

    from_ms: int | None = None
    to_ms: int | None = None
    account: str | None = None
    gateway: str | None = None
    call_id_prefix: str | None = None


@dataclass
class Report:
    """Panel results of one scope."""

    scope: Scope | None
    source: str
    panels: dict[str, PanelResult] = field(default_factory=dict)

    @property
    def totals(self) -> Figures:
        summary = self.panels.get("summary")
        return summary.total if summary is not None else Figures()

    # The demo's and older callers' view of the totals.
    @property
    def calls(self) -> int:
        return self.totals.attempts

    @property
    def answered(self) -> int:
        return self.totals.answered

    @property
    def revenue(self) -> dict[str, Decimal]:
        return self.totals.revenue


def resolve_scope(
    backend: ClickHouseBackend, db: str, filters: Filters, source: str = "agg"
) -> Scope | None:
    """The Scope of `filters`; an open end is the first/last day with data.
    None when the database has no calls at all."""
    from_ms, to_ms = filters.from_ms, filters.to_ms
    if from_ms is None or to_ms is None:
        bounds = data_bounds(backend, db, source)
        if bounds is None:
            return None
        from_ms = bounds[0] if from_ms is None else from_ms
        to_ms = bounds[1] if to_ms is None else to_ms
    return Scope(
        from_ms,
        to_ms,
        account=filters.account,
        gateway=filters.gateway,
        call_id_prefix=filters.call_id_prefix,
    )


def build_report(
    backend: ClickHouseBackend,
    db: str = "cdr",
    filters: Filters | None = None,
    *,
    source: str | None = None,
    panels: Sequence[str] = DEFAULT_PANELS,
    top: int | None = 10,
    step_ms: int | None = None,
) -> Report:
    """Run `panels` over the calls `filters` select.

    `source` "agg" (default) reads the aggregates, "raw" reads `cdr FINAL`;
    a `call_id_prefix` filter always reads raw."""
    f = filters or Filters()
    chosen = source or ("raw" if f.call_id_prefix else "agg")
    if f.call_id_prefix:
        chosen = "raw"
    scope = resolve_scope(backend, db, f, chosen)
    report = Report(scope=scope, source=chosen)
    if scope is None:
        return report
    for name in panels:
        if name not in PANELS:
            raise ValueError(f"unknown panel {name!r} (known: {', '.join(PANELS)})")
        report.panels[name] = run_panel(backend, db, name, scope, chosen, step_ms=step_ms, top=top)
    return report


# -- tables -------------------------------------------------------------------------------

_KEY_LABELS = {
    "t": "time (UTC)",
    "account_id": "account",
    "gateway": "gateway",
    "gateway_role": "role",
    "hangup_source": "hangup source",
    "server_reason": "server reason",
    "record_decision": "decision",
    "decision_reason": "reason",
    "rate_prefix": "prefix",
}
_ROLE_LABELS = {"in": "ingress", "out": "egress", "both": "in+out"}


def _ratio(value: float | None, digits: int = 1, percent: bool = False) -> str:
    if value is None:
        return ""
    return f"{value * 100:.{digits}f}" if percent else f"{value:.{digits}f}"


def _key_text(column: str, value: Any) -> str:
    if column == "t":
        return format_instant(int(value.timestamp() * 1000))
    if column == "gateway_role":
        return _ROLE_LABELS.get(str(value), str(value))
    text = str(value)
    return text if text else "(none)"


def currencies_of(result: PanelResult) -> list[str]:
    found: set[str] = set()
    for _, figures in result.rows:
        found.update(figures.currencies)
    return sorted(found)


def panel_table(result: PanelResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a panel as text cells (the terminal table and CSV)."""
    spec = result.spec
    key_columns = (("t",) if spec.series else ()) + spec.group_columns
    money = currencies_of(result)
    header = [_KEY_LABELS.get(c, c) for c in key_columns] + [
        "attempts",
        "answered",
        "ASR %",
        "ACD s",
        "PDD ms",
        "billable min",
    ]
    for currency in money:
        header += [
            f"revenue {currency}",
            f"cost {currency}",
            f"margin {currency}",
            f"at risk {currency}",
        ]
    rows: list[list[str]] = []
    for key, figures in result.rows:
        row = [_key_text(c, v) for c, v in zip(key_columns, key, strict=True)]
        row += [
            str(figures.attempts),
            str(figures.answered),
            _ratio(figures.asr, 1, percent=True),
            _ratio(figures.acd_s, 1),
            _ratio(figures.pdd_ms, 0),
            str(figures.billable_minutes),
        ]
        for currency in money:
            row += [
                _money(figures.money(book, currency))
                for book in ("revenue", "cost", "margin", "at_risk")
            ]
        rows.append(row)
    return header, rows


def _money(amount: Decimal) -> str:
    return str(amount.quantize(Decimal("0.0001")))


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    key_count = sum(1 for h in header if not _is_number_column(h))

    def line(cells: Iterable[str]) -> str:
        parts = []
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            parts.append(cell.ljust(width) if i < key_count else cell.rjust(width))
        return "  ".join(parts).rstrip()

    return [line(header), line("-" * w for w in widths)] + [line(r) for r in rows]


def _is_number_column(label: str) -> bool:
    return label in (
        "attempts",
        "answered",
        "ASR %",
        "ACD s",
        "PDD ms",
        "billable min",
    ) or label.startswith(("revenue ", "cost ", "margin ", "at risk "))


def describe_scope(scope: Scope | None, source: str) -> str:
    if scope is None:
        return "no calls stored"
    return (
        f"{format_instant(scope.from_ms)} to {format_instant(scope.to_ms)} UTC"
        f"   account: {scope.account or 'all'}   gateway: {scope.gateway or 'all'}"
        f"   source: {'aggregates' if source == 'agg' else 'cdr FINAL'}"
    )


def format_report(report: Report) -> str:
    """All panels as aligned text tables."""
    lines = [f"CDR report   {describe_scope(report.scope, report.source)}"]
    for name, result in report.panels.items():
        title = result.spec.title
        if result.step_ms:
            title += f" (step {_step_text(result.step_ms)})"
        if result.spec.top and result.total_groups > len(result.rows):
            title += f" ({len(result.rows)} of {result.total_groups})"
        lines += ["", title]
        header, rows = panel_table(result)
        if not rows:
            lines.append("  (no calls)")
            continue
        lines += ["  " + line for line in _aligned(header, rows)]
        del name
    return "\n".join(lines)


def _step_text(step_ms: int) -> str:
    minutes = step_ms // 60_000
    if minutes % 1440 == 0:
        return f"{minutes // 1440} d"
    if minutes % 60 == 0:
        return f"{minutes // 60} h"
    return f"{minutes} min"


def format_csv(result: PanelResult) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header, rows = panel_table(result)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def _json_key(column: str, value: Any) -> Any:
    if column == "t":
        return iso_instant(int(value.timestamp() * 1000))
    return value


def as_dict(report: Report) -> Mapping[str, Any]:
    """The report as JSON-ready data (money as decimal strings)."""
    scope = report.scope
    out: dict[str, Any] = {
        "source": report.source,
        "scope": None
        if scope is None
        else {
            "from": iso_instant(scope.from_ms),
            "to": iso_instant(scope.to_ms),
            "from_ms": scope.from_ms,
            "to_ms": scope.to_ms,
            "account": scope.account,
            "gateway": scope.gateway,
        },
        "panels": {},
    }
    for name, result in report.panels.items():
        key_columns = (("t",) if result.spec.series else ()) + result.spec.group_columns
        out["panels"][name] = {
            "title": result.spec.title,
            "step_s": result.step_ms // 1000 if result.step_ms else None,
            "groups": result.total_groups,
            "rows": [
                {
                    **{c: _json_key(c, v) for c, v in zip(key_columns, key, strict=True)},
                    **fig.as_dict(),
                }
                for key, fig in result.rows
            ],
            "total": result.total.as_dict(),
        }
    return out


def format_json(report: Report) -> str:
    return json.dumps(as_dict(report), indent=2, ensure_ascii=False)
