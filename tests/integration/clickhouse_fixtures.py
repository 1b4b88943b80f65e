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
