"""HTML of the dashboard: the page, and the panels fragment that the page's
script fetches again for auto-refresh. Every value is escaped."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from html import escape
from urllib.parse import urlencode

from pipeline.dashboard.charts import Bar, Series, bar_chart, time_chart
from pipeline.dashboard.figures import Figures
from pipeline.dashboard.queries import PanelResult, Scope
from pipeline.dashboard.report import describe_scope, panel_table
from pipeline.dashboard.timeparse import format_instant

RANGE_PRESETS = ("1h", "6h", "24h", "7d", "30d", "90d")
REFRESH_CHOICES = (0, 10, 30, 60, 300)


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}:{rest:02d}"


def _money(amount: Decimal) -> str:
    return f"{amount.quantize(Decimal('0.01')):,}"


def _int(value: int) -> str:
    return f"{value:,}"


def _main_currency(books: Sequence[Mapping[str, Decimal]]) -> str | None:
    totals: dict[str, Decimal] = {}
    for book in books:
        for currency, amount in book.items():
            totals[currency] = totals.get(currency, Decimal(0)) + abs(amount)
    return max(sorted(totals), key=lambda c: totals[c]) if totals else None


# -- panels -------------------------------------------------------------------------------


def tiles(total: Figures) -> str:
    items = [
        ("attempts", "Attempts", _int(total.attempts)),
        ("answered", "Answered", _int(total.answered)),
        ("asr", "ASR", _pct(total.asr)),
        ("acd", "ACD (m:ss)", _duration(total.acd_s)),
        ("pdd", "PDD", "–" if total.pdd_ms is None else f"{total.pdd_ms / 1000:.2f} s"),
        ("billable_minutes", "Billable minutes", f"{total.billable_minutes:,}"),
    ]
    for currency in total.currencies:
        items += [
            (
                f"revenue-{currency}",
                f"Revenue {currency}",
                _money(total.money("revenue", currency)),
            ),
            (f"cost-{currency}", f"Cost {currency}", _money(total.money("cost", currency))),
            (f"margin-{currency}", f"Margin {currency}", _money(total.money("margin", currency))),
            (
                f"at_risk-{currency}",
                f"At risk {currency}",
                _money(total.money("at_risk", currency)),
            ),
        ]
    cells = "".join(
        f'<div class="tile"><div class="k">{_e(label)}</div>'
        f'<div class="v" data-kpi="{_e(key)}">{_e(value)}</div></div>'
        for key, label, value in items
    )
    return f'<section class="tiles" data-panel="summary">{cells}</section>'


def traffic_chart(result: PanelResult) -> str:
    times = [key[0] for key, _ in result.rows]
    figures = [f for _, f in result.rows]
    step_s = (result.step_ms or 60_000) // 1000
    return time_chart(
        "traffic_series",
        "Calls and ASR over time",
        times,
        step_s,
        [
            Series("attempts", "c-attempts", [f.attempts for f in figures], kind="bar"),
            Series("answered", "c-answered", [f.answered for f in figures], kind="bar"),
            Series("ASR", "c-asr", [f.asr for f in figures], right_axis=True),
        ],
        data={
            "attempts": sum(f.attempts for f in figures),
            "answered": sum(f.answered for f in figures),
            "step-s": step_s,
        },
    )


def money_charts(result: PanelResult) -> str:
    times = [key[0] for key, _ in result.rows]
    figures = [f for _, f in result.rows]
    currencies = sorted({c for f in figures for c in f.currencies})
    step_s = (result.step_ms or 60_000) // 1000
    if not currencies:
        return time_chart("money_series", "Revenue and margin", [], step_s, [])
    out = []
    for currency in currencies:
        revenue = [float(f.money("revenue", currency)) for f in figures]
        cost = [float(f.money("cost", currency)) for f in figures]
        margin = [float(f.money("margin", currency)) for f in figures]
        total_revenue = sum((f.money("revenue", currency) for f in figures), Decimal(0))
        total_cost = sum((f.money("cost", currency) for f in figures), Decimal(0))
        out.append(f"<h3>{_e(currency)}</h3>")
        out.append(
            time_chart(
                "money_series",
                f"Revenue, cost and margin ({currency})",
                times,
                step_s,
                [
                    Series("revenue", "c-revenue", revenue),
                    Series("cost", "c-cost", cost),
                    Series("margin", "c-margin", margin, kind="bar"),
                ],
                value_format="money",
                data={
                    "currency": currency,
                    "revenue": total_revenue,
                    "cost": total_cost,
                    "margin": total_revenue - total_cost,
                },
            )
        )
    return "".join(out)


def hangup_charts(result: PanelResult) -> str:
    by_source: dict[str, Figures] = {}
    by_reason: dict[str, Figures] = {}
    for (source, reason), figures in result.rows:
        by_source.setdefault(str(source), Figures()).merge(figures)
        if source == "SERVER":
            by_reason.setdefault(str(reason) or "(none)", Figures()).merge(figures)
    total = sum(f.attempts for f in by_source.values()) or 1

    def bars(groups: dict[str, Figures], css: str) -> list[Bar]:
        ordered = sorted(groups.items(), key=lambda kv: (-kv[1].attempts, kv[0]))
        return [
            Bar(
                name,
                f.attempts,
                f"{f.attempts:,} ({f.attempts / total:.1%})",
                css,
                note=f"answered {f.answered:,}, recorded {f.recorded:,}",
            )
            for name, f in ordered
        ]

    return (
        "<h3>Hangup source</h3>"
        + bar_chart(
            "hangup_sources",
            "Calls by hangup source",
            bars(by_source, "c-answered"),
            data={"attempts": sum(f.attempts for f in by_source.values())},
        )
        + "<h3>Server reasons (server hangups)</h3>"
        + bar_chart(
            "server_reasons",
            "Server hangups by reason",
            bars(by_reason, "c-asr"),
            data={"attempts": sum(f.attempts for f in by_reason.values())},
        )
    )


def at_risk_chart(result: PanelResult) -> str:
    currency = _main_currency([f.at_risk for _, f in result.rows])
    bars = []
    for (decision, reason), f in sorted(
        result.rows, key=lambda kv: (-(kv[1].at_risk.get(currency or "", Decimal(0))), kv[0])
    ):
        amounts = ", ".join(f"{c} {_money(v)}" for c, v in sorted(f.at_risk.items()))
        bars.append(
            Bar(
                f"{decision} · {reason or '(none)'}",
                float(f.at_risk.get(currency or "", Decimal(0))) if currency else f.attempts,
                f"{amounts or 'no fees'} ({f.attempts:,} calls)",
                "c-risk",
            )
        )
    total = Figures()
    for _, f in result.rows:
        total.merge(f)
    data: dict[str, object] = {"attempts": total.attempts}
    for c, v in sorted(total.at_risk.items()):
        data[f"at-risk-{c.lower()}"] = v
    return bar_chart(
        "at_risk", "Revenue at risk by decision reason", bars, data=data, label_width=220
    )


def top_chart(result: PanelResult, label_of: str) -> str:
    bars = []
    for key, f in result.rows:
        label = _label(label_of, key)
        bars.append(
            Bar(
                label,
                f.attempts,
                f"{f.attempts:,} · ASR {_pct(f.asr)}",
                "c-answered",
                note=f"ACD {_duration(f.acd_s)}",
            )
        )
    return bar_chart(
        result.spec.name,
        result.spec.title,
        bars,
        data={"attempts": sum(f.attempts for _, f in result.rows)},
    )


def _label(kind: str, key: tuple[object, ...]) -> str:
    if kind == "gateway":
        name, role = key
        role_text = {"in": "ingress", "out": "egress", "both": "in+out"}.get(str(role), str(role))
        return f"{name or '(none)'} ({role_text})"
    return str(key[0]) or "(none)"


def figures_table(result: PanelResult, panel: str) -> str:
    header, rows = panel_table(result)
    numeric = {i for i, h in enumerate(header) if _is_numeric(h)}
    head = "".join(
        f'<th class="n">{_e(h)}</th>' if i in numeric else f"<th>{_e(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return (
        f'<div class="table-wrap"><table class="figures" data-panel="{_e(panel)}" '
        f'data-rows="{len(rows)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )


def _is_numeric(label: str) -> bool:
    return label in (
        "attempts",
        "answered",
        "ASR %",
        "ACD s",
        "PDD ms",
        "billable min",
    ) or label.startswith(("revenue ", "cost ", "margin ", "at risk "))


def _card(title: str, body: str, panel: str) -> str:
    return f'<section class="card" id="card-{_e(panel)}"><h2>{_e(title)}</h2>{body}</section>'


def panels_html(results: Mapping[str, PanelResult], scope: Scope, stamp: str) -> str:
    """The panels fragment (what auto-refresh replaces)."""
    summary = results["summary"].total
    parts = [
        f'<p class="scope" data-from="{scope.from_ms}" data-to="{scope.to_ms}" '
        f'data-generated="{_e(stamp)}">{_e(describe_scope(scope, "agg"))}</p>',
        tiles(summary),
        '<div class="grid">',
        _card(
            "Calls and ASR over time", traffic_chart(results["traffic_series"]), "traffic_series"
        ),
        _card(
            "Revenue and margin over time", money_charts(results["money_series"]), "money_series"
        ),
        _card("Hangup sources and server reasons", hangup_charts(results["hangups"]), "hangups"),
        _card("Revenue at risk by decision reason", at_risk_chart(results["at_risk"]), "at_risk"),
        _card(
            "Top destinations",
            top_chart(results["destinations"], "prefix")
            + figures_table(results["destinations"], "destinations"),
            "destinations",
        ),
        _card(
            "Top gateways",
            top_chart(results["gateways"], "gateway")
            + figures_table(results["gateways"], "gateways"),
            "gateways",
        ),
        _card("Top accounts", figures_table(results["accounts"], "accounts"), "accounts"),
        "</div>",
    ]
    return "".join(parts)


# -- the page -------------------------------------------------------------------------------


def _options(values: Sequence[str], selected: str, labels: Mapping[str, str] | None = None) -> str:
    out = []
    for value in values:
        chosen = " selected" if value == selected else ""
        label = (labels or {}).get(value, value)
        out.append(f'<option value="{_e(value)}"{chosen}>{_e(label)}</option>')
    return "".join(out)


def _datalist(name: str, values: Sequence[str]) -> str:
    return (
        f'<datalist id="{_e(name)}">'
        + "".join(f'<option value="{_e(v)}">' for v in values)
        + "</datalist>"
    )


def _local(ms: int | None) -> str:
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M")


def page_html(
    *,
    form: Mapping[str, str],
    body: str,
    refresh_s: int,
    known: Mapping[str, Sequence[str]],
    scope: Scope | None,
) -> str:
    """The whole page; `body` is the panels fragment or an error box."""
    range_value = form.get("range", "")
    explicit = bool(form.get("from") or form.get("to"))
    presets = _options(
        ("",) + RANGE_PRESETS,
        "" if explicit else range_value,
        {"": "custom", **{p: f"last {p}" for p in RANGE_PRESETS}},
    )
    choices = sorted(set(REFRESH_CHOICES) | {refresh_s})
    refresh = _options(
        tuple(str(r) for r in choices),
        str(refresh_s),
        {"0": "off", **{str(r): f"{r} s" for r in choices if r}},
    )
    from_value = form.get("from", "") if explicit else ""
    to_value = form.get("to", "") if explicit else ""
    if explicit and scope is not None:
        from_value, to_value = _local(scope.from_ms), _local(scope.to_ms)
    title = "CDR dashboard"
    if scope is not None:
        title += f" · {format_instant(scope.from_ms)} – {format_instant(scope.to_ms)} UTC"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<link rel="stylesheet" href="static/dashboard.css">
</head>
<body data-refresh="{int(refresh_s)}">
<header>
<h1>CDR dashboard</h1>
<form method="get" action="./">
<label>range<select name="range">{presets}</select></label>
<label>from (UTC)<input type="datetime-local" name="from" value="{_e(from_value)}"></label>
<label>to (UTC)<input type="datetime-local" name="to" value="{_e(to_value)}"></label>
<label>account<input name="account" list="accounts" maxlength="200"
 value="{_e(form.get("account", ""))}"></label>
<label>gateway<input name="gateway" list="gateways" maxlength="200"
 value="{_e(form.get("gateway", ""))}"></label>
<label>auto-refresh<select name="refresh">{refresh}</select></label>
<button type="submit">Apply</button>
</form>
{_datalist("accounts", known.get("accounts", ()))}{_datalist("gateways", known.get("gateways", ()))}
<span id="status"></span>
</header>
<main><div id="panels">{body}</div></main>
<script src="static/dashboard.js"></script>
</body></html>"""


def error_html(message: str) -> str:
    return f'<div class="error-box" role="alert">{_e(message)}</div>'


def login_html(message: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>CDR dashboard: token required</title>
<link rel="stylesheet" href="static/dashboard.css"></head>
<body><div class="login"><h1>CDR dashboard</h1><p>{_e(message)}</p>
<form method="post" action="login"><label>Read-only token
<input type="password" name="token" autocomplete="current-password" required></label>
<button type="submit">Open</button></form></div></body></html>"""


def query_string(form: Mapping[str, str]) -> str:
    return urlencode({k: v for k, v in form.items() if v and k != "token"})
