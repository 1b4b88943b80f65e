"""Kamailio's event JSON (the evapi/journal contract) -> CallEvent.

The contract is closed: a key it does not name is a sign that Kamailio's
configuration and this adapter disagree, so the frame is rejected (dead-lettered)
rather than half understood. Validation of the resulting event is the core's
(``parse_event``); this module only translates names and formats.

``event_id`` is derived from (node, call_id, kind), so the same event read again
(from the journal, after a reconnect, after a crash) gets the same id and the
correlator keeps the first copy. A consequence: a second event of the same kind for
a call (a second RINGING after a failover) is a duplicate too; the first wins.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from pipeline.core.events import CallEvent, parse_event
from pipeline.errors import InvalidEvent

DEFAULT_UNKNOWN_ACCOUNT = "UNIDENTIFIED"
# Namespace of the uuid5 event ids: fixed forever, or re-published events change ids.
EVENT_ID_NAMESPACE = uuid.UUID("6f1d3c52-9a0e-5b7e-8c1a-2b6e4f0d9a11")

_COMMON = frozenset({"kind", "call_id", "ts", "node"})
_KIND_FIELDS: dict[str, frozenset[str]] = {
    "SETUP": frozenset({"caller", "callee", "src", "account", "ingress_gw", "illegal"}),
    "RINGING": frozenset({"code", "egress_gw"}),
    "ANSWER": frozenset({"egress_gw", "callee_gw"}),
    "HANGUP": frozenset(
        {"answered", "by", "server_reason", "sip_code", "reason", "egress_gw"}
    ),
}
_INT_FIELDS = frozenset({"code", "sip_code"})
_BOOL_FIELDS = frozenset({"answered"})
_TS = re.compile(r"(\d{1,12})(?:\.(\d{1,6}))?")
_Q850 = re.compile(r"\bQ\.850\s*;\s*cause\s*=\s*(\d{1,3})", re.IGNORECASE)


class RejectedFrame(InvalidEvent):
    """A frame this adapter cannot turn into an event; ``category`` counts it."""

    def __init__(self, reason: str, category: str, field: str | None = None) -> None:
        super().__init__(reason, field)
        self._category = category

    @property
    def category(self) -> str:
        return self._category


def event_id(node: str, call_id: str, kind: str) -> str:
    """The id of an event: the same for every copy of it, different for anything else."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{node}\x00{call_id}\x00{kind}"))


def ts_to_ms(ts: str) -> int:
    """``"seconds.micros"`` -> epoch milliseconds, truncated; exact (no float)."""
    match = _TS.fullmatch(ts)
    if match is None:
        raise RejectedFrame(f"field 'ts' is {ts!r}, not seconds[.micros]", "bad ts", "ts")
    seconds, fraction = match.group(1), (match.group(2) or "").ljust(6, "0")
    return int(seconds) * 1000 + int(fraction) // 1000


def q850_cause(reason: str) -> int | None:
    """The Q.850 cause of a SIP Reason header (``Q.850;cause=17;text="busy"``), if any."""
    match = _Q850.search(reason)
    if match is None:
        return None
    cause = int(match.group(1))
    return cause if cause <= 127 else None


def decode_frame(payload: bytes) -> dict[str, Any]:
    """Parse and shape-check one frame: a JSON object of the contract's keys and types."""
    try:
        raw = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise RejectedFrame(f"not JSON: {exc}", "undecodable") from None
    if not isinstance(raw, dict):
        raise RejectedFrame(f"not a JSON object but {type(raw).__name__}", "undecodable")
    kind = raw.get("kind")
    if not isinstance(kind, str) or kind not in _KIND_FIELDS:
        raise RejectedFrame(
            f"field 'kind' is {kind!r}, not one of {', '.join(_KIND_FIELDS)}", "bad kind", "kind"
        )
    unknown = sorted(set(raw) - _COMMON - _KIND_FIELDS[kind])
    if unknown:
        raise RejectedFrame(
            f"unknown field(s) on {kind}: {', '.join(unknown)} (Kamailio's configuration and "
            "the adapter disagree on the event contract)",
            "unknown field",
            unknown[0],
        )
    for key, value in raw.items():
        _check_type(key, value)
    return raw


def _check_type(key: str, value: Any) -> None:
    if key in _INT_FIELDS:
        ok, want = type(value) is int, "an integer"
    elif key in _BOOL_FIELDS:
        ok, want = type(value) is bool, "true or false"
    else:
        ok, want = type(value) is str, "a string"
    if not ok:
        raise RejectedFrame(f"field '{key}' must be {want}, got {value!r}", f"bad {key}", key)


def _blank(value: Any) -> Any:
    """The contract's "" (unknown / none) -> None, which parse_event reads as absent."""
    return None if value == "" else value


def _caller_ip(src: str | None) -> str | None:
    """``ip:port`` (or ``[v6]:port``) -> the address."""
    if not src:
        return None
    host = src.rpartition(":")[0] or src
    return host.strip("[]") or None


def to_event_dict(raw: Mapping[str, Any], unknown_account: str) -> dict[str, Any]:
    """A decoded frame as the core's event dict (field names of CallEvent)."""
    kind = raw["kind"]
    node, call_id = raw.get("node") or "", raw.get("call_id") or ""
    for name, value in (("node", node), ("call_id", call_id)):
        if not value:
            raise RejectedFrame(f"missing field '{name}'", f"bad {name}", name)
    ts = raw.get("ts")
    if ts is None:
        raise RejectedFrame("missing field 'ts'", "bad ts", "ts")
    event: dict[str, Any] = {
        "event_id": event_id(node, call_id, kind),
        "call_id": call_id,
        "switch_id": node,
        "event_type": kind,
        "ts_ms": ts_to_ms(ts),
    }
    if kind == "SETUP":
        if not raw.get("callee"):
            raise RejectedFrame("SETUP without a callee", "bad callee", "callee")
        event.update(
            account_id=_blank(raw.get("account")) or unknown_account,
            caller=_blank(raw.get("caller")),
            callee=raw["callee"],
            ingress_gateway=_blank(raw.get("ingress_gw")),
            caller_ip=_caller_ip(raw.get("src")),
            illegal_reason=_blank(raw.get("illegal")),
        )
    elif kind in ("RINGING", "ANSWER"):
        event["egress_gateway"] = _blank(raw.get("egress_gw"))
        if kind == "ANSWER":
            event["callee_gateway"] = _blank(raw.get("callee_gw"))
    else:
        sip_code = raw.get("sip_code")
        event.update(
            egress_gateway=_blank(raw.get("egress_gw")),
            answered=raw.get("answered"),
            hangup_source=raw.get("by"),
            server_reason=_blank(raw.get("server_reason")),
            sip_code=sip_code if sip_code is not None and 100 <= sip_code <= 699 else None,
            q850_cause=q850_cause(raw.get("reason") or ""),
        )
    return {k: v for k, v in event.items() if v is not None}


def map_frame(payload: bytes, unknown_account: str = DEFAULT_UNKNOWN_ACCOUNT) -> CallEvent:
    """One evapi frame (or journal JSON) -> a validated CallEvent; RejectedFrame or the
    core's InvalidEvent (both with ``reason`` and ``category``) when it is not usable."""
    return parse_event(to_event_dict(decode_frame(payload), unknown_account))
