"""Pytest plugin: a real Kafka for integration tests (register with ``-p`` or ``pytest_plugins``).

Fixtures
- ``kafka_bootstrap`` (session): ``$CDR_KAFKA_BOOTSTRAP`` if set (must be reachable), else the
  local single broker ``127.0.0.1:19092``, started with ``deploy/local/kafka.sh up`` when it
  is not running.
- ``kafka_cluster`` (session): the local three-node cluster (``kafka.sh up --cluster``), as a
  ``LocalKafkaCluster`` with ``bootstrap``, ``stop_node(n)`` and ``start_node(n)``.

A local stack started by a test session is stopped when the last test session using it ends
(sessions hold a lease file under ``.stack/kafka/<mode>/leases/``, so concurrent sessions do
not pull the broker from under each other); ``CDR_KAFKA_KEEP=1`` leaves it running. A stack
started by hand (``kafka.sh up``) is never stopped by the tests.
- ``unique_topic`` (function): factory ``unique_topic(base, partitions=3, replication_factor=1,
  config=None, bootstrap=None) -> name`` creating a uniquely named topic, deleted afterwards.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from confluent_kafka.admin import AdminClient

from pipeline.kafka.admin import TopicSpec, delete_topics, ensure_topics

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO_ROOT / "deploy" / "local" / "kafka.sh"
SINGLE_BOOTSTRAP = "127.0.0.1:19092"
CLUSTER_BOOTSTRAP = "127.0.0.1:29092,127.0.0.1:29192,127.0.0.1:29292"
SCRIPT_TIMEOUT_S = 600  # the first run fetches the jars from Maven Central


def _keep() -> bool:
    return os.environ.get("CDR_KAFKA_KEEP", "") not in ("", "0", "false", "no")


def kafka_sh(*args: str, timeout: float = SCRIPT_TIMEOUT_S) -> str:
    """Run ``deploy/local/kafka.sh`` with ``args``; fail the test with its output on error."""
    proc = subprocess.run(
        [str(KAFKA_SH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"kafka.sh {' '.join(args)} failed (exit {proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout


def broker_ids(bootstrap: str, timeout_s: float = 5.0) -> set[int] | None:
    """Ids of the live (registered, unfenced) brokers, or None if nothing answers in time."""
    addrs = [a.rsplit(":", 1) for a in bootstrap.split(",")]
    if not any(_port_open(host, int(port)) for host, port in addrs):
        return None
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        return set(admin.list_topics(timeout=timeout_s).brokers)
    except Exception:  # noqa: BLE001 - "not reachable" is the answer
        return None


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_until(
    condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}", pytrace=False)
        time.sleep(interval_s)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def leased_stack(state: Path, is_up: Callable[[], bool], start: Callable[[], object],
                 stop: Callable[[], object], keep: Callable[[], bool] = _keep) -> Iterator[None]:
    """Run `start` unless `is_up`; after the last test session using the stack (each
    holds a lease file under `state`/leases/), run `stop` if a test session started it
    (`state`/started-by-tests) and `keep` does not say to leave it running."""
    leases = state / "leases"
    marker = state / "started-by-tests"
    leases.mkdir(parents=True, exist_ok=True)
    lease = leases / str(os.getpid())
    lease.touch()
    try:
        if not is_up():
            start()
            marker.touch()
        yield
    finally:
        lease.unlink(missing_ok=True)
        others = [f for f in leases.iterdir() if f.name.isdigit() and _pid_alive(int(f.name))]
        if marker.exists() and not others and not keep():
            stop()
            marker.unlink(missing_ok=True)


@contextmanager
def _local_stack(mode: str, is_up: Callable[[], bool], up_args: tuple[str, ...]) -> Iterator[None]:
    """Start the local stack if needed; stop it after the last test session that uses it,
    if a test session started it."""
    with leased_stack(REPO_ROOT / ".stack" / "kafka" / mode, is_up,
                      lambda: kafka_sh(*up_args), lambda: kafka_sh("down", *up_args[1:])):
        yield


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    env = os.environ.get("CDR_KAFKA_BOOTSTRAP")
    if env:
        if broker_ids(env, timeout_s=10) is None:
            pytest.fail(f"CDR_KAFKA_BOOTSTRAP={env} does not answer", pytrace=False)
        yield env
        return
    with _local_stack("single", lambda: broker_ids(SINGLE_BOOTSTRAP) is not None, ("up",)):
        yield SINGLE_BOOTSTRAP


@dataclass(frozen=True)
class LocalKafkaCluster:
    """The local three-node KRaft cluster run by ``kafka.sh --cluster``."""

    bootstrap: str = CLUSTER_BOOTSTRAP
    node_ids: tuple[int, ...] = (1, 2, 3)

    def stop_node(self, node: int) -> None:
        kafka_sh("stop-node", str(node), "--cluster")

    def start_node(self, node: int) -> None:
        """Start a node and return once it is registered and unfenced again."""
        kafka_sh("start-node", str(node), "--cluster")

    def live_brokers(self, timeout_s: float = 5.0) -> set[int]:
        return broker_ids(self.bootstrap, timeout_s) or set()


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[LocalKafkaCluster]:
    cluster = LocalKafkaCluster()
    with _local_stack(
        "cluster",
        lambda: cluster.live_brokers() == set(cluster.node_ids),
        ("up", "--cluster"),
    ):
        yield cluster


class TopicFactory(Protocol):
    def __call__(
        self,
        base: str = "t",
        partitions: int = 3,
        replication_factor: int = 1,
        config: dict[str, str] | None = None,
        bootstrap: str | None = None,
    ) -> str: ...


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Iterator[TopicFactory]:
    made: list[tuple[str, str]] = []

    def make(
        base: str = "t",
        partitions: int = 3,
        replication_factor: int = 1,
        config: dict[str, str] | None = None,
        bootstrap: str | None = None,
    ) -> str:
        bs = bootstrap or request.getfixturevalue("kafka_bootstrap")
        name = f"test-{base}-{uuid.uuid4().hex[:10]}"
        ensure_topics(bs, [TopicSpec(name, partitions, replication_factor, dict(config or {}))])
        made.append((bs, name))
        return name

    yield make
    by_bootstrap: dict[str, list[str]] = {}
    for bs, name in made:
        by_bootstrap.setdefault(bs, []).append(name)
    for bs, names in by_bootstrap.items():
        delete_topics(bs, names)
