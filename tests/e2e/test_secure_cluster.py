# ruff: noqa: F811 - the fixtures are imported by name
"""The pipeline on the secured three-broker Kafka (secure.sh up --cluster): SASL_SSL and
mTLS listeners, controllers and replication over TLS, the StandardAuthorizer with the
single node's principals and ACLs (pipeline.kafka.acls), topics RF 3 with
min.insync.replicas 2, and the secured ClickHouse.

publisher -> worker -> sink -> ClickHouse, every process under its own identity, with a
broker stopped mid-stream and started again: the newest CDR of every call equals what
`rate-file` computes, and the restarted broker is back in every partition's in-sync
replicas (it caught up over the TLS inter-broker listener). Then what the cluster
refuses, in one line and writing nothing: the sink's principal publishing call events,
a plaintext client on a SASL_SSL port.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from pipeline.kafka.acls import missing_grants, pipeline_grants
from pipeline.kafka.clients import client_config
from pipeline.switch.publisher import SwitchPublisher
from pipeline.switch.simulator import FaultMix, publish
from tests.e2e.harness import Pipeline, offline_final, traffic
from tests.e2e.test_secure_pipeline import wait_equal
from tests.integration.kafka_fixtures import wait_until
from tests.integration.secure_fixtures import (  # noqa: F401 - fixtures
    REPO_ROOT,
    SecureCluster,
    secure_cluster,
    secure_cluster_pipeline,
)
from tests.integration.test_secure_access import cli, events_file, one_line_error  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.secure, pytest.mark.cluster]

FAULTS = FaultMix.parse("dup=0.03,reorder=0.05,missing_answer=0.02,missing_setup=0.02,"
                        "missing_hangup=0.02,second_hangup=0.02")
CALLS = 900
STOPPED_BROKER = 2
CONFIG = REPO_ROOT / "deploy" / "demo" / "demo.toml"


def _publish(cluster: SecureCluster, identity: str, pipeline: Pipeline,
             items: list[Any]) -> None:
    with SwitchPublisher(cluster.kafka(identity), f"{pipeline.prefix}call-events") as pub:
        publish(items, pub)


def _in_sync(cluster: SecureCluster, topic: str) -> dict[int, set[int]]:
    """Each partition of `topic` and its in-sync replicas, as the broker's super user."""
    admin = AdminClient(client_config(cluster.kafka("broker"), log_level=0))
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    return {p: set(info.isrs) for p, info in meta.partitions.items()}


def test_secured_cluster_equals_rate_file_through_a_broker_restart(
        secure_cluster: SecureCluster, secure_cluster_pipeline: Pipeline) -> None:
    cluster, pipeline = secure_cluster, secure_cluster_pipeline
    events = f"{pipeline.prefix}call-events"
    assert _in_sync(cluster, events) == {p: {1, 2, 3} for p in range(3)}  # RF 3
    start_ms = (int(time.time() * 1000) - 3_600_000) // 60_000 * 60_000
    items, config, _ = traffic(CALLS, seed=19, faults=FAULTS, start_ms=start_ms)
    expected = offline_final(items, config)
    third = len(items) // 3
    pipeline.start_worker()
    pipeline.start_sink()

    def stored_more_than(n: int) -> Callable[[], bool]:
        return lambda: len(pipeline.stored_versions()) > n

    _publish(cluster, "publisher", pipeline, items[:third])
    pipeline.wait_for(stored_more_than(50), 180, "the first CDRs")

    # a broker stops: 2 of 3 replicas keep producers (acks all, min.insync 2) and
    # consumers going; this part is published over the mTLS listeners
    cluster.stop_node(STOPPED_BROKER)
    wait_until(lambda: cluster.live_brokers() == {1, 3}, 60, "broker 2 out of the metadata")
    seen = len(pipeline.stored_versions())
    _publish(cluster, "publisher-mtls", pipeline, items[third:2 * third])
    pipeline.wait_for(stored_more_than(seen), 180, "progress with a broker down")
    cluster.start_node(STOPPED_BROKER)
    _publish(cluster, "publisher", pipeline, items[2 * third:])

    wait_equal(pipeline, expected)  # every call's newest CDR, field for field

    # the restarted broker replicated what it missed (inter-broker SASL_SSL)
    wait_until(lambda: all(STOPPED_BROKER in isr for isr in _in_sync(cluster, events).values()),
               120, f"broker {STOPPED_BROKER} back in every partition's in-sync replicas")


def test_the_cluster_holds_the_acl_table_of_the_single_node(
        secure_cluster: SecureCluster) -> None:
    """secure.sh up --cluster applied pipeline_grants (the deployment's names), the
    table docs/security.md shows and the single node holds."""
    broker = secure_cluster.kafka("broker")
    assert missing_grants(broker, pipeline_grants()) == []
    other = pipeline_grants("nobody-", "nobody", "nobody", rerate_group_prefix="nobody-")
    assert missing_grants(broker, other) == other  # a deployment it was not given


def test_the_secured_cluster_refuses_in_one_line(
        secure_cluster: SecureCluster, secure_cluster_pipeline: Pipeline,
        events_file: Path) -> None:
    pipeline = secure_cluster_pipeline
    publish_args = ("publish", "--config", str(CONFIG), "--events", str(events_file),
                    "--timeout", "30")
    # the sink's principal may read cdrs, not write call-events
    env = {**secure_cluster.env("sink"), "CDR_KAFKA_TOPIC_PREFIX": pipeline.prefix}
    error = one_line_error(cli(env, *publish_args), "publish")
    assert "not authorized for the topic" in error and "as sink" in error, error
    assert f"{pipeline.prefix}call-events" in error, error
    # a plaintext client on the cluster's SASL_SSL listeners
    env = {"CDR_KAFKA_BOOTSTRAP": secure_cluster.bootstrap,
           "CDR_KAFKA_TOPIC_PREFIX": pipeline.prefix}
    error = one_line_error(cli(env, *publish_args), "publish")
    assert "a PLAINTEXT client on a TLS listener" in error, error
    assert pipeline.topic_records("call-events") == 0  # nothing written by either
