"""The web dashboard: a Starlette app serving one page, its panels fragment
(for auto-refresh) and the same figures as JSON.

Routes (all but /healthz and /static/* need the token, see auth.py):

  GET  /              the page (charts as inline SVG, no CDN)
  GET  /panels        the panels alone; the page's script fetches it again
  GET  /api/report    the panels as JSON (the `report --format json` shape)
  POST /login         form login with the token (sets the session cookie)
  GET  /healthz       "ok" (for container health checks; shows no data)

Query parameters: range (1h, 6h, 24h, 7d, 30d, 90d: ending now) or from / to
(ISO 8601 UTC or epoch ms), account, gateway, refresh (seconds, 0 = off).
They reach ClickHouse only as bound query parameters.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from pipeline.dashboard import assets, page
from pipeline.dashboard.db import BackendPool
from pipeline.dashboard.queries import (
    MINUTE_MS,
    PANELS,
    PanelResult,
    Scope,
    ScopeError,
    known_values,
    run_panel,
)
from pipeline.dashboard.refresh import Refresher
from pipeline.dashboard.report import Report, as_dict
from pipeline.dashboard.timeparse import ceil_to, now_ms, parse_duration, parse_instant
from pipeline.runtime.http_auth import COOKIE, TokenGate, bearer
from pipeline.storage.errors import StorageError

logger = logging.getLogger(__name__)

PUBLIC_PATHS = ("/healthz", "/static/dashboard.css", "/static/dashboard.js", "/login")
MAX_SPAN_MS = 400 * 86_400_000
DEFAULT_RANGE = "24h"
CACHE_SECONDS = 15.0
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass
class DashboardState:
    """What the request handlers share."""

    pool: BackendPool
    database: str
    gate: TokenGate
    page_refresh_s: int = 30
    top: int = 10
    refresher: Refresher | None = None
    clock: Callable[[], int] = now_ms
    _cache: OrderedDict[tuple[Any, ...], tuple[float, dict[str, PanelResult]]] = field(
        default_factory=OrderedDict
    )
    _cache_lock: threading.Lock = field(default_factory=threading.Lock)

    def panels(self, scope: Scope) -> dict[str, PanelResult]:
        generation = self.refresher.generation if self.refresher else 0
        key = (scope, generation)
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
                return hit[1]
        with self.pool.connection() as backend:
            results = {
                name: run_panel(backend, self.database, name, scope, top=self.top)
                for name in PANELS
            }
        with self._cache_lock:
            self._cache[key] = (time.monotonic(), results)
            while len(self._cache) > 64:
                self._cache.popitem(last=False)
        return results

    def known(self) -> dict[str, list[str]]:
        with self.pool.connection() as backend:
            return known_values(backend, self.database)


# -- request parsing ---------------------------------------------------------------------


def form_of(request: Request) -> dict[str, str]:
    """The dashboard's query parameters (last value wins), other keys dropped."""
    keys = ("range", "from", "to", "account", "gateway", "refresh")
    return {k: request.query_params[k] for k in keys if k in request.query_params}


def scope_from(form: Mapping[str, str], now: int) -> Scope:
    """The Scope a form asks for; ScopeError with a message for the user."""
    start, end = form.get("from", "").strip(), form.get("to", "").strip()
    span = parse_duration(form.get("range") or DEFAULT_RANGE)
    if start or end:
        to_ms = parse_instant(end, now) if end else ceil_to(now, MINUTE_MS)
        from_ms = parse_instant(start, now) if start else to_ms - span
    else:
        to_ms = ceil_to(now, MINUTE_MS)
        from_ms = to_ms - span
    if to_ms - from_ms > MAX_SPAN_MS:
        raise ScopeError("the time range is longer than 400 days")
    return Scope(from_ms, to_ms, account=form.get("account"), gateway=form.get("gateway"))


def refresh_of(form: Mapping[str, str], default: int) -> int:
    text = form.get("refresh", "")
    if not text:
        return default
    if not text.isdigit() or not 0 <= int(text) <= 3600:
        raise ScopeError("refresh: seconds between 0 (off) and 3600")
    return int(text)


# -- handlers --------------------------------------------------------------------------------


def _state(request: Request) -> DashboardState:
    state: DashboardState = request.app.state.dashboard
    return state


def index(request: Request) -> Response:
    state = _state(request)
    form = form_of(request)
    scope: Scope | None = None
    try:
        refresh_s = refresh_of(form, state.page_refresh_s)
        scope = scope_from(form, state.clock())
        body = page.panels_html(state.panels(scope), scope, _stamp())
        status = 200
        known = state.known()
    except ScopeError as exc:
        body, status, known, refresh_s = page.error_html(str(exc)), 400, {}, 0
    except StorageError as exc:
        logger.error("dashboard query failed: %s", exc)
        body, status, known, refresh_s = page.error_html(f"ClickHouse: {exc}"), 503, {}, 0
    html = page.page_html(form=form, body=body, refresh_s=refresh_s, known=known, scope=scope)
    return HTMLResponse(html, status_code=status)


def panels(request: Request) -> Response:
    state = _state(request)
    try:
        form = form_of(request)
        refresh_of(form, state.page_refresh_s)
        scope = scope_from(form, state.clock())
        return HTMLResponse(page.panels_html(state.panels(scope), scope, _stamp()))
    except ScopeError as exc:
        return HTMLResponse(page.error_html(str(exc)), status_code=400)
    except StorageError as exc:
        logger.error("dashboard query failed: %s", exc)
        return HTMLResponse(page.error_html(f"ClickHouse: {exc}"), status_code=503)


def api_report(request: Request) -> Response:
    state = _state(request)
    try:
        form = form_of(request)
        refresh_of(form, state.page_refresh_s)
        scope = scope_from(form, state.clock())
        report = Report(scope=scope, source="agg", panels=state.panels(scope))
        return JSONResponse(as_dict(report))
    except ScopeError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    except StorageError as exc:
        logger.error("dashboard query failed: %s", exc)
        return JSONResponse({"error": f"ClickHouse: {exc}"}, status_code=503)


def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def stylesheet(request: Request) -> Response:
    return Response(assets.CSS, media_type="text/css")


def script(request: Request) -> Response:
    return Response(assets.JS, media_type="text/javascript")


async def login(request: Request) -> Response:
    state = _state(request)
    body = await request.body()
    if len(body) > 4096:
        return PlainTextResponse("request too large", status_code=413)
    presented = parse_qs(body.decode("utf-8", "replace")).get("token", [""])[-1]
    if state.gate.token_ok(presented):
        return _with_session(RedirectResponse("./", status_code=303), state.gate, request)
    await asyncio.sleep(0.5)  # slows down guessing
    return HTMLResponse(page.login_html("Wrong token."), status_code=401)


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _with_session(response: Response, gate: TokenGate, request: Request) -> Response:
    response.set_cookie(
        COOKIE,
        gate.session,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


# -- middleware ------------------------------------------------------------------------------


class TokenMiddleware(BaseHTTPMiddleware):
    """Refuse every non-public request without the token or session cookie."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path in PUBLIC_PATHS:
            return _secure(await call_next(request))
        gate = _state(request).gate
        query_token = request.query_params.get("token")
        if gate.token_ok(bearer(request.headers.get("authorization"))) or gate.session_ok(
            request.cookies.get(COOKIE)
        ):
            return _secure(await call_next(request))
        if gate.token_ok(query_token):
            if request.url.path == "/" and request.method == "GET":
                # Swap the token in the address for a cookie: it should not
                # linger in the history, in logs or in bookmarks.
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                target = "./" + ("?" + page.query_string(dict(rest)) if rest else "")
                return _secure(
                    _with_session(RedirectResponse(target, status_code=303), gate, request)
                )
            return _secure(await call_next(request))
        await asyncio.sleep(0.2)  # slows down guessing
        return _secure(_refuse(request))


def _refuse(request: Request) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="cdr-dashboard"'}
    if "text/html" in request.headers.get("accept", "") and request.url.path == "/":
        message = "This dashboard needs its read-only token."
        return HTMLResponse(page.login_html(message), status_code=401, headers=headers)
    return JSONResponse({"error": "token required"}, status_code=401, headers=headers)


def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def create_app(state: DashboardState) -> Starlette:
    routes = [
        Route("/", index),
        Route("/panels", panels),
        Route("/api/report", api_report),
        Route("/login", login, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/static/dashboard.css", stylesheet),
        Route("/static/dashboard.js", script),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(TokenMiddleware)])
    app.state.dashboard = state
    return app
