# ruff: noqa: F811 - the fixtures are imported by name
"""The whole pipeline on the secured stack, every part under its own identity.

publisher -> Kafka (SASL_SSL, ACLs) -> worker -> sink -> ClickHouse (TLS) -> `dashboard
refresh`, `report` and the web dashboard, then `rerate` from both sources: the newest
CDR of every call equals what `rate-file` computes from the same events, as on the
plaintext stack (tests/e2e/test_pipeline.py), and after each re-rating equals
`rate-file` under the new tariff (versions aside: a re-rating writes newer ones).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.cdr import RatedCdr
from pipeline.core.config import load_config
from pipeline.dashboard.queries import Scope
from pipeline.switch.publisher import SwitchPublisher
from pipeline.switch.simulator import FaultMix, publish
from tests.e2e.harness import CONFIG, Pipeline, offline_final, traffic
from tests.integration.secure_fixtures import (  # noqa: F401 - fixtures
    REPO_ROOT,
    SecureStack,
    secure_pipeline,
    secure_stack,
)
from tests.integration.test_aggregates import expected_panel
from tests.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.secure]

FAULTS = FaultMix.parse("dup=0.03,reorder=0.05,missing_answer=0.02,missing_setup=0.02,"
                        "missing_hangup=0.02,second_hangup=0.02")
CALLS = 800
HOUR_MS = 3_600_000


def cli(stack: SecureStack, identity: str, *args: str, **env: str) -> str:
    """`cdr-pipeline ARGS` as component `identity` (its CDR_* settings only); its stdout."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDR_")}
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *args],
                          env={**clean, **stack.env(identity), **env}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{identity}: {' '.join(args)}:\n{proc.stderr}"
    return proc.stdout


def tariff(tmp: Path, name: str, factor: str) -> Path:
    """demo.toml with every retail rate multiplied by `factor` (a new tariff)."""
    decks = REPO_ROOT / "examples" / "basic" / "decks"
    lines = (decks / "retail-usd.csv").read_text(encoding="utf-8").splitlines()
    head, rows = lines[0], [line.split(",") for line in lines[1:]]
    for row in rows:
        row[2] = str(Decimal(row[2]) * Decimal(factor))
    deck = tmp / f"retail-{name}.csv"
    deck.write_text("\n".join([head, *(",".join(r) for r in rows)]) + "\n", encoding="utf-8")
    text = CONFIG.read_text(encoding="utf-8")
    text = text.replace('"../../examples/basic/decks/retail-usd.csv"', f'"{deck}"')
    text = text.replace('"../../examples/basic/decks/vendor-a.csv"', f'"{decks / "vendor-a.csv"}"')
    path = tmp / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def billing(cdrs: dict[str, RatedCdr]) -> dict[str, RatedCdr]:
    """What a re-rating compares (pipeline.rerate.compare): all but the versions."""
    return {c: cdr._replace(version=0, tariff_version="") for c, cdr in cdrs.items()}


def wait_equal(pipeline: Pipeline, expected: dict[str, RatedCdr]) -> None:
    want = {c: v.version for c, v in expected.items()}
    try:
        pipeline.wait_for(lambda: pipeline.stored_versions() == want, 300,
                          "every call's newest CDR")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{pipeline.diagnose(want, expected)}") from None
    got = pipeline.newest_cdrs()
    assert set(got) == set(expected)
    mismatched = [c for c in expected if got[c] != expected[c]]
    assert not mismatched, (mismatched[:3], got[mismatched[0]], expected[mismatched[0]])


def test_secured_pipeline_equals_rate_file_and_rerates_from_both_sources(
        secure_stack: SecureStack, secure_pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline = secure_pipeline
    start_ms = (int(time.time() * 1000) - 2 * HOUR_MS) // 60_000 * 60_000
    items, config, _ = traffic(CALLS, seed=21, faults=FAULTS, start_ms=start_ms)
    expected = offline_final(items, config)
    pipeline.start_worker()
    pipeline.start_sink()
    with SwitchPublisher(secure_stack.kafka("publisher"), f"{pipeline.prefix}call-events") as pub:
        publish(items, pub)
    wait_equal(pipeline, expected)

    # the dashboard side: aggregates refreshed by their writer, read by read-only users
    url = secure_stack.url()
    window = ["--from", str(start_ms - HOUR_MS), "--to", str(start_ms + 6 * HOUR_MS)]
    cli(secure_stack, "refresh", "dashboard", "refresh", "--clickhouse", url)
    scope = Scope(start_ms - HOUR_MS, start_ms + 6 * HOUR_MS)
    (want,) = expected_panel({c: r._asdict() for c, r in expected.items()}, "summary",
                             scope).values()
    for source in ("agg", "raw"):
        out = cli(secure_stack, "report", "report", "--no-refresh", "--clickhouse", url,
                  *window, "--format", "json", "--source", source, "--panel", "summary")
        total = json.loads(out)["panels"]["summary"]["total"]
        assert total["attempts"] == want.attempts == len(expected), source
        assert {c: Decimal(v) for c, v in total["revenue"].items()} == want.revenue, source
    served = _dashboard_report(secure_stack, url, window)
    assert served["panels"]["summary"]["total"]["attempts"] == len(expected)

    # re-rating from Kafka (replaying call-events), then from ClickHouse, as `rerate`
    rerate_env = {"CDR_KAFKA_TOPIC_PREFIX": pipeline.prefix, "CDR_CLICKHOUSE_URL": url}
    for source, factor in (("kafka", "2"), ("clickhouse", "3")):
        new = tariff(tmp_path, f"x{factor}", factor)
        before = pipeline.stored_versions()
        cli(secure_stack, "rerate", "rerate", "--config", str(new), "--source", source,
            *window, "--workers", "2", "--no-progress", **rerate_env)
        rerated = offline_final(items, load_config(new))
        got = pipeline.newest_cdrs()
        assert billing(got) == billing(rerated), source
        old, now = billing(expected), billing(rerated)
        changed = {c for c in got if old[c] != now[c]}
        assert changed, source  # the new tariff changed some bills
        for c, cdr in got.items():  # a changed call: a newer version under the new tariff
            if c in changed:
                assert cdr.version > before[c] and cdr.tariff_version == rerated[c].tariff_version
            else:  # an unchanged call is not written again
                assert cdr == expected[c], (source, c)
        expected = got


def _dashboard_report(stack: SecureStack, url: str, window: list[str]) -> dict[str, Any]:
    """/api/report of the web dashboard run as the `dashboard` user (read-only)."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDR_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "dashboard", "--clickhouse", url, "--port",
         str(port), "--refresh-interval", "0", "--readers", "1"],
        env={**clean, **stack.env("dashboard")}, cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    token = Path(stack.env("dashboard")["CDR_DASHBOARD_TOKEN_FILE"]).read_text().strip()
    query = f"from={window[1]}&to={window[3]}&panel=summary"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/report?{query}",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"dashboard exited: {server.stderr.read() if server.stderr else ''}")
            try:
                with urllib.request.urlopen(request, timeout=30) as page:  # noqa: S310
                    return dict(json.loads(page.read()))
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)  # polling until the server listens, bounded by the deadline
    finally:
        server.terminate()
        server.wait(30)
