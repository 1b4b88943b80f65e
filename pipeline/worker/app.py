"""The Faust app: call-events in, versioned RatedCdrs out, state in a changelog table.

This module only wires the worker's parts to Faust:
- the record path (record_path.py): one Correlator per assigned partition, each with
  its own event-time watermark, driven only from inside the stream (events and tick
  records); replay after an assignment, the in-order guard, dead letters;
- the driver (driver.py): batches from the handoff through the record path, its
  output to Kafka, the batch acknowledged when that is done;
- the handoff (handoff.py): call-events records straight from Faust's fetch loop;
- faust_compat.py: every reach into Faust's internals.
Delivery is at-least-once, and a committed offset means every CDR and state change
before it was delivered; see docs/streaming.md.
"""

from __future__ import annotations

from functools import partial

import faust

from pipeline.core.config import BillingConfig
from pipeline.kafka.admin import CALLS_TABLE
from pipeline.kafka.clients import faust_app_kwargs, faust_broker_urls
from pipeline.runtime.settings import Settings
from pipeline.worker import faust_compat
from pipeline.worker.driver import Driver
from pipeline.worker.handoff import Handoff
from pipeline.worker.lean import LeanMonitor
from pipeline.worker.produce import MAX_BATCH_BYTES, BatchSender
from pipeline.worker.record_path import RecordPath
from pipeline.worker.table_store import TableWriter

# At most this many call-events records waiting for the correlator; Faust's fetch loop
# waits for room beyond that.
HANDOFF_MAX = 16384


def create_app(settings: Settings, config: BillingConfig) -> faust.App:
    kafka, worker = settings.kafka, settings.worker
    app = faust.App(
        worker.app_id,
        broker=faust_broker_urls(kafka),
        **faust_app_kwargs(kafka),
        store=worker.store,
        datadir=worker.data_dir,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        broker_commit_interval=worker.commit_interval_s,
        processing_guarantee="at_least_once",
        producer_acks=-1,
        # Batch produce requests (CDRs and changelog): without linger aiokafka sends
        # a request for every few records.
        producer_linger=0.02,
        producer_max_batch_size=MAX_BATCH_BYTES,
        producer_compression_type=None if worker.compression == "none" else worker.compression,
        broker_max_poll_records=2000,
        stream_buffer_maxsize=HANDOFF_MAX,
        web_enabled=False,
        table_cleanup_interval=3600.0,
        table_standby_replicas=worker.standby_replicas,
        # Faust's default, kept on purpose: a rebalance waits until the batches being
        # processed are finished (and flushed) before the partitions are given up, so no
        # state change reaches a changelog partition another worker already owns.
        stream_wait_empty=True,
        consumer_auto_offset_reset="earliest",
        monitor=LeanMonitor(),
    )
    # Subscribed through Faust's conductor as an agent's topic would be (the consumer
    # subscribes to it and Faust assigns it); its records reach the correlator through
    # the handoff, taken from the consumer's fetches (installed at the assignment).
    app.topics.add(app.topic(kafka.call_events, key_serializer="raw", value_serializer="raw"))
    handoff = Handoff(app, kafka.call_events, maxsize=HANDOFF_MAX)
    dlq_topic = app.topic(kafka.dlq, key_serializer="raw", value_serializer="raw")
    # Keys are call ids as JSON strings; values the call's state and partition in
    # worker.changelog_format (changelog.py), bytes Faust neither encodes nor decodes.
    table = app.Table(CALLS_TABLE, default=None, partitions=kafka.partitions,
                      value_type=bytes)  # value_serializer "raw"
    sender = BatchSender(partial(faust_compat.aiokafka_producer, app.producer))
    path = RecordPath(config, table.values, worker.changelog_format)
    table_writer = TableWriter(table, sender, worker.changelog_compression)
    driver = Driver(app, settings, path, handoff, sender, table_writer, dlq_topic)
    # Faust sends these signals with the partitions as the one positional argument (its
    # signal type asks for handlers taking any positional arguments).
    app.on_partitions_revoked.connect(driver.on_revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(driver.on_assigned)  # type: ignore[arg-type]
    app.task(driver.run)  # started once the app is up (after table recovery)
    return app
