"""Runtime settings: file, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.runtime.settings import load_settings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_file_and_environment(tmp_path: Path) -> None:
    assert load_settings(env={}).worker.fetch_wait_ms == 100
    path = _write(tmp_path, "[worker]\nfetch_wait_ms = 250\ncommit_interval_s = 2\n")
    assert load_settings(path, env={}).worker.fetch_wait_ms == 250
    settings = load_settings(path, env={"CDR_WORKER_FETCH_WAIT_MS": "40"})
    assert (settings.worker.fetch_wait_ms, settings.worker.commit_interval_s) == (40, 2.0)
    assert load_settings(env={}).worker.compression == "snappy"
    assert load_settings(env={}).worker.fetch_min_bytes == 32768
    assert load_settings(env={"CDR_WORKER_COMPRESSION": "zstd"}).worker.compression == "zstd"
    assert load_settings(env={"CDR_CLICKHOUSE_CLUSTER": "cdr_2x2"}).clickhouse.cluster == "cdr_2x2"


@pytest.mark.parametrize(("text", "env", "message"), [
    ("[worker]\nfetch_wait_ms = 0\n", {}, "worker.fetch_wait_ms: must be 1-30000, got 0"),
    ("", {"CDR_WORKER_FETCH_WAIT_MS": "soon"}, "CDR_WORKER_FETCH_WAIT_MS: expected int, got 'soon'"),
    ("[worker]\nfetch_wait = 5\n", {}, "worker.fetch_wait: unknown key"),
    ("[kafka]\npartitions = 0\n", {}, "kafka.partitions: must be >= 1"),
    ("[worker]\nfetch_min_bytes = 0\n", {}, "worker.fetch_min_bytes: must be 1-1048576, got 0"),
    ("", {"CDR_WORKER_COMPRESSION": "lzma"},
     "worker.compression: must be one of none, snappy, lz4, zstd, gzip, got 'lzma'"),
    ('[clickhouse]\ncluster = "cdr; DROP DATABASE cdr"\n', {},
     "clickhouse.cluster: 'cdr; DROP DATABASE cdr' is not a cluster name"),
    ("", {"CDR_CLICKHOUSE_CLUSTER": "2shards"}, "clickhouse.cluster: '2shards' is not a cluster"),
])
def test_a_bad_value_fails_at_load_naming_the_key(tmp_path: Path, text: str, env: dict[str, str],
                                                  message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(_write(tmp_path, text), env=env)
    assert message in str(raised.value)
