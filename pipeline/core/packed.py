"""A call's events held compactly: one string an event (memory layout, not billing rules).

A call is remembered from its first event until closed_retention_s after its CDR, with
the winning event of each type (state.py). As a CallEvent, an event is a tuple of 18
references and one string object per field, about 600 bytes for a SETUP; packed, it is
one ASCII string of its fields joined by SEP, about 120 bytes. The state codec
(state_codec.py) writes these strings as they are, so a changelog write costs little.

Layout, per event type (the position of each field in a packed string and in the
lists `fields` returns):

    SETUP    id, ts, switch, account, caller, callee, ingress, caller_ip, illegal
    RINGING  id, ts, switch, egress
    ANSWER   id, ts, switch, egress, callee_gateway
    HANGUP   id, ts, switch, egress, answered, source, sip, q850, server_reason

`id` is the event_id, or ID_MARK + its rest when it starts with the call_id (as switch
event ids usually do); `ts` is decimal; an absent field is empty; `answered` is 1 or 0.
An event that this cannot hold exactly (a field holding SEP, an empty string, a value
of another type: never an event parse_event accepted) stays a CallEvent: a slot is a
packed string or a CallEvent, and every reader here takes both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, cast

from pipeline.core.events import CallEvent

SEP: Final = "\x1f"
ID_MARK: Final = "\x1d"

SETUP: Final = 0
RINGING: Final = 1
ANSWER: Final = 2
HANGUP: Final = 3
KINDS: Final = {"SETUP": SETUP, "RINGING": RINGING, "ANSWER": ANSWER, "HANGUP": HANGUP}
TYPE_NAMES: Final = ("SETUP", "RINGING", "ANSWER", "HANGUP")
SIZES: Final = (9, 4, 5, 9)  # fields of a packed event, per kind

EVENT_ID: Final = 0  # all kinds
TS: Final = 1
SWITCH: Final = 2
ACCOUNT: Final = 3  # SETUP
CALLER: Final = 4
CALLEE: Final = 5
INGRESS: Final = 6
CALLER_IP: Final = 7
ILLEGAL: Final = 8
EGRESS: Final = 3  # RINGING, ANSWER, HANGUP
CALLEE_GW: Final = 4  # ANSWER
ANSWERED: Final = 4  # HANGUP
SOURCE: Final = 5
SIP: Final = 6
Q850: Final = 7
REASON: Final = 8

Slot = str | CallEvent

# A CallEvent from its 18 values, without keyword handling.
_new = cast(Callable[[type[CallEvent], tuple[Any, ...]], CallEvent], tuple.__new__)


def id_key(event_id: str, call_id: str) -> str:
    """The event id as a packed event holds it (see the module doc)."""
    if event_id.startswith(call_id):
        return ID_MARK + event_id[len(call_id):]
    return event_id


def full_id(key: str, call_id: str) -> str:
    """Inverse of id_key."""
    return call_id + key[1:] if key.startswith(ID_MARK) else key


# Readers below take a CallEvent's fields as Any (`values: Fields = event`): compiled by
# mypyc, a field read at its declared type is checked, and an event built by hand may
# hold anything; the pure-Python and compiled paths must answer alike.
Fields = tuple[Any, ...]


def pack(event: CallEvent, kind: int, call_id: str) -> Slot:
    """The event as a packed string, or the event itself when no string holds it exactly:
    a field of another type, or one that is not what parse_event lets through."""
    values: Fields = event
    event_id = values[0]
    if type(event_id) is not str:
        return event
    return pack_keyed(event, kind, call_id, id_key(event_id, call_id))


def pack_keyed(event: CallEvent, kind: int, call_id: str, key: str) -> Slot:
    """`pack` given the event id's key (id_key), which the caller has already."""
    values: Fields = event
    event_id = values[0]
    switch_id = values[2]
    ts = values[4]
    if not (
        type(event_id) is str and event_id != "" and values[1] == call_id
        and type(switch_id) is str and switch_id != "" and type(ts) is int
        and not event_id.startswith(ID_MARK)
    ):
        return event
    if kind == SETUP:
        packed = _pack_setup(values, key, switch_id, ts)
    elif kind == HANGUP:
        packed = _pack_hangup(values, key, switch_id, ts)
    elif kind == ANSWER:
        packed = _pack_answer(values, key, switch_id, ts)
    else:
        packed = _pack_ringing(values, key, switch_id, ts)
    if packed is None or packed.count(SEP) != SIZES[kind] - 1:
        return event
    return packed


def _pack_setup(event: Fields, key: str, switch_id: str, ts: int) -> str | None:
    account, caller, callee = event[5], event[6], event[7]
    ingress, caller_ip, illegal = event[8], event[9], event[10]
    if not (
        event[11] is None and event[12] is None and event[13] is None and event[14] is None
        and event[15] is None and event[16] is None and event[17] is None
        and type(account) is str and account != "" and type(caller) is str and caller != ""
        and type(callee) is str and callee != ""
        and (ingress is None or (type(ingress) is str and ingress != ""))
        and (caller_ip is None or (type(caller_ip) is str and caller_ip != ""))
        and (illegal is None or (type(illegal) is str and illegal != ""))
    ):
        return None
    return SEP.join((key, str(ts), switch_id, account, caller, callee, ingress or "",
                     caller_ip or "", illegal or ""))


def _no_setup_fields(event: Fields) -> bool:
    return (event[5] is None and event[6] is None and event[7] is None and event[8] is None
            and event[9] is None and event[10] is None)


def _pack_ringing(event: Fields, key: str, switch_id: str, ts: int) -> str | None:
    egress = event[11]
    if not (
        _no_setup_fields(event) and event[12] is None and event[13] is None
        and event[14] is None and event[15] is None and event[16] is None
        and event[17] is None and (egress is None or (type(egress) is str and egress != ""))
    ):
        return None
    return SEP.join((key, str(ts), switch_id, egress or ""))


def _pack_answer(event: Fields, key: str, switch_id: str, ts: int) -> str | None:
    egress, callee_gw = event[11], event[12]
    if not (
        _no_setup_fields(event) and event[13] is None and event[14] is None
        and event[15] is None and event[16] is None and event[17] is None
        and (egress is None or (type(egress) is str and egress != ""))
        and (callee_gw is None or (type(callee_gw) is str and callee_gw != ""))
    ):
        return None
    return SEP.join((key, str(ts), switch_id, egress or "", callee_gw or ""))


def _pack_hangup(event: Fields, key: str, switch_id: str, ts: int) -> str | None:
    egress, answered, source = event[11], event[13], event[14]
    sip, q850, reason = event[15], event[16], event[17]
    if not (
        _no_setup_fields(event) and event[12] is None
        and (egress is None or (type(egress) is str and egress != ""))
        and type(answered) is bool and type(source) is str and source != ""
        and (sip is None or type(sip) is int) and (q850 is None or type(q850) is int)
        and (reason is None or (type(reason) is str and reason != ""))
    ):
        return None
    return SEP.join((key, str(ts), switch_id, egress or "", "1" if answered else "0", source,
                     "" if sip is None else str(sip), "" if q850 is None else str(q850),
                     reason or ""))


def event_id(slot: Slot, call_id: str) -> Any:
    """The slot's event id (a string, but for an event built by hand)."""
    if isinstance(slot, str):
        key = slot[: slot.index(SEP)]
        return call_id + key[1:] if key.startswith(ID_MARK) else key
    values: Fields = slot
    return values[0]


def event_ts(slot: Slot) -> int:
    """The slot's event time."""
    if isinstance(slot, str):
        start = slot.index(SEP) + 1
        return int(slot[start: slot.index(SEP, start)])
    values: Fields = slot
    return values[4]  # type: ignore[no-any-return]


def fields(slot: Slot, kind: int) -> list[Any]:
    """The slot's fields in the layout's order, as CallEvent values (None when absent,
    int times and codes, a bool for answered). The event id stays in packed form."""
    if not isinstance(slot, str):
        values: Fields = slot
        return _event_fields(values, kind)
    out: list[Any] = slot.split(SEP)
    out[TS] = int(out[TS])
    if kind == SETUP:
        out[INGRESS] = out[INGRESS] or None
        out[CALLER_IP] = out[CALLER_IP] or None
        out[ILLEGAL] = out[ILLEGAL] or None
    elif kind == HANGUP:
        out[EGRESS] = out[EGRESS] or None
        out[ANSWERED] = out[ANSWERED] == "1"
        sip, q850 = out[SIP], out[Q850]
        out[SIP] = int(sip) if sip else None
        out[Q850] = int(q850) if q850 else None
        out[REASON] = out[REASON] or None
    elif kind == ANSWER:
        out[EGRESS] = out[EGRESS] or None
        out[CALLEE_GW] = out[CALLEE_GW] or None
    else:
        out[EGRESS] = out[EGRESS] or None
    return out


def _event_fields(event: Fields, kind: int) -> list[Any]:
    head: list[Any] = [event[0], event[4], event[2]]
    if kind == SETUP:
        return head + list(event[5:11])
    if kind == HANGUP:
        return [*head, event[11], event[13], event[14], event[15], event[16], event[17]]
    if kind == ANSWER:
        return [*head, event[11], event[12]]
    return [*head, event[11]]


def event_fields(event: CallEvent) -> list[Any]:
    """A CallEvent in the layout of `fields` (the rating's input)."""
    values: Fields = event
    return _event_fields(values, KINDS[values[3]])


def unpack(slot: Slot, kind: int, call_id: str) -> CallEvent:
    """The slot's event as the CallEvent it was packed from."""
    if type(slot) is not str:
        return slot  # type: ignore[return-value]
    f = fields(slot, kind)
    head = (full_id(f[EVENT_ID], call_id), call_id, f[SWITCH], TYPE_NAMES[kind], f[TS])
    if kind == SETUP:
        return _new(CallEvent, (*head, *f[3:9], None, None, None, None, None, None, None))
    if kind == HANGUP:
        return _new(CallEvent, (*head, None, None, None, None, None, None, f[EGRESS], None,
                                *f[4:9]))
    if kind == ANSWER:
        return _new(CallEvent, (*head, None, None, None, None, None, None, f[EGRESS],
                                f[CALLEE_GW], None, None, None, None, None))
    return _new(CallEvent, (*head, None, None, None, None, None, None, f[EGRESS], None,
                            None, None, None, None, None))
