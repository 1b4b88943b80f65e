"""An error inside the correlator (a bug, not a bad record) stops the worker with the
traceback in its log and a non-zero exit status, and commits nothing past the batch
it was folding: a restart folds that batch again. The real worker process against
the real broker; the fault is a billing-core function made to raise."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.core.config import load_config
from pipeline.core.events import parse_event
from pipeline.kafka.admin import default_topic_specs, delete_topics, ensure_topics, worker_topics
from pipeline.switch.publisher import SwitchPublisher
from pipeline.switch.simulator import FaultMix, Tick, generate

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "demo" / "demo.toml"
PARTITIONS = 3

# The worker's command line, with the event parser replaced by one that raises.
FAULTY_WORKER = """
import sys
import pipeline.worker.record_path as record_path

def parse_event(raw):
    raise RuntimeError("deliberate failure inside the correlator")

record_path.parse_event = parse_event
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def prefix(kafka_bootstrap: str) -> Iterator[str]:
    name = f"crash{uuid.uuid4().hex[:8]}-"
    ensure_topics(kafka_bootstrap, default_topic_specs(name, PARTITIONS, 1))
    yield name
    delete_topics(kafka_bootstrap, [s.name for s in default_topic_specs(name, PARTITIONS, 1)]
                  + worker_topics(f"{name}corr"))


def test_an_error_in_the_correlator_stops_the_worker_and_commits_nothing(
    kafka_bootstrap: str, prefix: str, tmp_path: Path,
) -> None:
    config = load_config(CONFIG)
    events = [item for item in generate(config, calls=50, switches=2, rate_cps=10, seed=3,
                                        start_ms=1_764_000_000_000, faults=FaultMix.none())
              if not isinstance(item, Tick)]
    topic = f"{prefix}call-events"
    with SwitchPublisher(kafka_bootstrap, topic) as publisher:
        for item in events:
            publisher.publish(parse_event(item))
    app_id = f"{prefix}corr"
    env = dict(os.environ, CDR_KAFKA_TOPIC_PREFIX=prefix, CDR_KAFKA_BOOTSTRAP=kafka_bootstrap,
               CDR_KAFKA_PARTITIONS=str(PARTITIONS))
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.run(
            [sys.executable, "-c", FAULTY_WORKER, "worker", "--config", str(CONFIG),
             "--app-id", app_id, "--data-dir", str(tmp_path / "faust")],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=180, check=False)
    text = log.read_text(errors="replace")
    assert proc.returncode != 0, text[-2000:]
    assert "RuntimeError: deliberate failure inside the correlator" in text
    assert "Traceback" in text

    client = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": app_id})
    try:
        committed = client.committed([TopicPartition(topic, p) for p in range(PARTITIONS)],
                                     timeout=30)
    finally:
        client.close()
    assert [tp.offset for tp in committed if tp.offset >= 0] == []
