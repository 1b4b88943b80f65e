"""What a sink is told (`SinkConfig`), what it reports (`SinkStats`), the error it stops with.

Kept apart from the loop so that every part of the sink (and a test) can read the
settings without pulling in Kafka or ClickHouse clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError
from pipeline.runtime.settings import KafkaSettings

CdrRow = tuple[Any, ...]
"""A `cdr` table row in CDR_COLUMNS order (`cdr_store.cdr_row`): what the sink batches."""


class SinkError(PipelineError):
    """The sink stopped for a reason an operator has to fix (the message says which)."""


@dataclass(frozen=True)
class SinkConfig:
    """One sink's settings. `kafka` is the whole `[kafka]` section: the clients'
    connection settings come from it through `pipeline.kafka.clients.client_config`."""

    kafka: KafkaSettings
    topic: str = "cdrs"
    group: str = "cdr-sink"
    dlq_topic: str = "cdrs.dlq"
    database: str = "cdr"
    batch_rows: int = 5000
    batch_seconds: float = 1.0
    # Least time between the starts of two partial inserts (fewer than batch_rows rows,
    # taken because everything there is was read); within it, the next one starts as
    # soon as the insert before it is done. It bounds the inserts a second when they
    # are quick (docs/sink.md).
    insert_gap_s: float = 0.25
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    poll_timeout_s: float = 0.5  # longest single consume() wait: bounds stop latency
    fetch_wait_s: float = 0.02  # consume() wait while records are flowing or rows pending
    # What a fetch asks the broker to wait for: this many bytes, or this long. With
    # librdkafka's defaults (1 byte) a sink that keeps up fetches again as soon as one
    # record is there: on a topic written every few milliseconds, hundreds of requests
    # a second, which cost the broker more CPU than the writes (docs/sink.md).
    fetch_min_bytes: int = 65536
    fetch_max_wait_ms: int = 50
    lag_interval_s: float = 5.0
    idle_check_s: float = 0.2  # how often caught-up is checked while nothing is pending
    max_poll_interval_ms: int = 300_000
    session_timeout_ms: int = 45_000
    dlq_delivery_timeout_s: float = 60.0
    consumer_config: dict[str, Any] = field(default_factory=dict)  # extra librdkafka keys

    def __post_init__(self) -> None:
        if self.batch_rows < 1:
            raise SinkError(f"batch rows must be >= 1, got {self.batch_rows}")
        if self.batch_seconds <= 0:
            raise SinkError(f"batch seconds must be > 0, got {self.batch_seconds}")
        if self.insert_gap_s < 0:
            raise SinkError(f"insert gap seconds must be >= 0, got {self.insert_gap_s}")
        if self.fetch_min_bytes < 1 or self.fetch_max_wait_ms < 0:
            raise SinkError("fetch: need min bytes >= 1 and max wait >= 0 ms")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise SinkError("backoff: need 0 < initial <= max")
        # an insert that hangs for the whole socket timeout must not cost the membership
        if self.max_poll_interval_ms < 60_000:
            raise SinkError("max.poll.interval.ms below 60000 risks eviction during inserts")


@dataclass
class SinkStats:
    rows_inserted: int = 0
    batches: int = 0
    commits: int = 0
    dead_lettered: int = 0
    insert_retries: int = 0
    rows_dropped_on_revoke: int = 0
    insert_seconds: float = 0.0


def format_stats(stats: SinkStats, elapsed_s: float) -> str:
    rate = stats.rows_inserted / elapsed_s if elapsed_s > 0 else 0.0
    mean = stats.insert_seconds / stats.batches if stats.batches else 0.0
    return (
        f"{stats.rows_inserted} rows in {stats.batches} batches ({rate:.0f} rows/s over "
        f"{elapsed_s:.1f}s; an insert took {mean:.3f}s on average), {stats.dead_lettered} "
        f"dead-lettered, {stats.insert_retries} insert retries"
    )
