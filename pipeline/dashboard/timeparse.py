"""Time range input for `report` and the dashboard: instants and durations.

Instants: ISO 8601 (`2024-06-01`, `2024-06-01T12:30`, `2024-06-01 12:30:00Z`,
`2024-06-01T12:30+02:00`; without an offset the time is UTC), epoch
milliseconds (digits only), or `now`. Durations: a number and a unit,
`90m`, `24h`, `7d`, `2w`.
"""

from __future__ import annotations

import datetime as dt
import re
import time

from pipeline.dashboard.queries import DAY_MS, HOUR_MS, MINUTE_MS, ScopeError

_DURATION = re.compile(r"^\s*(\d{1,6})\s*([mhdw])\s*$")
_UNIT_MS = {"m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS}


def now_ms() -> int:
    return int(time.time() * 1000)


def parse_instant(text: str, now: int | None = None) -> int:
    """Epoch milliseconds of `text`; ScopeError if it is not an instant."""
    value = text.strip()
    if value.lower() == "now":
        return now if now is not None else now_ms()
    if value.isdigit():
        if len(value) > 15:
            raise ScopeError(f"{text!r}: too many digits for epoch milliseconds")
        return int(value)
    iso = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise ScopeError(
            f"{text!r} is not a time: use ISO 8601 (2024-06-01T12:00Z), epoch ms or 'now'"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def parse_duration(text: str) -> int:
    """Milliseconds of `90m`, `24h`, `7d` or `2w`."""
    m = _DURATION.match(text or "")
    if not m:
        raise ScopeError(f"{text!r} is not a duration: use e.g. 90m, 24h, 7d or 2w")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def format_instant(ms: int, with_seconds: bool = False) -> str:
    """`2024-06-01 12:30 UTC` style (the dashboard and report show UTC)."""
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if with_seconds else "%Y-%m-%d %H:%M")


def iso_instant(ms: int) -> str:
    """`2024-06-01T12:30:00Z`."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ceil_to(ms: int, step: int) -> int:
    return -(-ms // step) * step
