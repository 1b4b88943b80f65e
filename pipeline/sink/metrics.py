"""Prometheus metrics of the ClickHouse sink (process-wide, labelled by source topic)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROWS = Counter(
    "cdr_sink_rows_total", "CDR rows inserted into ClickHouse (and committed)", ["topic"]
)
BATCHES = Counter("cdr_sink_batches_total", "Batches inserted into ClickHouse", ["topic"])
INSERT_SECONDS = Histogram(
    "cdr_sink_insert_seconds",
    "Duration of one successful batch insert",
    ["topic"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BATCH_ROWS = Histogram(
    "cdr_sink_batch_rows",
    "Rows per inserted batch",
    ["topic"],
    buckets=(1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000),
)
DLQ = Counter(
    "cdr_sink_dlq_total", "Records sent to the dead-letter topic (undecodable)", ["topic"]
)
INSERT_RETRIES = Counter(
    "cdr_sink_insert_retries_total",
    "Failed insert attempts due to a ClickHouse outage (each is retried)",
    ["topic"],
)
CONSUMER_LAG = Gauge(
    "cdr_sink_consumer_lag",
    "High watermark minus the sink's position, per assigned partition",
    ["topic", "partition"],
)
PAUSED = Gauge(
    "cdr_sink_paused",
    "1 while the sink has paused consumption waiting for ClickHouse, else 0",
    ["topic"],
)
