# ruff: noqa: F811 - the fixtures are imported by name
"""A worker whose principal may not write `cdrs` stops, and commits no offset.

The worker reads call events it cannot turn into published CDRs: committing their
offsets would lose those calls' CDRs for good. So it must stop with an error naming the
cause, leaving its group's offsets where they were (nowhere), and `cdrs` empty; started
again with the right principal it would redo the same records.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.kafka.acls import Grant, apply_grants, pipeline_grants, remove_grants, upsert_users
from pipeline.kafka.clients import client_config
from pipeline.switch.publisher import SwitchPublisher
from pipeline.switch.simulator import FaultMix, publish
from tests.e2e.harness import PARTITIONS, Pipeline, traffic
from tests.integration.secure_fixtures import (  # noqa: F401 - fixtures
    SecureStack,
    secure_pipeline,
    secure_stack,
)

pytestmark = [pytest.mark.e2e, pytest.mark.secure]


@pytest.fixture
def no_cdrs_principal(secure_stack: SecureStack, secure_pipeline: Pipeline,
                      tmp_path: Path) -> Iterator[dict[str, str]]:
    """A principal with the worker's ACLs but WRITE on `cdrs`; its environment."""
    name = f"worker-nocdrs-{uuid.uuid4().hex[:6]}"
    password = tmp_path / "nocdrs.password"
    password.write_text(uuid.uuid4().hex, encoding="utf-8")
    broker = secure_stack.kafka("broker")
    upsert_users(broker, {name: password.read_text(encoding="utf-8")})
    cdrs = f"{secure_pipeline.prefix}cdrs"
    grants: list[Grant] = []
    for grant in pipeline_grants(secure_pipeline.prefix, secure_pipeline.app_id,
                                 f"{secure_pipeline.prefix}sink"):
        if grant.principal != "worker":
            continue
        if grant.name == cdrs:
            grant = replace(grant, operations=("DESCRIBE",))
        grants.append(replace(grant, principal=name))
    apply_grants(broker, grants)
    try:
        yield {"CDR_KAFKA_USERNAME": name, "CDR_KAFKA_PASSWORD_FILE": str(password)}
    finally:
        remove_grants(broker, grants)
        _delete_user(broker, name)


def _delete_user(broker: object, name: str) -> None:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ScramMechanism,
        UserScramCredentialDeletion,
    )

    admin = AdminClient(client_config(broker))  # type: ignore[arg-type]
    deletion = UserScramCredentialDeletion(name, ScramMechanism.SCRAM_SHA_512)
    for future in admin.alter_user_scram_credentials([deletion]).values():
        future.result(timeout=30)


def test_a_worker_that_may_not_write_cdrs_stops_without_committing(
        secure_stack: SecureStack, secure_pipeline: Pipeline,
        no_cdrs_principal: dict[str, str]) -> None:
    pipeline = secure_pipeline
    identity = pipeline.component_env
    assert identity is not None
    pipeline.component_env = lambda name: {**identity(name), **no_cdrs_principal}
    start_ms = int(time.time() * 1000) - 3_600_000
    items, _, _ = traffic(200, seed=41, faults=FaultMix(), start_ms=start_ms)
    worker = pipeline.start_worker()
    with SwitchPublisher(secure_stack.kafka("publisher"), f"{pipeline.prefix}call-events") as pub:
        publish(items, pub)

    deadline = time.monotonic() + 180
    while worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)  # polling for the worker to stop, bounded by the deadline
    log = "\n".join(p.read_text("utf-8", "replace") for p in pipeline.workdir.glob("worker-*.log"))
    assert worker.returncode is not None, f"the worker kept running without write on cdrs:\n" \
                                          f"{log[-3000:]}"
    assert worker.returncode != 0
    # one line says why: the cdrs topic, not authorized, stopping before any commit
    cdrs = f"{pipeline.prefix}cdrs"
    errors = [line for line in log.splitlines()
              if (" CRITICAL " in line or " ERROR " in line or "worker: error:" in line)
              and cdrs in line and "authoriz" in line.lower()]
    assert errors, log[-3000:]

    broker = secure_stack.kafka("broker")  # the super user reads the group's offsets
    consumer = Consumer(client_config(broker, **{"group.id": pipeline.app_id}))
    try:
        committed = consumer.committed([TopicPartition(f"{pipeline.prefix}call-events", p)
                                        for p in range(PARTITIONS)], timeout=30)
        assert all(tp.offset < 0 for tp in committed), committed  # none committed
        assert sum(consumer.get_watermark_offsets(TopicPartition(f"{pipeline.prefix}cdrs", p),
                                                  timeout=30)[1]
                   for p in range(PARTITIONS)) == 0
    finally:
        consumer.close()
