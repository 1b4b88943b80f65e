"""The correlator's deadline index: which calls may need attention at which event time.

Every call in the store has a deadline (the end of its grace, staleness or retention)
that moves with its events. A heap entry (deadline, call_id) costs about 100 bytes, as
much as the rest of a packed call, so this keeps far deadlines in buckets of
BUCKET_MS, a call id in a list (8 bytes); when event time reaches a bucket, its calls
enter a heap with their deadline of that moment (`open`).

Entries are hints, checked by the caller against the call's current deadline when
popped: later ones are pushed again (`push`), earlier ones mean the call has another
entry at its deadline. So the caller pushes a call when it enters the store and when
its deadline may have moved earlier, not at every event.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Final

BUCKET_MS: Final = 1000
NEVER: Final = 2**62  # `horizon` when nothing is pending


class Deadlines:
    """Pending (deadline, call_id) hints; `horizon` is when the earliest may be due."""

    __slots__ = ("_buckets", "_keys", "_near", "_opened", "horizon")

    def __init__(self, watermark_ms: int = 0) -> None:
        self._buckets: dict[int, list[str]] = {}
        self._keys: list[int] = []  # heap of the bucket keys present
        self._near: list[tuple[int, str]] = []  # heap of the opened buckets' entries
        self._opened = watermark_ms // BUCKET_MS  # buckets up to this key are in _near
        self.horizon = NEVER  # at or before every pending entry's time

    def __len__(self) -> int:
        return len(self._near) + sum(len(b) for b in self._buckets.values())

    def push(self, deadline_ms: int, call_id: str) -> None:
        key = deadline_ms // BUCKET_MS
        if key <= self._opened:
            heapq.heappush(self._near, (deadline_ms, call_id))
            if deadline_ms < self.horizon:
                self.horizon = deadline_ms
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [call_id]
            heapq.heappush(self._keys, key)
            start = key * BUCKET_MS
            if start < self.horizon:
                self.horizon = start
        else:
            bucket.append(call_id)

    def open(self, watermark_ms: int, deadline_of: Callable[[str], int | None]) -> None:
        """Move the buckets event time has reached into the heap, each call with its
        current deadline (`deadline_of`; None: the call is gone). A call whose deadline
        lies beyond the reached buckets goes to its bucket instead."""
        key = watermark_ms // BUCKET_MS
        keys = self._keys
        if key > self._opened:
            self._opened = key
        while keys and keys[0] <= key:
            for call_id in self._buckets.pop(heapq.heappop(keys)):
                deadline = deadline_of(call_id)
                if deadline is not None:
                    self.push(deadline, call_id)
        self._reset_horizon()

    def pop(self, watermark_ms: int) -> tuple[int, str] | None:
        """The earliest entry of the opened buckets if it is at or before `watermark_ms`
        (call `open` first), else None."""
        near = self._near
        if near and near[0][0] <= watermark_ms:
            entry = heapq.heappop(near)
            self._reset_horizon()
            return entry
        return None

    def _reset_horizon(self) -> None:
        horizon = self._near[0][0] if self._near else NEVER
        if self._keys:
            start = self._keys[0] * BUCKET_MS
            if start < horizon:
                horizon = start
        self.horizon = horizon
