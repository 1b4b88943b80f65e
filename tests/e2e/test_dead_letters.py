"""Malformed records on call-events go to the dead-letter topic with a reason; the stream goes on."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer

from pipeline.avro import codec
from pipeline.switch.publisher import SwitchPublisher
from pipeline.switch.simulator import publish
from tests.e2e.harness import Pipeline, offline_final, traffic

pytestmark = pytest.mark.e2e


def _dead_letters(bootstrap: str, topic: str, count: int, timeout_s: float = 120) -> list[dict[str, str]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-check",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    found: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout_s
    while len(found) < count and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        headers = {k: v.decode() for k, v in msg.headers() or []}
        headers["value"] = msg.value().decode("utf-8", "replace")
        found.append(headers)
    consumer.close()
    return found


def test_malformed_records_are_dead_lettered_and_the_rest_is_rated(pipeline: Pipeline) -> None:
    items, config, _ = traffic(300, seed=21)
    expected = offline_final(items, config)
    topic = f"{pipeline.prefix}call-events"
    bad_setup = {"event_id": "x1", "call_id": "bad-1", "switch_id": "sw9", "event_type": "SETUP",
                 "ts_ms": 1_764_000_000_000, "account_id": "acme", "caller": "1"}  # no callee
    cdr_bytes = codec.encode_cdr(next(iter(expected.values())))
    producer = Producer({"bootstrap.servers": pipeline.bootstrap, "partitioner": "murmur2_random"})
    producer.produce(topic, key=b"junk-1", value=b"this is not avro")
    producer.produce(topic, key=b"junk-2", value=cdr_bytes)  # another schema
    producer.produce(topic, key=b"bad-1", value=codec.encode_event_dict(bad_setup))
    producer.flush(30)
    pipeline.start_worker()
    pipeline.start_sink()
    with SwitchPublisher(pipeline.bootstrap, topic) as publisher:
        publish(items, publisher)

    letters = sorted(_dead_letters(pipeline.bootstrap, f"{topic}.dlq", 3), key=lambda h: h["value"])
    reasons = {h["value"][:16]: h["dlq-reason"] for h in letters}
    assert len(letters) == 3
    assert "bad magic bytes" in reasons["this is not avro"]
    assert any("unknown CallEvent schema fingerprint" in r for r in reasons.values())
    assert any("missing required field 'callee'" in r for r in reasons.values())
    for headers in letters:
        assert headers["source-topic"] == topic and int(headers["source-offset"]) >= 0

    want = {c: v.version for c, v in expected.items()}
    pipeline.wait_for(lambda: pipeline.stored_versions() == want, 240, "the good calls' CDRs")
