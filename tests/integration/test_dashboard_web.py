"""The web dashboard against real ClickHouse (18.16 server and chDB), served
by uvicorn on 127.0.0.1: the token gate, and filter values that try to
inject SQL (or HTML)."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest

from pipeline.cli import main
from pipeline.dashboard.app import DashboardState, create_app
from pipeline.runtime.http_auth import TokenGate
from pipeline.dashboard.db import BackendPool, Target, open_backend
from pipeline.dashboard.refresh import refresh_aggregates
from pipeline.dashboard.synthetic import python_cdrs
from pipeline.storage import insert_cdrs, migrate
from pipeline.storage.backend import ClickHouseBackend
from tests.ports import free_port

pytestmark = pytest.mark.integration

TOKEN = "test-token-0123456789abcdef"  # noqa: S105 - a test token
START_MS = 1718409600000  # 2024-06-15 00:00 UTC
SPAN_MS = 30 * 3_600_000
ODD_ACCOUNT = "o'brien \"&<b>x</b> \\ --"


# -- a loaded database and a running dashboard ---------------------------------------------------


@dataclass
class Loaded:
    backend: ClickHouseBackend
    database: str
    rows: list[dict[str, Any]]
    url: str  # native://... or chdb://... for the CLI

    @property
    def window(self) -> dict[str, str]:
        return {"from": str(START_MS), "to": str(START_MS + SPAN_MS)}


def load(backend: ClickHouseBackend, database: str, calls: int, url: str) -> Loaded:
    migrate(backend, database)
    rows = list(python_cdrs(calls, START_MS, SPAN_MS, seed=11, prefix="web"))
    for row in rows[:25]:
        row["account_id"] = ODD_ACCOUNT
    insert_cdrs(backend, rows, None, database)
    refresh_aggregates(backend, database)
    return Loaded(backend, database, rows, url)


def url_of(backend: ClickHouseBackend, database: str) -> str:
    host, port = getattr(backend, "host", None), getattr(backend, "port", None)
    if host is not None:
        return f"native://{host}:{port}/{database}"
    return f"chdb://{backend.path}?database={database}"  # type: ignore[attr-defined]


@pytest.fixture
def loaded(storage_backend: ClickHouseBackend, clickhouse_database: str) -> Loaded:
    return load(
        storage_backend, clickhouse_database, 1200, url_of(storage_backend, clickhouse_database)
    )


@contextmanager
def restored_logging() -> Iterator[None]:
    """main() re-configures the root logger onto the captured stderr; put the
    test session's logging back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    pipeline_level = logging.getLogger("pipeline").level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.getLogger("pipeline").setLevel(pipeline_level)


@pytest.fixture
def keep_logging() -> Iterator[None]:
    with restored_logging():
        yield


@contextmanager
def serve(data: Loaded, token: str = TOKEN) -> Iterator[str]:
    """The dashboard app on 127.0.0.1 in a thread; yields its base URL."""
    import uvicorn

    target = Target(data.url)
    pool = (
        BackendPool.shared(data.backend)
        if target.embedded
        else BackendPool(lambda: open_backend(target, reader=True), 2)
    )
    state = DashboardState(
        pool=pool, database=data.database, gate=TokenGate(token), page_refresh_s=0
    )
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "dashboard did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        if not target.embedded:
            pool.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch(
    url: str, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, dict[str, str], str]:
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url, headers=headers or {}, data=data)  # noqa: S310
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:  # noqa: S310 - http://127.0.0.1
            return response.status, _lower(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, _lower(exc.headers), exc.read().decode()


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the token -----------------------------------------------------------------------------------


def test_requests_without_the_token_are_refused(loaded: Loaded) -> None:
    q = "?" + urlencode(loaded.window)
    with serve(loaded) as base:
        for path in ("/", "/panels", "/api/report", "/" + q, "/panels" + q, "/api/report" + q):
            for headers in (
                {},
                bearer("wrong-token-0123456789abcdef"),
                bearer(TOKEN[:-1]),
                {"Authorization": f"Basic {TOKEN}"},
                {"Cookie": "cdr_dashboard=forged"},
                {"Accept": "text/html"},
            ):
                status, response_headers, body = fetch(base + path, headers)
                assert status == 401, (path, headers)
                assert "data-kpi" not in body and "attempts" not in body
                assert response_headers.get("www-authenticate", "").startswith("Bearer")
            status, _, _ = fetch(base + path + ("&" if "?" in path else "?") + "token=nope")
            assert status == 401
        # what stays public shows no data
        assert fetch(base + "/healthz")[0:3:2] == (200, "ok")
        assert fetch(base + "/static/dashboard.js")[0] == 200
        status, _, body = fetch(base + "/login", data=b"token=guess")
        assert status == 401 and "Wrong token" in body


def test_token_as_header_query_parameter_or_session_cookie(loaded: Loaded) -> None:
    q = urlencode(loaded.window)
    with serve(loaded) as base:
        status, headers, body = fetch(f"{base}/?{q}", bearer())
        assert status == 200 and 'data-kpi="attempts"' in body
        assert "default-src 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert TOKEN not in body  # the page never carries the token

        # ?token= on the page: swapped for an HttpOnly cookie, token gone from the address
        status, headers, _ = fetch(f"{base}/?{q}&token={TOKEN}")
        assert status == 303
        assert "token" not in headers["location"] and headers["location"].startswith("./?")
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        assert TOKEN not in cookie
        session = cookie.split(";")[0]
        status, _, body = fetch(f"{base}/panels?{q}", {"Cookie": session})
        assert status == 200 and 'data-kpi="attempts"' in body

        # form login sets the same cookie
        status, headers, _ = fetch(base + "/login", data=f"token={TOKEN}".encode())
        assert status == 303 and headers["set-cookie"].split(";")[0] == session

        status, _, body = fetch(f"{base}/api/report?{q}&token={TOKEN}")
        assert status == 200
        report = json.loads(body)
        assert report["panels"]["summary"]["total"]["attempts"] == len(loaded.rows)


def test_dashboard_refuses_to_start_without_a_token(
    loaded: Loaded,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    keep_logging: None,
) -> None:
    monkeypatch.delenv("CDR_DASHBOARD_TOKEN", raising=False)
    assert main(["dashboard", "--clickhouse", loaded.url, "--refresh-interval", "0"]) == 2
    assert "dashboard token is not configured" in capsys.readouterr().err
    monkeypatch.setenv("CDR_DASHBOARD_TOKEN", "short")
    assert main(["dashboard", "--clickhouse", loaded.url, "--refresh-interval", "0"]) == 2
    assert "too short" in capsys.readouterr().err


# -- injection ------------------------------------------------------------------------------

INJECTIONS = [
    "' OR 1=1 --",
    "acct-00' OR account_id != '",
    "x'); DROP TABLE cdr; --",
    "') UNION ALL SELECT * FROM system.tables --",
    "\\' OR 1=1 --",
    "{p0:String}",
    "*",
    "<script>alert(1)</script>",
]


def _attempts(base: str, params: dict[str, str]) -> tuple[int, Any]:
    status, _, body = fetch(f"{base}/api/report?{urlencode(params)}", bearer())
    data = json.loads(body)
    return status, data


def test_filter_values_cannot_inject_sql(loaded: Loaded) -> None:
    before = loaded.backend.execute(f"SELECT count() FROM {loaded.database}.cdr")
    with serve(loaded) as base:
        for value in INJECTIONS:
            for field in ("account", "gateway"):
                status, data = _attempts(base, {**loaded.window, field: value})
                if value == "*":
                    assert status == 400 and "reserved" in data["error"]
                    continue
                assert status == 200, (field, value, data)
                assert data["panels"]["summary"]["total"]["attempts"] == 0, (field, value)
                assert data["panels"]["destinations"]["rows"] == []
                # the page shows the value escaped, never as markup
                status, _, page = fetch(
                    f"{base}/?{urlencode({**loaded.window, field: value})}", bearer()
                )
                assert status == 200 and "<script>alert(1)</script>" not in page
        for field, value in (
            ("from", "2024-06-15' OR 1=1 --"),
            ("to", "1; DROP TABLE cdr"),
            ("range", "1d); DROP TABLE cdr; --"),
            ("refresh", "1 OR 1=1"),
            ("account", "a" * 500),
            ("gateway", "line\nbreak"),
        ):
            status, data = _attempts(base, {**loaded.window, field: value})
            assert status == 400, (field, value, data)
            assert "error" in data
        # a real account whose name is full of quotes and markup is found exactly
        status, data = _attempts(base, {**loaded.window, "account": ODD_ACCOUNT})
        assert status == 200
        assert data["panels"]["summary"]["total"]["attempts"] == 25
        status, _, page = fetch(
            f"{base}/?{urlencode({**loaded.window, 'account': ODD_ACCOUNT})}", bearer()
        )
        assert status == 200 and "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert loaded.backend.execute(f"SELECT count() FROM {loaded.database}.cdr") == before


def test_api_figures_match_the_stored_calls(loaded: Loaded) -> None:
    with serve(loaded) as base:
        status, data = _attempts(base, {**loaded.window, "gateway": "out-1"})
    assert status == 200
    mine = [r for r in loaded.rows if "out-1" in (r["ingress_gateway"], r["egress_gateway"])]
    total = data["panels"]["summary"]["total"]
    assert total["attempts"] == len(mine)
    assert total["answered"] == sum(1 for r in mine if r["answered"])
    revenue: dict[str, Decimal] = {}
    for r in mine:
        if r["record_decision"] == "RECORDED" and r["fee"] is not None:
            revenue[r["currency"]] = revenue.get(r["currency"], Decimal(0)) + r["fee"]
    assert {c: Decimal(v) for c, v in total["revenue"].items()} == revenue
