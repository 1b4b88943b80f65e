"""Pytest fixtures: the secured stack (deploy/local/secure.sh) for the `secure` tests.

Import the fixtures into a test module (``from tests.integration.secure_fixtures import
secure_stack, secure_pipeline  # noqa: F401``).

- ``secure_stack`` (session): the secured Kafka (SASL_SSL 39092, mTLS 39094, ACLs) and
  ClickHouse (TLS 39440, a user per component), started with ``secure.sh up`` when not
  running and stopped after the last test session that uses it, if a test session
  started it (leases under ``.stack/secure/leases/``; ``CDR_SECURE_KEEP=1`` keeps it).
  A ``SecureStack`` hands out each component's settings (its identity file), grants a
  test's ACLs and resets the test database.
- ``secure_pipeline`` (function): the e2e harness's ``Pipeline`` on the secured stack:
  its own topic prefix, worker app id and sink group, their ACLs, the topics made by the
  admin principal, the database ``cdr_test`` emptied, every process under its own
  identity.
- ``secure_cluster`` (session) and ``secure_cluster_pipeline`` (function): the same on
  the secured three-broker Kafka (``secure.sh up --cluster``: SASL_SSL 49092/49192/49292,
  the same principals, ACLs and ClickHouse; topics RF 3, min.insync.replicas 2), as a
  ``SecureCluster`` that also stops and starts a broker (``kafka.sh stop-node N
  --cluster --secure``). Its leases are under ``.stack/secure/kafka-cluster/leases/``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.kafka.acls import apply_grants, pipeline_grants, remove_grants
from pipeline.kafka.admin import default_topic_specs, delete_topics, ensure_topics, worker_topics
from pipeline.runtime.settings import (
    ClickHouseSettings,
    KafkaSettings,
    Settings,
    load_settings,
    read_env_file,
)
from pipeline.storage.migrate import migrate
from pipeline.storage.url import open_clickhouse
from tests.integration.kafka_fixtures import kafka_sh, leased_stack

REPO_ROOT = Path(__file__).resolve().parents[2]
SECURE_SH = REPO_ROOT / "deploy" / "local" / "secure.sh"
BASE = REPO_ROOT / ".stack" / "secure"
IDENTITIES = BASE / "identities"
CLUSTER_IDENTITIES = BASE / "identities-cluster"
SECRETS = BASE / "secrets"
CA_FILE = BASE / "tls" / "ca.pem"
KAFKA_SASL = "127.0.0.1:39092"
KAFKA_MTLS = "127.0.0.1:39094"
CLICKHOUSE_PORT = 39440
TEST_DATABASE = "cdr_test"  # one of the databases secure.sh lets its users use
PARTITIONS = 3


def secure_sh(*args: str, timeout: float = 900) -> str:
    """Run deploy/local/secure.sh; fail the test with its output on error."""
    proc = subprocess.run([str(SECURE_SH), *args], capture_output=True, text=True,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        pytest.fail(f"secure.sh {' '.join(args)} failed (exit {proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr}", pytrace=False)
    return proc.stdout


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class SecureStack:
    """The running secured stack and the identities of its components."""

    identities: Path = IDENTITIES
    node_ids: tuple[int, ...] = (1,)

    @property
    def bootstrap(self) -> str:
        """The SASL_SSL listeners' addresses, as the identities have them."""
        return self.env("broker")["CDR_KAFKA_BOOTSTRAP"]

    def env(self, name: str) -> dict[str, str]:
        """The CDR_* settings of component `name` (paths of secret files, no secret)."""
        return read_env_file(self.identities / f"{name}.env")

    def settings(self, name: str, **env: str) -> Settings:
        return load_settings(env={**self.env(name), **env})

    def kafka(self, name: str) -> KafkaSettings:
        return self.settings(name).kafka

    def clickhouse(self, name: str) -> ClickHouseSettings:
        return self.settings(name).clickhouse

    def url(self, database: str = TEST_DATABASE) -> str:
        """The TLS port's URL for `database`, with the TLS options in it."""
        return f"native://127.0.0.1:{CLICKHOUSE_PORT}/{database}?secure=1&ca_file={CA_FILE}"

    def backend(self, name: str, database: str = TEST_DATABASE) -> Any:
        """A ClickHouse backend logged in as component `name`'s user, over TLS."""
        backend, _ = open_clickhouse(self.clickhouse(name), self.url(database))
        return backend

    def secrets(self) -> dict[str, str]:
        """Every password and token of the stack, by file name (for the leak test)."""
        return {p.name: p.read_text(encoding="utf-8").strip() for p in SECRETS.iterdir()
                if p.is_file()}

    @contextmanager
    def grants(self, prefix: str, app_id: str, sink_group: str) -> Iterator[None]:
        """The ACLs of a deployment with these names, applied by the broker's super user
        for the duration of the block. Those it shares with the stack's own deployment
        (rerate's group prefix, which pipeline.rerate names its groups with) stay."""
        grants = pipeline_grants(prefix, app_id, sink_group)
        shared = pipeline_grants()
        broker = self.kafka("broker")
        apply_grants(broker, grants)
        try:
            yield
        finally:
            remove_grants(broker, [g for g in grants if g not in shared])

    def reset_database(self, database: str = TEST_DATABASE) -> None:
        """Drop and re-create `database` as the migrate user (the only one with DDL)."""
        backend = self.backend("migrate", database)
        try:
            backend.execute(f"DROP DATABASE IF EXISTS {database}")
            migrate(backend, database)
        finally:
            backend.close()

    def live_brokers(self, timeout_s: float = 5.0) -> set[int]:
        """Ids of the brokers in the cluster's metadata, asked as the broker's super user
        (empty if nothing answers)."""
        from confluent_kafka.admin import AdminClient

        from pipeline.kafka.clients import client_config

        admin = AdminClient(client_config(self.kafka("broker"), log_level=0))
        try:
            return set(admin.list_topics(timeout=timeout_s).brokers)
        except Exception:  # noqa: BLE001 - "not reachable" is the answer
            return set()


@dataclass(frozen=True)
class SecureCluster(SecureStack):
    """The secured three-broker Kafka (kafka.sh --cluster --secure) and the secured
    ClickHouse: the same principals and ACLs as the single node, topics RF 3."""

    identities: Path = CLUSTER_IDENTITIES
    node_ids: tuple[int, ...] = (1, 2, 3)

    def stop_node(self, node: int) -> None:
        kafka_sh("stop-node", str(node), "--cluster", "--secure")

    def start_node(self, node: int) -> None:
        """Start a broker and return once it is registered and unfenced again."""
        kafka_sh("start-node", str(node), "--cluster", "--secure")


def _is_up(stack: SecureStack) -> bool:
    """Every broker of `stack` live and ClickHouse answering its migrate user."""
    if not (stack.identities / "broker.env").is_file() or not CA_FILE.is_file():
        return False
    ports = [int(a.rsplit(":", 1)[1]) for a in stack.bootstrap.split(",")]
    if not all(_port_open(p) for p in [*ports, CLICKHOUSE_PORT]):
        return False
    if stack.live_brokers() != set(stack.node_ids):
        return False
    try:
        backend = stack.backend("migrate", "default")
        try:
            return bool(backend.execute("SELECT 1") == [(1,)])
        finally:
            backend.close()
    except Exception:  # noqa: BLE001 - "not (fully) up" is the answer
        return False


def _keep() -> bool:
    return os.environ.get("CDR_SECURE_KEEP", "") not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def secure_stack() -> Iterator[SecureStack]:
    stack = SecureStack()
    with leased_stack(BASE, lambda: _is_up(stack), lambda: secure_sh("up"),
                      lambda: secure_sh("down"), _keep):
        yield stack


@pytest.fixture(scope="session")
def secure_cluster() -> Iterator[SecureCluster]:
    cluster = SecureCluster()
    with leased_stack(BASE / "kafka-cluster", lambda: _is_up(cluster),
                      lambda: secure_sh("up", "--cluster"),
                      lambda: secure_sh("down", "--cluster"), _keep):
        yield cluster


@contextmanager
def pipeline_on(stack: SecureStack, tmp_path: Path) -> Iterator[Any]:
    """The e2e harness's Pipeline on `stack` with names, ACLs and topics of its own
    (replicated as the stack's identities say) and `cdr_test` emptied."""
    from tests.e2e.harness import Pipeline

    name = f"sec{uuid.uuid4().hex[:8]}"
    prefix = f"{name}-"
    app_id, sink_group = f"{prefix}corr", f"{prefix}sink"
    admin = stack.kafka("admin")
    specs = default_topic_specs(prefix, PARTITIONS, admin.replication_factor)
    stack.reset_database()
    backend = stack.backend("migrate")
    pipeline = Pipeline(
        stack.bootstrap, backend, tmp_path, name=name, kafka=admin,
        component_env=stack.env, database_name=TEST_DATABASE,
        url_options=f"?secure=1&ca_file={CA_FILE}", replication_factor=admin.replication_factor,
    )
    assert pipeline.app_id == app_id
    with stack.grants(prefix, app_id, sink_group):
        ensure_topics(admin, specs)
        try:
            yield pipeline
        finally:
            for proc in pipeline.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)
            delete_topics(admin, [s.name for s in specs] + worker_topics(app_id))
            backend.close()


@pytest.fixture
def secure_pipeline(secure_stack: SecureStack, tmp_path: Path) -> Iterator[Any]:
    with pipeline_on(secure_stack, tmp_path) as pipeline:
        yield pipeline


@pytest.fixture
def secure_cluster_pipeline(secure_cluster: SecureCluster, tmp_path: Path) -> Iterator[Any]:
    with pipeline_on(secure_cluster, tmp_path) as pipeline:
        yield pipeline
