"""SwitchPublisher against a real broker: byte-exact Avro, keys, partitions, ticks, errors.

Run with: pytest tests/integration/test_publisher.py -p tests.integration.kafka_fixtures
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.avro import codec
from pipeline.cli import main
from pipeline.core.config import BillingConfig, load_config
from pipeline.core.events import CallEvent, parse_event
from pipeline.switch.publisher import PublishError, SwitchPublisher
from pipeline.switch.simulator import SimStats, Tick, generate, publish
from tests.kafka_partition import java_partition
from tests.paths import EXAMPLE

pytestmark = pytest.mark.integration

START_MS = 1_764_007_170_000
PARTITIONS = 3


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() configures the root logger for a process; put pytest's handlers back after."""
    root, pipeline_logger = logging.getLogger(), logging.getLogger("pipeline")
    saved = (list(root.handlers), root.level, pipeline_logger.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    pipeline_logger.setLevel(saved[2])


@pytest.fixture(scope="module")
def config() -> BillingConfig:
    return load_config(EXAMPLE / "config.toml")


def test_java_murmur2_reference_values() -> None:
    # Kafka's own UtilsTest vectors: murmur2("21") == -973932308, etc.
    for key, signed in (
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
    ):
        assert java_partition(key, 2**31 - 1) == (signed & 0x7FFFFFFF) % (2**31 - 1)


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                assert msg.error() is None, msg.error()
                records.append(msg)
        time.sleep(0.5)  # anything beyond the expected count would show up now
        records.extend(m for m in consumer.consume(num_messages=1000, timeout=1.0) if not m.error())
        return records
    finally:
        consumer.close()


def _expected_layout(items: list[Any]) -> dict[int, list[tuple[bytes | None, bytes, bool]]]:
    """Per partition, the (key, value, is_tick) records in publish order."""
    layout: dict[int, list[tuple[bytes | None, bytes, bool]]] = defaultdict(list)
    for item in items:
        if isinstance(item, Tick):
            for p in range(PARTITIONS):
                layout[p].append((None, codec.encode_tick(item.ts_ms), True))
        else:
            key = item["call_id"].encode()
            value = codec.encode_event(parse_event(item))
            layout[java_partition(key, PARTITIONS)].append((key, value, False))
    return layout


def test_published_records_are_byte_exact_keyed_and_co_partitioned(
    kafka_bootstrap: str, unique_topic: Any, config: BillingConfig
) -> None:
    topic = unique_topic("publisher", partitions=PARTITIONS)
    stats = SimStats()
    items = list(generate(config, calls=120, seed=21, start_ms=START_MS, rate_cps=20, stats=stats))
    began = time.monotonic()
    with SwitchPublisher(kafka_bootstrap, topic) as publisher:
        assert publisher.partitions() == PARTITIONS
        events, ticks = publish(items, publisher)
    elapsed = time.monotonic() - began
    assert (events, ticks) == (stats.events, stats.ticks) and ticks > 10
    assert publisher.stats.events == events
    assert publisher.stats.tick_records == ticks * PARTITIONS
    assert publisher.stats.delivered == events + ticks * PARTITIONS
    assert publisher.stats.failed == 0
    print(f"published {events} events + {ticks} ticks in {elapsed:.2f}s")

    records = consume_all(kafka_bootstrap, topic, events + ticks * PARTITIONS)
    assert len(records) == events + ticks * PARTITIONS
    by_partition: dict[int, list[tuple[bytes | None, bytes, bool]]] = defaultdict(list)
    call_partitions: dict[str, set[int]] = defaultdict(set)
    tick_partitions: dict[int, set[int]] = defaultdict(set)
    for msg in sorted(records, key=lambda m: (m.partition(), m.offset())):
        tick = codec.is_tick(msg.headers())
        by_partition[msg.partition()].append((msg.key(), msg.value(), tick))
        if tick:
            assert msg.key() is None
            tick_partitions[codec.decode_tick(msg.value())].add(msg.partition())
        else:
            event = parse_event(codec.decode_event_dict(msg.value()))
            assert msg.key() == event.call_id.encode()
            call_partitions[event.call_id].add(msg.partition())
    # byte-exact Avro, keys, the Java client's partition for every key, publish order kept
    assert dict(by_partition) == dict(_expected_layout(items))
    assert all(len(parts) == 1 for parts in call_partitions.values())
    assert len(call_partitions) == 120
    assert len(tick_partitions) == ticks
    assert all(parts == set(range(PARTITIONS)) for parts in tick_partitions.values())


def test_back_pressure_waits_for_room_in_the_queue(
    kafka_bootstrap: str, unique_topic: Any, config: BillingConfig
) -> None:
    topic = unique_topic("backpressure", partitions=PARTITIONS)
    items = [
        i for i in generate(config, calls=100, seed=5, start_ms=START_MS) if not isinstance(i, Tick)
    ]
    with SwitchPublisher(
        kafka_bootstrap, topic, {"queue.buffering.max.messages": 5, "linger.ms": 5}
    ) as publisher:
        for item in items:
            publisher.publish(parse_event(item))
    assert publisher.stats.delivered == len(items)
    assert len(consume_all(kafka_bootstrap, topic, len(items))) == len(items)


def _event(call_id: str = "c-1") -> CallEvent:
    return CallEvent("e-1", call_id, "sw1", "RINGING", START_MS)


def test_failed_delivery_raises_on_flush_naming_topic_and_key(kafka_bootstrap: str) -> None:
    topic = f"test-missing-{uuid.uuid4().hex[:10]}"  # never created; auto-create is off
    publisher = SwitchPublisher(kafka_bootstrap, topic, {"message.timeout.ms": 3000})
    publisher.publish(_event("call-404"))
    with pytest.raises(PublishError) as caught:
        publisher.flush(20)
    err = caught.value
    assert err.topic == topic and err.key == "call-404" and err.failed == 1
    assert topic in str(err) and "call-404" in str(err) and err.code in str(err)
    with pytest.raises(PublishError, match=topic):
        publisher.publish_tick(START_MS)  # no partitions to send a tick to
    publisher.close(1)


def test_failed_delivery_raises_on_the_next_publish(kafka_bootstrap: str) -> None:
    topic = f"test-missing-{uuid.uuid4().hex[:10]}"
    publisher = SwitchPublisher(kafka_bootstrap, topic, {"message.timeout.ms": 2000})
    publisher.publish(_event("call-1"))
    deadline = time.monotonic() + 20
    while publisher.stats.failed == 0 and time.monotonic() < deadline:
        publisher.poll(0.2)
    assert publisher.stats.failed == 1
    with pytest.raises(PublishError, match="call-1"):
        publisher.publish(_event("call-2"))
    publisher.close(1)  # the failure was reported once; nothing left


def test_queue_full_times_out_when_the_broker_is_unreachable() -> None:
    publisher = SwitchPublisher(
        "127.0.0.1:9",
        "call-events",
        {"queue.buffering.max.messages": 2, "message.timeout.ms": 60_000, "log_level": 0},
        queue_timeout_s=1.0,
    )
    publisher.publish(_event("a"))
    publisher.publish(_event("b"))
    began = time.monotonic()
    with pytest.raises(PublishError, match="still full") as caught:
        publisher.publish(_event("c"))
    assert caught.value.key == "c" and time.monotonic() - began >= 0.9
    with pytest.raises(PublishError, match="not delivered"):
        publisher.close(0.5)


@pytest.mark.usefixtures("restore_logging")
def test_cli_simulate_publishes_what_it_writes(
    kafka_bootstrap: str, unique_topic: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = unique_topic("simulate", partitions=PARTITIONS)
    out = tmp_path / "sim.jsonl"
    argv = [
        "simulate",
        "--config",
        str(EXAMPLE / "config.toml"),
        "--calls",
        "80",
        "--seed",
        "4",
        "--start-ms",
        str(START_MS),
        "--jsonl",
        str(out),
        "--bootstrap",
        kafka_bootstrap,
        "--topic",
        topic,
        "--pace",
        "400",
    ]
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert f"kafka {topic}@{kafka_bootstrap}" in summary
    lines = out.read_text().splitlines()
    ticks = sum(1 for line in lines if line.startswith('{"tick_ms"'))
    events = len(lines) - ticks
    records = consume_all(kafka_bootstrap, topic, events + ticks * PARTITIONS)
    assert len(records) == events + ticks * PARTITIONS
    assert sum(1 for r in records if not codec.is_tick(r.headers())) == events


@pytest.mark.usefixtures("restore_logging")
def test_cli_simulate_reports_an_unknown_topic(
    kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"test-missing-{uuid.uuid4().hex[:10]}"
    argv = [
        "simulate",
        "--config",
        str(EXAMPLE / "config.toml"),
        "--calls",
        "5",
        "--start-ms",
        str(START_MS),
        "--bootstrap",
        kafka_bootstrap,
        "--topic",
        topic,
        "--producer-opt",
        "message.timeout.ms=2000",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cdr-pipeline simulate: error:" in err and topic in err and "Traceback" not in err
