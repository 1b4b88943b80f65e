"""`cdr-pipeline worker`: run the streaming correlator."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def ensure_pipeline_topics(settings: Any) -> None:
    from pipeline.kafka.admin import default_topic_specs, ensure_topics

    kafka = settings.kafka
    specs = default_topic_specs(kafka.topic_prefix, kafka.partitions, kafka.replication_factor)
    created = ensure_topics(kafka, specs)
    if created:
        log.info("created topics %s", ", ".join(created))


def _run(args: argparse.Namespace) -> int:
    import faust
    from prometheus_client import start_http_server

    from pipeline.core.config import load_config
    from pipeline.runtime.gctune import tune_gc
    from pipeline.runtime.settings import load_settings, replace
    from pipeline.worker.app import create_app
    from pipeline.worker.ticks import install_ticker

    config = load_config(args.config)
    tune_gc()
    settings = load_settings(args.config)
    settings = replace(
        settings,
        kafka=replace(settings.kafka, bootstrap=args.bootstrap, partitions=args.partitions),
        worker=replace(settings.worker, store=args.store, app_id=args.app_id,
                       metrics_port=args.metrics_port, data_dir=args.data_dir),
    )
    ensure_pipeline_topics(settings)
    app = create_app(settings, config)
    install_ticker(app, settings)
    if settings.worker.metrics_port:
        start_http_server(settings.worker.metrics_port, addr="127.0.0.1")
    log.info("correlator %s on %s, tariff %s", settings.worker.app_id, settings.kafka.bootstrap,
             config.tariff_version)
    # Keep the logging `cdr-pipeline` set up (root WARNING, format, --log-json). Faust's own
    # set-up would replace it and, for its start-up spinner, leave the root logger at DEBUG
    # for good: every debug call in faust and aiokafka would then build a LogRecord.
    for name in ("faust", "mode", "aiokafka"):
        logging.getLogger(name).setLevel(args.faust_loglevel.upper())
    worker = faust.Worker(app, loglevel=args.faust_loglevel, quiet=True, redirect_stdouts=False,
                          override_logging=False)
    with _profiled(os.environ.get(PROFILE_ENV, "").replace("{pid}", str(os.getpid()))):
        worker.execute_from_commandline()
    return 0


# Set to a file path ("{pid}" in it: the process id), the worker runs under cProfile
# (timed by the main thread's CPU clock) and writes its statistics there when it stops
# (bench/worker_bench.py reads them). The main thread only: aiokafka's consumer thread
# is not in it (bench/worker_bench.py reports that thread's CPU from /proc).
PROFILE_ENV = "CDR_WORKER_PROFILE"


@contextmanager
def _profiled(path: str) -> Iterator[None]:
    if not path:
        yield
        return
    import cProfile
    import time

    # Timed by the main thread's CPU clock: time waiting for records is not counted.
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        profile.dump_stats(path)
        log.warning("profile of the worker's main thread written to %s", path)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "worker",
        help="run the streaming correlator (Faust): call-events in, rated CDRs out",
        description="Join each call's events into rated CDRs with the billing core. Several "
        "workers with the same --app-id share the partitions as one consumer group.",
    )
    p.add_argument("--config", required=True, type=Path, help="billing + runtime TOML file")
    p.add_argument("--bootstrap",
                   help="Kafka bootstrap servers (default from [kafka] or CDR_KAFKA_BOOTSTRAP)")
    p.add_argument("--partitions", type=int, help="partitions of the pipeline topics")
    p.add_argument("--store", help="Faust table store: memory:// (default) or rocksdb://")
    p.add_argument("--app-id", help="Faust app id = consumer group (default cdr-correlator)")
    p.add_argument("--data-dir", help="Faust data directory (table stores)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--faust-loglevel", default="warning", help="Faust's own log level")
    p.set_defaults(handler=_run)
