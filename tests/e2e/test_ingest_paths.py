"""The other ways in, end to end: `publish` a file and POST to `ingest http`, then
the real worker and sink; the CDRs in ClickHouse equal `rate-file` on the same events.

Both ways are sent twice (the file re-published, one HTTP batch retried): the
correlator drops event ids it has seen, so nothing is rated twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.switch.simulator import FaultMix, Tick, jsonl_line
from tests.e2e.harness import CONFIG, PARTITIONS, ROOT, Pipeline, offline_final, traffic
from tests.e2e.test_pipeline import _assert_equal
from tests.ports import free_port

pytestmark = pytest.mark.e2e

TOKEN = "e2e-ingest-token-0123456789"  # noqa: S105 - a test token, not a secret


def _env(pipeline: Pipeline) -> dict[str, str]:
    return dict(os.environ, CDR_KAFKA_TOPIC_PREFIX=pipeline.prefix,
                CDR_KAFKA_BOOTSTRAP=pipeline.bootstrap, CDR_INGEST_HTTP_TOKEN=TOKEN)


def _cli(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=_env(pipeline),
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def _worker_caught_up(pipeline: Pipeline) -> bool:
    """The correlator's group has committed every call-events record there is."""
    topic = f"{pipeline.prefix}call-events"
    consumer = Consumer({"bootstrap.servers": pipeline.bootstrap, "group.id": pipeline.app_id})
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        committed = consumer.committed(tps, timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        return all(tp.offset == end for tp, end in zip(committed, ends, strict=True))
    finally:
        consumer.close()


def _once_per_call(pipeline: Pipeline) -> None:
    rows = pipeline.backend.execute(
        f"SELECT count(), uniqExact(call_id) FROM {pipeline.database}.cdr FINAL")
    assert rows[0][0] == rows[0][1], rows


def test_publish_a_file_then_worker_then_clickhouse(pipeline: Pipeline, tmp_path: Path) -> None:
    faults = FaultMix.parse("dup=0.03,reorder=0.05,missing_answer=0.02,missing_hangup=0.02")
    items, config, _ = traffic(800, seed=23, faults=faults)
    events = tmp_path / "events.jsonl"
    events.write_text("".join(jsonl_line(item) for item in items) + "this is not json\n")
    expected = offline_final(items, config)
    pipeline.start_worker()
    pipeline.start_sink()
    first = _cli(pipeline, "publish", "--config", str(CONFIG), "--events", str(events),
                 "--rejects", str(tmp_path / "rejects.jsonl"))
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    _assert_equal(pipeline, expected)
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [len(items) + 1]

    again = _cli(pipeline, "publish", "--config", str(CONFIG), "--events", str(events))
    assert again.returncode == 0, again.stderr
    pipeline.wait_for(lambda: _worker_caught_up(pipeline), 120, "the worker past the re-publish")
    _assert_equal(pipeline, expected)  # the same newest versions: nothing rated twice
    _once_per_call(pipeline)


def _post(port: int, body: bytes, token: str = TOKEN) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 - a loopback http:// URL built here
        f"http://127.0.0.1:{port}/v1/events", data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as page:  # noqa: S310
            return bool(page.status == 200)
    except OSError:
        return False


def test_http_ingest_then_worker_then_clickhouse(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ticks do not travel over HTTP, so the traffic has no calls that wait on event
    # time (no missing events): every call completes when its events are in.
    items, config, _ = traffic(600, seed=29, faults=FaultMix.parse("dup=0.03,reorder=0.05"))
    events = [item for item in items if not isinstance(item, Tick)]
    expected = offline_final(events, config)
    port = free_port()
    monkeypatch.setenv("CDR_INGEST_HTTP_TOKEN", TOKEN)  # the spawned server's environment
    server = pipeline._spawn("ingest-http", ["ingest", "http", "--config", str(CONFIG),
                                             "--port", str(port)])
    pipeline.wait_for(lambda: _ready(port), 60, "the HTTP endpoint ready")
    assert server.poll() is None
    pipeline.start_worker()
    pipeline.start_sink()

    batches = [events[i:i + 500] for i in range(0, len(events), 500)]
    for batch in batches:
        status, answer = _post(port, "".join(jsonl_line(e) for e in batch).encode())
        assert (status, answer.get("accepted"), answer.get("rejected")) == (200, len(batch), [])
    status, _ = _post(port, "".join(jsonl_line(e) for e in batches[0]).encode())  # a retry
    assert status == 200
    status, answer = _post(port, b'{"event_id": "x", "event_type": "SETUP"}\n')
    assert status == 422 and answer["accepted"] == 0
    assert [r["line"] for r in answer["rejected"]] == [1]
    assert "ts_ms" in answer["rejected"][0]["reason"]
    assert _post(port, b"[]", token="wrong-token-0123456789")[0] == 401  # noqa: S106

    _assert_equal(pipeline, expected)
    pipeline.wait_for(lambda: _worker_caught_up(pipeline), 120, "the worker past the retry")
    _assert_equal(pipeline, expected)
    _once_per_call(pipeline)
    assert server.poll() is None
