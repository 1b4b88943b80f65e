"""Per-call correlation state: the winning event of each type, and what was emitted.

A CallState is what the streaming worker keeps in its changelog-backed table, so
it converts to and from a plain JSON-friendly dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.core.events import CallEvent

SLOTS = {"SETUP": 0, "RINGING": 1, "ANSWER": 2, "HANGUP": 3}


@dataclass(slots=True)
class CallState:
    call_id: str
    events: list[CallEvent | None] = field(default_factory=lambda: [None, None, None, None])
    seen: set[str] = field(default_factory=set)
    last_ts_ms: int = 0
    version: int = 0  # the last emitted version; 0 while never emitted
    closed_at_ms: int | None = None  # event time at which the call was first emitted
    # The driver's input position (e.g. Kafka offset) of the record whose processing
    # emitted the last version; lets a restarted driver re-send what may be unsent.
    emitted_at: int | None = None
    # The call's start as its first CDR gave it (cdr.call_start_ms): where the call is filed
    # in storage. Pinned, because a later version may gain an earlier time (a SETUP
    # after a SETUP_MISSING CDR) and every version must be filed under one anchor.
    call_start_ms: int | None = None
    # Per slot, the event and its to_dict(): the worker writes a call's whole state each
    # time the call changes, and an event's dict was most of that cost.
    _dicts: list[tuple[CallEvent, dict[str, Any]] | None] = field(
        default_factory=lambda: [None, None, None, None], repr=False, compare=False)

    @property
    def closed(self) -> bool:
        return self.closed_at_ms is not None

    def add(self, event: CallEvent) -> bool:
        """Fold in an event; False when its event_id was seen before (a duplicate)."""
        if event.event_id in self.seen:
            return False
        self.seen.add(event.event_id)
        if event.ts_ms > self.last_ts_ms:
            self.last_ts_ms = event.ts_ms
        slot = SLOTS[event.event_type]
        current = self.events[slot]
        if current is None or (event.ts_ms, event.event_id) < (current.ts_ms, current.event_id):
            self.events[slot] = event
        return True

    def status(self) -> str | None:
        """COMPLETE or a *_MISSING status if the call has a HANGUP; None if it has none."""
        setup, _, answer, hangup = self.events
        if hangup is None:
            return None
        if setup is None:
            return "SETUP_MISSING"
        if hangup.answered and answer is None:
            return "ANSWER_MISSING"
        return "COMPLETE"

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "events": [self._event_dict(slot) for slot in range(4)],
            "seen": sorted(self.seen),
            "last_ts_ms": self.last_ts_ms,
            "version": self.version,
            "closed_at_ms": self.closed_at_ms,
            "emitted_at": self.emitted_at,
            "call_start_ms": self.call_start_ms,
        }

    def _event_dict(self, slot: int) -> dict[str, Any] | None:
        event = self.events[slot]
        if event is None:
            return None
        cached = self._dicts[slot]
        if cached is None or cached[0] is not event:
            cached = self._dicts[slot] = (event, event.to_dict())
        return cached[1]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CallState:
        return cls(
            call_id=data["call_id"],
            events=[CallEvent(**e) if e is not None else None for e in data["events"]],
            seen=set(data["seen"]),
            last_ts_ms=data["last_ts_ms"],
            version=data["version"],
            closed_at_ms=data["closed_at_ms"],
            emitted_at=data.get("emitted_at"),
            # "anchor_ms": its name before 2026-12; absent in states written before it existed
            call_start_ms=data.get("call_start_ms", data.get("anchor_ms")),
        )
