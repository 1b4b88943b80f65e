"""Prometheus metrics of the HTTP endpoint, in a registry of its own per app.

A registry per app rather than the process-wide default: tests and benchmarks run
several apps in one process, and /metrics shows only this endpoint's figures.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Acknowledgement latency of a whole request: from its first produce to its last report.
_ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cdr_ingest_http_requests_total", "POST /v1/events requests, by answer status",
            ["status"], registry=self.registry)
        self.accepted = Counter(
            "cdr_ingest_http_events_accepted_total",
            "Events Kafka acknowledged", registry=self.registry)
        self.rejected = Counter(
            "cdr_ingest_http_events_rejected_total",
            "Events refused as invalid, by category", ["category"], registry=self.registry)
        self.failed = Counter(
            "cdr_ingest_http_events_failed_total",
            "Valid events Kafka did not acknowledge in time (the request got 429/503)",
            registry=self.registry)
        self.ack_latency = Histogram(
            "cdr_ingest_http_ack_latency_seconds",
            "Time from a request's first produce to Kafka's last acknowledgement",
            buckets=_ACK_BUCKETS, registry=self.registry)
        self.queued = Gauge(
            "cdr_ingest_http_producer_queued", "Records produced and not yet acknowledged",
            registry=self.registry)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
