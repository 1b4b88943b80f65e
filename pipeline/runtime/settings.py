"""Runtime settings (where Kafka and ClickHouse are, how workers run), apart from billing.

They live in the same TOML file as the billing configuration, in the sections
[kafka], [clickhouse], [worker], [sink], [dashboard], [ingest] and [ingest_http];
every key can be overridden by an environment variable CDR_<SECTION>_<KEY> (e.g.
CDR_KAFKA_BOOTSTRAP). Unknown keys are rejected at load, naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import ConfigError


class Secret(str):
    """A string that never shows itself in logs or reprs."""

    def __repr__(self) -> str:
        return "Secret('***')"

    def reveal(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = "127.0.0.1:19092"
    topic_prefix: str = ""
    partitions: int = 6
    replication_factor: int = 1

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def call_events(self) -> str:
        return self.topic("call-events")

    @property
    def cdrs(self) -> str:
        return self.topic("cdrs")

    @property
    def dlq(self) -> str:
        return self.topic("call-events.dlq")


@dataclass(frozen=True)
class ClickHouseSettings:
    # native://host:port/database (clickhouse-driver) or chdb:///path (embedded chDB).
    url: str = "native://127.0.0.1:19000/cdr"
    user: str = "default"
    password: Secret = field(default_factory=lambda: Secret(""))


COMPRESSIONS = ("none", "snappy", "lz4", "zstd", "gzip")


@dataclass(frozen=True)
class WorkerSettings:
    app_id: str = "cdr-correlator"
    store: str = "memory://"  # rocksdb:// in production (needs rocksdict)
    data_dir: str = ".stack/worker"
    metrics_port: int = 0  # 0 = no metrics endpoint
    tick_interval_s: float = 0.0  # 0 = no wall-clock ticks (see docs/streaming.md)
    tick_lag_s: float = 30.0
    commit_interval_s: float = 1.0
    # Longest a fetch waits at the broker for new records (docs/streaming.md, Latency).
    fetch_wait_ms: int = 100
    # ... and how much a fetch waits for (up to fetch_wait_ms): fewer, fuller fetches.
    fetch_min_bytes: int = 32768
    # Compression of what the worker writes (CDRs, changelog): one of COMPRESSIONS.
    # Not lz4: aiokafka compresses lz4 at level 9 (LZ4HC), ten times the CPU of snappy
    # for about the same ratio (docs/streaming.md, Throughput).
    compression: str = "snappy"


@dataclass(frozen=True)
class SinkSettings:
    group: str = "cdr-sink"
    batch_rows: int = 5000
    batch_seconds: float = 1.0
    metrics_port: int = 0


@dataclass(frozen=True)
class DashboardSettings:
    host: str = "127.0.0.1"
    port: int = 8050
    token: Secret = field(default_factory=lambda: Secret(""))


@dataclass(frozen=True)
class IngestSettings:
    """The switch adapters (`cdr-pipeline ingest`, docs/switches.md)."""

    # account_id of a SETUP whose source Kamailio could not identify (account ""), so
    # an illegal call from an unknown source is still correlated and flagged.
    unknown_account: str = "UNIDENTIFIED"
    # How often the journal is read to its end and, once Kafka acknowledged everything
    # before it, the checkpoint advanced (the most a restart re-publishes).
    checkpoint_interval_s: float = 1.0
    reconnect_initial_s: float = 0.2  # first wait after evapi is lost, doubled per attempt
    reconnect_max_s: float = 5.0
    # How long Kafka may leave records unacknowledged before the adapter treats it as
    # down (drops evapi, re-opens the producer, resumes from the journal checkpoint).
    delivery_timeout_s: float = 30.0
    state_dir: str = ""  # "" = the checkpoint file sits next to the journal
    metrics_port: int = 0  # 0 = no metrics endpoint
    health_port: int = 0  # 0 = no /health endpoint


@dataclass(frozen=True)
class IngestHttpSettings:
    """The HTTP endpoint for call events (`cdr-pipeline ingest http`, docs/switches.md)."""

    host: str = "127.0.0.1"
    port: int = 8090
    # Bearer token every POST must present (env CDR_INGEST_HTTP_TOKEN); never logged.
    token: Secret = field(default_factory=lambda: Secret(""))
    max_body_bytes: int = 8 << 20  # a larger request is refused with 413
    # How long a request waits for Kafka to acknowledge all its events before it is
    # answered 503 (the producer's message.timeout.ms, so nothing is left in flight).
    request_timeout_s: float = 10.0
    # Records the producer may hold unacknowledged; beyond that requests get 429.
    queue_max_messages: int = 200_000
    retry_after_s: int = 2  # the Retry-After of a 429 / 503


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    clickhouse: ClickHouseSettings = field(default_factory=ClickHouseSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    sink: SinkSettings = field(default_factory=SinkSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    ingest_http: IngestHttpSettings = field(default_factory=IngestHttpSettings)


_S = TypeVar("_S")


def _coerce(where: str, kind: Any, value: Any) -> Any:
    if kind in (int, "int"):
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind in (float, "float"):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    elif kind in ("Secret",):
        if isinstance(value, str):
            return Secret(value)
    elif isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def _section(cls: type[_S], name: str, raw: dict[str, Any], env: dict[str, str]) -> _S:
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(known))})")
    values = {}
    for key, spec in known.items():
        env_key = f"CDR_{name.upper()}_{key.upper()}"
        if env_key in env:
            values[key] = _coerce(env_key, spec.type, env[env_key])
        elif key in raw:
            values[key] = _coerce(f"{name}.{key}", spec.type, raw[key])
    return cls(**values)


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Settings from the TOML file (if any) and the environment."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    env = dict(os.environ) if env is None else env
    parts: dict[str, Any] = {}
    for f in fields(Settings):
        section = raw.get(f.name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{f.name}: expected a table")
        cls = f.default_factory
        parts[f.name] = _section(cls, f.name, section, env)  # type: ignore[arg-type]
    settings = Settings(**parts)
    if settings.kafka.partitions < 1:
        raise ConfigError("kafka.partitions: must be >= 1")
    if not 1 <= settings.worker.fetch_wait_ms <= 30000:
        raise ConfigError("worker.fetch_wait_ms: must be 1-30000, got "
                          f"{settings.worker.fetch_wait_ms}")
    if not 1 <= settings.worker.fetch_min_bytes <= 1 << 20:
        raise ConfigError("worker.fetch_min_bytes: must be 1-1048576, got "
                          f"{settings.worker.fetch_min_bytes}")
    if settings.worker.compression not in COMPRESSIONS:
        raise ConfigError(f"worker.compression: must be one of {', '.join(COMPRESSIONS)}, "
                          f"got {settings.worker.compression!r}")
    _check_ingest(settings.ingest)
    _check_ingest_http(settings.ingest_http)
    return settings


def _check_ingest(ingest: IngestSettings) -> None:
    if not ingest.unknown_account:
        raise ConfigError("ingest.unknown_account: must not be empty")
    for key in ("checkpoint_interval_s", "reconnect_initial_s", "reconnect_max_s",
                "delivery_timeout_s"):
        if getattr(ingest, key) <= 0:
            raise ConfigError(f"ingest.{key}: must be > 0, got {getattr(ingest, key)}")
    if ingest.reconnect_max_s < ingest.reconnect_initial_s:
        raise ConfigError("ingest.reconnect_max_s: must be >= ingest.reconnect_initial_s")


def _check_ingest_http(http: IngestHttpSettings) -> None:
    if not 0 <= http.port < 65536:
        raise ConfigError(f"ingest_http.port: must be 0-65535, got {http.port}")
    if http.max_body_bytes < 1024:
        raise ConfigError(f"ingest_http.max_body_bytes: must be >= 1024, got {http.max_body_bytes}")
    if not 0.5 <= http.request_timeout_s <= 300:
        raise ConfigError("ingest_http.request_timeout_s: must be 0.5-300, got "
                          f"{http.request_timeout_s}")
    if not 1000 <= http.queue_max_messages <= 10_000_000:
        raise ConfigError("ingest_http.queue_max_messages: must be 1000-10000000, got "
                          f"{http.queue_max_messages}")
    if not 1 <= http.retry_after_s <= 3600:
        raise ConfigError(f"ingest_http.retry_after_s: must be 1-3600, got {http.retry_after_s}")


def replace(obj: _S, **changes: Any) -> _S:
    """dataclasses.replace that skips None values (CLI flags not given)."""
    return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[type-var]
