"""The correlation state machine (billing.md section 2), incremental and event-time driven.

Feed events one at a time with `on_event`; advance event time with `advance`
(the newest event time seen is the watermark); read CDRs as calls complete, time
out or are corrected. State lives in any MutableMapping (a dict offline, a Faust
table in the worker); the deadline index is derived from it and rebuilt on demand.

Versions: a CDR's version is the number of distinct events of its call folded in
when it was emitted, times VERSION_STRIDE (room for re-ratings in between). Any new
distinct event for a call already emitted re-emits it, so the newest version of a
call is the same whatever the arrival order or the moment timeouts fired
(docs/billing.md).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, MutableMapping

from pipeline.core.cdr import VERSION_STRIDE, RatedCdr, call_start_ms
from pipeline.core.config import BillingConfig
from pipeline.core.events import CallEvent
from pipeline.core.rating import CallView, rate_call
from pipeline.core.state import CallState
from pipeline.errors import InvalidEvent


class LateEvent(InvalidEvent):
    """An event for a call closed and forgotten longer ago than closed_retention_s."""

    @property
    def category(self) -> str:
        return "late"


class Correlator:
    def __init__(
        self,
        config: BillingConfig,
        store: MutableMapping[str, CallState] | None = None,
        watermark_ms: int = 0,
    ) -> None:
        self.config = config
        self.store: MutableMapping[str, CallState] = store if store is not None else {}
        self.watermark_ms = watermark_ms
        policy = config.policy
        self._grace_ms = policy.reorder_grace_s * 1000
        self._stale_ms = (policy.max_call_duration_s + policy.reorder_grace_s) * 1000
        self._retention_ms = policy.closed_retention_s * 1000
        self._deadlines: list[tuple[int, str]] = []
        self._position: int | None = None
        self.rebuild_index()

    # -- deadlines ---------------------------------------------------------------

    def _due(self, state: CallState) -> int:
        """Event time at which something happens to this call without new events."""
        if state.closed_at_ms is not None:
            return max(state.closed_at_ms, state.last_ts_ms) + self._retention_ms
        hangup = state.events[3]
        if hangup is not None:
            return hangup.ts_ms + self._grace_ms
        return state.last_ts_ms + self._stale_ms

    def rebuild_index(self) -> None:
        """Recompute the deadline heap from the store (after a restore or rebalance)."""
        self._deadlines = [(self._due(s), cid) for cid, s in self.store.items()]
        heapq.heapify(self._deadlines)

    # -- emission ----------------------------------------------------------------

    def _emit(self, state: CallState, status: str, closed_at_ms: int) -> RatedCdr:
        state.version = len(state.seen) * VERSION_STRIDE
        state.emitted_at = self._position
        if state.closed_at_ms is None:
            state.closed_at_ms = closed_at_ms
        cdr = self._rate(state, status)
        if state.call_start_ms is None:
            state.call_start_ms = call_start_ms(cdr)
        return cdr

    def call_start_ms(self, call_id: str) -> int | None:
        """The call's pinned start (CallState.call_start_ms), None if it has none (yet)."""
        state = self.store.get(call_id)
        return None if state is None else state.call_start_ms

    def _rate(self, state: CallState, status: str) -> RatedCdr:
        setup, ringing, answer, hangup = state.events
        view = CallView(state.call_id, setup, ringing, answer, hangup, state.last_ts_ms)
        return rate_call(view, status, state.version, self.config)

    def reemit_from(self, position: int) -> list[RatedCdr]:
        """The last CDR of every call whose last emission came from input at or after
        `position`, same version: what a driver restarted at `position` may not have
        delivered. Re-sending them is harmless (same call_id, version and content)."""
        out = []
        for call_id in sorted(self.store):
            state = self.store[call_id]
            if state.closed and state.emitted_at is not None and state.emitted_at >= position:
                out.append(self._rate(state, state.status() or "HANGUP_MISSING"))
        return out

    # -- input -------------------------------------------------------------------

    def on_event(self, event: CallEvent, position: int | None = None) -> list[RatedCdr]:
        """Fold in one event; returns the CDRs it completes or corrects (possibly none).

        `position` is the driver's input position of the event (a Kafka offset),
        recorded with each emission. Raises LateEvent for an event older than the
        retention behind the watermark of a call that is no longer remembered.
        """
        self._position = position
        out: list[RatedCdr] = []
        state = self.store.get(event.call_id)
        if state is None:
            if event.ts_ms + self._retention_ms <= self.watermark_ms:
                raise LateEvent(
                    f"late event: ts_ms {event.ts_ms} is more than closed_retention_s behind "
                    f"the watermark {self.watermark_ms} and call {event.call_id} is not open",
                    "ts_ms",
                )
            state = CallState(event.call_id)
        if state.add(event):
            if state.closed:
                out.append(self._emit(state, state.status() or "HANGUP_MISSING", state.last_ts_ms))
            elif state.status() == "COMPLETE":
                out.append(self._emit(state, "COMPLETE", state.last_ts_ms))
            self.store[event.call_id] = state
            heapq.heappush(self._deadlines, (self._due(state), event.call_id))
        # Deadlines are checked when event time moves forward. A call whose deadline is
        # already behind the watermark when its event arrives (an old call, a late
        # HANGUP) is judged at the next advance, not on arrival: an event replayed
        # three hours behind the newest one is not stale merely for being replayed.
        if event.ts_ms > self.watermark_ms:
            out.extend(self.advance(event.ts_ms))
        return out

    def advance(self, watermark_ms: int, position: int | None = None) -> list[RatedCdr]:
        """Move event time forward; close calls whose grace or staleness ran out."""
        if position is not None:
            self._position = position
        if watermark_ms > self.watermark_ms:
            self.watermark_ms = watermark_ms
        out: list[RatedCdr] = []
        heap = self._deadlines
        while heap and heap[0][0] <= self.watermark_ms:
            at, call_id = heapq.heappop(heap)
            state = self.store.get(call_id)
            if state is None or self._due(state) != at:
                continue  # superseded entry
            cdr = self._expire(state, at)
            if cdr is not None:
                out.append(cdr)
        return out

    def _expire(self, state: CallState, at: int) -> RatedCdr | None:
        if state.closed:
            del self.store[state.call_id]
            return None
        cdr = self._emit(state, state.status() or "HANGUP_MISSING", at)
        self.store[state.call_id] = state
        heapq.heappush(self._deadlines, (self._due(state), state.call_id))
        return cdr

    def finish(self) -> list[RatedCdr]:
        """End of a finite input: every grace wait is over; calls not yet stale stay open."""
        out = self.advance(self.watermark_ms)  # deadlines already due (e.g. after a restore)
        for call_id in sorted(self.store):
            state = self.store[call_id]
            status = state.status()
            if not state.closed and status is not None:
                out.append(self._emit(state, status, state.events[3].ts_ms + self._grace_ms))  # type: ignore[union-attr]
                self.store[call_id] = state
        return out

    def open_calls(self) -> Iterator[CallState]:
        return (s for s in self.store.values() if not s.closed)
