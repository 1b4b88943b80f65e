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

REPO_ROOT = Path(__file__).resolve().parents[2]
SECURE_SH = REPO_ROOT / "deploy" / "local" / "secure.sh"
BASE = REPO_ROOT / ".stack" / "secure"
IDENTITIES = BASE / "identities"
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
        for the duration of the block."""
        grants = pipeline_grants(prefix, app_id, sink_group)
        broker = self.kafka("broker")
        apply_grants(broker, grants)
        try:
            yield
        finally:
            remove_grants(broker, grants)

    def reset_database(self, database: str = TEST_DATABASE) -> None:
        """Drop and re-create `database` as the migrate user (the only one with DDL)."""
        backend = self.backend("migrate", database)
        try:
            backend.execute(f"DROP DATABASE IF EXISTS {database}")
            migrate(backend, database)
        finally:
            backend.close()


def _is_up() -> bool:
    if not (IDENTITIES / "broker.env").is_file() or not CA_FILE.is_file():
        return False
    if not (_port_open(39092) and _port_open(CLICKHOUSE_PORT)):
        return False
    try:
        backend = SecureStack().backend("migrate", "default")
        try:
            return backend.execute("SELECT 1") == [(1,)]
        finally:
            backend.close()
    except Exception:  # noqa: BLE001 - "not (fully) up" is the answer
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def secure_stack() -> Iterator[SecureStack]:
    leases = BASE / "leases"
    marker = BASE / "started-by-tests"
    leases.mkdir(parents=True, exist_ok=True)
    lease = leases / str(os.getpid())
    lease.touch()
    try:
        if not _is_up():
            secure_sh("up")
            marker.touch()
        yield SecureStack()
    finally:
        lease.unlink(missing_ok=True)
        others = [f for f in leases.iterdir() if f.name.isdigit() and _pid_alive(int(f.name))]
        keep = os.environ.get("CDR_SECURE_KEEP", "") not in ("", "0", "false", "no")
        if marker.exists() and not others and not keep:
            secure_sh("down")
            marker.unlink(missing_ok=True)


@pytest.fixture
def secure_pipeline(secure_stack: SecureStack, tmp_path: Path) -> Iterator[Any]:
    from tests.e2e.harness import Pipeline

    name = f"sec{uuid.uuid4().hex[:8]}"
    prefix = f"{name}-"
    app_id, sink_group = f"{prefix}corr", f"{prefix}sink"
    admin = secure_stack.kafka("admin")
    specs = default_topic_specs(prefix, PARTITIONS, 1)
    secure_stack.reset_database()
    backend = secure_stack.backend("migrate")
    pipeline = Pipeline(
        KAFKA_SASL, backend, tmp_path, name=name, kafka=admin,
        component_env=secure_stack.env, database_name=TEST_DATABASE,
        url_options=f"?secure=1&ca_file={CA_FILE}",
    )
    assert pipeline.app_id == app_id
    with secure_stack.grants(prefix, app_id, sink_group):
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
