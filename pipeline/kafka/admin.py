"""Topic management: create the pipeline's topics on purpose, idempotently, and report drift.

Brokers run with ``auto.create.topics.enable=false``; every topic comes from here.
``ensure_topics`` creates what is missing and checks what exists. An existing topic with
fewer partitions than asked is an error (keys would map to other partitions than the
co-partitioned topics expect); other differences are logged as warnings and never changed
silently: altering a live topic is an operator's decision.

On a secured cluster (docs/security.md) only the admin principal may create topics. A
component that runs ``ensure_topics`` under its own principal checks the topics it may
see and leaves the rest to the admin: a topic it may not create but can describe must
exist (else ``KafkaAdminError`` says who must create it); one it may not even describe
is not its business (a warning names it).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # no __all__ there
    AdminClient,
    ClusterMetadata,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from pipeline.errors import ConfigError, PipelineError
from pipeline.kafka.clients import (
    ClientLog,
    Target,
    client_config,
    connection_problem,
    settings_of,
)
from pipeline.runtime.settings import KafkaSettings

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DAY_MS = 24 * 60 * 60 * 1000

CALL_EVENTS = "call-events"
CDRS = "cdrs"
CALL_EVENTS_DLQ = "call-events.dlq"
CDRS_DLQ = "cdrs.dlq"
CALLS_TABLE = "calls"  # the worker's Faust table of open calls


def worker_topics(app_id: str) -> list[str]:
    """The topics Faust itself creates for the worker `app_id`: its table's changelog and
    its partition assignor's leader topic. Runs that remove their topics afterwards (the
    demo, tests, benchmarks) remove these too; left behind, every run added two topics
    to the broker."""
    return [f"{app_id}-{CALLS_TABLE}-changelog", f"{app_id}-__assignor-__leader"]

CALL_EVENTS_RETENTION_MS = 7 * DAY_MS
# cdrs: compact keeps the newest version of every call; delete bounds the topic to the
# window in which a re-rating may replay from Kafka (a billing month plus slack); older
# CDRs are re-rated from ClickHouse, which is the system of record.
CDRS_RETENTION_MS = 35 * DAY_MS
DLQ_RETENTION_MS = 30 * DAY_MS

_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class KafkaAdminError(PipelineError):
    """A topic could not be created, described or deleted, or exists in an unusable shape.

    ``code`` is the Kafka error name (e.g. ``INVALID_REPLICATION_FACTOR``) when the broker or
    client gave one, ``topic`` the topic concerned when there is a single one.
    """

    def __init__(self, message: str, code: str | None = None, topic: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.topic = topic


@dataclass(frozen=True)
class TopicSpec:
    """A topic as the pipeline needs it; ``config`` holds topic-level settings as strings
    (``retention.ms``, ``cleanup.policy``, ``min.insync.replicas``, ...)."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _TOPIC_NAME.match(self.name) or self.name in {".", ".."}:
            raise ConfigError(f"invalid Kafka topic name {self.name!r}")
        if self.partitions < 1:
            raise ConfigError(f"topic {self.name}: partitions must be >= 1, got {self.partitions}")
        if self.replication_factor < 1:
            raise ConfigError(
                f"topic {self.name}: replication_factor must be >= 1, got {self.replication_factor}"
            )
        for key, value in self.config.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigError(
                    f"topic {self.name}: config entries must be strings, got {key!r}={value!r}"
                )


def _min_insync(replication_factor: int) -> str:
    """Tolerate one replica down with ``acks=all``: 1 for RF 1 or 2, 2 from RF 3 on."""
    return str(min(2, max(1, replication_factor - 1)))


def default_topic_specs(
    prefix: str = "", partitions: int = 6, replication_factor: int = 1
) -> list[TopicSpec]:
    """The pipeline's topics, keyed by ``call_id`` and co-partitioned (same count).

    - ``call-events``: raw switch events; ``delete``, kept 7 days (replay window for the
      correlator).
    - ``cdrs``: rated CDRs, one record per CDR version, key ``call_id``;
      ``compact,delete``: compaction keeps the newest version of each call (what the
      ClickHouse sink and a replay need; ReplacingMergeTree discards older versions anyway),
      retention of 35 days bounds the topic.
    - ``call-events.dlq``: events the correlator rejected; ``delete``, kept 30 days.
    - ``cdrs.dlq``: CDR records the sink could not decode; ``delete``, kept 30 days.
    """
    min_isr = _min_insync(replication_factor)
    dlq_config = {
        "cleanup.policy": "delete",
        "retention.ms": str(DLQ_RETENTION_MS),
        "min.insync.replicas": min_isr,
    }
    return [
        TopicSpec(
            f"{prefix}{CALL_EVENTS}",
            partitions,
            replication_factor,
            {
                "cleanup.policy": "delete",
                "retention.ms": str(CALL_EVENTS_RETENTION_MS),
                "min.insync.replicas": min_isr,
            },
        ),
        TopicSpec(
            f"{prefix}{CDRS}",
            partitions,
            replication_factor,
            {
                "cleanup.policy": "compact,delete",
                "retention.ms": str(CDRS_RETENTION_MS),
                "min.insync.replicas": min_isr,
            },
        ),
        TopicSpec(f"{prefix}{CALL_EVENTS_DLQ}", partitions, replication_factor, dict(dlq_config)),
        TopicSpec(f"{prefix}{CDRS_DLQ}", partitions, replication_factor, dict(dlq_config)),
    ]


def _admin(target: Target) -> AdminClient:
    return _watched_admin(target)[0]


def _watched_admin(target: Target) -> tuple[AdminClient, Callable[[], str | None]]:
    """An admin client and a function that says why it cannot get in, if it cannot
    (credentials, TLS, a plaintext client on a TLS port: pipeline.kafka.clients), so
    that a time-out is reported with its cause."""
    kafka = settings_of(target)
    client_log = ClientLog(logging.getLogger(f"{__name__}.librdkafka"))
    problems: list[str] = []

    def on_error(err: KafkaError) -> None:
        why = connection_problem(err, kafka, client_log)
        if why is not None:
            problems.append(why)

    admin = AdminClient(client_config(kafka, **{
        "client.id": "cdr-pipeline-admin", "logger": client_log, "error_cb": on_error}))

    def problem() -> str | None:
        admin.poll(0)  # serves the error callback
        return problems[0] if problems else None

    return admin, problem


_DENIED = ("TOPIC_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED")


def _error_of(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def _translate(exc: BaseException, what: str, topic: str | None = None) -> KafkaAdminError:
    err = _error_of(exc)
    if err is not None:
        return KafkaAdminError(f"{what}: {err.str()} ({err.name()})", err.name(), topic)
    return KafkaAdminError(f"{what}: {exc}", None, topic)


def _remaining(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())


def _result(future: Future[_T], deadline: float, what: str, topic: str | None = None) -> _T:
    """The future's result, with Kafka errors and time-outs as ``KafkaAdminError``."""
    try:
        return future.result(timeout=_remaining(deadline) + 5)
    except KafkaException as exc:
        raise _translate(exc, what, topic) from exc
    except TimeoutError as exc:
        raise KafkaAdminError(f"{what}: timed out", "TIMED_OUT", topic) from exc


def _metadata(admin: AdminClient, deadline: float, topic: str | None = None) -> ClusterMetadata:
    try:
        return admin.list_topics(topic=topic, timeout=_remaining(deadline))
    except KafkaException as exc:
        raise _translate(exc, "cannot read cluster metadata", topic) from exc


def _check_existing(admin: AdminClient, specs: Sequence[TopicSpec], deadline: float) -> None:
    """Raise if an existing topic has fewer partitions than asked; warn about other drift."""
    md = _await_topics(admin, [s.name for s in specs], deadline)
    short: list[str] = []
    short_names: list[str] = []
    for spec in specs:
        tmd = md.topics[spec.name]
        have = len(tmd.partitions)
        if have < spec.partitions:
            short.append(f"{spec.name} has {have} partitions, {spec.partitions} asked")
            short_names.append(spec.name)
        elif have > spec.partitions:
            log.warning(
                "topic %s has %s partitions, %s asked; keeping it as it is",
                spec.name,
                have,
                spec.partitions,
            )
        rf = min((len(p.replicas) for p in tmd.partitions.values()), default=0)
        if rf != spec.replication_factor:
            log.warning(
                "topic %s has replication factor %s, %s asked; not changed",
                spec.name,
                rf,
                spec.replication_factor,
            )
    if short:
        raise KafkaAdminError(
            "existing topics have fewer partitions than asked (not changed; add partitions "
            "on purpose, knowing keys then map to other partitions): " + "; ".join(short),
            code="PARTITION_COUNT_TOO_LOW",
            topic=short_names[0] if len(short_names) == 1 else None,
        )
    _warn_config_drift(admin, [s for s in specs if s.config], deadline)


def _warn_config_drift(admin: AdminClient, specs: Sequence[TopicSpec], deadline: float) -> None:
    if not specs:
        return
    resources = [ConfigResource(ResourceType.TOPIC, s.name) for s in specs]
    futures = admin.describe_configs(resources, request_timeout=_remaining(deadline))
    by_name = {s.name: s for s in specs}
    for resource, future in futures.items():
        spec = by_name[resource.name]
        try:
            entries = _result(future, deadline, f"cannot describe topic {spec.name}", spec.name)
        except KafkaAdminError as exc:
            if exc.code not in _DENIED:
                raise
            log.debug("topic %s: configuration not readable by this principal", spec.name)
            continue
        for key, want in sorted(spec.config.items()):
            entry = entries.get(key)
            have = entry.value if entry is not None else None
            if have != want:
                log.warning("topic %s: %s is %s, %s asked; not changed", spec.name, key, have, want)


def _await_topics(admin: AdminClient, names: Sequence[str], deadline: float) -> ClusterMetadata:
    """Poll metadata until every topic is there with a leader for each of its partitions
    (a topic just created, here or by a concurrent caller, reaches the brokers shortly after)."""
    while True:
        md = _metadata(admin, deadline)
        pending = [
            name
            for name in names
            if (tmd := md.topics.get(name)) is None
            or tmd.error is not None
            or not tmd.partitions
            or any(p.leader < 0 for p in tmd.partitions.values())
        ]
        if not pending:
            return md
        if time.monotonic() >= deadline:
            raise KafkaAdminError(
                "topics not in the cluster metadata with a leader for every partition "
                "before the timeout: " + ", ".join(sorted(pending)),
                code="TIMED_OUT",
            )
        time.sleep(0.1)


def ensure_topics(kafka: Target, specs: list[TopicSpec], timeout_s: float = 30) -> list[str]:
    """Create the topics that do not exist; return the names created, in ``specs`` order.

    Idempotent: existing topics are left alone (TOPIC_ALREADY_EXISTS is not an error), but
    an existing topic with fewer partitions than its spec raises ``KafkaAdminError``, and a
    different replication factor or topic config is logged as a warning, not changed.
    Returns once every created topic has a leader for each partition.
    """
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"topic specs name the same topic twice: {', '.join(dupes)}")
    if not specs:
        return []
    deadline = time.monotonic() + timeout_s
    admin, problem = _watched_admin(kafka)
    new = [
        NewTopic(s.name, s.partitions, s.replication_factor, config=dict(s.config)) for s in specs
    ]
    try:
        futures = admin.create_topics(new, operation_timeout=timeout_s, request_timeout=timeout_s)
    except KafkaException as exc:
        raise _translate(exc, "cannot create topics") from exc

    created: list[TopicSpec] = []
    existing: list[TopicSpec] = []
    denied: list[TopicSpec] = []
    failures: list[tuple[TopicSpec, KafkaAdminError]] = []
    for spec in specs:
        try:
            futures[spec.name].result(timeout=_remaining(deadline) + 5)
            created.append(spec)
        except KafkaException as exc:
            err = _error_of(exc)
            if err is not None and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                existing.append(spec)
            elif err is not None and err.name() in _DENIED:
                denied.append(spec)
            else:
                what = f"cannot create topic {spec.name}"
                failures.append((spec, _translate(exc, what, spec.name)))
        except TimeoutError:
            failures.append(
                (
                    spec,
                    KafkaAdminError(
                        f"cannot create topic {spec.name}: timed out", "TIMED_OUT", spec.name
                    ),
                )
            )

    for spec in created:
        log.info(
            "created topic %s (partitions=%s, replication=%s, config=%s)",
            spec.name,
            spec.partitions,
            spec.replication_factor,
            spec.config,
        )
    if failures and (why := problem()) is not None:
        raise KafkaAdminError(f"cannot create topics: {why}", failures[0][1].code)
    if failures:
        if len(failures) == 1:
            raise failures[0][1]
        detail = "; ".join(str(e) for _, e in failures)
        raise KafkaAdminError(
            f"cannot create {len(failures)} topics: {detail}", code=failures[0][1].code
        ) from failures[0][1]
    existing += _visible(admin, denied, deadline, settings_of(kafka))
    if existing:
        log.debug("topics already exist: %s", ", ".join(s.name for s in existing))
        _check_existing(admin, existing, deadline)
    if created:
        _await_topics(admin, [s.name for s in created], deadline)
    return [s.name for s in created]


def _visible(admin: AdminClient, denied: Sequence[TopicSpec], deadline: float,
             kafka: KafkaSettings) -> list[TopicSpec]:
    """Of the topics this principal may not create: those it can see (to be checked as
    existing ones). One it can see that does not exist is an error naming who creates it;
    one it may not see (the broker does not say whether it exists) is left to the
    principals that use it, with a warning."""
    visible, missing, hidden = [], [], []
    for spec in denied:
        tmd = _metadata(admin, deadline, spec.name).topics.get(spec.name)
        if tmd is None or (tmd.error is not None
                           and tmd.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            missing.append(spec.name)
        elif tmd.error is not None:
            hidden.append(spec.name)
        else:
            visible.append(spec)
    if missing:
        raise KafkaAdminError(
            f"topics missing and {kafka.username or 'this principal'} may not create them: "
            f"{', '.join(missing)} (the admin principal creates topics: docs/security.md)",
            code="TOPIC_AUTHORIZATION_FAILED",
            topic=missing[0] if len(missing) == 1 else None,
        )
    if hidden:
        log.warning("topics not visible to %s, left unchecked: %s",
                    kafka.username or "this principal", ", ".join(hidden))
    return visible


def delete_topics(kafka: Target, names: Iterable[str], timeout_s: float = 30) -> list[str]:
    """Delete topics; missing ones are ignored. Returns the names deleted."""
    todo = list(dict.fromkeys(names))
    if not todo:
        return []
    deadline = time.monotonic() + timeout_s
    admin = _admin(kafka)
    try:
        futures = admin.delete_topics(todo, operation_timeout=timeout_s, request_timeout=timeout_s)
    except KafkaException as exc:
        raise _translate(exc, "cannot delete topics") from exc
    deleted: list[str] = []
    for name in todo:
        try:
            _result(futures[name], deadline, f"cannot delete topic {name}", name)
            deleted.append(name)
        except KafkaAdminError as exc:
            if exc.code == "UNKNOWN_TOPIC_OR_PART":
                continue
            raise
    log.info("deleted topics %s", ", ".join(deleted) or "(none)")
    return deleted


def topic_configs(kafka: Target, name: str, timeout_s: float = 30) -> Mapping[str, str | None]:
    """The effective configuration of a topic (name -> value), for checks and reports."""
    deadline = time.monotonic() + timeout_s
    admin = _admin(kafka)
    futures = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, name)], request_timeout=timeout_s
    )
    (future,) = futures.values()
    entries: dict[str, Any] = _result(future, deadline, f"cannot describe topic {name}", name)
    return {key: entry.value for key, entry in entries.items()}
