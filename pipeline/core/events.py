"""The CallEvent model and its validation (docs/billing.md section 1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from pipeline.errors import InvalidEvent

EVENT_TYPES = ("SETUP", "RINGING", "ANSWER", "HANGUP")
HANGUP_SOURCES = frozenset({"CALLER", "CALLEE", "SERVER"})
SERVER_REASONS = frozenset(
    {
        "MAX_DURATION",
        "CREDIT_EXHAUSTED",
        "POLICY",
        "ADMIN",
        "RESOURCE",
        "MEDIA_TIMEOUT",
        "SESSION_TIMEOUT",
        "OTHER",
    }
)
ILLEGAL_REASONS = frozenset({"UNAUTHORIZED_SOURCE", "UNREGISTERED", "BLACKLISTED"})

# Fields each event type carries besides the common ones: (name, required).
_TYPE_FIELDS: dict[str, tuple[tuple[str, bool], ...]] = {
    "SETUP": (
        ("account_id", True),
        ("caller", True),
        ("callee", True),
        ("ingress_gateway", False),
        ("caller_ip", False),
        ("illegal_reason", False),
    ),
    # egress_gateway on RINGING and HANGUP: the gateway the attempt went to, so a call
    # not answered still counts against the gateway that failed it.
    "RINGING": (("egress_gateway", False),),
    "ANSWER": (("egress_gateway", True), ("callee_gateway", False)),
    "HANGUP": (
        ("egress_gateway", False),
        ("answered", True),
        ("hangup_source", True),
        ("sip_code", False),
        ("q850_cause", False),
        ("server_reason", False),
    ),
}
_STRING_FIELDS = frozenset(
    {
        "account_id",
        "caller",
        "callee",
        "ingress_gateway",
        "caller_ip",
        "egress_gateway",
        "callee_gateway",
    }
)
_INT_RANGES = {"sip_code": (100, 699), "q850_cause": (0, 127)}
_ENUMS: dict[str, frozenset[str]] = {
    "illegal_reason": ILLEGAL_REASONS,
    "hangup_source": HANGUP_SOURCES,
    "server_reason": SERVER_REASONS,
}
# ts_ms must be a plausible epoch-milliseconds value (1970 .. 2100).
_MAX_TS_MS = 4_102_444_800_000


class CallEvent(NamedTuple):
    """One call-lifecycle event as a switch published it. Immutable."""

    event_id: str
    call_id: str
    switch_id: str
    event_type: str
    ts_ms: int
    account_id: str | None = None
    caller: str | None = None
    callee: str | None = None
    ingress_gateway: str | None = None
    caller_ip: str | None = None
    illegal_reason: str | None = None
    egress_gateway: str | None = None
    callee_gateway: str | None = None
    answered: bool | None = None
    hangup_source: str | None = None
    sip_code: int | None = None
    q850_cause: int | None = None
    server_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a dict of spec field names, without the fields it does not carry."""
        return {k: v for k, v in zip(FIELD_NAMES, self, strict=True) if v is not None}


FIELD_NAMES: tuple[str, ...] = CallEvent._fields


def _text(raw: Mapping[str, Any], name: str, required: bool) -> str | None:
    value = raw.get(name)
    if value is None:
        if required:
            raise InvalidEvent(f"missing required field '{name}'", name)
        return None
    if type(value) is not str or not value:
        raise InvalidEvent(f"field '{name}' must be a non-empty string, got {value!r}", name)
    return value


def _check_value(name: str, value: Any) -> Any:
    if name in _STRING_FIELDS:
        if type(value) is not str or not value:
            raise InvalidEvent(f"field '{name}' must be a non-empty string, got {value!r}", name)
    elif name in _ENUMS:
        if type(value) is not str or value not in _ENUMS[name]:
            allowed = ", ".join(sorted(_ENUMS[name]))
            raise InvalidEvent(f"field '{name}' is {value!r}, not one of {allowed}", name)
    elif name == "answered":
        if type(value) is not bool:
            raise InvalidEvent(f"field 'answered' must be true or false, got {value!r}", name)
    else:
        low, high = _INT_RANGES[name]
        if type(value) is not int or not low <= value <= high:
            raise InvalidEvent(
                f"field '{name}' must be an integer {low}..{high}, got {value!r}", name)
    return value


def parse_event(raw: Mapping[str, Any]) -> CallEvent:
    """Validate a decoded event (JSON object or Avro record) into a CallEvent.

    Raises InvalidEvent naming the offending field. Fields that belong to other
    event types are ignored, as are unknown keys (a newer switch may send more).
    """
    if not isinstance(raw, Mapping):
        raise InvalidEvent(f"an event must be an object, got {type(raw).__name__}")
    event_type = raw.get("event_type")
    if type(event_type) is not str or event_type not in _TYPE_FIELDS:
        raise InvalidEvent(
            f"field 'event_type' is {event_type!r}, not one of {', '.join(EVENT_TYPES)}",
            "event_type",
        )
    ts_ms = raw.get("ts_ms")
    if type(ts_ms) is not int or not 0 <= ts_ms <= _MAX_TS_MS:
        raise InvalidEvent(f"field 'ts_ms' must be epoch milliseconds, got {ts_ms!r}", "ts_ms")
    extra: dict[str, Any] = {}
    for name, required in _TYPE_FIELDS[event_type]:
        value = raw.get(name)
        if value is None:
            if required:
                raise InvalidEvent(f"missing required field '{name}' on {event_type}", name)
            continue
        extra[name] = _check_value(name, value)
    if extra.get("server_reason") is not None and extra["hangup_source"] != "SERVER":
        raise InvalidEvent(
            "field 'server_reason' is only valid with hangup_source SERVER", "server_reason"
        )
    return CallEvent(
        event_id=_text(raw, "event_id", True),  # type: ignore[arg-type]
        call_id=_text(raw, "call_id", True),  # type: ignore[arg-type]
        switch_id=_text(raw, "switch_id", True),  # type: ignore[arg-type]
        event_type=event_type,
        ts_ms=ts_ms,
        **extra,
    )
