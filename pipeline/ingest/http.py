"""The HTTP way in: a Starlette app that publishes POSTed CallEvents to Kafka.

Routes:

  POST /v1/events   JSON Lines or a JSON array of CallEvents; bearer token required.
                    200 once Kafka acknowledged every event; 422 when some were
                    invalid (those are not published, the others are, and were
                    acknowledged); 400 body unreadable; 401 token; 413 too large;
                    429 producer queue full, 503 Kafka not acknowledging (both with
                    Retry-After: retry the whole request, event ids make that harmless).
  GET  /health      liveness: 200 unless the producer hit a fatal error
  GET  /ready       readiness: 200 when the broker answers for the topic
  GET  /metrics     Prometheus

Why the answer waits for Kafka: a switch deletes what it sent once it has a 2xx, so a
2xx must mean stored (acks=all). Why a 4xx for a partly valid batch: retrying it
cannot help; the client must fix or drop the lines the answer names.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pipeline.core.events import CallEvent
from pipeline.errors import ConfigError, InvalidEvent
from pipeline.ingest.batch import Batch, Tick, parse_body
from pipeline.ingest.http_metrics import CONTENT_TYPE, HttpMetrics
from pipeline.ingest.http_producer import AckingProducer, ProducerUnusable, QueueFull
from pipeline.offline.rate_file import Reject
from pipeline.runtime.http_auth import MIN_TOKEN_LENGTH, TokenGate, bearer

log = logging.getLogger(__name__)

# Extra time past the producer's own deadline (message.timeout.ms) before a request
# stops waiting: librdkafka reports within its deadline, this only guards against a bug.
_GRACE_S = 5.0
_MAX_LISTED_REJECTS = 1000
_REFUSE_DELAY_S = 0.2  # slows down token guessing, as the dashboard does
_TICK_REASON = ("tick records are not accepted over HTTP (publish them with `cdr-pipeline "
                "publish` or let the worker's wall-clock ticks advance idle partitions)")


def check_ingest_token(token: str | None) -> str:
    """The token to require; ConfigError naming the setting when it is missing or weak."""
    if not token:
        raise ConfigError(
            "ingest HTTP token is not configured: set CDR_INGEST_HTTP_TOKEN (or [ingest_http] "
            "token in the configuration file); the endpoint refuses to start without one")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"ingest HTTP token is too short ({len(token)} characters): use at least "
            f'{MIN_TOKEN_LENGTH}, e.g. the output of `python -c "import secrets; '
            'print(secrets.token_urlsafe(24))"`')
    if not token.isprintable() or token != token.strip():
        raise ConfigError("ingest HTTP token must be printable and without surrounding spaces")
    return token


@dataclass
class IngestHttpState:
    """What the handlers share. The producer is created and closed by the caller."""

    producer: AckingProducer
    gate: TokenGate
    max_body_bytes: int = 8 << 20
    retry_after_s: int = 2
    metrics: HttpMetrics = field(default_factory=HttpMetrics)


def make_state(producer: AckingProducer, token: str, **options: Any) -> IngestHttpState:
    return IngestHttpState(producer, TokenGate(check_ingest_token(token)), **options)


def _state(request: Request) -> IngestHttpState:
    state: IngestHttpState = request.app.state.ingest
    return state


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_json(item: Reject, array: bool) -> dict[str, Any]:
    where = "index" if array else "line"
    return {where: item.line, "reason": item.reason, "category": item.category}


def _answer(state: IngestHttpState, status: int, body: dict[str, Any],
            retry: bool = False) -> Response:
    state.metrics.requests.labels(str(status)).inc()
    headers = {"Retry-After": str(state.retry_after_s)} if retry else None
    return JSONResponse(body, status_code=status, headers=headers)


def _split(batch: Batch) -> tuple[list[CallEvent], list[Reject]]:
    """The events to publish and every reject, ticks included (refused here)."""
    events: list[CallEvent] = []
    rejects = list(batch.rejects)
    for position, item in batch.items:
        if isinstance(item, Tick):
            rejects.append(Reject(position, _TICK_REASON, "tick", json.dumps({"tick_ms":
                                                                               item.ts_ms})))
        else:
            events.append(item)
    rejects.sort(key=lambda r: r.line)
    return events, rejects


async def post_events(request: Request) -> Response:
    state = _state(request)
    if not state.gate.token_ok(bearer(request.headers.get("authorization"))):
        await asyncio.sleep(_REFUSE_DELAY_S)
        state.metrics.requests.labels("401").inc()
        return JSONResponse({"error": "bearer token required (Authorization: Bearer <token>)"},
                            status_code=401, headers={"WWW-Authenticate": 'Bearer realm="cdr"'})
    try:
        body = await _read_body(request, state.max_body_bytes)
    except _TooLarge:
        return _answer(state, 413, {"error": f"body larger than {state.max_body_bytes} bytes; "
                                             "send fewer events per request"})
    try:
        batch, array = parse_body(body)
    except InvalidEvent as exc:
        return _answer(state, 400, {"error": exc.reason})
    events, rejects = _split(batch)
    for item in rejects:
        state.metrics.rejected.labels(item.category).inc()
    if not events and not rejects:
        return _answer(state, 400, {"error": "no events in the body (JSON Lines or a JSON array)"})
    listed = [_reject_json(r, array) for r in rejects[:_MAX_LISTED_REJECTS]]
    status = 422 if rejects else 200
    if not events:
        return _answer(state, status, {"accepted": 0, "rejected": listed,
                                       "rejected_count": len(rejects)})
    return await _publish(state, events, listed, len(rejects), status)


async def _publish(state: IngestHttpState, events: list[CallEvent], listed: list[dict[str, Any]],
                   rejected: int, status: int) -> Response:
    loop = asyncio.get_running_loop()
    try:
        future = state.producer.send(events, loop)
    except QueueFull as exc:
        state.metrics.failed.inc(len(events))
        log.warning("ingest http: %s; answering 429", exc)
        return _answer(state, 429, {"error": f"{exc}; retry the whole request later",
                                    "accepted": 0, "rejected": listed}, retry=True)
    except ProducerUnusable as exc:
        state.metrics.failed.inc(len(events))
        return _answer(state, 503, {"error": str(exc), "accepted": 0, "rejected": listed},
                       retry=True)
    finally:
        state.metrics.queued.set(state.producer.queued())
    try:
        acks = await asyncio.wait_for(asyncio.shield(future),
                                      state.producer.timeout_s + _GRACE_S)
    except TimeoutError:
        state.metrics.failed.inc(len(events))
        return _answer(state, 503, {"error": "Kafka did not report in time; retry the whole "
                                             "request", "accepted": 0, "rejected": listed},
                       retry=True)
    state.metrics.ack_latency.observe(acks.latency_s)
    if acks.failed:
        state.metrics.failed.inc(acks.failed)
        state.metrics.accepted.inc(acks.delivered)
        log.warning("ingest http: %s of %s events not acknowledged (%s); answering 503",
                    acks.failed, len(events), acks.first_error)
        return _answer(state, 503, {
            "error": f"Kafka did not acknowledge {acks.failed} of {len(events)} events "
                     f"({acks.first_error}); retry the whole request",
            "accepted": 0, "rejected": listed}, retry=True)
    state.metrics.accepted.inc(acks.delivered)
    return _answer(state, status, {"accepted": acks.delivered, "rejected": listed,
                                   "rejected_count": rejected})


def health(request: Request) -> Response:
    fatal = _state(request).producer.fatal
    if fatal is not None:
        return PlainTextResponse(f"producer fatal error: {fatal}\n", status_code=503)
    return PlainTextResponse("ok\n")


async def ready(request: Request) -> Response:
    ok, why = await asyncio.to_thread(_state(request).producer.ready)
    return PlainTextResponse(why + "\n", status_code=200 if ok else 503)


def metrics(request: Request) -> Response:
    state = _state(request)
    state.metrics.queued.set(state.producer.queued())
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


def create_app(state: IngestHttpState) -> Starlette:
    app = Starlette(routes=[
        Route("/v1/events", post_events, methods=["POST"]),
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", metrics),
    ])
    app.state.ingest = state
    return app
