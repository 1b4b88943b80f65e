"""The dashboard in a real browser: headless Chromium (Debian package
`chromium`) opens the page against ClickHouse 18.16 loaded with CDRs, the
charts and figures render with the expected totals, the page's script
auto-refreshes the panels, and a screenshot is saved.

The test installs nothing: deploy/local/test.sh installs Chromium. The
screenshot goes to out/test-artifacts/dashboard.png (and the test's tmp dir).
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import pytest

from pipeline.dashboard.figures import Figures
from pipeline.dashboard.queries import Scope, auto_step
from pipeline.storage.backend import ClickHouseBackend
from tests.integration.test_aggregates import expected_panel, newest
from tests.integration.test_dashboard_web import (
    SPAN_MS,
    START_MS,
    TOKEN,
    Loaded,
    load,
    serve,
    url_of,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("CDR_TEST_ARTIFACTS", REPO / "out" / "test-artifacts"))
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CALLS = 3000


def chromium() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "headless Chromium is needed: apt-get install -y chromium (deploy/local/test.sh does)"
    )


def run_browser(
    url: str, tmp: Path, *mode: str, budget_ms: int = 8000
) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{len(list(tmp.iterdir()))}"
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--window-size=1400,2600",
        f"--virtual-time-budget={budget_ms}",
        *mode,
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def browser_data(
    clickhouse_native: ClickHouseBackend, request: pytest.FixtureRequest
) -> Iterator[Loaded]:
    database = f"cdr_test_browser_{os.getpid()}_{abs(hash(request.node.name)) % 10**6}"
    clickhouse_native.execute(f"DROP DATABASE IF EXISTS {database}")
    try:
        yield load(clickhouse_native, database, CALLS, url_of(clickhouse_native, database))
    finally:
        clickhouse_native.execute(f"DROP DATABASE IF EXISTS {database}")


def _kpis(dom: str) -> dict[str, str]:
    return {k: html.unescape(v) for k, v in re.findall(r'data-kpi="([^"]+)">([^<]*)<', dom)}


def _svg_attrs(dom: str, panel: str) -> list[dict[str, str]]:
    out = []
    for tag in re.findall(r"<svg [^>]*data-panel=\"" + re.escape(panel) + r"\"[^>]*>", dom):
        out.append(dict(re.findall(r'([\w-]+)="([^"]*)"', tag)))
    return out


def _money(amount: Decimal) -> str:
    return f"{amount.quantize(Decimal('0.01')):,}"


def test_dashboard_renders_in_headless_chromium(browser_data: Loaded, tmp_path: Path) -> None:
    calls = newest(browser_data.rows)
    scope = Scope(START_MS, START_MS + SPAN_MS)
    total = Figures()
    for figures in expected_panel(calls, "summary", scope).values():
        total.merge(figures)
    series = expected_panel(calls, "traffic_series", scope)
    hangups = expected_panel(calls, "hangups", scope)
    at_risk = expected_panel(calls, "at_risk", scope)
    destinations = expected_panel(calls, "destinations", scope)
    top_prefix = sorted(destinations.items(), key=lambda kv: (-kv[1].attempts, kv[0]))[0][0][0]

    params = {"from": "2024-06-15T00:00", "to": "2024-06-16T06:00", "refresh": "2", "token": TOKEN}
    with serve(browser_data) as base:
        url = f"{base}/?{urlencode(params)}"
        dumped = run_browser(url, tmp_path, "--dump-dom")
        assert dumped.returncode == 0, dumped.stderr[-2000:]
        dom = dumped.stdout
        shot = tmp_path / "dashboard.png"
        taken = run_browser(url, tmp_path, f"--screenshot={shot}", budget_ms=3000)
        assert taken.returncode == 0, taken.stderr[-2000:]

    # The page loaded through the token redirect, and its script ran and refreshed.
    assert 'data-js="ready"' in dom, dom[:2000]
    refreshes = re.search(r'data-refreshes="(\d+)"', dom)
    assert refreshes and int(refreshes.group(1)) >= 1, "auto-refresh did not replace the panels"
    assert "token required" not in dom and TOKEN not in dom

    # The figures
    kpi = _kpis(dom)
    assert kpi["attempts"] == f"{total.attempts:,}" == f"{CALLS:,}"
    assert kpi["answered"] == f"{total.answered:,}"
    assert total.asr is not None and kpi["asr"] == f"{total.asr * 100:.1f}%"
    assert kpi["billable_minutes"] == f"{total.billable_minutes:,}"
    for currency in total.currencies:
        assert kpi[f"revenue-{currency}"] == _money(total.money("revenue", currency))
        assert kpi[f"cost-{currency}"] == _money(total.money("cost", currency))
        assert kpi[f"margin-{currency}"] == _money(total.money("margin", currency))
        assert kpi[f"at_risk-{currency}"] == _money(total.money("at_risk", currency))

    # The charts
    (traffic,) = _svg_attrs(dom, "traffic_series")
    assert int(traffic["data-attempts"]) == CALLS
    assert int(traffic["data-answered"]) == total.answered
    assert int(traffic["data-points"]) == len(series)
    assert int(traffic["data-step-s"]) == auto_step(scope.span_ms) // 1000
    assert dom.count('<rect class="c-attempts" ') == len(series)
    money = {a["data-currency"]: a for a in _svg_attrs(dom, "money_series")}
    assert set(money) == set(total.currencies)
    for currency, attrs in money.items():
        assert Decimal(attrs["data-revenue"]) == total.money("revenue", currency)
        assert Decimal(attrs["data-margin"]) == total.money("margin", currency)
    (sources,) = _svg_attrs(dom, "hangup_sources")
    assert int(sources["data-attempts"]) == CALLS
    assert int(sources["data-points"]) == len({k[0] for k in hangups})
    (reasons,) = _svg_attrs(dom, "server_reasons")
    assert int(reasons["data-attempts"]) == sum(
        f.attempts for k, f in hangups.items() if k[0] == "SERVER"
    )
    (risk,) = _svg_attrs(dom, "at_risk")
    assert int(risk["data-attempts"]) == sum(f.attempts for f in at_risk.values())
    for currency, amount in total.at_risk.items():
        assert Decimal(risk[f"data-at-risk-{currency.lower()}"]) == amount
    (top,) = _svg_attrs(dom, "destinations")
    assert int(top["data-points"]) == min(10, len(destinations))
    table = re.search(
        r'<table class="figures" data-panel="destinations"[^>]*>.*?<tbody><tr><td>([^<]*)<', dom
    )
    assert table and html.unescape(table.group(1)) == (top_prefix or "(none)")
    assert _svg_attrs(dom, "gateways") and 'data-panel="accounts"' in dom

    # The screenshot
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "dashboard.png")
