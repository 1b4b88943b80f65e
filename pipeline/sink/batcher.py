"""Batching for the ClickHouse sink: pure, no Kafka, no ClickHouse, no clock of its own.

The sink feeds every consumed record here, decoded or not: `add(key, offset, row)`
with `row=None` for a record that produced no row (sent to the dead-letter topic,
a tombstone). Offsets of such records still have to be committed, so the batcher
tracks, per (topic, partition), the first and last offset it has seen besides the
rows. A batch is due when it holds `max_rows` rows or when its oldest record has
waited `max_age_s` on the monotonic clock the caller passes in; a caller that has read
everything there is may also take a partial batch early (`may_take_early`), at most
once per `partial_gap_s` (by default `max_age_s`, which bounds the rate of small
inserts the same way the age rule does; 0 leaves the pace to the caller, the sink
inserting one batch at a time). `take()` hands the batch out and forgets it;
committing `Batch.commit_offsets` (last offset + 1 per partition) after a successful
insert is the caller's job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

PartitionKey = tuple[str, int]
"""(topic, partition)."""


@dataclass(frozen=True)
class Batch(Generic[T]):
    """Rows of consecutive records per partition and the offset range they came from.

    `ranges[key] = (first, last)` covers every record taken from that partition,
    including those that produced no row."""

    rows_by_partition: Mapping[PartitionKey, tuple[T, ...]]
    ranges: Mapping[PartitionKey, tuple[int, int]]

    @property
    def rows(self) -> list[T]:
        """All rows, partition by partition (sorted keys), each in offset order."""
        out: list[T] = []
        for key in sorted(self.rows_by_partition):
            out.extend(self.rows_by_partition[key])
        return out

    @property
    def row_count(self) -> int:
        return sum(len(r) for r in self.rows_by_partition.values())

    @property
    def record_count(self) -> int:
        """Offsets spanned (rows plus records that produced none; gaps from compaction count)."""
        return sum(last - first + 1 for first, last in self.ranges.values())

    @property
    def partitions(self) -> frozenset[PartitionKey]:
        return frozenset(self.ranges)

    @property
    def commit_offsets(self) -> dict[PartitionKey, int]:
        """The offset to commit per partition: the next one to read (last + 1)."""
        return {key: last + 1 for key, (_, last) in self.ranges.items()}

    def describe(self) -> str:
        """`topic[p]@first..last` for every partition, for log lines."""
        return ", ".join(
            f"{topic}[{part}]@{first}..{last}"
            for (topic, part), (first, last) in sorted(self.ranges.items())
        )

    def token(self, extra: str = "") -> str:
        """Deterministic identity of the batch: sha256 over its sorted
        (topic, partition, first, last) ranges and `extra` (e.g. a content hash)."""
        digest = hashlib.sha256(b"cdr-sink/v1")
        for (topic, part), (first, last) in sorted(self.ranges.items()):
            digest.update(f"\n{topic}\x00{part}\x00{first}\x00{last}".encode())
        digest.update(b"\n" + extra.encode())
        return digest.hexdigest()

    def without(self, partitions: Iterable[PartitionKey]) -> Batch[T] | None:
        """The same batch minus `partitions`; None when nothing is left."""
        gone = set(partitions)
        ranges = {k: v for k, v in self.ranges.items() if k not in gone}
        if not ranges:
            return None
        rows = {k: v for k, v in self.rows_by_partition.items() if k in ranges}
        return Batch(rows, ranges)


@dataclass
class _Pending(Generic[T]):
    first: int
    last: int
    rows: list[T] = field(default_factory=list)


class Batcher(Generic[T]):
    """Accumulates rows with their (topic, partition, offset) until a batch is due."""

    def __init__(self, max_rows: int = 5000, max_age_s: float = 1.0,
                 partial_gap_s: float | None = None) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        if partial_gap_s is not None and partial_gap_s < 0:
            raise ValueError(f"partial_gap_s must be >= 0, got {partial_gap_s}")
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.partial_gap_s = max_age_s if partial_gap_s is None else partial_gap_s
        self._pending: dict[PartitionKey, _Pending[T]] = {}
        self._rows = 0
        self._started: float | None = None  # monotonic time of the oldest pending record
        self._last_partial: float | None = None  # when the last partial batch was taken

    def __len__(self) -> int:
        """Rows pending."""
        return self._rows

    @property
    def empty(self) -> bool:
        """True when no record at all (row or not) is pending."""
        return not self._pending

    def partitions(self) -> set[PartitionKey]:
        return set(self._pending)

    def add(self, key: PartitionKey, offset: int, row: T | None, now: float) -> None:
        """Record that `offset` of `key` was consumed; `row` is None when it produced none.

        Offsets are expected to increase per partition; one that does not (a
        redelivery) only widens the range, so the commit offset never goes back."""
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(offset, offset)
        elif offset > pending.last:
            pending.last = offset
        elif offset < pending.first:
            pending.first = offset
        if row is not None:
            pending.rows.append(row)
            self._rows += 1
        if self._started is None:
            self._started = now

    def age(self, now: float) -> float:
        """Seconds the oldest pending record has waited (0 when empty)."""
        return 0.0 if self._started is None else max(0.0, now - self._started)

    def due(self, now: float) -> bool:
        """Whether the pending records should be flushed now."""
        if self.empty:
            return False
        return self._rows >= self.max_rows or self.age(now) >= self.max_age_s

    def may_take_early(self, now: float) -> bool:
        """Whether a partial batch may be taken before it is due: rows are pending and no
        partial batch (fewer than `max_rows` rows, at least one) was taken in the last
        `partial_gap_s`. For a caller that has read all there is to read: it stores the
        rows at once instead of waiting for more that are not coming, and still makes at
        most one small insert per `partial_gap_s`."""
        if self._rows == 0:
            return False
        return self._last_partial is None or now - self._last_partial >= self.partial_gap_s

    def time_until_partial(self, now: float) -> float:
        """Seconds until a partial batch may be taken again (0: now), rows or not."""
        if self._last_partial is None:
            return 0.0
        return max(0.0, self._last_partial + self.partial_gap_s - now)

    def time_until_due(self, now: float) -> float | None:
        """Seconds until the batch is due by age (0 if due), None when empty."""
        if self.empty:
            return None
        if self.due(now):
            return 0.0
        return max(0.0, self.max_age_s - self.age(now))

    def take(
        self, partitions: Iterable[PartitionKey] | None = None, now: float | None = None
    ) -> Batch[T] | None:
        """Hand out the pending records (only those of `partitions` if given) and forget
        them; None when there are none. With `now`, a partial batch taken counts for
        `may_take_early`."""
        keys = list(self._pending) if partitions is None else [
            k for k in partitions if k in self._pending
        ]
        if not keys:
            return None
        taken = {k: self._pending.pop(k) for k in keys}
        rows = sum(len(p.rows) for p in taken.values())
        self._rows -= rows
        if now is not None and 0 < rows < self.max_rows:
            self._last_partial = now
        if not self._pending:
            self._started = None
        return Batch(
            rows_by_partition={k: tuple(p.rows) for k, p in taken.items()},
            ranges={k: (p.first, p.last) for k, p in taken.items()},
        )

    def drop(self, partitions: Iterable[PartitionKey]) -> int:
        """Forget the pending records of `partitions` (revoked, not committed); return
        how many rows were dropped."""
        batch = self.take(partitions)
        return 0 if batch is None else batch.row_count
