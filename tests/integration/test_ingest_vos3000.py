"""`import vos3000 --publish` against the real broker: the events arrive, and a second
import of the same export publishes the same event ids (the correlator folds them)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.avro import codec
from pipeline.kafka.admin import default_topic_specs, delete_topics, ensure_topics
from tests.paths import ROOT
from tests.unit.test_ingest_vos3000 import CSV_CDRS, CSV_HEADER, TEXT_CDRS

pytestmark = pytest.mark.integration

CLI = ROOT / ".venv" / "bin" / "cdr-pipeline"
PARTITIONS = 3


@pytest.fixture
def prefix(kafka_bootstrap: str) -> Iterator[str]:
    """A unique topic prefix with the pipeline's topics created, deleted afterwards."""
    name = f"test-vos-{uuid.uuid4().hex[:10]}-"
    specs = default_topic_specs(name, partitions=PARTITIONS)
    ensure_topics(kafka_bootstrap, specs)
    yield name
    delete_topics(kafka_bootstrap, [s.name for s in specs])


def topic_size(consumer: Consumer, topic: str) -> int:
    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
               for p in range(PARTITIONS))


def read_event_ids(bootstrap: str, topic: str) -> list[str]:
    """Every event on the topic: the importer flushed (acks=all) before it exited, so the
    high watermarks say how many there are; read until that many arrived."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        expected = topic_size(consumer, topic)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
        ids: list[str] = []
        deadline = time.monotonic() + 60
        while len(ids) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=1.0):
                assert msg.error() is None, msg.error()
                event = codec.decode_event_dict(msg.value())
                assert msg.key().decode() == event["call_id"]
                ids.append(event["event_id"])
        assert len(ids) == expected
        return ids
    finally:
        consumer.close()


def test_publish_and_reimport_same_event_ids(tmp_path: Path, kafka_bootstrap: str,
                                             prefix: str) -> None:
    txt = tmp_path / "2025112416.txt"
    txt.write_text("\n".join(TEXT_CDRS) + "\n")
    dump = tmp_path / "e_cdr_20251124.csv"
    dump.write_text("\n".join([CSV_HEADER, *CSV_CDRS]) + "\n")
    env = {**os.environ, "CDR_KAFKA_TOPIC_PREFIX": prefix, "CDR_KAFKA_BOOTSTRAP": kafka_bootstrap}

    def publish() -> str:
        done = subprocess.run([str(CLI), "import", "vos3000", str(txt), str(dump), "--publish"],
                              env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        return done.stderr

    topic = f"{prefix}call-events"
    first = publish()
    assert f"kafka {topic}@{kafka_bootstrap}: 28 events, 28 delivered" in first
    once = read_event_ids(kafka_bootstrap, topic)
    assert len(once) == len(set(once)) == 28
    assert {"vos:1001:S", "vos:1001:A", "vos:1001:H", "vos:1005:S", "vos:1005:H"} <= set(once)
    assert "vos:1005:A" not in once  # zero hold: no ANSWER
    publish()
    twice = read_event_ids(kafka_bootstrap, topic)
    assert Counter(twice) == Counter({event_id: 2 for event_id in once})


def test_publish_to_a_missing_topic_is_a_clear_error(tmp_path: Path,
                                                     kafka_bootstrap: str) -> None:
    dump = tmp_path / "e_cdr_20251124.csv"
    dump.write_text("\n".join([CSV_HEADER, *CSV_CDRS]) + "\n")
    env = {**os.environ, "CDR_KAFKA_TOPIC_PREFIX": f"absent-{uuid.uuid4().hex[:8]}-",
           "CDR_KAFKA_BOOTSTRAP": kafka_bootstrap}
    done = subprocess.run([str(CLI), "import", "vos3000", str(dump), "--publish"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "call-events' is not usable" in done.stderr
