"""Failed attempts count against the gateway they went to.

A call not answered carries the last gateway it tried (its HANGUP's or RINGING's
egress_gateway), so the dashboards' per-gateway attempts and ASR show a failing
vendor instead of 100% ASR for every egress gateway.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.core.config import load_config
from pipeline.core.correlator import Correlator
from pipeline.core.events import parse_event
from pipeline.storage import insert_cdrs
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.migrate import migrate
from tests.integration.test_dashboard_web import restored_logging, url_of
from tests.paths import ROOT

pytestmark = pytest.mark.integration

T0 = 1_764_000_000_000


def _events(call_id: str, *, gateway: str, answered: bool, code: int) -> list[dict[str, Any]]:
    base = {"call_id": call_id, "switch_id": "kam-1"}
    out = [
        {**base, "event_id": f"{call_id}-s", "event_type": "SETUP", "ts_ms": T0,
         "account_id": "acct-100", "caller": "4930111222", "callee": "4420711",
         "ingress_gateway": "in-gw-1"},
        {**base, "event_id": f"{call_id}-r", "event_type": "RINGING", "ts_ms": T0 + 100,
         "egress_gateway": gateway},
    ]
    end = T0 + 1_000
    if answered:
        out.append({**base, "event_id": f"{call_id}-a", "event_type": "ANSWER",
                    "ts_ms": T0 + 500, "egress_gateway": gateway})
        end = T0 + 30_500
    out.append({**base, "event_id": f"{call_id}-h", "event_type": "HANGUP", "ts_ms": end,
                "answered": answered, "hangup_source": "CALLER" if answered else "CALLEE",
                "sip_code": code, "egress_gateway": gateway})
    return out


@pytest.fixture
def keep_logging() -> Iterator[None]:
    with restored_logging():
        yield


def test_report_counts_failed_calls_against_their_gateway(
    storage_backend: ClickHouseBackend, clickhouse_database: str,
    capsys: pytest.CaptureFixture[str], keep_logging: None,
) -> None:
    config = load_config(ROOT / "deploy" / "kamailio" / "pipeline.toml")
    correlator = Correlator(config)
    calls = [("ok-a", "gw-a", True, 200), ("busy-a", "gw-a", False, 486),
             ("gone-a", "gw-a", False, 404), ("ok-b", "gw-b", True, 200)]
    cdrs = [cdr for call_id, gw, answered, code in calls
            for event in _events(call_id, gateway=gw, answered=answered, code=code)
            for cdr in correlator.on_event(parse_event(event))]
    assert {c.call_id: c.egress_gateway for c in cdrs} == {c[0]: c[1] for c in calls}
    migrate(storage_backend, clickhouse_database)
    rows = [{**cdr._asdict(), "flags": list(cdr.flags)} for cdr in cdrs]
    insert_cdrs(storage_backend, rows, None, clickhouse_database)

    def summary(gateway: str) -> dict[str, Any]:
        code = main(["report", "--clickhouse", url_of(storage_backend, clickhouse_database),
                     "--from", "2025-11-24T00:00Z", "--to", "2025-11-25T00:00Z",
                     "--gateway", gateway, "--source", "raw", "--panel", "summary",
                     "--format", "json"])
        out = capsys.readouterr()
        assert code == 0, out.err
        total: dict[str, Any] = json.loads(out.out)["panels"]["summary"]["total"]
        return total

    gw_a, gw_b = summary("gw-a"), summary("gw-b")
    assert (gw_a["attempts"], gw_a["answered"]) == (3, 1)
    assert (gw_b["attempts"], gw_b["answered"]) == (1, 1)
