"""The local Kafka broker and pipeline.kafka.admin against it (real broker, no mocks)."""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import defaultdict

import confluent_kafka
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

from pipeline.kafka.admin import (
    KafkaAdminError,
    TopicSpec,
    default_topic_specs,
    delete_topics,
    ensure_topics,
    topic_configs,
)
from tests.integration.kafka_fixtures import TopicFactory, broker_ids
from tests.kafka_partition import java_partition, murmur2

pytestmark = pytest.mark.integration

# (key, value, partition, offset) of one record
Record = tuple[bytes, bytes | None, int, int]


def _record(msg: Message) -> Record:
    key, value, partition, offset = msg.key(), msg.value(), msg.partition(), msg.offset()
    assert key is not None and partition is not None and offset is not None
    return key, value, partition, offset


def test_murmur2_matches_kafka_reference_values() -> None:
    # vectors from Kafka's UtilsTest.testMurmur2
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, want in cases.items():
        assert murmur2(key) == want, key
        assert java_partition(key, 7) == confluent_kafka.murmur2(key, 7)


def test_broker_is_reachable(kafka_bootstrap: str) -> None:
    ids = broker_ids(kafka_bootstrap, timeout_s=10)
    assert ids, f"no broker answers at {kafka_bootstrap}"


def _partitions(bootstrap: str, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic=topic, timeout=10)
    assert md.topics[topic].error is None, md.topics[topic].error
    return len(md.topics[topic].partitions)


def test_ensure_topics_is_idempotent(kafka_bootstrap: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    specs = [
        TopicSpec(
            f"test-ens-a-{suffix}",
            3,
            1,
            {"retention.ms": "3600000", "cleanup.policy": "delete"},
        ),
        TopicSpec(
            f"test-ens-b-{suffix}",
            2,
            1,
            {"cleanup.policy": "compact", "min.insync.replicas": "1"},
        ),
    ]
    try:
        assert ensure_topics(kafka_bootstrap, specs) == [s.name for s in specs]
        assert ensure_topics(kafka_bootstrap, specs) == []
        for spec in specs:
            assert _partitions(kafka_bootstrap, spec.name) == spec.partitions
            configs = topic_configs(kafka_bootstrap, spec.name)
            for key, value in spec.config.items():
                assert configs[key] == value, (spec.name, key)
        # one new, one existing: only the new one is reported
        extra = TopicSpec(f"test-ens-c-{suffix}", 1, 1)
        assert ensure_topics(kafka_bootstrap, [*specs, extra]) == [extra.name]
    finally:
        delete_topics(kafka_bootstrap, [s.name for s in specs] + [f"test-ens-c-{suffix}"])


def test_ensure_topics_refuses_fewer_partitions_than_asked(
    kafka_bootstrap: str, unique_topic: TopicFactory
) -> None:
    name = unique_topic("short", partitions=2)
    with pytest.raises(KafkaAdminError) as info:
        ensure_topics(kafka_bootstrap, [TopicSpec(name, 4, 1)])
    assert info.value.code == "PARTITION_COUNT_TOO_LOW"
    assert info.value.topic == name
    assert _partitions(kafka_bootstrap, name) == 2, "the topic must not be changed"
    # more partitions than asked is accepted (partitions cannot shrink): no error
    assert ensure_topics(kafka_bootstrap, [TopicSpec(name, 1, 1)]) == []


def test_ensure_topics_translates_broker_errors(kafka_bootstrap: str) -> None:
    live = broker_ids(kafka_bootstrap, timeout_s=10) or set()
    name = f"test-badrf-{uuid.uuid4().hex[:8]}"
    with pytest.raises(KafkaAdminError) as info:
        ensure_topics(kafka_bootstrap, [TopicSpec(name, 1, len(live) + 1)])
    assert info.value.code == "INVALID_REPLICATION_FACTOR"
    assert info.value.topic == name


def test_default_topic_specs_create_the_pipeline_topics(kafka_bootstrap: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:8]}-"
    specs = default_topic_specs(prefix=prefix, partitions=4)
    assert [s.name for s in specs] == [
        f"{prefix}call-events",
        f"{prefix}cdrs",
        f"{prefix}call-events.dlq",
        f"{prefix}cdrs.dlq",
    ]
    try:
        assert ensure_topics(kafka_bootstrap, specs) == [s.name for s in specs]
        want = {
            f"{prefix}call-events": ("delete", str(7 * 86_400_000)),
            f"{prefix}cdrs": ("compact,delete", str(35 * 86_400_000)),
            f"{prefix}call-events.dlq": ("delete", str(30 * 86_400_000)),
            f"{prefix}cdrs.dlq": ("delete", str(30 * 86_400_000)),
        }
        for name, (policy, retention) in want.items():
            configs = topic_configs(kafka_bootstrap, name)
            assert configs["cleanup.policy"] == policy
            assert configs["retention.ms"] == retention
            assert _partitions(kafka_bootstrap, name) == 4
        assert ensure_topics(kafka_bootstrap, specs) == []
    finally:
        delete_topics(kafka_bootstrap, [s.name for s in specs])


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> list[Record]:
    """Produce with an idempotent, acks=all, murmur2 producer; return (key, value, p, offset)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": 5,
        }
    )
    reports: list[Record] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            reports.append(_record(msg))

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} records not delivered"
    assert not errors, errors
    assert len(reports) == len(records)
    return reports


def _consume_all(bootstrap: str, topic: str, count: int, timeout_s: float = 60) -> list[Record]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got.append(_record(msg))
    finally:
        consumer.close()
    assert len(got) == count, f"consumed {len(got)} of {count} within {timeout_s}s"
    return got


def test_idempotent_producer_round_trip_and_key_partitioning(
    kafka_bootstrap: str, unique_topic: TopicFactory
) -> None:
    partitions = 6
    topic = unique_topic("roundtrip", partitions=partitions)
    rng = random.Random(int(os.environ.get("TEST_SEED", "20240611")))  # noqa: S311 - test data
    keys = [f"call-{i:05d}@sw{rng.randint(1, 9)}".encode() for i in range(40)]
    records: list[tuple[bytes, bytes]] = []
    for i in range(400):
        key = keys[rng.randrange(len(keys))]
        # arbitrary bytes, including NUL, 0xff, non-UTF-8 and an empty value
        value = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))) + i.to_bytes(
            4, "big"
        )
        records.append((key, value if i % 97 else b""))

    reports = _produce(kafka_bootstrap, topic, records)

    # each key lands on murmur2(key) % n, like the Java client; one key, one partition
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    for key, _value, partition, _offset in reports:
        assert partition == java_partition(key, partitions), key
        partition_of[key].add(partition)
    assert all(len(p) == 1 for p in partition_of.values())
    assert len({p for ps in partition_of.values() for p in ps}) > 1, "keys should spread"

    consumed = _consume_all(kafka_bootstrap, topic, len(records))

    # byte-exact, each at the partition and offset its delivery report named
    def position(r: Record) -> tuple[int, int]:
        return r[2], r[3]

    assert sorted(consumed, key=position) == sorted(reports, key=position)
    assert len({position(r) for r in consumed}) == len(records), "no duplicates"
    # per key, the order of production is the order of consumption
    sent: dict[bytes, list[bytes | None]] = defaultdict(list)
    for key, value in records:
        sent[key].append(value)
    received: dict[bytes, list[bytes | None]] = defaultdict(list)
    for rkey, rvalue, _p, _o in sorted(consumed, key=position):
        received[rkey].append(rvalue)
    assert received == sent
