"""The whole pipeline on clusters: Kafka 3 brokers (topics RF 3, min.insync.replicas 2)
and ClickHouse 2 shards x 2 replicas, with every fault kind of the simulator, and during
one run, one after the other: a ClickHouse replica SIGKILLed and restarted, a Kafka broker
stopped and restarted, and the worker SIGKILLed and restarted.

At the end the newest CDR of every call, read through the Distributed table with FINAL,
equals what `rate-file` computes, field for field; no call has two rows; and the killed
replica has caught up (the replicas of each shard hold the same rows).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from pipeline.switch.publisher import SwitchPublisher
from pipeline.switch.simulator import FaultMix, publish
from tests.e2e.harness import Pipeline, offline_final, traffic
from tests.integration.clickhouse_fixtures import CLUSTER_NAME, LocalClickHouseCluster
from tests.integration.kafka_fixtures import LocalKafkaCluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

# every fault kind the simulator has, each often enough to occur in 2400 calls
FAULTS = FaultMix(**{f.name: 0.03 for f in fields(FaultMix)})
KILLED_REPLICA = 4  # shard 2's second replica; the sink writes through node 1
STOPPED_BROKER = 2


@pytest.fixture
def cluster_pipeline(kafka_cluster: LocalKafkaCluster, clickhouse_cluster: LocalClickHouseCluster,
                     tmp_path: Path) -> Iterator[Pipeline]:
    wait_until(lambda: kafka_cluster.live_brokers() == {1, 2, 3}, 120, "three live brokers")
    p = Pipeline(kafka_cluster.bootstrap, clickhouse_cluster.backend(1), tmp_path,
                 cluster=CLUSTER_NAME, replication_factor=3)
    p.setup()
    try:
        yield p
    finally:
        if STOPPED_BROKER not in kafka_cluster.live_brokers():
            kafka_cluster.start_node(STOPPED_BROKER)
        if not clickhouse_cluster.answers(KILLED_REPLICA):
            clickhouse_cluster.start_node(KILLED_REPLICA)
        p.teardown()


def _publish(pipeline: Pipeline, items: list[Any]) -> None:
    with SwitchPublisher(pipeline.bootstrap, f"{pipeline.prefix}call-events") as publisher:
        publish(items, publisher)


def test_stream_equals_offline_through_replica_broker_and_worker_failures(
    cluster_pipeline: Pipeline,
    kafka_cluster: LocalKafkaCluster,
    clickhouse_cluster: LocalClickHouseCluster,
) -> None:
    pipeline, ch = cluster_pipeline, clickhouse_cluster
    items, config, stats = traffic(2400, seed=21, faults=FAULTS)
    assert all(stats.faults[f.name] > 0 for f in fields(FaultMix)), stats.faults
    expected = offline_final(items, config)
    third = len(items) // 3
    worker = pipeline.start_worker()
    pipeline.start_sink()

    def stored_more_than(n: int) -> Callable[[], bool]:
        return lambda: len(pipeline.stored_versions()) > n

    def sink_said(text: str) -> Callable[[], bool]:
        return lambda: any(text in log.read_text(errors="replace")
                           for log in pipeline.workdir.glob("sink-*.log"))

    cut = [0, third, 2 * third, 2 * third + third // 2, len(items)]
    # 1. a ClickHouse replica crashes: shard 2 lacks its insert quorum, the sink waits
    _publish(pipeline, items[cut[0] : cut[1]])
    pipeline.wait_for(stored_more_than(100), 180, "the first CDRs")
    ch.kill_node(KILLED_REPLICA)
    _publish(pipeline, items[cut[1] : cut[2]])
    pipeline.wait_for(sink_said("ClickHouse unavailable"), 180, "the sink to wait for shard 2")
    ch.start_node(KILLED_REPLICA)
    pipeline.wait_for(sink_said("ClickHouse is back"), 180, "the sink to store again")

    # 2. a Kafka broker stops: min.insync.replicas 2 of 3 keeps producers and consumers going
    kafka_cluster.stop_node(STOPPED_BROKER)
    seen = len(pipeline.stored_versions())
    _publish(pipeline, items[cut[2] : cut[3]])
    pipeline.wait_for(stored_more_than(seen), 240, "progress with a broker down")
    kafka_cluster.start_node(STOPPED_BROKER)

    # 3. the worker crashes and a new one takes over its partitions
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    pipeline.start_worker()
    _publish(pipeline, items[cut[3] : cut[4]])

    want = {c: v.version for c, v in expected.items()}
    try:
        pipeline.wait_for(lambda: pipeline.stored_versions() == want, 300,
                          "every call's newest CDR")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{pipeline.diagnose(want, expected)}") from None

    got = pipeline.newest_cdrs()  # through the Distributed table, FINAL per shard
    assert set(got) == set(expected)
    mismatched = [c for c in expected if got[c] != expected[c]]
    assert not mismatched, (mismatched[:3], [got[c] for c in mismatched[:1]])
    db = pipeline.database
    twice = ch.backend(2).execute(
        f"SELECT call_id FROM {db}.cdr FINAL GROUP BY call_id HAVING count() > 1")
    assert twice == [], twice[:5]
    split = ch.backend(3).execute(
        f"SELECT call_id FROM {db}.cdr GROUP BY call_id HAVING uniqExact(call_start_ms) > 1")
    assert split == [], split[:5]

    # the killed replica caught up: the replicas of each shard hold the same rows
    ch.sync_replicas(db, "cdr_local")
    counts = ch.counts(db, "cdr_local")
    assert counts[1] == counts[2] > 0 and counts[3] == counts[4] > 0, counts
    final = f"SELECT count() FROM {db}.cdr_local FINAL"
    per_replica = {n: int(ch.backend(n).execute(final)[0][0]) for n in ch.nodes}
    assert per_replica[1] + per_replica[3] == len(expected), per_replica
