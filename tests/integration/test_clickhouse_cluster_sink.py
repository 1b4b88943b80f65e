"""The sink (`cdr-pipeline sink --migrate`, a real process) into the 2 x 2 ClickHouse cluster:
it makes its tables on the cluster (`[clickhouse] cluster`), and while a whole shard is down
it pauses and retries, commits nothing it has not stored, and once the shard is back every
CDR is stored and every offset committed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.storage.cdr_store import fetch_newest
from tests.integration.clickhouse_fixtures import CLUSTER_NAME, LocalClickHouseCluster
from tests.integration.kafka_fixtures import TopicFactory, wait_until
from tests.integration.test_sink import committed_offsets, end_offsets, make_calls, produce_cdrs

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3


@pytest.fixture
def sink_log(tmp_path: Path) -> Path:
    return tmp_path / "sink.log"


def _start_sink(bootstrap: str, topic: str, dlq: str, group: str, url: str, log: Path
                ) -> subprocess.Popen[bytes]:
    """The sink, making its tables first (`--migrate`) on the cluster the settings name."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "sink", "--bootstrap", bootstrap, "--topic", topic,
         "--dlq-topic", dlq, "--group", group, "--clickhouse", url, "--batch-rows", "200",
         "--batch-seconds", "0.2", "--migrate"],
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env={**os.environ, "CDR_CLICKHOUSE_CLUSTER": CLUSTER_NAME})


def _engines(cluster: LocalClickHouseCluster, db: str, node: int) -> dict[str, str]:
    rows = cluster.backend(node).execute(
        "SELECT name, engine FROM system.tables WHERE database = {db:String}", {"db": db})
    return {str(name): str(engine) for name, engine in rows}


@pytest.fixture
def stopped_at_end() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)


def test_sink_waits_out_a_whole_shard_down_and_loses_nothing(
    kafka_bootstrap: str,
    unique_topic: TopicFactory,
    clickhouse_cluster: LocalClickHouseCluster,
    cluster_database: str,
    sink_log: Path,
    stopped_at_end: list[subprocess.Popen[bytes]],
) -> None:
    db, cluster = cluster_database, clickhouse_cluster
    topic = unique_topic("ccdrs", partitions=PARTITIONS)
    dlq = unique_topic("ccdrs-dlq", partitions=1)
    group = f"{topic}-sink"
    produced, newest = make_calls(1200, "shard")
    half = len(produced) // 2

    def stored() -> dict[str, int]:
        return {r["call_id"]: r["version"] for r in fetch_newest(cluster.backend(1), db)}

    sink = _start_sink(kafka_bootstrap, topic, dlq, group, cluster.url(db, 1), sink_log)
    stopped_at_end.append(sink)
    wait_until(lambda: all("cdr" in _engines(cluster, db, n) for n in cluster.nodes), 120,
               "the sink's --migrate to make the tables on every server")
    for node in cluster.nodes:
        engines = _engines(cluster, db, node)
        assert engines["cdr"] == "Distributed", (node, engines)
        assert engines["cdr_local"] == "ReplicatedReplacingMergeTree", (node, engines)
    produce_cdrs(kafka_bootstrap, topic, produced[:half])
    first = {c.call_id: c.version for c in produced[:half]}
    wait_until(lambda: stored() == first, 120, "the first half stored")
    wait_until(lambda: committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
               == end_offsets(kafka_bootstrap, topic, PARTITIONS), 60, "the first half committed")
    before = committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)

    cluster.kill_node(3)  # shard 2, both replicas: one crashed, one stopped
    cluster.stop_node(4)
    try:
        produce_cdrs(kafka_bootstrap, topic, produced[half:])
        wait_until(lambda: sink_log.read_text().count("ClickHouse unavailable") >= 2, 120,
                   "the sink to retry against the missing shard")
        assert sink.poll() is None, sink_log.read_text()[-3000:]
        # nothing past what is stored is committed while the shard is away
        assert committed_offsets(kafka_bootstrap, group, topic, PARTITIONS) == before
    finally:
        cluster.start_node(3)
        cluster.start_node(4)

    want = {k: v.version for k, v in newest.items()}
    wait_until(lambda: stored() == want, 180, "every call's newest version, the shard back")
    wait_until(lambda: committed_offsets(kafka_bootstrap, group, topic, PARTITIONS)
               == end_offsets(kafka_bootstrap, topic, PARTITIONS), 60, "every offset committed")
    assert "ClickHouse is back" in sink_log.read_text()
    assert {r["call_id"]: r["fee"] for r in fetch_newest(cluster.backend(3), db)} == {
        k: v.fee for k, v in newest.items()}
    # every call on both replicas of its shard, and on that shard only
    cluster.sync_replicas(db, "cdr_local")
    calls = "SELECT uniqExact(call_id) FROM {db}.cdr_local"
    per_node = {n: int(cluster.backend(n).execute(calls.format(db=db))[0][0])
                for n in cluster.nodes}
    assert per_node[1] == per_node[2] and per_node[3] == per_node[4]
    assert per_node[1] + per_node[3] == len(newest)
