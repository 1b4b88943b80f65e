"""The CallEvent model and its validation (docs/billing.md section 1)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, cast

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
_MAX_TS_MS: Final = 4_102_444_800_000


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

    A dict whose fields are all valid is taken by `_parse_valid`, which checks the
    same rules in one pass; anything else (another mapping, any invalid field) goes
    to `_parse_checked`, the rules field by field, which names what is wrong.
    """
    if type(raw) is dict:
        event = _parse_valid(raw)
        if event is not None:
            return event
    return _parse_checked(raw)


def _text_ok(value: object) -> bool:
    return type(value) is str and value != ""


def _opt_text_ok(value: object) -> bool:
    return value is None or (type(value) is str and value != "")


def _parse_valid(raw: dict[str, Any]) -> CallEvent | None:
    """The CallEvent of a dict every rule accepts, else None (see parse_event)."""
    event_id = raw.get("event_id")
    call_id = raw.get("call_id")
    switch_id = raw.get("switch_id")
    event_type = raw.get("event_type")
    ts_ms = raw.get("ts_ms")
    if not (
        type(event_id) is str and event_id != ""
        and type(call_id) is str and call_id != ""
        and type(switch_id) is str and switch_id != ""
        and type(ts_ms) is int and 0 <= ts_ms <= _MAX_TS_MS
        and type(event_type) is str
    ):
        return None
    if event_type == "SETUP":
        account_id = raw.get("account_id")
        caller = raw.get("caller")
        callee = raw.get("callee")
        ingress_gateway = raw.get("ingress_gateway")
        caller_ip = raw.get("caller_ip")
        illegal_reason = raw.get("illegal_reason")
        if not (
            _text_ok(account_id) and _text_ok(caller) and _text_ok(callee)
            and _opt_text_ok(ingress_gateway) and _opt_text_ok(caller_ip)
            and (illegal_reason is None
                 or (type(illegal_reason) is str and illegal_reason in ILLEGAL_REASONS))
        ):
            return None
        return _new_event(CallEvent, (
            event_id, call_id, switch_id, "SETUP", ts_ms, account_id, caller, callee,
            ingress_gateway, caller_ip, illegal_reason,
            None, None, None, None, None, None, None))
    if event_type == "HANGUP":
        egress_gateway = raw.get("egress_gateway")
        answered = raw.get("answered")
        hangup_source = raw.get("hangup_source")
        sip_code = raw.get("sip_code")
        q850_cause = raw.get("q850_cause")
        server_reason = raw.get("server_reason")
        if not (
            _opt_text_ok(egress_gateway)
            and type(answered) is bool
            and type(hangup_source) is str and hangup_source in HANGUP_SOURCES
            and (sip_code is None or (type(sip_code) is int and 100 <= sip_code <= 699))
            and (q850_cause is None or (type(q850_cause) is int and 0 <= q850_cause <= 127))
            and (server_reason is None
                 or (type(server_reason) is str and server_reason in SERVER_REASONS
                     and hangup_source == "SERVER"))
        ):
            return None
        return _new_event(CallEvent, (
            event_id, call_id, switch_id, "HANGUP", ts_ms,
            None, None, None, None, None, None, egress_gateway, None,
            answered, hangup_source, sip_code, q850_cause, server_reason))
    if event_type == "ANSWER":
        egress_gateway = raw.get("egress_gateway")
        callee_gateway = raw.get("callee_gateway")
        if not (_text_ok(egress_gateway) and _opt_text_ok(callee_gateway)):
            return None
        return _new_event(CallEvent, (
            event_id, call_id, switch_id, "ANSWER", ts_ms,
            None, None, None, None, None, None, egress_gateway, callee_gateway,
            None, None, None, None, None))
    if event_type == "RINGING":
        egress_gateway = raw.get("egress_gateway")
        if not _opt_text_ok(egress_gateway):
            return None
        return _new_event(CallEvent, (
            event_id, call_id, switch_id, "RINGING", ts_ms,
            None, None, None, None, None, None, egress_gateway, None,
            None, None, None, None, None))
    return None


# A CallEvent from its 18 values, without keyword handling.
_new_event = cast(Callable[[type[CallEvent], tuple[Any, ...]], CallEvent], tuple.__new__)


def _parse_checked(raw: Mapping[str, Any]) -> CallEvent:
    """parse_event's rules one at a time, raising InvalidEvent at the first broken one."""
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
