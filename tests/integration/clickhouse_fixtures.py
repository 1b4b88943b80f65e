"""Pytest plugin: ClickHouse backends for integration tests.

Register with `-p tests.integration.clickhouse_fixtures` (or from a
conftest's `pytest_plugins`). Fixtures:

* `clickhouse_native` (session): a NativeBackend on `CDR_CLICKHOUSE_HOST` /
  `CDR_CLICKHOUSE_PORT` if set, else 127.0.0.1:19000. When nothing answers
  there and no address was configured, it runs `deploy/local/clickhouse.sh
  up` (installing the Debian package if needed) and stops the server again
  at the end of the session unless `CDR_CLICKHOUSE_KEEP_RUNNING=1`.
* `chdb_backend` (function): an EmbeddedBackend on a fresh tmp_path directory.
* `storage_backend` (function, parametrised "native" / "embedded"): one of
  the two, so a test runs against 18.16 and current ClickHouse.
* `clickhouse_database`: a unique database name for the test, dropped on
  the `storage_backend` afterwards (migrations create it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.errors import StorageError
from tests.integration.kafka_fixtures import leased_stack

REPO_ROOT = Path(__file__).resolve().parents[2]
CLICKHOUSE_SH = REPO_ROOT / "deploy" / "local" / "clickhouse.sh"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 19000


def _reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _run_script(command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLICKHOUSE_SH), command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def clickhouse_native() -> Iterator[ClickHouseBackend]:
    from pipeline.storage.native import NativeBackend

    host_env = os.environ.get("CDR_CLICKHOUSE_HOST")
    port_env = os.environ.get("CDR_CLICKHOUSE_PORT")
    host = host_env or DEFAULT_HOST
    port = int(port_env) if port_env else DEFAULT_PORT
    started_here = False
    if not _reachable(host, port):
        if (host, port) != (DEFAULT_HOST, DEFAULT_PORT):
            pytest.fail(f"ClickHouse at {host}:{port} (CDR_CLICKHOUSE_HOST/PORT) is not reachable")
        proc = _run_script("up", timeout=900)
        if proc.returncode != 0:
            pytest.fail(
                f"{CLICKHOUSE_SH} up failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
            )
        started_here = True
    backend = NativeBackend(host=host, port=port)
    deadline = time.monotonic() + 30
    while not backend.ping():
        if time.monotonic() > deadline:
            pytest.fail(f"ClickHouse at {host}:{port} accepts connections but not queries")
        time.sleep(0.2)
    try:
        yield backend
    finally:
        backend.close()
        if started_here and os.environ.get("CDR_CLICKHOUSE_KEEP_RUNNING") != "1":
            _run_script("down", timeout=120)


@pytest.fixture
def chdb_backend(tmp_path: Path) -> Iterator[ClickHouseBackend]:
    pytest.importorskip("chdb")
    from pipeline.storage.embedded import EmbeddedBackend

    backend = EmbeddedBackend(tmp_path / "chdb")
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(params=["native", "embedded"])
def storage_backend(request: pytest.FixtureRequest) -> ClickHouseBackend:
    name = "clickhouse_native" if request.param == "native" else "chdb_backend"
    backend: ClickHouseBackend = request.getfixturevalue(name)
    return backend


@pytest.fixture
def clickhouse_database(storage_backend: ClickHouseBackend) -> Iterator[str]:
    name = f"cdr_test_{uuid.uuid4().hex[:12]}"
    yield name
    try:
        storage_backend.execute(f"DROP DATABASE IF EXISTS {name}")
    except StorageError:
        pass  # the test may have closed the backend; the tmp dir / server reset cleans up


# -- the 2 x 2 cluster ------------------------------------------------------------------
# `clickhouse_cluster` (session): the local cluster of `clickhouse.sh up --cluster` (2 shards
# x 2 replicas on 127.0.0.1:19100-19103, ZooKeeper on 12181), started when it does not
# answer and stopped after the last test session that uses it, if a test session started
# it (lease files under .stack/clickhouse-cluster/leases/, as kafka_fixtures does for the
# Kafka cluster; CDR_CLICKHOUSE_KEEP_RUNNING=1 leaves it running).
# `cluster_database` (function): a unique database name, dropped ON CLUSTER afterwards.

CLUSTER_NAME = "cdr_cluster"
CLUSTER_PORTS = (19100, 19101, 19102, 19103)  # nodes 1..4; shard 1 = nodes 1, 2


def clickhouse_sh(*args: str, timeout: float = 900) -> str:
    """Run clickhouse.sh with `args`; fail the test with its output on error."""
    proc = subprocess.run(
        [str(CLICKHOUSE_SH), *args], capture_output=True, text=True, timeout=timeout,
        check=False, stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        pytest.fail(f"clickhouse.sh {' '.join(args)} failed (exit {proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr[-3000:]}", pytrace=False)
    return proc.stdout


class LocalClickHouseCluster:
    """The local 2 x 2 cluster: backends on its nodes, and faults (stop, SIGKILL, start)."""

    name = CLUSTER_NAME
    nodes = (1, 2, 3, 4)

    def __init__(self) -> None:
        self._backends: dict[int, ClickHouseBackend] = {}

    @staticmethod
    def port(node: int) -> int:
        return CLUSTER_PORTS[node - 1]

    @staticmethod
    def shard_of(node: int) -> int:
        return (node + 1) // 2

    def url(self, database: str, node: int = 1) -> str:
        return f"native://{DEFAULT_HOST}:{self.port(node)}/{database}"

    def backend(self, node: int = 1) -> ClickHouseBackend:
        """A backend on `node`, kept for the session (reconnects after a restart)."""
        if node not in self._backends:
            from pipeline.storage.native import NativeBackend

            self._backends[node] = NativeBackend(DEFAULT_HOST, self.port(node))
        return self._backends[node]

    def answers(self, node: int) -> bool:
        try:
            return self.backend(node).execute("SELECT 1") == [(1,)]
        except StorageError:
            return False

    def stop_node(self, node: int) -> None:
        clickhouse_sh("stop-node", str(node), "--cluster")

    def kill_node(self, node: int) -> None:
        """SIGKILL: a crash, nothing flushed or handed over."""
        clickhouse_sh("kill-node", str(node), "--cluster")

    def start_node(self, node: int) -> None:
        """Start a node and return once it answers."""
        clickhouse_sh("start-node", str(node), "--cluster")

    def sync_replicas(self, database: str, table: str) -> None:
        """Wait until every replica has fetched what its shard's log holds."""
        for node in self.nodes:
            self.backend(node).execute(f"SYSTEM SYNC REPLICA {database}.{table}")

    def counts(self, database: str, table: str) -> dict[int, int]:
        """Rows of `table` on each node (its local, replicated table)."""
        return {
            node: int(self.backend(node).execute(f"SELECT count() FROM {database}.{table}")[0][0])
            for node in self.nodes
        }

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()


def _cluster_up(cluster: LocalClickHouseCluster) -> bool:
    return all(_reachable(DEFAULT_HOST, cluster.port(n)) for n in cluster.nodes)


def _keep_running() -> bool:
    return os.environ.get("CDR_CLICKHOUSE_KEEP_RUNNING") == "1"


@pytest.fixture(scope="session")
def clickhouse_cluster() -> Iterator[LocalClickHouseCluster]:
    """The four-server cluster, started unless it answers; stopped after the last test
    session using it if a test session started it (kafka_fixtures.leased_stack)."""
    cluster = LocalClickHouseCluster()
    with leased_stack(REPO_ROOT / ".stack" / "clickhouse-cluster",
                      lambda: _cluster_up(cluster),
                      lambda: clickhouse_sh("up", "--cluster"),
                      lambda: clickhouse_sh("down", "--cluster", timeout=300),
                      _keep_running):
        try:
            yield cluster
        finally:
            cluster.close()


@pytest.fixture
def cluster_database(clickhouse_cluster: LocalClickHouseCluster) -> Iterator[str]:
    name = f"cdr_ctest_{uuid.uuid4().hex[:12]}"
    yield name
    for node in clickhouse_cluster.nodes:  # every node up again before the drop
        if not clickhouse_cluster.answers(node):
            clickhouse_cluster.start_node(node)
    try:
        clickhouse_cluster.backend(1).execute(
            f"DROP DATABASE IF EXISTS {name} ON CLUSTER {CLUSTER_NAME}")
    except StorageError:
        pass  # `stack.sh clean` / `clickhouse.sh reset --cluster` removes what is left
