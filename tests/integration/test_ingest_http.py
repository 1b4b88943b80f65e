"""The HTTP way in against a real broker: what a 2xx / 4xx / 5xx leaves on the topic.

Each test gets its own topic prefix (CDR_KAFKA_TOPIC_PREFIX style) and the pipeline's
topics from pipeline.kafka.admin; the endpoint runs in uvicorn on a free port. The
outage test runs its own single-node KRaft broker (the shared one must stay up for
everyone else), stops it mid-run and starts it again on the same data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.avro import codec
from pipeline.core.config import load_config
from pipeline.ingest.batch import parse_lines
from pipeline.ingest.http import create_app, make_state
from pipeline.ingest.http_producer import AckingProducer
from pipeline.ingest.http_server import BackgroundServer
from pipeline.kafka.admin import default_topic_specs, delete_topics, ensure_topics
from pipeline.offline.rate_file import rate_lines
from tests.integration.kafka_fixtures import REPO_ROOT, broker_ids, wait_until
from tests.paths import EXAMPLE
from tests.ports import free_port
from tests.unit.test_ingest_http import get, post

pytestmark = pytest.mark.integration

TOKEN = "integration-token-0123456789"  # noqa: S105 - a test token
EVENTS = EXAMPLE / "events.jsonl"


# -- shared helpers (test_publish_file imports them) ----------------------------------------


@dataclass(frozen=True)
class Topics:
    bootstrap: str
    prefix: str
    partitions: int

    @property
    def call_events(self) -> str:
        return f"{self.prefix}call-events"


@pytest.fixture
def make_topics(kafka_bootstrap: str) -> Iterator[Any]:
    made: list[tuple[str, list[str]]] = []

    def make(partitions: int = 1, bootstrap: str | None = None) -> Topics:
        bs = bootstrap or kafka_bootstrap
        prefix = f"test-http-{uuid.uuid4().hex[:10]}-"
        specs = default_topic_specs(prefix, partitions, 1)
        ensure_topics(bs, specs)
        made.append((bs, [s.name for s in specs]))
        return Topics(bs, prefix, partitions)

    yield make
    for bs, names in made:
        if broker_ids(bs, timeout_s=5) is not None:
            delete_topics(bs, names)


def read_back(bootstrap: str, topic: str) -> list[Any]:
    """Every record of the topic, in partition then offset order, read up to the high
    watermarks taken first (so the read ends on a condition, not a quiet period)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": False})
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records: list[Any] = []
        deadline = time.monotonic() + 60
        while sum(1 for _ in records) < sum(ends.values()):
            assert time.monotonic() < deadline, "topic not read to its end in 60s"
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                assert msg.error() is None, msg.error()
                records.append(msg)
        return sorted(records, key=lambda m: (m.partition(), m.offset()))
    finally:
        consumer.close()


def as_lines(records: list[Any]) -> list[str]:
    """The records as rate-file input lines: events decoded, ticks as tick lines."""
    lines = []
    for msg in records:
        if codec.is_tick(msg.headers()):
            lines.append(json.dumps({"tick_ms": codec.decode_tick(msg.value())}))
        else:
            raw = codec.decode_event_dict(msg.value())
            lines.append(json.dumps({k: v for k, v in raw.items() if v is not None}))
    return lines


def rated(lines: list[str]) -> list[str]:
    config = load_config(EXAMPLE / "config.toml")
    return [json.dumps(cdr.to_json_dict(), sort_keys=True) for cdr in rate_lines(lines, config)]


def event_ids(records: list[Any]) -> list[str]:
    return [str(codec.decode_event_dict(m.value())["event_id"]) for m in records
            if not codec.is_tick(m.headers())]


def valid_lines() -> list[str]:
    """The example file's lines that are events (it also has two malformed ones)."""
    lines = EVENTS.read_text().splitlines()
    return [lines[number - 1] for number, _ in parse_lines(lines).items]


@pytest.fixture
def endpoint(make_topics: Any) -> Iterator[tuple[BackgroundServer, Topics]]:
    topics = make_topics(partitions=1)
    producer = AckingProducer(topics.bootstrap, topics.call_events, timeout_s=5.0)
    state = make_state(producer, TOKEN, max_body_bytes=1 << 20)
    try:
        with BackgroundServer(create_app(state), "127.0.0.1", free_port()) as server:
            yield server, topics
    finally:
        producer.close(5.0)


# -- the endpoint ----------------------------------------------------------------------------


def test_mixed_batch_publishes_the_valid_and_names_the_bad(endpoint: Any) -> None:
    server, topics = endpoint
    status, _, body = post(server.url, EVENTS.read_bytes(), TOKEN)
    assert status == 422, body
    rejected = [(r["line"], r["category"]) for r in body["rejected"]]
    assert len(rejected) == 2 and all(r["reason"] for r in body["rejected"])
    records = read_back(topics.bootstrap, topics.call_events)
    assert body["accepted"] == len(records) == 39
    bad = {line for line, _ in rejected}
    expected = [json.loads(line)["event_id"] for n, line in
                enumerate(EVENTS.read_text().splitlines(), 1) if line.strip() and n not in bad]
    assert event_ids(records) == expected
    # what the topic holds rates as the file does
    assert rated(as_lines(records)) == rated(EVENTS.read_text().splitlines())


def test_valid_array_then_retried_rates_once(endpoint: Any) -> None:
    server, topics = endpoint
    events = [json.loads(line) for line in valid_lines()]
    body_bytes = json.dumps(events).encode()
    for _ in range(2):  # the client did not see the first answer and retries
        status, _, body = post(server.url, body_bytes, TOKEN)
        assert (status, body["accepted"], body["rejected"]) == (200, len(events), [])
    records = read_back(topics.bootstrap, topics.call_events)
    assert len(records) == 2 * len(events)
    once = rated([json.dumps(e) for e in events])
    assert once and rated(as_lines(records)) == once
    _, metrics = get(server.url, "/metrics")
    assert f"cdr_ingest_http_events_accepted_total {2.0 * len(events)}" in metrics
    assert "cdr_ingest_http_ack_latency_seconds_count 2.0" in metrics
    assert get(server.url, "/ready")[0] == 200


def test_malformed_bodies_and_refusals_publish_nothing(endpoint: Any) -> None:
    server, topics = endpoint
    status, _, body = post(server.url, b"[{\"event_id\": ", TOKEN)
    assert status == 400 and "not a JSON array" in body["error"]
    status, _, body = post(server.url, b"{bad\n[]\n\"x\"\n", TOKEN)
    assert status == 422 and [r["line"] for r in body["rejected"]] == [1, 2, 3]
    assert post(server.url, EVENTS.read_bytes(), "not-the-token-0123456789")[0] == 401
    assert post(server.url, b"\n" * (2 << 20), TOKEN)[0] == 413
    assert read_back(topics.bootstrap, topics.call_events) == []


def test_command_refuses_a_missing_token_and_serves_with_one(make_topics: Any,
                                                             tmp_path: Path) -> None:
    topics = make_topics(partitions=1)
    conf = tmp_path / "c.toml"
    conf.write_text(f'[kafka]\nbootstrap = "{topics.bootstrap}"\n'
                    f'topic_prefix = "{topics.prefix}"\n')
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDR_")}
    argv = [sys.executable, "-c", _CLI, "--config", str(conf), "--port", str(port)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "CDR_INGEST_HTTP_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr
    proc = subprocess.Popen(argv, env={**env, "CDR_INGEST_HTTP_TOKEN": TOKEN},
                            stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url), 30, "ingest http to answer /health")
        status, _, body = post(url, "\n".join(valid_lines()).encode(), TOKEN)
        assert status == 200 and body["accepted"] == 39
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert TOKEN not in err
    assert len(read_back(topics.bootstrap, topics.call_events)) == 39


# Runs the real CLI with the ingest http command registered (if pipeline.commands does
# not register it yet), as `cdr-pipeline ingest http` or `ingest-http`.
_CLI = """
import sys
from pipeline import commands
from pipeline.ingest.cli_http import register
if register not in commands.REGISTRY:
    commands.REGISTRY.append(register)
from pipeline.cli import build_parser, main
names = build_parser()._subparsers._group_actions[0].choices
cmd = ["ingest-http"] if "ingest-http" in names else ["ingest", "http"]
sys.exit(main(cmd + sys.argv[1:]))
"""


def _answers(url: str) -> bool:
    try:
        return get(url, "/health")[0] == 200
    except OSError:
        return False


# -- Kafka stopped mid-run -----------------------------------------------------------------


class OwnBroker:
    """A single-node KRaft broker on free ports, configured as deploy/local/kafka.sh
    configures the shared one, that this test may stop and start again."""

    def __init__(self, base: Path) -> None:
        self.dir = base
        self.port, self.controller = free_port(), free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        libs = REPO_ROOT / ".stack" / "kafka" / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            pytest.skip("Kafka jars not fetched (deploy/local/kafka.sh fetch)")
        self.classpath = f"{libs}/*"
        (base / "data").mkdir(parents=True)
        (base / "server.properties").write_text(f"""process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{self.controller}
listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs={base}/data
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
""")
        self._java("kafka.tools.StorageTool", "format", "-t", "AAAAAAAAAAAAAAAAAAAAAA",
                   "-c", str(base / "server.properties"), "--ignore-formatted", wait=True)

    def _java(self, *args: str, wait: bool = False) -> subprocess.Popen[bytes]:
        cmd = ["java", "-Xmx384m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
               f"-Dkafka.logs.dir={self.dir}/logs", "-cp", self.classpath, *args]
        log = (self.dir / "kafka.out").open("ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        if wait:
            assert proc.wait(timeout=120) == 0, (self.dir / "kafka.out").read_text()[-2000:]
        return proc

    def start(self) -> None:
        self.proc = self._java("kafka.Kafka", str(self.dir / "server.properties"))
        wait_until(lambda: broker_ids(self.bootstrap, 2) == {1}, 120, "own broker to start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    broker = OwnBroker(tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_kafka_stopped_mid_run_503_then_recovery_without_loss_or_duplicate(
        own_broker: OwnBroker, make_topics: Any) -> None:
    topics = make_topics(partitions=3, bootstrap=own_broker.bootstrap)
    producer = AckingProducer(topics.bootstrap, topics.call_events, timeout_s=3.0)
    state = make_state(producer, TOKEN, retry_after_s=1)
    events = [json.loads(line) for line in valid_lines()]
    first, second = events[:20], events[20:]
    try:
        with BackgroundServer(create_app(state), "127.0.0.1", free_port()) as server:
            assert post(server.url, _lines(first), TOKEN)[0] == 200
            own_broker.stop()
            status, headers, body = post(server.url, _lines(second), TOKEN)
            assert status == 503 and headers["retry-after"] == "1", body
            assert body["accepted"] == 0
            wait_until(lambda: get(server.url, "/ready")[0] == 503, 10, "/ready to say 503")
            own_broker.start()
            answers: list[int] = []

            def retried() -> bool:  # a client honouring Retry-After
                answers.append(post(server.url, _lines(second), TOKEN)[0])
                return answers[-1] == 200

            wait_until(retried, 60, "the retried request to be acknowledged", interval_s=1.0)
            wait_until(lambda: get(server.url, "/ready")[0] == 200, 10, "/ready to say 200")
    finally:
        producer.close(5.0)
    ids = event_ids(read_back(topics.bootstrap, topics.call_events))
    assert sorted(ids) == sorted(e["event_id"] for e in events)  # none lost, none twice


def _lines(events: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(e) for e in events).encode()
