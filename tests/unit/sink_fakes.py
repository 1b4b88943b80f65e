"""In-memory fakes for unit tests of the sink's state machine: a consumer, a producer, an
inserter and a clock, each with only the methods the sink calls.

They let the sink run its real loop (real batcher, insert thread, committer, dead
letters, rebalance handling) with no Kafka and no ClickHouse. The real components
are exercised by tests/integration/test_sink.py. Messages, partitions and errors are
confluent-kafka's own value classes, which need no broker.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from pipeline.avro.codec import encode_cdr
from pipeline.core.cdr import RatedCdr
from pipeline.runtime.settings import KafkaSettings
from pipeline.storage.errors import StorageError, StorageUnavailable

T0 = 1_764_000_000_000
Key = tuple[str, int]


def make_cdr(call_id: str, version: int = 1, fee: str = "0.120000") -> RatedCdr:
    """A complete, recorded call with exact Decimal money."""
    return RatedCdr(
        call_id=call_id, version=version, status="COMPLETE", record_decision="RECORDED",
        decision_reason=None, billing_mode="NORMAL", account_id="acme",
        caller="15550001111", callee="442071234567", callee_gateway=None,
        ingress_gateway="in", egress_gateway="out", switch_id="sw1",
        setup_ts_ms=T0, answer_ts_ms=T0 + 2_000, end_ts_ms=T0 + 63_000, pdd_ms=2_000,
        answered=True, hold_ms=61_000, hold_s=61, rated_s=120, billable_s=120,
        hangup_source="CALLER", sip_code=200, q850_cause=16, server_reason=None,
        illegal_reason=None, rate_table="retail", rate_prefix="44",
        rate_per_min=Decimal("0.06"), currency="USD", fee=Decimal(fee),
        cost_rate_table="vendor", cost_prefix="44", cost=Decimal("0.030500"),
        cost_currency="USD", tariff_version=f"t{version}", flags=(),
    )


def cdr_value(call_id: str, version: int = 1) -> bytes:
    return encode_cdr(make_cdr(call_id, version))


class FakeClock:
    """Monotonic time that moves only when the fake consumer is asked to wait."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class FakeConsumer:
    """A group of one over in-memory partitions. Rebalances the test asks for
    (`assign`, `revoke`, `lose`) are delivered inside the next consume(), as the real
    client does; a pause survives a re-assignment (the worst case the sink must cope
    with). An empty consume() advances the clock by its timeout."""

    def __init__(self, clock: FakeClock, partitions: dict[str, int]) -> None:
        self.clock = clock
        self.partitions = partitions  # topic -> partition count: the cluster's topics
        self.log: dict[Key, list[Message]] = {}
        self.assigned: list[Key] = []
        self.paused: set[Key] = set()
        self.group_offsets: dict[Key, int] = {}  # what the group has committed
        self.commits: list[tuple[dict[Key, int], Any]] = []  # (offsets, commit_probe())
        self.commit_probe: Callable[[], Any] = lambda: None
        self.commit_failures = 0  # the next N commits raise KafkaException
        self.prefetched = 0  # records still handed out after a pause, like a fetched batch
        self.closed = False
        self._next: dict[Key, int] = {}
        self._read: set[Key] = set()  # partitions that delivered since assigned
        self._events: deque[tuple[str, list[Key]]] = deque()
        self._callbacks: dict[str, Any] = {}

    # -------------------------------------------------------------- the test's side

    def append(self, topic: str, partition: int, value: bytes | None, key: bytes = b"k",
               headers: list[tuple[str, bytes]] | None = None) -> int:
        log = self.log.setdefault((topic, partition), [])
        log.append(Message(topic=topic, partition=partition, offset=len(log), key=key,
                           value=value, headers=headers))
        return len(log) - 1

    def end(self, topic: str, partition: int) -> int:
        return len(self.log.get((topic, partition), []))

    def assign(self, keys: list[Key]) -> None:
        self._events.append(("assign", keys))

    def revoke(self, keys: list[Key]) -> None:
        self._events.append(("revoke", keys))

    def lose(self, keys: list[Key]) -> None:
        self._events.append(("lost", keys))

    # -------------------------------------------------------------- the sink's side

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None,
                  on_lost: Any = None) -> None:
        self._callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}
        self.assign([(t, p) for t in topics for p in range(self.partitions[t])])

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        found = {topic: SimpleNamespace(error=None, partitions=dict.fromkeys(
            range(self.partitions[topic])))} if topic in self.partitions else {}
        return SimpleNamespace(topics=found)

    def poll(self, timeout: float = -1) -> Message | None:
        out = self.consume(1, timeout)
        return out[0] if out else None

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        assert not self.closed
        while self._events:
            self._rebalance(*self._events.popleft())
        out: list[Message] = []
        for key in sorted(self.assigned):
            log = self.log.get(key, [])
            while self._next[key] < len(log) and len(out) < num_messages:
                if key in self.paused:
                    if self.prefetched <= 0:
                        break
                    self.prefetched -= 1
                out.append(log[self._next[key]])
                self._next[key] += 1
                self._read.add(key)
        if not out:
            self.clock.advance(timeout)
        return out

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.assigned]

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        assert asynchronous is False
        if self.commit_failures > 0:
            self.commit_failures -= 1
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "injected commit failure"))
        done = {(tp.topic, tp.partition): tp.offset for tp in offsets}
        assert all(k in self.assigned for k in done), "committed a partition not assigned"
        self.group_offsets.update(done)
        self.commits.append((done, self.commit_probe()))
        return [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in offsets]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition,
                               self._next[(tp.topic, tp.partition)]
                               if (tp.topic, tp.partition) in self._read else -1001)
                for tp in partitions]

    def committed(self, partitions: list[TopicPartition],
                  timeout: float = -1) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition,
                               self.group_offsets.get((tp.topic, tp.partition), -1001))
                for tp in partitions]

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = -1,
                              cached: bool = False) -> tuple[int, int]:
        key = (partition.topic, partition.partition)
        if cached and key not in self._read:
            return -1001, -1001
        return 0, self.end(*key)

    def close(self) -> None:
        if self.assigned:
            self._rebalance("revoke", list(self.assigned))
        self.closed = True

    def _rebalance(self, kind: str, keys: list[Key]) -> None:
        tps = [TopicPartition(t, p) for t, p in keys]
        if kind == "assign":
            for key in keys:
                self.assigned.append(key)
                self._next[key] = self.group_offsets.get(key, 0)  # auto.offset.reset=earliest
                self._read.discard(key)
            self._callbacks["assign"](self, tps)
            return
        self._callbacks[kind](self, tps)
        self.assigned = [k for k in self.assigned if k not in keys]


class FakeProducer:
    """Dead letters are queued by produce() and delivered by flush(); `failure` makes
    every delivery report that error; `buffer_full` makes the next N produce() calls
    raise BufferError as a full local queue does."""

    def __init__(self) -> None:
        self.queued: list[dict[str, Any]] = []
        self.delivered: list[dict[str, Any]] = []
        self.failure: KafkaError | None = None
        self.buffer_full = 0
        self.polls = 0

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, *,
                headers: Any = None, on_delivery: Any = None) -> None:
        if self.buffer_full > 0:
            self.buffer_full -= 1
            raise BufferError("Local: Queue full")
        self.queued.append({"topic": topic, "value": value, "key": key,
                            "headers": dict(headers or []), "on_delivery": on_delivery})

    def poll(self, timeout: float = -1) -> int:
        self.polls += 1
        return 0

    def flush(self, timeout: float = -1) -> int:
        while self.queued:
            record = self.queued.pop(0)
            msg = Message(topic=record["topic"], value=record["value"], key=record["key"])
            record["on_delivery"](self.failure, msg)
            if self.failure is None:
                self.delivered.append(record)
        return 0


class FakeInserter:
    """Stands in for `cdr_store.insert_cdr_rows`: keeps the rows in memory. `outages`
    makes the next N inserts raise StorageUnavailable, `reject` every insert raise
    StorageError with that code; a `gate` holds each insert until it is set."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.stored: list[tuple[Any, ...]] = []
        self.attempts: list[tuple[str | None, int]] = []  # (token, rows) per attempt
        self.attempted_at: list[float] = []  # fake time of each attempt
        self.backends: set[int] = set()  # id() of every backend it was handed
        self.databases: set[str] = set()
        self.outages = 0
        self.reject: int | None = None
        self.gate: threading.Event | None = None
        self.inserting = threading.Event()

    def __call__(self, backend: Any, rows: Any, dedup_token: str | None,
                 database: str = "cdr") -> None:
        self.backends.add(id(backend))
        self.databases.add(database)
        self.attempts.append((dedup_token, len(rows)))
        self.attempted_at.append(self.clock.now)
        self.inserting.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        if self.outages > 0:
            self.outages -= 1
            raise StorageUnavailable("injected: connection refused", 210)
        if self.reject is not None:
            raise StorageError("injected: table does not exist", self.reject)
        self.stored.extend(rows)

    def call_ids(self) -> list[str]:
        return [row[0] for row in self.stored]


class FakeClients:
    """The client factory for a test: hands the sink the fakes, and records the
    settings it was asked to build them with."""

    def __init__(self, consumer: FakeConsumer, producer: FakeProducer) -> None:
        self._consumer = consumer
        self._producer = producer
        self.asked: list[tuple[str, KafkaSettings, dict[str, Any]]] = []

    def consumer(self, kafka: KafkaSettings, conf: dict[str, Any]) -> FakeConsumer:
        self.asked.append(("consumer", kafka, conf))
        return self._consumer

    def producer(self, kafka: KafkaSettings, conf: dict[str, Any]) -> FakeProducer:
        self.asked.append(("producer", kafka, conf))
        return self._producer


class Rig:
    """A SinkService wired to the fakes, on a topic of its own (metrics are
    process-wide, labelled by topic), with `partitions` partitions."""

    def __init__(self, partitions: int = 2, **config: Any) -> None:
        from pipeline.sink.service import SinkConfig, SinkService

        self.topic = f"cdrs-{uuid.uuid4().hex[:10]}"
        self.dlq = f"{self.topic}.dlq"
        self.clock = FakeClock()
        self.consumer = FakeConsumer(self.clock, {self.topic: partitions, self.dlq: 1})
        self.producer = FakeProducer()
        self.backend = object()  # the caller's ClickHouse backend: passed through only
        self.inserter = FakeInserter(self.clock)
        self.clients = FakeClients(self.consumer, self.producer)
        settings: dict[str, Any] = {
            "kafka": KafkaSettings(bootstrap="fake:9092"), "topic": self.topic,
            "dlq_topic": self.dlq, "batch_rows": 100, "batch_seconds": 3600.0,
            "backoff_initial_s": 0.5, "backoff_max_s": 2.0, "poll_timeout_s": 0.05,
        }
        settings.update(config)
        # These tests were written for one partial insert per batch_seconds; back-to-back
        # partial inserts (insert_gap_s 0, the default) are asked for explicitly.
        settings.setdefault("insert_gap_s", settings["batch_seconds"])
        self.config = SinkConfig(**settings)
        self.service = SinkService(self.config, self.backend,  # type: ignore[arg-type]
                                   clients=self.clients, insert=self.inserter,
                                   clock=self.clock)

    def key(self, partition: int) -> Key:
        return (self.topic, partition)

    def append_cdrs(self, partition: int, *call_ids: str) -> None:
        for call_id in call_ids:
            self.consumer.append(self.topic, partition, cdr_value(call_id))

    def run_until(self, done: Callable[[], bool], fake_seconds: float = 600.0) -> Any:
        """Run the sink until `done()` (checked between steps, on the sink's thread, so
        it may also act: append records, ask for a rebalance), then stop it. Fails if
        `done()` never holds within `fake_seconds` of the fake clock."""
        deadline = self.clock.now + fake_seconds
        reached = False

        def stop() -> bool:
            nonlocal reached
            reached = reached or done()
            return reached or self.clock.now > deadline

        stats = self.service.run(stop)
        assert reached, f"condition not reached within {fake_seconds} fake seconds"
        return stats

    def run_until_idle(self) -> Any:
        return self.run_until(self.service.is_idle)

    def metric(self, name: str) -> float:
        from prometheus_client import REGISTRY

        return REGISTRY.get_sample_value(name, {"topic": self.topic}) or 0.0
