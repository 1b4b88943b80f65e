"""The correlation state machine (billing.md section 2), incremental and event-time driven.

Feed events one at a time with `on_event`; advance event time with `advance`
(the newest event time seen is the watermark); read CDRs as calls complete, time
out or are corrected. State lives in any MutableMapping (a dict offline, a Faust
table in the worker); the deadline index is derived from it and rebuilt on demand.

Closed calls may be kept frozen (`freeze`): a closed call is remembered for
closed_retention_s, and most of a worker's memory is those calls; frozen, each is
the bytes of its state (state_codec.py) rather than its objects, about a third of
the memory, and is thawed only when an event of it comes again. Its deadline is read
from the bytes' head (state_codec.peek), so retention costs no thawing. A store then
holds CallStates (open calls, or closed ones when not freezing) and bytes.

Versions: a CDR's version is the number of distinct events of its call folded in
when it was emitted, times VERSION_STRIDE (room for re-ratings in between). Any new
distinct event for a call already emitted re-emits it, so the newest version of a
call is the same whatever the arrival order or the moment timeouts fired
(docs/billing.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, cast

from pipeline.core.cdr import VERSION_STRIDE, RatedCdr, call_start_ms
from pipeline.core.config import BillingConfig
from pipeline.core.deadlines import Deadlines
from pipeline.core.events import CallEvent
from pipeline.core.packed import ANSWER, HANGUP, RINGING, SETUP, event_ts, fields
from pipeline.core.rating import Rater, rate_fields
from pipeline.core.state import CallState
from pipeline.core.state_codec import decode_state, read_head
from pipeline.errors import InvalidEvent


class LateEvent(InvalidEvent):
    """An event for a call closed and forgotten longer ago than closed_retention_s."""

    @property
    def category(self) -> str:
        return "late"


# A call's store: call_id -> CallState, or the bytes of a frozen closed call (freeze).
Store = MutableMapping[str, Any]


def newest_ts_ms(store: Store) -> int:
    """The newest event time of a store's calls, frozen ones included (0 for none): the
    watermark of a Correlator restored from it."""
    newest = 0
    for value in store.values():
        if type(value) is bytes:
            last = read_head(value)[1]
        else:
            last = cast(CallState, value).last_ts_ms
        if last > newest:
            newest = last
    return newest


class Correlator:
    """`freeze`: keep closed calls in the store as freeze(state), bytes that
    state_codec.decode_state reads back (state_codec.encode_state, or the worker's
    table entry); None keeps them as CallStates."""

    def __init__(
        self,
        config: BillingConfig,
        store: Store | None = None,
        watermark_ms: int = 0,
        freeze: Callable[[CallState], bytes] | None = None,
    ) -> None:
        self.config = config
        self.store: Store = store if store is not None else {}
        self.watermark_ms = watermark_ms
        self._freeze = freeze
        policy = config.policy
        self._rater = Rater(config)
        self._grace_ms = policy.reorder_grace_s * 1000
        self._stale_ms = (policy.max_call_duration_s + policy.reorder_grace_s) * 1000
        self._retention_ms = policy.closed_retention_s * 1000
        self._deadlines = Deadlines(watermark_ms)
        self._position: int | None = None
        self.rebuild_index()

    # -- deadlines ---------------------------------------------------------------

    def _due(self, state: CallState) -> int:
        """Event time at which something happens to this call without new events."""
        if state.closed_at_ms is not None:
            return max(state.closed_at_ms, state.last_ts_ms) + self._retention_ms
        hangup = state.slot(HANGUP)
        if hangup is not None:
            return event_ts(hangup) + self._grace_ms
        return state.last_ts_ms + self._stale_ms

    def _due_frozen(self, frozen: bytes) -> int:
        """`_due` of a frozen call (closed), read from its bytes' head."""
        head = read_head(frozen)
        closed_at_ms = head[2]
        if closed_at_ms is None:  # not closed (never frozen so): the open call's rule
            return self._due(decode_state(frozen))
        return max(closed_at_ms, head[1]) + self._retention_ms

    def _due_of(self, value: Any) -> int:
        if type(value) is bytes:
            return self._due_frozen(value)
        state: CallState = value
        return self._due(state)

    def _get(self, call_id: str) -> CallState | None:
        """store.get, without a method call when the store is a plain dict (offline);
        a frozen call thawed."""
        store = self.store
        if type(store) is dict:
            value = cast(dict[str, Any], store).get(call_id)
        else:
            value = store.get(call_id)
        if type(value) is bytes:
            return decode_state(value)
        state: CallState | None = value
        return state

    def _put(self, call_id: str, state: CallState) -> None:
        value: Any = state
        if self._freeze is not None and state.closed:
            value = self._freeze(state)
        store = self.store
        if type(store) is dict:
            cast(dict[str, Any], store)[call_id] = value
        else:
            store[call_id] = value

    def _deadline_of(self, call_id: str) -> int | None:
        value = self.store.get(call_id)
        return None if value is None else self._due_of(value)

    def rebuild_index(self) -> None:
        """Recompute the deadline index from the store (after a restore or rebalance)."""
        self._deadlines = Deadlines(self.watermark_ms)
        for call_id, value in self.store.items():
            self._deadlines.push(self._due_of(value), call_id)

    # -- emission ----------------------------------------------------------------

    def _emit(self, state: CallState, status: str, closed_at_ms: int) -> RatedCdr:
        state.emitted(state.event_count * VERSION_STRIDE, closed_at_ms, self._position)
        cdr = self._rate(state, status)
        if state.call_start_ms is None:
            state.call_start_ms = call_start_ms(cdr)
        return cdr

    def call_start_ms(self, call_id: str) -> int | None:
        """The call's pinned start (CallState.call_start_ms), None if it has none (yet)."""
        value = self.store.get(call_id)
        if type(value) is bytes:
            return read_head(value)[4]
        state: CallState | None = value
        return None if state is None else state.call_start_ms

    def _rate(self, state: CallState, status: str) -> RatedCdr:
        setup, ringing, answer, hangup = (
            state.slot(SETUP), state.slot(RINGING), state.slot(ANSWER), state.slot(HANGUP))
        return rate_fields(
            self._rater, state.call_id, status, state.version, state.last_ts_ms,
            None if setup is None else fields(setup, SETUP),
            None if ringing is None else fields(ringing, RINGING),
            None if answer is None else fields(answer, ANSWER),
            None if hangup is None else fields(hangup, HANGUP),
        )

    def reemit_from(self, position: int) -> list[RatedCdr]:
        """The last CDR of every call whose last emission came from input at or after
        `position`, same version: what a driver restarted at `position` may not have
        delivered. Re-sending them is harmless (same call_id, version and content)."""
        out = []
        for call_id in sorted(self.store):
            value = self.store[call_id]
            if type(value) is bytes:
                emitted_at = read_head(value)[3]
                if emitted_at is None or emitted_at < position:
                    continue  # emitted before `position`: no need to thaw it
                value = decode_state(value)
            state: CallState = value
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
        values: tuple[Any, ...] = event  # fields as Any: see packed.Fields
        call_id = values[1]
        ts_ms = values[4]
        state = self._get(call_id)
        if state is None:
            if ts_ms + self._retention_ms <= self.watermark_ms:
                raise LateEvent(
                    f"late event: ts_ms {ts_ms} is more than closed_retention_s behind "
                    f"the watermark {self.watermark_ms} and call {call_id} is not open",
                    "ts_ms",
                )
            state = CallState(call_id)
            state.add(event)  # a first event completes nothing: no SETUP and HANGUP yet
            self._put(call_id, state)
            self._deadlines.push(self._due(state), call_id)
        elif state.add(event):
            if state.closed:
                out.append(self._emit(state, state.status() or "HANGUP_MISSING", state.last_ts_ms))
            elif state.slot(HANGUP) is not None:
                if state.status() == "COMPLETE":
                    out.append(self._emit(state, "COMPLETE", state.last_ts_ms))
            else:
                # An open call without HANGUP: its deadline (staleness) only moved later,
                # which its pending entry finds out when it pops.
                self._put(call_id, state)
                return self._advance_with(ts_ms, out)
            self._put(call_id, state)
            # A HANGUP (grace) or a close (retention) may have moved the deadline earlier.
            self._deadlines.push(self._due(state), call_id)
        return self._advance_with(ts_ms, out)

    def _advance_with(self, ts_ms: int, out: list[RatedCdr]) -> list[RatedCdr]:
        # Deadlines are checked when event time moves forward. A call whose deadline is
        # already behind the watermark when its event arrives (an old call, a late
        # HANGUP) is judged at the next advance, not on arrival: an event replayed
        # three hours behind the newest one is not stale merely for being replayed.
        if ts_ms > self.watermark_ms:
            self.watermark_ms = ts_ms
            if ts_ms >= self._deadlines.horizon:
                self._fire(out)
        return out

    def advance(self, watermark_ms: int, position: int | None = None) -> list[RatedCdr]:
        """Move event time forward; close calls whose grace or staleness ran out."""
        if position is not None:
            self._position = position
        if watermark_ms > self.watermark_ms:
            self.watermark_ms = watermark_ms
        out: list[RatedCdr] = []
        if self.watermark_ms >= self._deadlines.horizon:
            self._fire(out)
        return out

    def _fire(self, out: list[RatedCdr]) -> None:
        """Act on the deadlines at or before the watermark, in deadline order."""
        watermark_ms = self.watermark_ms
        deadlines = self._deadlines
        deadlines.open(watermark_ms, self._deadline_of)
        while (entry := deadlines.pop(watermark_ms)) is not None:
            at, call_id = entry
            value = self.store.get(call_id)
            if value is None:
                continue  # forgotten
            due = self._due_of(value)
            if due > at:
                deadlines.push(due, call_id)  # the call moved on: judged at its new deadline
            elif due == at:
                if type(value) is bytes:  # frozen: closed, and its retention is over
                    del self.store[call_id]
                    continue
                cdr = self._expire(value, at)
                if cdr is not None:
                    out.append(cdr)
            # due < at: the call's deadline moved earlier and has an entry of its own

    def _expire(self, state: CallState, at: int) -> RatedCdr | None:
        if state.closed:
            del self.store[state.call_id]
            return None
        cdr = self._emit(state, state.status() or "HANGUP_MISSING", at)
        self._put(state.call_id, state)
        self._deadlines.push(self._due(state), state.call_id)
        return cdr

    def finish(self) -> list[RatedCdr]:
        """End of a finite input: every grace wait is over; calls not yet stale stay open."""
        out = self.advance(self.watermark_ms)  # deadlines already due (e.g. after a restore)
        for call_id in sorted(self.store):
            value = self.store[call_id]
            if type(value) is bytes:
                continue  # frozen: closed
            state: CallState = value
            status = state.status()
            hangup = state.slot(HANGUP)
            if not state.closed and status is not None and hangup is not None:
                out.append(self._emit(state, status, event_ts(hangup) + self._grace_ms))
                self._put(call_id, state)
        return out

    def open_calls(self) -> Iterator[CallState]:
        """The calls not closed yet (a frozen call is closed: never thawed here)."""
        return (s for s in self.store.values() if type(s) is not bytes and not s.closed)
