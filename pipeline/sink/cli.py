"""`cdr-pipeline sink`: the Kafka -> ClickHouse sink as a long-running command.

Heavy modules (confluent_kafka, clickhouse_driver, prometheus_client) are imported
inside the handler so that `cdr-pipeline --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sink",
        help="consume rated CDRs from Kafka and store them in ClickHouse",
        description="Consume RatedCdr records (Avro) from the cdrs topic, insert them into "
        "ClickHouse in batches, and commit offsets only after the insert. Undecodable "
        "records go to the dead-letter topic. While ClickHouse is unavailable consumption "
        "pauses and the batch is retried with backoff; other ClickHouse errors stop the "
        "sink. SIGTERM/SIGINT flush, commit and exit. See docs/sink.md.",
    )
    p.add_argument("--config", type=Path,
                   help="TOML file with [kafka], [clickhouse] and [sink] settings")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (env CDR_KAFKA_BOOTSTRAP; "
                   "default 127.0.0.1:19092)")
    p.add_argument("--topic", help="source topic (default: cdrs, with the kafka topic prefix)")
    p.add_argument("--dlq-topic", help="dead-letter topic (default: <topic>.dlq)")
    p.add_argument("--group", help="consumer group (default cdr-sink)")
    p.add_argument("--clickhouse", metavar="URL",
                   help="native://host:port/database or chdb:///path/to/dir "
                   "(env CDR_CLICKHOUSE_URL; default native://127.0.0.1:19000/cdr)")
    p.add_argument("--batch-rows", type=int, help="rows per insert at most (default 5000)")
    p.add_argument("--batch-seconds", type=float,
                   help="longest a record waits before its batch is inserted (default 1.0)")
    p.add_argument("--metrics-port", type=int,
                   help="serve Prometheus metrics on this port (default: none)")
    p.add_argument("--migrate", action="store_true",
                   help="apply the ClickHouse schema migrations before starting")
    p.set_defaults(handler=_run_sink)


def _install_signal_handlers(stop: threading.Event) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s again: still flushing, please wait", name)
            return
        log.info("%s received: flushing, committing and stopping", name)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _run_sink(args: argparse.Namespace) -> int:
    from pipeline.runtime.settings import load_settings, replace
    from pipeline.sink.service import SinkConfig, SinkService, format_stats
    from pipeline.storage.url import open_backend, parse_clickhouse_url

    # clickhouse-driver logs every failed connect with a traceback at WARNING; during
    # an outage the sink logs each attempt itself, once, with the error.
    logging.getLogger("clickhouse_driver").setLevel(logging.ERROR)
    settings = load_settings(args.config)
    kafka = replace(settings.kafka, bootstrap=args.bootstrap)
    sink = replace(settings.sink, group=args.group, batch_rows=args.batch_rows,
                   batch_seconds=args.batch_seconds, metrics_port=args.metrics_port)
    url = args.clickhouse or settings.clickhouse.url
    topic = args.topic or kafka.cdrs
    config = SinkConfig(
        kafka=kafka,
        topic=topic,
        group=sink.group,
        dlq_topic=args.dlq_topic or f"{topic}.dlq",
        database=parse_clickhouse_url(url).database,
        batch_rows=sink.batch_rows,
        batch_seconds=sink.batch_seconds,
        insert_gap_s=sink.insert_gap_s,
    )
    backend, _ = open_backend(url, settings.clickhouse.user,
                              settings.clickhouse.password.reveal())
    try:
        if args.migrate:
            _migrate(backend, config.database, settings.clickhouse.cluster)
        if sink.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(sink.metrics_port)
            log.info("metrics on http://0.0.0.0:%s/metrics", sink.metrics_port)
        stop = threading.Event()
        _install_signal_handlers(stop)
        log.info("sink: %s -> %s", topic, parse_clickhouse_url(url).redacted())
        started = time.monotonic()
        stats = SinkService(config, backend).run(stop)
        log.info("sink: %s", format_stats(stats, time.monotonic() - started))
    finally:
        backend.close()
    return 0


def _migrate(backend: Any, database: str, cluster: str = "") -> None:
    from pipeline.storage.migrate import migrate

    applied = migrate(backend, database, cluster=cluster or None)
    log.info("migrations applied to %s: %s", database, ", ".join(applied) or "none (up to date)")
