"""Prometheus metrics of the correlator worker."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS_IN = Counter("cdr_worker_events_total", "Records read from call-events", ["kind"])
CDRS_OUT = Counter("cdr_worker_cdrs_total", "CDR versions produced", ["decision"])
REEMITTED = Counter("cdr_worker_reemitted_total", "CDRs re-sent after a restart or rebalance")
OFFSET_GAPS = Counter(
    "cdr_worker_offset_gaps_total",
    "Times records of call-events arrived after a gap and the consumer was sent back",
)
DLQ = Counter("cdr_worker_dlq_total", "Records sent to the dead-letter topic", ["category"])
OPEN_CALLS = Gauge("cdr_worker_open_calls", "Calls not yet emitted", ["partition"])
TABLE_SIZE = Gauge("cdr_worker_table_calls", "Calls held in the table (open and closed)",
                   ["partition"])
LAG = Gauge("cdr_worker_consumer_lag", "Records behind the end of call-events", ["partition"])
WATERMARK = Gauge("cdr_worker_watermark_ms", "Event-time watermark", ["partition"])
