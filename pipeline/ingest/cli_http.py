"""CLI of the bulk ways in: `cdr-pipeline ingest http` and `cdr-pipeline publish`.

``register(sub)`` adds ``http`` to the ``ingest`` command group when that group is
already registered (pipeline.ingest.cli, the switch adapters), else a top-level
``ingest-http``; so register it after the adapters. Heavy imports (uvicorn,
confluent_kafka) happen in the handlers, so `cdr-pipeline --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    _register_http(sub)
    _register_publish(sub)


def _ingest_group(sub: Any) -> Any:
    """The sub-subcommand action of an already registered ``ingest`` group, or None."""
    parser = sub.choices.get("ingest") if hasattr(sub, "choices") else None
    if parser is None:
        return None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _register_http(sub: Any) -> None:
    group = _ingest_group(sub)
    target, name = (group, "http") if group is not None else (sub, "ingest-http")
    p = target.add_parser(
        name,
        help="HTTP endpoint: POST /v1/events (JSON Lines or a JSON array) -> call-events",
        description="Serve POST /v1/events behind a bearer token (CDR_INGEST_HTTP_TOKEN). "
        "Each request is answered 2xx only once Kafka acknowledged all its events "
        "(idempotent, acks=all); invalid events are listed with their reason (422) and "
        "not published; 413 too large, 401 token, 429/503 with Retry-After when Kafka "
        "cannot take them. GET /health, /ready, /metrics. See docs/switches.md.",
    )
    p.add_argument("--config", required=True, type=Path,
                   help="TOML file with [kafka] and [ingest_http] settings")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8090)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (env CDR_KAFKA_BOOTSTRAP)")
    p.set_defaults(handler=_serve_http)


def _register_publish(sub: Any) -> None:
    p = sub.add_parser(
        "publish",
        help="publish a JSON Lines file of call events (rate-file's input) to Kafka",
        description="Publish each event of the file to the call-events topic (key call_id, "
        "idempotent, acks=all) and each tick line as tick records; bad lines go to "
        "--rejects in rate-file's format. Waits for Kafka to acknowledge everything; "
        "exits 1 if anything failed delivery. Re-publishing a file is harmless: the "
        "pipeline drops events whose id it has seen.",
    )
    p.add_argument("--config", required=True, type=Path, help="TOML file with [kafka] settings")
    p.add_argument("--events", required=True, type=Path, help="input events, JSON Lines")
    p.add_argument("--rejects", type=Path, help="rejected input lines with their reason")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (env CDR_KAFKA_BOOTSTRAP)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="how long Kafka may take to acknowledge a record (default 60)")
    p.set_defaults(handler=_publish)


def _serve_http(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline.ingest.http import check_ingest_token, create_app, make_state
    from pipeline.ingest.http_producer import AckingProducer
    from pipeline.runtime.settings import load_settings, replace

    settings = load_settings(args.config)
    kafka = replace(settings.kafka, bootstrap=args.bootstrap)
    http = replace(settings.ingest_http, host=args.host, port=args.port)
    if not 0 < http.port < 65536:
        raise ConfigError(f"--port: must be 1-65535, got {http.port}")
    token = check_ingest_token(http.token.reveal())  # before anything starts
    producer = AckingProducer(kafka, kafka.call_events, timeout_s=http.request_timeout_s,
                              queue_max_messages=http.queue_max_messages)
    state = make_state(producer, token, max_body_bytes=http.max_body_bytes,
                       retry_after_s=http.retry_after_s)
    log.info("ingest http: http://%s:%s/v1/events -> %s on %s", http.host, http.port,
             kafka.call_events, kafka.bootstrap)
    try:
        uvicorn.run(create_app(state), host=http.host, port=http.port, log_level="warning",
                    access_log=False, server_header=False)
    finally:
        left = producer.close(http.request_timeout_s)
        if left:
            log.warning("ingest http: %s records unacknowledged at shutdown", left)
    return 0


def _publish(args: argparse.Namespace) -> int:
    from pipeline.ingest.publish_file import PublishResult, publish_lines
    from pipeline.runtime.settings import load_settings, replace
    from pipeline.switch.publisher import PublishError, SwitchPublisher

    settings = load_settings(args.config)
    kafka = replace(settings.kafka, bootstrap=args.bootstrap)
    if not args.events.exists():
        raise ConfigError(f"--events: file {args.events} does not exist")
    if args.events.is_dir():
        raise ConfigError(f"--events: {args.events} is a directory, not a JSON Lines file")
    if not 1 <= args.timeout <= 3600:
        raise ConfigError(f"--timeout: must be 1-3600 seconds, got {args.timeout}")
    tty = sys.stderr.isatty()

    def progress(result: PublishResult) -> None:
        rate = result.events / result.elapsed_s if result.elapsed_s > 0 else 0.0
        print(f"\rpublish: {result.events} events, {result.rejected} rejected, "
              f"{rate:.0f} events/s ", end="", file=sys.stderr, flush=True)

    publisher = SwitchPublisher(kafka, kafka.call_events,
                                {"message.timeout.ms": int(args.timeout * 1000)},
                                queue_timeout_s=args.timeout)
    publisher.partitions()  # a missing topic or unreachable Kafka: a clear error, now
    with args.events.open(encoding="utf-8", errors="replace") as src:
        if args.rejects is None:
            result = publish_lines(src, publisher, None, progress if tty else None,
                                   args.timeout + 5)
        else:
            with args.rejects.open("w", encoding="utf-8") as rejects:
                result = publish_lines(src, publisher, rejects, progress if tty else None,
                                       args.timeout + 5)
    try:
        publisher.close(args.timeout + 5)
    except PublishError as exc:
        if result.error is None:
            result.error = str(exc)
    result.delivered = publisher.stats.delivered
    if tty:
        print(file=sys.stderr)
    print(f"publish: {result.summary()}", file=sys.stderr)
    return 0 if result.ok else 1
