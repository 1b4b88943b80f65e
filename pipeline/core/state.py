"""Per-call correlation state: the winning event of each type, and what was emitted.

A CallState is what the correlator keeps per call, open or closed (closed calls are
kept for closed_retention_s), so it is small: `__slots__`, each winning event packed
into one string (packed.py), and the ids of the events that lost stored only when
there are any. The streaming worker writes it to its changelog with state_codec.py;
`to_dict`/`from_dict` give the older JSON form.
"""

from __future__ import annotations

from typing import Any

from pipeline.core.events import CallEvent
from pipeline.core.packed import (
    ANSWER,
    ANSWERED,
    KINDS,
    RINGING,
    SEP,
    SETUP,
    Fields,
    Slot,
    event_ts,
    id_key,
    pack,
    pack_keyed,
    unpack,
)
from pipeline.core.packed import event_id as slot_event_id

SLOTS = KINDS  # event type -> its slot (0 SETUP, 1 RINGING, 2 ANSWER, 3 HANGUP)
_NOTHING_EMITTED: tuple[int, int | None, int | None, int | None] = (0, None, None, None)


def _holds(slot: Slot, probe: str, event_id: str, call_id: str) -> bool:
    """Whether the slot's event has this id (`probe`: its id_key followed by SEP)."""
    if isinstance(slot, str):
        return slot.startswith(probe) and slot_event_id(slot, call_id) == event_id
    values: Fields = slot
    return bool(values[0] == event_id)


class CallState:
    """One call: its four winning events (packed), the ids of the losing ones, the newest
    event time, and what was emitted for it."""

    __slots__ = (
        "_answer",
        "_emission",
        "_hangup",
        "_more",
        "_ringing",
        "_setup",
        "call_id",
        "last_ts_ms",
    )

    def __init__(
        self,
        call_id: str,
        events: list[CallEvent | None] | None = None,
        seen: set[str] | None = None,
        last_ts_ms: int = 0,
        version: int = 0,
        closed_at_ms: int | None = None,
        emitted_at: int | None = None,
        call_start_ms: int | None = None,
    ) -> None:
        self.call_id = call_id
        self._setup: Slot | None = None
        self._ringing: Slot | None = None
        self._answer: Slot | None = None
        self._hangup: Slot | None = None
        # Ids of events folded in that do not hold a slot (duplicates of a type that lost).
        self._more: tuple[str, ...] = ()
        self.last_ts_ms = last_ts_ms
        # What was emitted: (version, closed_at_ms, emitted_at, call_start_ms), None while
        # nothing was: one slot rather than four keeps an open call's object 32 bytes
        # smaller (see the properties below).
        self._emission: tuple[int, int | None, int | None, int | None] | None = None
        if version or closed_at_ms is not None or emitted_at is not None or (
                call_start_ms is not None):
            self._emission = (version, closed_at_ms, emitted_at, call_start_ms)
        if events is not None:
            for kind, event in enumerate(events):
                if event is not None:
                    self.set_slot(kind, pack(event, kind, call_id))
        if seen:
            held = {self.slot_id(kind) for kind in range(4) if self.slot(kind) is not None}
            self._more = tuple(sorted(set(seen) - held))

    # -- what was emitted ------------------------------------------------------------

    @property
    def version(self) -> int:
        """The last emitted version; 0 while never emitted."""
        emission = self._emission
        return 0 if emission is None else emission[0]

    @version.setter
    def version(self, value: int) -> None:
        _, closed, emitted, start = self._emission or _NOTHING_EMITTED
        self._emission = (value, closed, emitted, start)

    @property
    def closed_at_ms(self) -> int | None:
        """Event time at which the call was first emitted."""
        emission = self._emission
        return None if emission is None else emission[1]

    @closed_at_ms.setter
    def closed_at_ms(self, value: int | None) -> None:
        version, _, emitted, start = self._emission or _NOTHING_EMITTED
        self._emission = (version, value, emitted, start)

    @property
    def emitted_at(self) -> int | None:
        """The driver's input position (e.g. Kafka offset) of the record whose processing
        emitted the last version; lets a restarted driver re-send what may be unsent."""
        emission = self._emission
        return None if emission is None else emission[2]

    @emitted_at.setter
    def emitted_at(self, value: int | None) -> None:
        version, closed, _, start = self._emission or _NOTHING_EMITTED
        self._emission = (version, closed, value, start)

    @property
    def call_start_ms(self) -> int | None:
        """The call's start as its first CDR gave it (cdr.call_start_ms): where the call
        is filed in storage. Pinned, because a later version may gain an earlier time (a
        SETUP after a SETUP_MISSING CDR) and every version must be filed under one anchor."""
        emission = self._emission
        return None if emission is None else emission[3]

    @call_start_ms.setter
    def call_start_ms(self, value: int | None) -> None:
        version, closed, emitted, _ = self._emission or _NOTHING_EMITTED
        self._emission = (version, closed, emitted, value)

    def emitted(self, version: int, closed_at_ms: int, emitted_at: int | None) -> None:
        """Record an emission: its version and input position, and the close time if the
        call was not closed yet."""
        if self._emission is None:
            self._emission = (version, closed_at_ms, emitted_at, None)
        else:
            _, closed, _, start = self._emission
            self._emission = (version, closed_at_ms if closed is None else closed, emitted_at,
                              start)

    # -- slots -----------------------------------------------------------------------

    def slot(self, kind: int) -> Slot | None:
        """The packed winning event of a type (packed.SETUP .. packed.HANGUP)."""
        if kind == SETUP:
            return self._setup
        if kind == RINGING:
            return self._ringing
        if kind == ANSWER:
            return self._answer
        return self._hangup

    def set_slot(self, kind: int, slot: Slot | None) -> None:
        if kind == SETUP:
            self._setup = slot
        elif kind == RINGING:
            self._ringing = slot
        elif kind == ANSWER:
            self._answer = slot
        else:
            self._hangup = slot

    def slot_id(self, kind: int) -> Any:
        """The full event id of a present slot (a string, but for an event built by hand)."""
        slot = self.slot(kind)
        assert slot is not None
        return slot_event_id(slot, self.call_id)

    @property
    def others(self) -> tuple[str, ...]:
        """Ids of the events folded in that hold no slot."""
        return self._more

    @classmethod
    def restore(
        cls,
        call_id: str,
        slots: tuple[Slot | None, Slot | None, Slot | None, Slot | None],
        others: tuple[str, ...],
        last_ts_ms: int,
        version: int,
        closed_at_ms: int | None,
        emitted_at: int | None,
        call_start_ms: int | None,
    ) -> CallState:
        """A state from its parts as they are held (state_codec.py), without repacking."""
        state = cls(call_id, None, None, last_ts_ms, version, closed_at_ms, emitted_at,
                     call_start_ms)
        state._setup, state._ringing, state._answer, state._hangup = slots
        state._more = others
        return state

    @property
    def events(self) -> list[CallEvent | None]:
        """The winning events by slot, as CallEvents."""
        call_id = self.call_id
        return [None if slot is None else unpack(slot, kind, call_id)
                for kind, slot in enumerate(
                    (self._setup, self._ringing, self._answer, self._hangup))]

    @property
    def seen(self) -> set[str]:
        """The ids of all distinct events folded in."""
        held = {self.slot_id(kind) for kind in range(4) if self.slot(kind) is not None}
        return held | set(self._more)

    @property
    def event_count(self) -> int:
        """How many distinct events were folded in (the version's base)."""
        return ((self._setup is not None) + (self._ringing is not None)
                + (self._answer is not None) + (self._hangup is not None) + len(self._more))

    @property
    def closed(self) -> bool:
        emission = self._emission
        return emission is not None and emission[1] is not None

    # -- folding -----------------------------------------------------------------------

    def add(self, event: CallEvent) -> bool:
        """Fold in an event; False when its event_id was seen before (a duplicate)."""
        values: Fields = event  # fields as Any: see packed.Fields
        kind = KINDS[values[3]]
        event_id = values[0]
        call_id = self.call_id
        if type(event_id) is not str:  # never from parse_event; kept as it is
            return self._add_slow(event, kind)
        key = id_key(event_id, call_id)
        probe = key + SEP
        setup, ringing, answer, hangup = self._setup, self._ringing, self._answer, self._hangup
        if ((setup is not None and _holds(setup, probe, event_id, call_id))
                or (ringing is not None and _holds(ringing, probe, event_id, call_id))
                or (answer is not None and _holds(answer, probe, event_id, call_id))
                or (hangup is not None and _holds(hangup, probe, event_id, call_id))
                or (self._more and event_id in self._more)):
            return False
        ts = values[4]
        if ts > self.last_ts_ms:
            self.last_ts_ms = ts
        current = setup if kind == SETUP else ringing if kind == RINGING else (
            answer if kind == ANSWER else hangup)
        if current is None:
            self.set_slot(kind, pack_keyed(event, kind, call_id, key))
            return True
        held_id = slot_event_id(current, call_id)
        if (ts, event_id) < (event_ts(current), held_id):
            self.set_slot(kind, pack_keyed(event, kind, call_id, key))
            self._more += (held_id,)
        else:
            self._more += (event_id,)
        return True

    def _add_slow(self, event: CallEvent, kind: int) -> bool:
        """`add` for an event whose id is not a string (built by hand): kept unpacked."""
        values: Fields = event
        event_id = values[0]
        for slot in (self._setup, self._ringing, self._answer, self._hangup):
            if slot is not None and type(slot) is not str and slot_event_id(slot, "") == event_id:
                return False
        if event_id in self._more:
            return False
        ts = values[4]
        if ts > self.last_ts_ms:
            self.last_ts_ms = ts
        current = self.slot(kind)
        if current is None:
            self.set_slot(kind, event)
            return True
        held_id: Any = slot_event_id(current, self.call_id)
        if (ts, event_id) < (event_ts(current), held_id):
            self.set_slot(kind, event)
            self._more += (held_id,)
        else:
            self._more += (event_id,)
        return True

    def hangup_answered(self) -> bool:
        """The HANGUP's `answered` (False without HANGUP)."""
        hangup = self._hangup
        if hangup is None:
            return False
        if isinstance(hangup, str):
            return hangup.split(SEP, ANSWERED + 1)[ANSWERED] == "1"
        values: Fields = hangup
        return bool(values[13])

    def status(self) -> str | None:
        """COMPLETE or a *_MISSING status if the call has a HANGUP; None if it has none."""
        if self._hangup is None:
            return None
        if self._setup is None:
            return "SETUP_MISSING"
        if self._answer is None and self.hangup_answered():
            return "ANSWER_MISSING"
        return "COMPLETE"

    # -- the JSON form -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "events": [None if e is None else e.to_dict() for e in self.events],
            "seen": sorted(self.seen),
            "last_ts_ms": self.last_ts_ms,
            "version": self.version,
            "closed_at_ms": self.closed_at_ms,
            "emitted_at": self.emitted_at,
            "call_start_ms": self.call_start_ms,
        }

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

    def _key(self) -> tuple[Any, ...]:
        return (self.call_id, self.events, self.seen, self.last_ts_ms, self.version,
                self.closed_at_ms, self.emitted_at, self.call_start_ms)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CallState):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaces

    def __repr__(self) -> str:
        return (f"CallState(call_id={self.call_id!r}, events={self.events!r}, "
                f"seen={self.seen!r}, last_ts_ms={self.last_ts_ms!r}, version={self.version!r}, "
                f"closed_at_ms={self.closed_at_ms!r}, emitted_at={self.emitted_at!r}, "
                f"call_start_ms={self.call_start_ms!r})")
