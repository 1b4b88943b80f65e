"""Prometheus metrics of the switch adapters (process-wide)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

FRAMES = Counter("cdr_ingest_frames_total", "Frames read from the switch's event stream")
PUBLISHED = Counter(
    "cdr_ingest_events_published_total",
    "Events handed to the Kafka producer, by where they were read (evapi or journal)",
    ["source"],
)
DEAD_LETTERS = Counter(
    "cdr_ingest_dead_letters_total", "Frames sent to the dead-letter topic", ["category"]
)
RECONNECTS = Counter(
    "cdr_ingest_reconnects_total", "Connections to the event stream opened after the first"
)
JOURNAL_REPLAYED = Counter(
    "cdr_ingest_journal_events_replayed_total",
    "Journal events published because they had not arrived over the event stream",
)
KAFKA_OUTAGES = Counter(
    "cdr_ingest_kafka_outages_total",
    "Times Kafka did not acknowledge in time and the adapter resumed from its checkpoint",
)
CONNECTED = Gauge("cdr_ingest_connected", "1 while connected to the switch's event stream")
CHECKPOINT = Gauge(
    "cdr_ingest_checkpoint_offset", "Journal byte offset up to which Kafka acknowledged all"
)
