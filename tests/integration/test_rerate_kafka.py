"""Re-rating from Kafka: replay of the call-events topic through the correlator.

The topic holds, as switches publish them (record timestamp = publish time = event
time), older traffic the range must skip and the traffic under test; ClickHouse holds
what the live pipeline stored under the old configuration (every CDR version of
`rate-file`, as the sink writes them).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.avro import codec
from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig, load_config
from pipeline.kafka.admin import TopicSpec, delete_topics, ensure_topics
from pipeline.rerate import runs
from pipeline.rerate.connect import connector_for
from pipeline.rerate.kafka_source import KafkaReplayOptions, KafkaSource
from pipeline.rerate.runner import RerateRequest, RerateResult, rerate
from pipeline.storage import fetch_newest, migrate
from pipeline.storage.backend import ClickHouseBackend
from pipeline.switch.simulator import Item, Tick
from tests.integration.test_rerate_clickhouse import store_cdrs
from tests.unit.test_rerate_scenarios import billing, newest, rated, start_of, traffic, write_config

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
PARTITIONS = 3


@dataclass
class Topic:
    bootstrap: str
    name: str
    start_ms: int  # first SETUP of the traffic under test
    items: list[Item]  # the traffic under test
    noise: list[Item]  # older traffic, before the replay window
    records: int  # records in the topic
    tmp: Path

    def config(self, name: str, **kwargs: Any) -> BillingConfig:
        return load_config(write_config(self.tmp, name, **kwargs))


def _produce(producer: Producer, topic: str, items: list[Item]) -> int:
    """Publish like a switch in real time: record timestamp = event time."""
    count = 0
    failed: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err.name())

    for item in items:
        if isinstance(item, Tick):
            for partition in range(PARTITIONS):
                producer.produce(
                    topic,
                    codec.encode_tick(item.ts_ms),
                    partition=partition,
                    timestamp=item.ts_ms,
                    headers=[(codec.RECORD_HEADER, codec.TICK)],
                    on_delivery=report,
                )
                count += 1
        else:
            producer.produce(
                topic,
                codec.encode_event_dict(item),
                key=item["call_id"].encode(),
                timestamp=item["ts_ms"],
                on_delivery=report,
            )
            count += 1
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not failed, f"{len(failed)} records not delivered: {sorted(set(failed))}"
    return count


@pytest.fixture(scope="module")
def topic(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topic]:
    tmp = tmp_path_factory.mktemp("rerate-kafka")
    config = load_config(write_config(tmp, "old"))
    # Six hours back: the longest calls and the simulator's final tick (which makes every
    # open call stale) come up to about four hours after the first SETUP, and the broker
    # refuses record timestamps more than an hour in the future.
    start_ms = (int(time.time() * 1000) - 6 * HOUR_MS) // 60_000 * 60_000
    items = traffic(config, 300, seed=7, start_ms=start_ms, rate_cps=1.0)
    noise = traffic(config, 60, seed=99, start_ms=start_ms - 3 * HOUR_MS, rate_cps=1.0)
    name = f"test-rerate-events-{uuid.uuid4().hex[:10]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(name, PARTITIONS, 1)])
    producer = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": 20,
        }
    )
    records = _produce(producer, name, noise) + _produce(producer, name, items)
    yield Topic(kafka_bootstrap, name, start_ms, items, noise, records, tmp)
    delete_topics(kafka_bootstrap, [name])


@dataclass
class Setup:
    topic: Topic
    backend: ClickHouseBackend
    db: str
    old: dict[str, RatedCdr]
    from_ms: int
    to_ms: int

    def rerate(self, config: BillingConfig, **kwargs: Any) -> RerateResult:
        request = RerateRequest(
            config=config,
            from_ms=self.from_ms,
            to_ms=self.to_ms,
            source="kafka",
            database=self.db,
            user="tester",
            **kwargs,
        )
        options = KafkaReplayOptions(
            bootstrap=self.topic.bootstrap, topic=self.topic.name, margin_s=60
        )
        return rerate(request, connector_for(self.backend), options)

    def newest(self) -> dict[str, dict[str, Any]]:
        return {
            r["call_id"]: r
            for r in fetch_newest(self.backend, self.db, extra_columns=["rerate_run_id"])
        }

    def in_range(self, cdr: RatedCdr) -> bool:
        return self.from_ms <= start_of(cdr) < self.to_ms


def _setup(topic: Topic, backend: ClickHouseBackend, db: str, **old_kwargs: Any) -> Setup:
    migrate(backend, db)
    config = topic.config("stored", **old_kwargs)
    from pipeline.core.summary import newest_versions

    versions = rated(topic.noise, config) + rated(topic.items, config)
    store_cdrs(backend, db, versions)
    return Setup(
        topic,
        backend,
        db,
        newest_versions(versions),
        topic.start_ms + 60_000,
        topic.start_ms + 240_000,
    )


@pytest.fixture
def database(clickhouse_native: ClickHouseBackend) -> Iterator[str]:
    name = f"cdr_test_{uuid.uuid4().hex[:12]}"
    yield name
    clickhouse_native.execute(f"DROP DATABASE IF EXISTS {name}")


def _live_group(bootstrap: str, topic: str) -> tuple[str, list[TopicPartition]]:
    """A consumer group standing for the live correlator, with committed offsets."""
    group = f"live-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    offsets = [TopicPartition(topic, p, 5 + p) for p in range(PARTITIONS)]
    consumer.commit(offsets=offsets, asynchronous=False)
    committed = consumer.committed(
        [TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10
    )
    consumer.close()
    return group, committed


def _committed(bootstrap: str, group: str, topic: str) -> list[tuple[int, int]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        got = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    finally:
        consumer.close()
    return [(tp.partition, tp.offset) for tp in got]


@pytest.fixture
def sources(monkeypatch: pytest.MonkeyPatch) -> list[KafkaSource]:
    """The KafkaSource objects a run creates (its planner first)."""
    made: list[KafkaSource] = []
    real = KafkaSource.__init__

    def init(self: KafkaSource, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(KafkaSource, "__init__", init)
    return made


def test_kafka_replay_with_new_tariff_equals_rate_file(
    topic: Topic, clickhouse_native: ClickHouseBackend, database: str, sources: list[KafkaSource]
) -> None:
    setup = _setup(topic, clickhouse_native, database)
    new_config = topic.config("new", tariff="new")
    expected = newest(topic.items, new_config)
    live_group, live_before = _live_group(topic.bootstrap, topic.name)

    result = setup.rerate(new_config)
    assert result.status == "DONE"
    # offsets found by time: the old traffic before the window is not read
    assert sum(p.start for p in sources[0].plans) > 0
    assert result.replay is not None and result.replay.rejected == 0
    assert 0 < result.replay.records < topic.records

    in_range = [c for c in setup.old.values() if setup.in_range(c)]
    changed = {c.call_id for c in in_range if billing(c) != billing(expected[c.call_id])}
    assert 0 < len(changed) < len(in_range)
    assert result.calls_read == len(in_range)
    assert (result.calls_changed, result.cdrs_written) == (len(changed), len(changed))
    assert (result.calls_new, result.older_than_stored) == (0, 0)
    now = setup.newest()
    assert len(now) == len(setup.old)
    for call_id, old in setup.old.items():
        row = now[call_id]
        if call_id in changed:
            assert billing(row) == billing(expected[call_id])
            assert row["version"] == old.version + 1 and row["rerate_run_id"] == result.run_id
        else:
            assert billing(row) == billing(old) and row["version"] == old.version

    # the same command again changes nothing
    again = setup.rerate(new_config)
    assert (again.calls_changed, again.cdrs_written, again.calls_read) == (0, 0, len(in_range))

    # the live group's offsets are untouched, the replay left no group behind
    assert _committed(topic.bootstrap, live_group, topic.name) == [
        (tp.partition, tp.offset) for tp in live_before
    ]
    groups = AdminClient({"bootstrap.servers": topic.bootstrap}).list_consumer_groups().result(10)
    assert not {s.group_id for s in sources} & {g.group_id for g in groups.valid}


def test_kafka_replay_turns_skipped_server_hangups_into_recorded(
    topic: Topic, clickhouse_native: ClickHouseBackend, database: str
) -> None:
    setup = _setup(topic, clickhouse_native, database, record_server_hangup=False)
    skipped = [
        c
        for c in setup.old.values()
        if setup.in_range(c) and c.decision_reason == "SERVER_HANGUP_POLICY"
    ]
    assert skipped
    # two worker processes, each replaying some of the partitions
    result = setup.rerate(topic.config("recording-on", record_server_hangup=True), workers=2)
    assert result.workers == 2
    now = setup.newest()
    assert all(now[c.call_id]["record_decision"] == "RECORDED" for c in skipped)
    assert result.calls_changed == len(skipped)
    recovered: dict[str, Decimal] = {}
    for c in skipped:
        if c.fee is not None and c.currency:
            recovered[c.currency] = recovered.get(c.currency, Decimal(0)) + c.fee
    assert result.run_id is not None
    record = runs.load(clickhouse_native, database, result.run_id)
    assert record is not None
    summary = record["delta_summary"]
    assert {k: Decimal(v) for k, v in summary["recovered_revenue"].items()} == recovered
    assert summary["replay"]["records"] > 0


def test_kafka_replay_restores_a_call_the_store_lost(
    topic: Topic, clickhouse_native: ClickHouseBackend, database: str
) -> None:
    setup = _setup(topic, clickhouse_native, database)
    lost = next(c for c in setup.old.values() if setup.in_range(c) and c.status == "COMPLETE")
    clickhouse_native.execute(
        f"ALTER TABLE {database}.cdr DELETE WHERE call_id = {{cid:String}}", {"cid": lost.call_id}
    )
    deadline = time.monotonic() + 30
    while lost.call_id in setup.newest():
        assert time.monotonic() < deadline, "mutation did not finish"
        time.sleep(0.2)
    result = setup.rerate(topic.config("same"))
    assert (result.calls_new, result.calls_changed) == (1, 1)
    row = setup.newest()[lost.call_id]
    assert billing(row) == billing(lost) and row["version"] == lost.version + 1
