"""The whole pipeline: simulator -> Kafka -> Faust worker -> Kafka -> sink -> ClickHouse.

After each run the newest CDR of every call in ClickHouse equals, field for field
(version included), what `rate-file` computes from the same events: nothing
missing, nothing extra. Crashes (SIGKILL) of the worker or the sink mid-stream,
and two workers sharing the partitions, change nothing.
"""

from __future__ import annotations

import re
import signal
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.switch.publisher import SwitchPublisher
from pipeline.switch.simulator import FaultMix, Tick, publish
from tests.e2e.harness import PARTITIONS, Pipeline, offline_final, traffic
from tests.ports import free_port

pytestmark = pytest.mark.e2e

FAULTS = FaultMix.parse("dup=0.03,reorder=0.05,missing_answer=0.02,missing_setup=0.02,missing_hangup=0.02,second_hangup=0.02")


def _publish(pipeline: Pipeline, items: list[Any], pace: float | None = None) -> None:
    with SwitchPublisher(pipeline.bootstrap, f"{pipeline.prefix}call-events") as publisher:
        publish(items, publisher, pace=pace)


def _assert_equal(pipeline: Pipeline, expected: dict[str, Any]) -> None:
    want = {c: v.version for c, v in expected.items()}
    try:
        pipeline.wait_for(lambda: pipeline.stored_versions() == want, 240, "every call's newest CDR")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{pipeline.diagnose(want, expected)}") from None
    got = pipeline.newest_cdrs()
    assert set(got) == set(expected)
    # Every version of a call is filed under one start (the worker pins it), so FINAL
    # and the dashboards' aggregates see one row per call.
    split = pipeline.backend.execute(
        f"SELECT call_id FROM {pipeline.database}.cdr GROUP BY call_id "
        "HAVING uniqExact(call_start_ms) > 1")
    assert split == [], split[:5]
    mismatched = [c for c in expected if got[c] != expected[c]]
    assert not mismatched, (mismatched[:3], [got[c] for c in mismatched[:1]], [expected[c] for c in mismatched[:1]])


def test_stream_equals_offline(pipeline: Pipeline) -> None:
    items, config, stats = traffic(2500, seed=11, faults=FAULTS)
    assert all(stats.faults[k] > 0 for k in ("dup", "reorder", "missing_answer", "missing_setup",
                                               "missing_hangup", "second_hangup"))
    expected = offline_final(items, config)
    port = free_port()
    pipeline.start_worker(metrics_port=port)
    pipeline.start_sink()
    _publish(pipeline, items)
    _assert_equal(pipeline, expected)
    # The worker's counters tell the same story as the topics: every record read once
    # (one worker, no rebalance), and one CDR counted for each record on cdrs.
    counters = _samples(f"http://127.0.0.1:{port}/metrics")
    ticks = sum(isinstance(item, Tick) for item in items)  # each to every partition
    assert counters.get(("cdr_worker_events_total", "kind", "event")) == len(items) - ticks
    assert counters.get(("cdr_worker_events_total", "kind", "tick")) == ticks * PARTITIONS > 0
    cdrs = sum(v for (name, _, _), v in counters.items() if name == "cdr_worker_cdrs_total")
    assert cdrs == pipeline.topic_records("cdrs") > len(expected)


def _samples(url: str) -> dict[tuple[str, str, str], float]:
    """The counter samples a /metrics page serves, by (name, label, label value)."""
    with urllib.request.urlopen(url, timeout=30) as page:  # noqa: S310 - an http:// URL built here
        text = page.read().decode()
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label, value in sample.labels.items():
                out[(sample.name, label, value)] = sample.value
    return out


@pytest.mark.parametrize(("component", "seed"), [("worker", 12), ("sink", 13)])
def test_component_killed_and_restarted_mid_stream(pipeline: Pipeline, component: str, seed: int) -> None:
    items, config, _ = traffic(2500, seed=seed, faults=FAULTS)
    expected = offline_final(items, config)
    worker = pipeline.start_worker()
    sink = pipeline.start_sink()
    victim, restart = (worker, pipeline.start_worker) if component == "worker" else (sink, pipeline.start_sink)
    half = len(items) // 2
    _publish(pipeline, items[:half])
    pipeline.wait_for(lambda: len(pipeline.stored_versions()) > 200, 180, "the first CDRs")
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    _publish(pipeline, items[half:])
    restart()
    _assert_equal(pipeline, expected)


def test_two_workers_in_one_group(pipeline: Pipeline) -> None:
    items, config, _ = traffic(2500, seed=14, faults=FAULTS)
    expected = offline_final(items, config)
    pipeline.start_worker()
    pipeline.start_worker()
    pipeline.start_sink()
    _publish(pipeline, items)
    _assert_equal(pipeline, expected)


def test_worker_restarted_in_the_other_changelog_format(pipeline: Pipeline) -> None:
    """The upgrade's second step (docs/operations.md, Upgrades): a worker writing JSON
    values is killed mid-stream and replaced by one writing compact values, which
    restores the JSON table (closed calls frozen from it) and goes on."""
    items, config, _ = traffic(2500, seed=15, faults=FAULTS)
    expected = offline_final(items, config)
    changelog_format = {"now": "json"}
    pipeline.component_env = lambda name: (
        {"CDR_WORKER_CHANGELOG_FORMAT": changelog_format["now"]} if name == "worker" else {})
    worker = pipeline.start_worker()
    pipeline.start_sink()
    half = len(items) // 2
    _publish(pipeline, items[:half])
    pipeline.wait_for(lambda: len(pipeline.stored_versions()) > 200, 180, "the first CDRs")
    worker.send_signal(signal.SIGKILL)
    worker.wait(30)
    changelog_format["now"] = "compact"
    _publish(pipeline, items[half:])
    pipeline.start_worker()
    _assert_equal(pipeline, expected)
    log = (pipeline.workdir / f"worker-{len(pipeline.procs) - 1}.log").read_text()
    restored = [int(n) for n in re.findall(r"(\d+) calls restored", log)]
    assert restored and sum(restored) > 200, log[-2000:]  # from the JSON table
