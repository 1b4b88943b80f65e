"""The worker's batched produce (pipeline.worker.produce) against the real broker:
records arrive in order on the asked partition, split into batches when they do
not fit one, the returned future and count name the last record's offset, and a
batch the broker refuses reaches the failure handler (which stops the worker)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from confluent_kafka import Consumer, TopicPartition

from pipeline.worker.produce import BatchSender, Record

pytestmark = pytest.mark.integration


def _consume(bootstrap: str, topic: str, partition: int,
             count: int) -> list[tuple[int, bytes, bytes, list[tuple[str, bytes]]]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-check",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, 0)])
    got: list[tuple[int, bytes, bytes, list[tuple[str, bytes]]]] = []
    try:
        for _ in range(60):
            for msg in consumer.consume(num_messages=count, timeout=1.0):
                assert msg.error() is None, msg.error()
                got.append((msg.offset(), msg.key(), msg.value(), msg.headers() or []))
            if len(got) >= count:
                break
    finally:
        consumer.close()
    return got


async def _send(bootstrap: str, topic: str, partition: int, records: list[Record],
                on_failure: Callable[[str, BaseException], None], compression: str | None = None,
                **producer_conf: Any) -> Any:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                **producer_conf)
    await producer.start()
    try:
        sender = BatchSender(lambda: producer, on_failure)
        sent = await sender.send(topic, partition, records, compression)
        assert sent is not None
        future, count = sent
        await asyncio.wait([future])
        await producer.flush()
        await asyncio.sleep(0)  # the done callbacks run on the next loop pass
        return future, count
    finally:
        await producer.stop()


def test_records_arrive_in_order_in_several_batches(kafka_bootstrap: str,
                                                    unique_topic: Any) -> None:
    topic = unique_topic("produce", partitions=3)
    # Every third record with a header, as the worker's CDRs carry the call's start.
    records: list[Record] = [
        (f"call-{n}".encode(), bytes([n % 251]) * 900,
         [("cdr-call-start-ms", str(n).encode())] if n % 3 == 0 else [])
        for n in range(60)]
    failures: list[Any] = []
    # 16 KiB batches hold about 17 of these records: four batches.
    future, count = asyncio.run(_send(kafka_bootstrap, topic, 2, records,
                                      lambda *f: failures.append(f), max_batch_size=16 * 1024))
    assert failures == []
    assert count < len(records)  # the last batch holds only the tail
    assert future.result().offset + count - 1 == len(records) - 1
    got = _consume(kafka_bootstrap, topic, 2, len(records))
    assert got == [(n, key, value, list(headers)) for n, (key, value, headers) in enumerate(records)]


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_batches_of_another_codec_go_out_on_the_same_producer(
        kafka_bootstrap: str, unique_topic: Any, compression: str) -> None:
    """The changelog's codec differs from the producer's own (snappy, the CDRs')."""
    topic = unique_topic("produce-codec", partitions=1)
    records: list[Record] = [(f"call-{n}".encode(), f"state {n} ".encode() * 20, [])
                             for n in range(40)]
    failures: list[Any] = []
    future, count = asyncio.run(_send(kafka_bootstrap, topic, 0, records,
                                      lambda *f: failures.append(f), compression,
                                      compression_type="snappy", max_batch_size=16 * 1024))
    assert failures == [] and future.result().offset + count - 1 == len(records) - 1
    got = _consume(kafka_bootstrap, topic, 0, len(records))
    assert got == [(n, key, value, list(headers)) for n, (key, value, headers) in enumerate(records)]


def test_nothing_to_send_sends_nothing(kafka_bootstrap: str) -> None:
    sender = BatchSender(lambda: None, lambda *f: None)
    assert asyncio.run(sender.send("any", 0, [])) is None


def test_a_refused_batch_reaches_the_failure_handler(kafka_bootstrap: str,
                                                     unique_topic: Any) -> None:
    # The broker refuses batches larger than the topic's max.message.bytes: not retriable.
    topic = unique_topic("produce-refused", partitions=1, config={"max.message.bytes": "1024"})
    failures: list[tuple[str, BaseException]] = []
    future, _ = asyncio.run(_send(kafka_bootstrap, topic, 0, [(b"k", bytes(range(256)) * 16, [])],
                                  lambda *f: failures.append(f)))
    assert future.exception() is not None
    assert [where for where, _ in failures] == [f"{topic}[0]"]
    assert isinstance(failures[0][1], MessageSizeTooLargeError)


def test_set_fetch_wait_reaches_the_running_fetcher(kafka_bootstrap: str, unique_topic: Any) -> None:
    """The worker shortens the fetch wait Faust fixes at 1500 ms, and sets the bytes a
    fetch waits for, on the live aiokafka fetcher (faust_compat.set_fetch_wait); this
    fails if an upgrade moves what it sets."""
    import inspect

    import faust
    from aiokafka import AIOKafkaConsumer
    from aiokafka.consumer.fetcher import Fetcher

    from pipeline.worker.faust_compat import set_fetch_wait

    topic = unique_topic("fetch-wait", partitions=1)

    async def run() -> tuple[int, int]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, fetch_max_wait_ms=1500)
        await consumer.start()
        try:
            app = faust.App("unit-fetch-wait", broker=f"kafka://{kafka_bootstrap}", web_enabled=False)
            app.consumer._thread._consumer = consumer  # as Faust's consumer thread holds it
            set_fetch_wait(app.consumer, 100, 32768)
            return int(consumer._fetcher._fetch_max_wait_ms), int(consumer._fetcher._fetch_min_bytes)
        finally:
            await consumer.stop()

    assert asyncio.run(run()) == (100, 32768)
    # ... and the fetcher builds every fetch request from those attributes.
    source = inspect.getsource(Fetcher._get_actions_per_node)
    assert "self._fetch_max_wait_ms" in source and "self._fetch_min_bytes" in source


def test_batches_go_out_on_faust_s_producer(kafka_bootstrap: str, unique_topic: Any) -> None:
    """The worker sends its record batches on the AIOKafkaProducer inside Faust's own
    producer (faust_compat.aiokafka_producer), so that Faust's commit, which flushes
    that producer, covers them; this fails if an upgrade moves it."""
    import faust

    from pipeline.worker.faust_compat import aiokafka_producer

    topic = unique_topic("faust-producer", partitions=2)
    records: list[Record] = [(f"call-{n}".encode(), f"cdr-{n}".encode(), []) for n in range(5)]
    failures: list[Any] = []

    async def run() -> int:
        app = faust.App("unit-faust-producer", broker=f"kafka://{kafka_bootstrap}",
                        web_enabled=False, producer_acks=-1)
        await app.producer.start()
        try:
            assert isinstance(aiokafka_producer(app.producer), AIOKafkaProducer)
            sender = BatchSender(lambda: aiokafka_producer(app.producer),
                                 lambda *f: failures.append(f))
            sent = await sender.send(topic, 1, records)
            assert sent is not None
            await app.producer.flush()  # what Faust's commit does first
            return int(sent[0].result().offset)
        finally:
            await app.producer.stop()

    assert asyncio.run(run()) == 0
    assert failures == []
    got = _consume(kafka_bootstrap, topic, 1, len(records))
    assert [(key, value) for _, key, value, _ in got] == [(k, v) for k, v, _ in records]
