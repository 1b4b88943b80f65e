"""Runtime settings (where Kafka and ClickHouse are, how workers run), apart from billing.

They live in the same TOML file as the billing configuration, in the sections
[kafka], [clickhouse], [worker], [sink], [dashboard], [ingest] and [ingest_http];
every key can be overridden by an environment variable CDR_<SECTION>_<KEY> (e.g.
CDR_KAFKA_BOOTSTRAP). Unknown keys are rejected at load, naming the key.

A secret (a `Secret` field: passwords, tokens) can also be read from a file: the key
`<name>_file` (or CDR_<SECTION>_<NAME>_FILE), the form Docker and Kubernetes secrets
take, so that it need be neither in the TOML file nor in a process's environment.
A secret is never taken from the command line and never shown by repr(), str() or
an error message (docs/security.md).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import ConfigError

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Secret(str):
    """A string that never shows itself in logs, reprs or formatted messages: `%s`,
    f-strings, str() and repr() give `***`; `reveal()` is the one way to the value (to
    hand it to a client library)."""

    def __repr__(self) -> str:
        return "Secret('***')"

    def reveal(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return format("***", spec)


# Kafka connection security (librdkafka's names, which aiokafka shares).
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str = "127.0.0.1:19092"
    topic_prefix: str = ""
    partitions: int = 6
    replication_factor: int = 1
    # How clients connect (docs/security.md): PLAINTEXT (the local dev stack), SSL (TLS;
    # with cert_file/key_file the client is known by its certificate: mTLS), SASL_SSL
    # (TLS plus a SCRAM user), SASL_PLAINTEXT.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "SCRAM-SHA-512"
    username: str = ""
    password: Secret = field(default_factory=lambda: Secret(""))  # or password_file
    ca_file: str = ""  # PEM CA bundle the broker certificates are checked against
    cert_file: str = ""  # PEM client certificate (mTLS), with key_file
    key_file: str = ""

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

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
    password: Secret = field(default_factory=lambda: Secret(""))  # or password_file
    # TLS on the native port (tcp_port_secure), server certificate checked against
    # ca_file (else the system's CA store); `verify = false` only for a throwaway test.
    secure: bool = False
    ca_file: str = ""
    verify: bool = True
    # `db migrate` creates the tables ON CLUSTER <cluster> (replicated shards behind
    # Distributed tables, docs/clickhouse.md); "" = one server. Every command that
    # migrates (db migrate, sink/rerate/dashboard --migrate, the demo) uses it.
    cluster: str = ""

    def __post_init__(self) -> None:
        # The name goes into SQL text (ON CLUSTER ...): refused here, at load, rather
        # than when the first DDL runs. Whether the servers know it is checked there.
        if self.cluster and not _IDENTIFIER.fullmatch(self.cluster):
            raise ConfigError(f"clickhouse.cluster: {self.cluster!r} is not a cluster name "
                              "([A-Za-z_][A-Za-z0-9_]*)")


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
    # How the worker writes its table's changelog values (pipeline/worker/changelog.py):
    # "compact" (under 200 bytes a value), or "json" (562 bytes), which workers older
    # than the compact format read too: "json" during a rolling upgrade from such a
    # version, "compact" once none is left (docs/operations.md). Both are read.
    changelog_format: str = "compact"
    # Compression of the changelog's record batches (one of COMPRESSIONS): zstd, about
    # 45 bytes a compact value on the wire against snappy's 75, for 0.3 µs more a value;
    # what the broker stores and the standby replicas fetch (docs/streaming.md).
    changelog_compression: str = "zstd"
    # Standby replicas of each table partition (Faust's table_standby_replicas): a worker
    # replays the changelog of partitions other workers own. Only a rocksdb:// store
    # keeps where that replay got to, sparing a new owner the replay when it takes over;
    # with memory:// the new owner replays the partition's changelog from its start
    # either way, so a standby only doubles the workers' CPU (docs/streaming.md, Scaling).
    standby_replicas: int = 0

    def __post_init__(self) -> None:
        formats = ("compact", "json")  # pipeline.worker.changelog.FORMATS
        if self.changelog_format not in formats:
            raise ConfigError(f"worker.changelog_format: must be one of {', '.join(formats)}, "
                              f"got {self.changelog_format!r}")
        if self.standby_replicas < 0:
            raise ConfigError(f"worker.standby_replicas: must be >= 0, got {self.standby_replicas}")
        if self.changelog_compression not in COMPRESSIONS:
            raise ConfigError(f"worker.changelog_compression: must be one of "
                              f"{', '.join(COMPRESSIONS)}, got {self.changelog_compression!r}")


@dataclass(frozen=True)
class SinkSettings:
    group: str = "cdr-sink"
    batch_rows: int = 5000
    batch_seconds: float = 1.0
    insert_gap_s: float = 0.25  # least time between partial inserts (docs/sink.md)
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
    elif kind in (bool, "bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
    elif kind in ("Secret",):
        if isinstance(value, str):
            return Secret(value)
        # never echo what may be a secret
        raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")
    elif isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}
# Keys naming a file, resolved against the TOML file's folder when given there.
_PATH_KEYS = frozenset({"ca_file", "cert_file", "key_file"})


def _read_secret_file(where: str, path: Path) -> Secret:
    """The secret in `path` (one trailing newline dropped); ConfigError naming the key
    and the path, never the content."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read secret file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: secret file {path} is not UTF-8 text") from None
    text = text[:-1] if text.endswith("\n") else text
    text = text[:-1] if text.endswith("\r") else text
    if not text:
        raise ConfigError(f"{where}: secret file {path} is empty")
    return Secret(text)


def _secret(name: str, key: str, raw: dict[str, Any], env: dict[str, str],
            base: Path | None) -> Secret | None:
    """A Secret field from, in this order, CDR_<S>_<K>, CDR_<S>_<K>_FILE, `key` or
    `key_file` in the file; None when none is given. A value and a file in the same
    place are refused (which one was meant?)."""
    env_key = f"CDR_{name.upper()}_{key.upper()}"
    env_file = f"{env_key}_FILE"
    # An empty variable is not given (an override can blank what a base file set).
    if env.get(env_key) and env.get(env_file):
        raise ConfigError(f"{env_key} and {env_file}: give one of them, not both")
    if env.get(env_file):
        return _read_secret_file(env_file, Path(env[env_file]))
    if env_key in env:
        return Secret(env[env_key])
    file_key = f"{key}_file"
    if key in raw and file_key in raw:
        raise ConfigError(f"{name}.{key} and {name}.{file_key}: give one of them, not both")
    if key in raw:
        return _coerce(f"{name}.{key}", "Secret", raw[key])  # type: ignore[no-any-return]
    if file_key in raw:
        where = f"{name}.{file_key}"
        path = Path(_coerce(where, str, raw[file_key]))
        return _read_secret_file(where, base / path if base is not None else path)
    return None


def _section(cls: type[_S], name: str, raw: dict[str, Any], env: dict[str, str],
             base: Path | None = None) -> _S:
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    secrets = {key for key, spec in known.items() if spec.type in ("Secret", Secret)}
    allowed = set(known) | {f"{key}_file" for key in secrets}
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(allowed))})")
    values: dict[str, Any] = {}
    for key, spec in known.items():
        env_key = f"CDR_{name.upper()}_{key.upper()}"
        if key in secrets:
            secret = _secret(name, key, raw, env, base)
            if secret is not None:
                values[key] = secret
        elif env_key in env:
            values[key] = _coerce(env_key, spec.type, env[env_key])
        elif key in raw:
            values[key] = _coerce(f"{name}.{key}", spec.type, raw[key])
            if key in _PATH_KEYS and values[key] and base is not None:
                values[key] = str(base / values[key])
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
        base = Path(path).parent if path is not None else None
        parts[f.name] = _section(cls, f.name, section, env, base)  # type: ignore[arg-type]
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
    _check_kafka(settings.kafka)
    _check_clickhouse(settings.clickhouse)
    _check_ingest(settings.ingest)
    _check_ingest_http(settings.ingest_http)
    return settings


def _check_file(where: str, path: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"{where}: no such file {path}")


def _check_kafka(kafka: KafkaSettings) -> None:
    """A connection that cannot work, or would send credentials without saying so,
    fails here, naming the key, rather than at the first connection attempt."""
    protocol = kafka.security_protocol
    if protocol not in KAFKA_PROTOCOLS:
        raise ConfigError(f"kafka.security_protocol: must be one of {', '.join(KAFKA_PROTOCOLS)}, "
                          f"got {protocol!r}")
    if kafka.sasl:
        if kafka.sasl_mechanism not in KAFKA_MECHANISMS:
            raise ConfigError(f"kafka.sasl_mechanism: must be one of {', '.join(KAFKA_MECHANISMS)}"
                              f", got {kafka.sasl_mechanism!r}")
        if not kafka.username:
            raise ConfigError(f"kafka.username: needed with security_protocol {protocol}")
        if not kafka.password.reveal():
            raise ConfigError(f"kafka.password (or kafka.password_file, CDR_KAFKA_PASSWORD_FILE):"
                              f" needed with security_protocol {protocol}")
    elif kafka.username or kafka.password.reveal():
        raise ConfigError(f"kafka.username/password: given, but security_protocol {protocol} "
                          "does not use them (SASL_SSL does)")
    tls_keys = {"ca_file": kafka.ca_file, "cert_file": kafka.cert_file, "key_file": kafka.key_file}
    for key, value in tls_keys.items():
        if value and not kafka.tls:
            raise ConfigError(f"kafka.{key}: given, but security_protocol {protocol} has no TLS")
        if value:
            _check_file(f"kafka.{key}", value)
    if bool(kafka.cert_file) != bool(kafka.key_file):
        raise ConfigError("kafka.cert_file and kafka.key_file: give both (mTLS) or neither")


def _check_clickhouse(clickhouse: ClickHouseSettings) -> None:
    if clickhouse.ca_file:
        if not clickhouse.secure:
            raise ConfigError("clickhouse.ca_file: given, but clickhouse.secure is false")
        _check_file("clickhouse.ca_file", clickhouse.ca_file)


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


def read_env_file(path: str | Path) -> dict[str, str]:
    """`KEY=VALUE` lines (an identity file of deploy/local/secure.sh, a Docker env
    file): comments and blank lines skipped, one pair of surrounding quotes taken off.
    ConfigError names the file and line of anything else."""
    out: dict[str, str] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        if not sep or not key.replace("_", "").isalnum():
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out
