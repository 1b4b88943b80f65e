"""Small builders for unit tests of the pure core: configs and event sequences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.config import BillingConfig, build_config
from pipeline.core.events import CallEvent, parse_event

HEADER = "prefix,description,rate_per_min,first_increment_s,next_increment_s,connect_fee,effective_from,effective_to\n"
RETAIL = HEADER + "44,UK,0.0600,60,60,0,,\n1,USA,0.0100,6,6,0.0150,,\n"
VENDOR = HEADER + "44,UK,0.0300,1,1,0,,\n1,USA,0.0040,1,1,0,,\n"
T0 = 1_764_000_000_000


def make_config(tmp: Path, policy: dict[str, Any] | None = None) -> BillingConfig:
    (tmp / "retail.csv").write_text(RETAIL)
    (tmp / "vendor.csv").write_text(VENDOR)
    raw = {
        "policy": policy or {},
        "rate_tables": {
            "retail": {"currency": "USD", "deck": "retail.csv"},
            "vendor": {"currency": "USD", "deck": "vendor.csv"},
        },
        "accounts": {"acme": {"rate_table": "retail"}},
        "gateways": {"in": {"route_prefix": "777"}, "out": {"rate_table": "vendor"}},
    }
    return build_config(raw, tmp)


def call(
    call_id: str = "c1",
    *,
    callee: str = "442071234567",
    answer_after_ms: int | None = 2_000,
    hold_ms: int = 61_000,
    source: str = "CALLER",
    reason: str | None = None,
    setup: dict[str, Any] | None = None,
    skip: tuple[str, ...] = (),
) -> list[CallEvent]:
    """SETUP, RINGING, ANSWER, HANGUP of one call (minus the types in `skip`)."""
    answered = answer_after_ms is not None
    events = [
        {"event_type": "SETUP", "ts_ms": T0, "account_id": "acme", "caller": "15550001111",
         "callee": callee, **(setup or {})},
        {"event_type": "RINGING", "ts_ms": T0 + 500},
    ]
    end = T0 + 1_000
    if answered:
        assert answer_after_ms is not None
        events.append({"event_type": "ANSWER", "ts_ms": T0 + answer_after_ms, "egress_gateway": "out"})
        end = T0 + answer_after_ms + hold_ms
    hangup = {"event_type": "HANGUP", "ts_ms": end, "answered": answered, "hangup_source": source}
    if reason:
        hangup["server_reason"] = reason
    events.append(hangup)
    out = []
    for raw in events:
        if raw["event_type"] in skip:
            continue
        raw.update(event_id=f"{call_id}-{raw['event_type'][0]}", call_id=call_id, switch_id="sw1")
        out.append(parse_event(raw))
    return out
