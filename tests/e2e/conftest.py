from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Pipeline


@pytest.fixture
def pipeline(kafka_bootstrap: str, clickhouse_native: object, tmp_path: Path) -> Iterator[Pipeline]:
    p = Pipeline(kafka_bootstrap, clickhouse_native, tmp_path)
    p.setup()
    yield p
    p.teardown()
