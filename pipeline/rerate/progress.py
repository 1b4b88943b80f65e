"""Progress of a long re-rating run: calls done, rate, changes, ETA.

On a terminal the line is redrawn in place about twice a second; otherwise (a log
file, CI) one line is written every `interval_s` seconds. The total is an estimate
(stored calls counted without FINAL, or Kafka records to read), so the percentage
and the ETA are approximate; the final line gives the exact figures.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    def __init__(
        self,
        total: int | None,
        unit: str = "calls",
        stream: TextIO | None = None,
        interval_s: float | None = None,
        enabled: bool = True,
    ) -> None:
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s if interval_s is not None else (0.5 if self.tty else 10.0)
        self.enabled = enabled
        self.started = time.monotonic()
        self._last = self.started
        self.done = 0
        self.changed = 0

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        text = f"rerate: {self.done:,} {self.unit}"
        if self.total:
            text += f" of ~{self.total:,} ({min(100.0, 100.0 * self.done / self.total):.0f}%)"
        text += f", {rate:,.0f}/s, {self.changed:,} changed, {_duration(elapsed)} elapsed"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        return text

    def update(self, done: int, changed: int) -> None:
        self.done, self.changed = done, changed
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        self._emit(self.line(now))

    def _emit(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if not self.enabled:
            return
        text = self.line()
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + "\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
