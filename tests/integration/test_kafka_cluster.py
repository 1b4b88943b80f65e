"""Fault test on the local three-node KRaft cluster: one node down, acks=all keeps working."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from tests.integration.kafka_fixtures import LocalKafkaCluster, TopicFactory, wait_until

pytestmark = pytest.mark.cluster

log = logging.getLogger(__name__)

PARTITIONS = 3
STOPPED_NODE = 2


def _isrs(bootstrap: str, topic: str) -> dict[int, set[int]] | None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        md = admin.list_topics(topic=topic, timeout=5)
    except Exception:  # noqa: BLE001 - polled until a deadline
        return None
    tmd = md.topics.get(topic)
    if tmd is None or tmd.error is not None:
        return None
    return {p.id: set(p.isrs) for p in tmd.partitions.values()}


def _kv(msg: Message) -> tuple[bytes, bytes]:
    key, value = msg.key(), msg.value()
    assert key is not None and value is not None
    return key, value


class Roundtrip:
    """One idempotent acks=all producer and one consumer group member for the whole test."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",
                "message.timeout.ms": 120_000,
            }
        )
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"test-ha-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
            }
        )
        self.consumer.subscribe([topic])

    def produce(self, batch: str, count: int = 60) -> set[tuple[bytes, bytes]]:
        records = {(f"call-{i}".encode(), f"{batch}-{i}".encode()) for i in range(count)}
        errors: list[KafkaError] = []
        delivered: set[tuple[bytes, bytes]] = set()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(err)
            else:
                delivered.add(_kv(msg))

        for key, value in sorted(records):
            self.producer.produce(self.topic, key=key, value=value, on_delivery=on_delivery)
            self.producer.poll(0)
        left = self.producer.flush(150)
        assert left == 0, f"batch {batch}: {left} records not delivered"
        assert not errors, f"batch {batch}: {errors}"
        assert delivered == records
        return records

    def consume(self, want: set[tuple[bytes, bytes]], timeout_s: float = 120) -> None:
        got: set[tuple[bytes, bytes]] = set()
        deadline = time.monotonic() + timeout_s
        while not want <= got and time.monotonic() < deadline:
            msg = self.consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                assert not err.fatal(), err
                log.info("consumer: %s", err)
                continue
            got.add(_kv(msg))
        missing = want - got
        assert not missing, f"{len(missing)} records not consumed within {timeout_s}s"

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush(10)


def test_acks_all_survives_one_node_down(
    kafka_cluster: LocalKafkaCluster, unique_topic: TopicFactory
) -> None:
    bs = kafka_cluster.bootstrap
    wait_until(lambda: kafka_cluster.live_brokers() == {1, 2, 3}, 120, "three live brokers")
    topic = unique_topic(
        "ha",
        partitions=PARTITIONS,
        replication_factor=3,
        config={"min.insync.replicas": "2"},
        bootstrap=bs,
    )
    wait_until(
        lambda: _isrs(bs, topic) == {p: {1, 2, 3} for p in range(PARTITIONS)},
        60,
        "every partition with three in-sync replicas",
    )
    rt = Roundtrip(bs, topic)
    try:
        rt.consume(rt.produce("before"))
        log.info("round trip with three nodes done")

        kafka_cluster.stop_node(STOPPED_NODE)
        log.info("node %s stopped", STOPPED_NODE)
        wait_until(
            lambda: kafka_cluster.live_brokers() == {1, 3},
            60,
            f"broker {STOPPED_NODE} to leave the metadata",
        )
        wait_until(
            lambda: (
                (isrs := _isrs(bs, topic)) is not None
                and all(STOPPED_NODE not in isr and len(isr) == 2 for isr in isrs.values())
            ),
            60,
            f"ISRs to shrink to the two live brokers after node {STOPPED_NODE} stopped",
        )
        # two in-sync replicas = min.insync.replicas: acks=all produce and consume go on
        log.info("ISRs shrunk")
        rt.consume(rt.produce("one-down"))
        log.info("round trip with one node down done")

        kafka_cluster.start_node(STOPPED_NODE)
        log.info("node %s started", STOPPED_NODE)
        wait_until(
            lambda: _isrs(bs, topic) == {p: {1, 2, 3} for p in range(PARTITIONS)},
            120,
            f"node {STOPPED_NODE} back in every ISR",
        )
        log.info("node %s back in every ISR", STOPPED_NODE)
        rt.consume(rt.produce("after"))
        log.info("round trip after the restart done")
    finally:
        rt.close()
        if STOPPED_NODE not in kafka_cluster.live_brokers():
            kafka_cluster.start_node(STOPPED_NODE)
