"""The offline driver: rate a JSON Lines file of events with the billing core."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig
from pipeline.core.correlator import Correlator
from pipeline.core.events import CallEvent, parse_event
from pipeline.core.state_codec import encode_state
from pipeline.core.summary import Totals, newest_versions, totals
from pipeline.errors import InvalidEvent

log = logging.getLogger(__name__)

# A control line that advances event time without an event (the simulator writes
# one where it publishes watermark ticks to every partition).
TICK_KEY = "tick_ms"


@dataclass
class Reject:
    line: int
    reason: str
    category: str
    raw: str

    def to_json(self) -> str:
        return json.dumps(
            {"line": self.line, "reason": self.reason, "category": self.category, "raw": self.raw}
        )


@dataclass
class RateFileResult:
    events_read: int = 0
    rejected: int = 0
    duplicates_or_late: int = 0
    cdr_versions: int = 0
    open_calls: int = 0
    rejects_by_reason: Counter[str] = field(default_factory=Counter)
    totals: Totals = field(default_factory=Totals)


@dataclass(frozen=True)
class Tick:
    """A watermark control line (``{"tick_ms": ...}``): advances event time, no event."""

    ts_ms: int


Item = CallEvent | Tick


def parse_item(raw: Any) -> Item:
    """A decoded JSON value as a CallEvent or a Tick; InvalidEvent says why it is neither.
    A tick is an object with ``tick_ms`` and no ``event_type``."""
    if not isinstance(raw, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {type(raw).__name__}")
    if TICK_KEY in raw and "event_type" not in raw:
        tick = raw[TICK_KEY]
        if type(tick) is not int:
            raise InvalidEvent(f"field '{TICK_KEY}' must be epoch milliseconds")
        return Tick(tick)
    return parse_event(raw)


def parse_line(text: str) -> Item:
    """One line of the JSON Lines input: the one judgement of a line that rate-file,
    ``publish`` and ``ingest http`` share, reasons included."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    return parse_item(raw)


def numbered_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines, numbered from 1."""
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if text:
            yield number, text


def rate_lines(
    lines: Iterable[str],
    config: BillingConfig,
    on_reject: Any = None,
    correlator: Correlator | None = None,
) -> Iterator[RatedCdr]:
    """Yield every CDR version the events produce, in emission order.

    `on_reject(Reject)` is called for each line that cannot be used. Pass a
    `correlator` to inspect it afterwards (open calls).
    """
    correlator = correlator if correlator is not None else Correlator(config, freeze=encode_state)
    for number, text in numbered_lines(lines):
        try:
            item = parse_line(text)
            if isinstance(item, Tick):
                yield from correlator.advance(item.ts_ms)
                continue
            yield from correlator.on_event(item)
        except InvalidEvent as exc:
            if on_reject is not None:
                on_reject(Reject(number, exc.reason, exc.category, text))
    yield from correlator.finish()


def rate_file(
    config: BillingConfig,
    events: IO[str],
    out: IO[str],
    rejects: IO[str] | None = None,
) -> RateFileResult:
    """Rate `events` (JSON Lines) into `out` (one CDR version a line)."""
    result = RateFileResult()
    emitted: list[RatedCdr] = []

    def reject(item: Reject) -> None:
        result.rejected += 1
        result.rejects_by_reason[item.category] += 1
        log.debug("line %s rejected: %s", item.line, item.reason)
        if rejects is not None:
            rejects.write(item.to_json() + "\n")

    def counted(lines: Iterable[str]) -> Iterator[str]:
        for line in lines:
            if line.strip():
                result.events_read += 1
            yield line

    # closed calls frozen: a day's calls in memory at a third of the size (correlator.py)
    correlator = Correlator(config, freeze=encode_state)
    for cdr in rate_lines(counted(events), config, reject, correlator):
        out.write(json.dumps(cdr.to_json_dict(), sort_keys=True) + "\n")
        emitted.append(cdr)
    result.cdr_versions = len(emitted)
    result.open_calls = sum(1 for _ in correlator.open_calls())
    result.totals = totals(newest_versions(emitted).values())
    return result


def format_summary(result: RateFileResult) -> str:
    t = result.totals
    lines = [
        f"events read      {result.events_read}",
        f"rejected         {result.rejected}"
        + (f"  ({', '.join(f'{k}: {v}' for k, v in sorted(result.rejects_by_reason.items()))})"
           if result.rejects_by_reason else ""),
        f"calls emitted    {t.calls}  ({result.cdr_versions} CDR versions)",
        f"calls open       {result.open_calls}",
        "by decision      " + ", ".join(f"{k} {v}" for k, v in sorted(t.by_decision.items())),
        "by reason        "
        + (", ".join(f"{k} {v}" for k, v in sorted(t.by_reason.items())) or "-"),
        "by status        " + ", ".join(f"{k} {v}" for k, v in sorted(t.by_status.items())),
    ]
    if t.flags:
        flags = ", ".join(f"{k} {v}" for k, v in sorted(t.flags.items()))
        lines.append("flags            " + flags)
    currencies = sorted(set(t.revenue) | set(t.at_risk))
    for cur in currencies:
        lines.append(
            f"revenue {cur}      {t.revenue.get(cur, 0)}   at risk {t.at_risk.get(cur, 0)}"
            f"   cost {t.cost.get(cur, 0)}"
        )
    return "\n".join(lines)


def rate_paths(config: BillingConfig, events: Path, out: Path,
               rejects: Path | None) -> RateFileResult:
    with events.open(encoding="utf-8", errors="replace") as src, \
            out.open("w", encoding="utf-8") as dst:
        if rejects is None:
            return rate_file(config, src, dst)
        with rejects.open("w", encoding="utf-8") as rej:
            return rate_file(config, src, dst, rej)
