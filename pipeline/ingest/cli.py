"""`cdr-pipeline ingest kamailio`: the Kamailio evapi adapter as a long-running command.

Registered through ``pipeline.commands``; confluent_kafka and prometheus_client are
imported when the command runs, so `cdr-pipeline --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from pipeline.errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="read a switch's event feed and publish CallEvents to Kafka",
        description="Switch adapters. See docs/switches.md.",
    )
    sub = p.add_subparsers(dest="switch", required=True, metavar="SWITCH")
    k = sub.add_parser(
        "kamailio",
        help="Kamailio evapi (netstring JSON) -> call-events, its journal as backstop",
        description="Connect to Kamailio's evapi socket, map each event to a CallEvent and "
        "publish it (idempotent, acks=all) to the call-events topic; frames that do not "
        "map go to call-events.dlq with the reason. With --journal, events Kamailio logged "
        "while the adapter was not connected (or Kafka not acknowledging) are published "
        "from the log, resuming at a checkpoint written once Kafka acknowledged. "
        "Reconnects with backoff; SIGTERM/SIGINT flush, checkpoint and exit.",
    )
    k.add_argument("--config", type=Path,
                   help="TOML file with [kafka] and [ingest] settings (the billing config file)")
    k.add_argument("--evapi", required=True, metavar="HOST:PORT",
                   help="Kamailio's evapi bind_addr")
    k.add_argument("--journal", type=Path, metavar="PATH",
                   help="Kamailio's log with the 'CDR-EVENT <json>' lines (the backstop)")
    k.add_argument("--journal-from-end", action="store_true",
                   help="with no checkpoint yet, start at the journal's current end instead "
                        "of its start (adopting an old log whose calls were rated already)")
    k.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="where the journal checkpoint is kept (default: next to the journal)")
    k.add_argument("--bootstrap", help="Kafka bootstrap servers (env CDR_KAFKA_BOOTSTRAP)")
    k.add_argument("--unknown-account", metavar="ID",
                   help="account_id of a SETUP from an unidentified source (default UNIDENTIFIED)")
    k.add_argument("--metrics-port", type=int, metavar="N",
                   help="serve Prometheus metrics on this port (default: none)")
    k.add_argument("--health-port", type=int, metavar="N",
                   help="serve /health and /ready on this port (default: none)")
    k.set_defaults(handler=_run_kamailio)


def parse_host_port(text: str, what: str = "--evapi") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); ConfigError naming ``what``."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: {text!r} is not HOST:PORT")
    return host, int(port)


def _install_signal_handlers(stop: Any) -> None:
    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: flushing, checkpointing and stopping",
                 signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _run_kamailio(args: argparse.Namespace) -> int:
    from pipeline.ingest.adapter import AdapterConfig, KamailioAdapter
    from pipeline.runtime.settings import load_settings, replace

    settings = load_settings(args.config)
    kafka = replace(settings.kafka, bootstrap=args.bootstrap)
    ingest = replace(settings.ingest, unknown_account=args.unknown_account,
                     metrics_port=args.metrics_port, health_port=args.health_port)
    host, port = parse_host_port(args.evapi)
    if args.journal is not None and args.journal.is_dir():
        raise ConfigError(f"--journal: {args.journal} is a directory, not Kamailio's log file")
    state_dir = args.state_dir or (Path(ingest.state_dir) if ingest.state_dir else None)
    if args.journal_from_end and args.journal is None:
        raise ConfigError("--journal-from-end: needs --journal")
    if state_dir is not None and not state_dir.is_dir():
        raise ConfigError(f"--state-dir: {state_dir} is not a directory")
    adapter = KamailioAdapter(AdapterConfig(
        evapi_host=host,
        evapi_port=port,
        bootstrap=kafka.bootstrap,
        kafka=kafka,
        topic=kafka.call_events,
        dlq_topic=kafka.dlq,
        journal=args.journal,
        journal_from_end=args.journal_from_end,
        state_dir=state_dir,
        unknown_account=ingest.unknown_account,
        checkpoint_interval_s=ingest.checkpoint_interval_s,
        reconnect_initial_s=ingest.reconnect_initial_s,
        reconnect_max_s=ingest.reconnect_max_s,
        delivery_timeout_s=ingest.delivery_timeout_s,
    ))
    _serve(ingest.metrics_port, ingest.health_port, adapter)
    _install_signal_handlers(adapter.stop)
    log.info("ingest kamailio: %s:%s -> %s (dead letters %s)", host, port,
             kafka.call_events, kafka.dlq)
    adapter.run()
    return 0


def _serve(metrics_port: int, health_port: int, adapter: Any) -> None:
    try:
        if metrics_port:
            from prometheus_client import start_http_server

            start_http_server(metrics_port)
            log.info("metrics on http://0.0.0.0:%s/metrics", metrics_port)
        if health_port:
            from pipeline.ingest.health import serve_health

            serve_health(health_port, adapter.ready)
            log.info("health on http://0.0.0.0:%s/health and /ready", health_port)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics/health: {exc.strerror}") from None
