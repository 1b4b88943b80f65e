"""Server-rendered SVG charts: no JavaScript library, nothing from a CDN.

Each function returns an `<svg>` string. Text is escaped; colours come from
CSS classes (`static/dashboard.css`); every mark has a `<title>` so hovering
shows its exact value. Charts carry `data-*` attributes with what they show
(point count, totals) for tests and scripts.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 640
HEIGHT = 250
PAD_LEFT = 58
PAD_RIGHT = 48
PAD_TOP = 16
PAD_BOTTOM = 34


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """0 and round steps up to at least `high`."""
    if high <= 0 or not math.isfinite(high):
        return [0.0, 1.0]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = [0.0]
    while ticks[-1] < high - 1e-12:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def short_number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 1e9:
        return f"{value / 1e9:.3g}G"
    if magnitude >= 1e6:
        return f"{value / 1e6:.3g}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.3g}k"
    if magnitude == int(magnitude):
        return f"{int(value)}"
    return f"{value:.3g}"


@dataclass(frozen=True)
class Series:
    """One line or bar series: `values[i]` belongs to the i-th time point."""

    label: str
    css: str
    values: Sequence[float | None]
    kind: str = "line"  # "line", "bar" or "area"
    right_axis: bool = False  # 0..1 ratio on the right axis, shown as %


def _time_labels(times: Sequence[dt.datetime], step_s: int) -> list[str]:
    if step_s >= 86400:
        return [t.strftime("%m-%d") for t in times]
    if times and (times[-1] - times[0]).total_seconds() >= 86400:
        return [t.strftime("%m-%d %H:%M") for t in times]
    return [t.strftime("%H:%M") for t in times]


def time_chart(
    panel: str,
    title: str,
    times: Sequence[dt.datetime],
    step_s: int,
    series: Sequence[Series],
    *,
    value_format: str = "count",
    data: dict[str, object] | None = None,
) -> str:
    """Bars and lines over time, counts (or money) on the left axis, a
    ratio on the right one."""
    attrs = _data_attrs(panel, len(times), data)
    head = _svg_head("chart", HEIGHT, title, attrs)
    if not times:
        return head + _empty() + "</svg>"
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    left = [s for s in series if not s.right_axis]
    high = max([v for s in left for v in s.values if v is not None] + [0.0])
    low = min([v for s in left for v in s.values if v is not None] + [0.0])
    ticks = nice_ticks(high if high > 0 else 1)
    step = ticks[1] - ticks[0]
    neg_ticks: list[float] = []
    while low < 0 and (not neg_ticks or neg_ticks[-1] > low + 1e-12):
        neg_ticks.append(round(-(len(neg_ticks) + 1) * step, 10))
    top_v, bottom_v = ticks[-1], (neg_ticks[-1] if neg_ticks else 0.0)
    span_v = (top_v - bottom_v) or 1.0
    n = len(times)
    slot = plot_w / n

    def y(v: float) -> float:
        return PAD_TOP + plot_h * (top_v - v) / span_v

    def x(i: int) -> float:
        return PAD_LEFT + slot * (i + 0.5)

    out = [head, f"<title>{_e(title)}</title>"]
    for t in sorted(set(ticks + neg_ticks)):
        out.append(
            f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" '
            f'y1="{y(t):.1f}" y2="{y(t):.1f}"/>'
            f'<text class="axis" x="{PAD_LEFT - 6}" y="{y(t) + 4:.1f}" text-anchor="end">'
            f"{_e(_fmt(t, value_format))}</text>"
        )
    if any(s.right_axis for s in series):
        for frac in (0, 0.25, 0.5, 0.75, 1.0):
            yy = PAD_TOP + plot_h * (1 - frac)
            out.append(
                f'<text class="axis" x="{WIDTH - PAD_RIGHT + 6}" y="{yy + 4:.1f}">'
                f"{int(frac * 100)}%</text>"
            )
    labels = _time_labels(times, step_s)
    every = max(1, math.ceil(n / 6))
    for i in range(0, n, every):
        out.append(
            f'<text class="axis" x="{x(i):.1f}" y="{HEIGHT - PAD_BOTTOM + 16}" '
            'text-anchor="middle">'
            f"{_e(labels[i])}</text>"
        )
    bars = [s for s in series if s.kind == "bar"]
    bar_w = max(1.0, slot * 0.8 / max(1, len(bars)))
    for b_index, s in enumerate(bars):
        for i, v in enumerate(s.values):
            if v is None:
                continue
            x0 = PAD_LEFT + slot * i + slot * 0.1 + bar_w * b_index
            y0, y1 = sorted((y(v), y(0)))
            out.append(
                f'<rect class="{_e(s.css)}" x="{x0:.1f}" y="{y0:.1f}" width="{bar_w:.1f}" '
                f'height="{max(y1 - y0, 0.5):.1f}"><title>{_e(labels[i])} {_e(s.label)}: '
                f"{_e(_fmt(v, value_format, exact=True))}</title></rect>"
            )
    for s in series:
        if s.kind == "bar":
            continue
        points = []
        for i, v in enumerate(s.values):
            if v is None:
                continue
            yy = PAD_TOP + plot_h * (1 - v) if s.right_axis else y(v)
            points.append((x(i), yy, i, v))
        if not points:
            continue
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in points)
        out.append(f'<polyline class="{_e(s.css)} line" points="{path}"/>')
        if len(points) <= 60:
            for px, py, i, v in points:
                shown = f"{v * 100:.1f}%" if s.right_axis else _fmt(v, value_format, exact=True)
                out.append(
                    f'<circle class="{_e(s.css)} dot" cx="{px:.1f}" cy="{py:.1f}" r="2.5">'
                    f"<title>{_e(labels[i])} {_e(s.label)}: {_e(shown)}</title></circle>"
                )
    out.append(_legend(series))
    out.append("</svg>")
    return "".join(out)


def _legend(series: Sequence[Series]) -> str:
    parts = []
    x = PAD_LEFT
    for s in series:
        parts.append(
            f'<rect class="{_e(s.css)} key" x="{x}" y="{HEIGHT - 12}" width="10" height="10"/>'
            f'<text class="legend" x="{x + 14}" y="{HEIGHT - 3}">{_e(s.label)}</text>'
        )
        x += 24 + 7 * len(s.label)
    return "".join(parts)


def _fmt(value: float, value_format: str, exact: bool = False) -> str:
    if value_format == "money":
        return f"{value:,.2f}" if exact else short_number(value)
    return f"{value:,.0f}" if exact else short_number(value)


def _empty() -> str:
    return (
        f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
        "no calls in this range</text>"
    )


def _data_attrs(panel: str, points: int, data: dict[str, object] | None) -> str:
    attrs = [f' data-panel="{_e(panel)}"', f' data-points="{points}"']
    for key, value in (data or {}).items():
        attrs.append(f' data-{_e(key)}="{_e(value)}"')
    return "".join(attrs)


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str  # shown right of the bar
    css: str = "c-attempts"
    note: str = ""  # tooltip detail


def bar_chart(
    panel: str,
    title: str,
    bars: Sequence[Bar],
    *,
    data: dict[str, object] | None = None,
    label_width: int = 150,
) -> str:
    """Horizontal bars, largest first as given."""
    row_h = 22
    height = max(60, PAD_TOP + row_h * len(bars) + 10)
    attrs = _data_attrs(panel, len(bars), data)
    if not bars:
        return _svg_head("chart bars", 60, title, attrs) + _empty_small() + "</svg>"
    head = _svg_head("chart bars", height, title, attrs)
    high = max(abs(b.value) for b in bars) or 1.0
    longest = max(len(b.text) for b in bars)
    room = max(80, WIDTH - label_width - 14 - int(longest * 6.3))
    out = [head, f"<title>{_e(title)}</title>"]
    for i, b in enumerate(bars):
        yy = PAD_TOP + row_h * i
        w = max(1.0, room * abs(b.value) / high) if b.value else 0.0
        tip = f"{b.label}: {b.text}" + (f" ({b.note})" if b.note else "")
        out.append(
            f'<g class="bar-row"><title>{_e(tip)}</title>'
            f'<text class="label" x="{label_width - 8}" y="{yy + 14}" text-anchor="end">'
            f"{_e(_clip(b.label, 22))}</text>"
            f'<rect class="{_e(b.css)}" x="{label_width}" y="{yy + 3}" width="{w:.1f}" '
            f'height="{row_h - 6}"/><text class="value" x="{label_width + w + 6:.1f}" '
            f'y="{yy + 14}">{_e(b.text)}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)


def _empty_small() -> str:
    return (
        f'<text class="empty" x="{WIDTH / 2}" y="34" text-anchor="middle">'
        "no calls in this range</text>"
    )


def _svg_head(css: str, height: int, title: str, attrs: str) -> str:
    return (
        f'<svg class="{css}" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{_e(title)}"{attrs}>'
    )


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "\u2026"
