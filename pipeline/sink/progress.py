"""The assigned partitions and how far they have been read: lag, caught-up, idle.

Reading to the end of every partition is the cue to store a partial batch early
(nothing more is coming) and, with nothing pending, what `run_until_idle` waits
for. Both use the high watermark cached from the last fetch, so checking costs no
broker round trip while records flow; a partition that has delivered nothing yet
is asked once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from confluent_kafka import OFFSET_INVALID, KafkaException, TopicPartition

from pipeline.sink import metrics
from pipeline.sink.batcher import PartitionKey
from pipeline.sink.clients import SinkConsumer
from pipeline.sink.config import SinkConfig

log = logging.getLogger(__name__)

Ends = dict[PartitionKey, tuple[int, int]]
"""(position, high watermark) per assigned partition."""


class Progress:
    """The assigned partitions (`assigned`), the lag gauges and the idle state."""

    def __init__(self, consumer: SinkConsumer, config: SinkConfig,
                 clock: Callable[[], float]) -> None:
        self.assigned: set[PartitionKey] = set()
        self.idle_since: float | None = None
        self._consumer = consumer
        self._config = config
        self._clock = clock
        self._next_lag = 0.0
        self._next_idle_check = 0.0

    def assign(self, keys: Iterable[PartitionKey]) -> None:
        """New partitions: not idle any more. The first lag refresh comes one interval
        later: a partition that has delivered nothing yet has no position, and
        reading its committed offset costs round trips."""
        self.assigned.update(keys)
        self._next_lag = self._clock() + self._config.lag_interval_s
        self._next_idle_check = 0.0
        self.idle_since = None

    def revoke(self, keys: Iterable[PartitionKey]) -> None:
        for topic, part in keys:
            self.assigned.discard((topic, part))
            metrics.CONSUMER_LAG.labels(topic=topic, partition=str(part)).set(0)

    def idle_for(self) -> float:
        since = self.idle_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    def caught_up(self) -> bool:
        """Whether every assigned partition has been read to its high watermark (the one
        cached from the last fetch): nothing more to batch for now."""
        return self._read_to_end(self._end_state())

    def watch(self, now: float, pending: bool, drained: bool) -> None:
        """Refresh the lag gauges (every lag_interval_s) and the idle state (every
        idle_check_s while nothing is `pending` and the last consume() came back short,
        `drained`). Not while records are flowing: a partition that has delivered
        nothing yet costs broker round trips."""
        if pending or not self.assigned:
            self.idle_since = None
        lag_due = now >= self._next_lag
        idle_due = (not pending and drained and bool(self.assigned)
                    and now >= self._next_idle_check)
        if not (lag_due or idle_due):
            return
        ends = self._end_state()
        if lag_due:
            self._next_lag = now + self._config.lag_interval_s
            for (topic, part), (pos, high) in ends.items():
                metrics.CONSUMER_LAG.labels(topic=topic, partition=str(part)).set(
                    max(0, high - pos))
        if idle_due:
            self._next_idle_check = now + self._config.idle_check_s
            if not self._read_to_end(ends):
                self.idle_since = None
            elif self.idle_since is None:
                self.idle_since = now

    def _read_to_end(self, ends: Ends) -> bool:
        return bool(ends) and len(ends) == len(self.assigned) and all(
            pos >= high for pos, high in ends.values())

    def _end_state(self) -> Ends:
        """(position, high watermark) per assigned partition. The position falls back
        to the committed offset, then to the low watermark, before anything was
        consumed."""
        tps = [TopicPartition(t, p) for t, p in sorted(self.assigned)]
        if not tps:
            return {}
        positions = {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(tps)}
        unknown = [TopicPartition(t, p) for (t, p), o in positions.items() if o < 0]
        if unknown:
            try:
                for tp in self._consumer.committed(unknown, timeout=5):
                    positions[(tp.topic, tp.partition)] = tp.offset
            except KafkaException as exc:
                log.debug("cannot read committed offsets: %s", exc)
        out: Ends = {}
        for tp in tps:
            key = (tp.topic, tp.partition)
            pos = positions.get(key, OFFSET_INVALID)
            marks = self._watermarks(tp, cached=pos >= 0)
            if marks is not None:
                low, high = marks
                out[key] = (pos if pos >= 0 else low, high)
        return out

    def _watermarks(self, tp: TopicPartition, cached: bool) -> tuple[int, int] | None:
        """(low, high); with `cached`, the high watermark of the last fetch response
        and no round trip (the cached low one is not maintained: do not use it)."""
        try:
            if cached:
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:
                    return 0, high
            low, high = self._consumer.get_watermark_offsets(tp, timeout=2, cached=False)
        except KafkaException as exc:
            log.debug("%s[%s]: cannot read watermarks: %s", tp.topic, tp.partition, exc)
            return None
        return (low, high) if low >= 0 and high >= 0 else None
