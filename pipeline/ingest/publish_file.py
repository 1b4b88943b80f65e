"""`cdr-pipeline publish`: put a JSON Lines file of events (rate-file's input) on Kafka.

The file is read and judged line by line exactly as rate-file does (pipeline.ingest.batch):
events are published with SwitchPublisher (key call_id, idempotent, acks=all), tick lines
as tick records to every partition, bad lines go to --rejects in rate-file's format. So
publishing a file and letting the worker rate it gives what rate-file gives. Event ids
make a re-run harmless: the correlator drops events it has seen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

from pipeline.errors import InvalidEvent
from pipeline.ingest.batch import Tick, numbered_lines, parse_line
from pipeline.offline.rate_file import Reject
from pipeline.switch.publisher import PublishError, SwitchPublisher

log = logging.getLogger(__name__)

_PROGRESS_EVERY_S = 0.5


@dataclass
class PublishResult:
    lines: int = 0  # non-blank lines read
    events: int = 0  # events handed to the producer
    ticks: int = 0  # tick lines published (each to every partition)
    rejected: int = 0
    delivered: int = 0  # records Kafka acknowledged (events and tick records)
    elapsed_s: float = 0.0
    error: str | None = None  # why publishing stopped or records failed

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary(self) -> str:
        rate = self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0
        text = (f"published {self.events} events and {self.ticks} ticks from {self.lines} "
                f"lines ({self.rejected} rejected), {self.delivered} records acknowledged, "
                f"{self.elapsed_s:.1f}s, {rate:.0f} events/s")
        return text if self.error is None else f"{text}; FAILED: {self.error}"


Progress = Callable[[PublishResult], None]


def publish_lines(
    lines: Iterable[str],
    publisher: SwitchPublisher,
    rejects: IO[str] | None = None,
    progress: Progress | None = None,
    flush_timeout_s: float = 60.0,
) -> PublishResult:
    """Publish every usable line, then flush. Stops at the first delivery failure (the
    result's ``error`` says which); a re-run publishes nothing twice that matters."""
    result = PublishResult()
    started = last = time.monotonic()
    try:
        for number, text in numbered_lines(iter(lines)):
            result.lines += 1
            try:
                item = parse_line(text)
            except InvalidEvent as exc:
                result.rejected += 1
                if rejects is not None:
                    rejects.write(Reject(number, exc.reason, exc.category, text).to_json() + "\n")
                continue
            if isinstance(item, Tick):
                publisher.publish_tick(item.ts_ms)
                result.ticks += 1
            else:
                publisher.publish(item)
                result.events += 1
            if progress is not None and time.monotonic() - last >= _PROGRESS_EVERY_S:
                last = time.monotonic()
                result.elapsed_s = last - started
                progress(result)
        publisher.flush(flush_timeout_s)
    except PublishError as exc:
        result.error = str(exc)
        log.error("publish stopped: %s", exc)
    result.delivered = publisher.stats.delivered
    result.elapsed_s = time.monotonic() - started
    return result
