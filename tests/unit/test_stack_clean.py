"""`stack.sh clean` deletes the topics and databases interrupted tests, benchmarks and
demo runs leave, named as they name them, and nothing the demo or a user keeps."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from types import ModuleType

from pipeline.kafka.admin import default_topic_specs, worker_topics

ROOT = Path(__file__).resolve().parents[2]


def _clean() -> ModuleType:
    path = ROOT / "deploy" / "local" / "clean.py"
    spec = importlib.util.spec_from_file_location("stack_clean", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _topics(prefix: str, app_id: str) -> list[str]:
    return [s.name for s in default_topic_specs(prefix, 3, 1)] + worker_topics(app_id)


def test_leftovers_of_tests_benchmarks_and_demo_runs_are_found() -> None:
    clean = _clean()
    hex8, hex6, hex12 = uuid.uuid4().hex[:8], uuid.uuid4().hex[:6], uuid.uuid4().hex[:12]
    topics = (_topics(f"e2e{hex8}-", f"e2e{hex8}-corr")  # tests/e2e/harness.py
              + _topics(f"bench{hex6}-", f"bench{hex6}-lat")  # bench/stream_bench.py
              + _topics(f"crash{hex8}-", f"crash{hex8}-corr")  # test_worker_crash.py
              + _topics("demo-20261126070000-", "demo-20261126070000-correlator")  # demo
              + [f"test-sink-{hex8}ab", f"rerate-bench-events-{hex8}"])
    databases = [f"e2e{hex8}", f"cdr_test_{hex12}", f"sink_test_{hex12}", f"sink_cli_{hex12}",
                 f"bench{hex6}_lat0", f"rerate_bench_{hex8}", f"rerate_bench_raw_{hex8}",
                 f"rerate_bench_{hex8}_w2",
                 f"cdr_ctest_{hex12}",  # the ClickHouse cluster's (stack.sh clean --cluster)
                 f"cbench_distq1_{hex6}", f"cbench_dash_{hex6}"]  # bench/cluster_bench.py
    assert clean.leftover_topics(topics) == sorted(topics)
    assert clean.leftover_databases(databases) == sorted(databases)


def test_the_demo_s_data_and_everything_else_stay() -> None:
    clean = _clean()
    topics = (_topics("", "cdr-correlator") + _topics("prod-", "prod-correlator")
              + ["__consumer_offsets", "demo-call-events", "e2e-notes", "bench-results"])
    databases = ["cdr", "default", "system", "cdr_bench_dashboard", "e2e", "bench_results",
                 "cdr_test", "rerate_bench_notes", "cdr_ctest", "cbench_results"]
    assert clean.leftover_topics(topics) == []
    assert clean.leftover_databases(databases) == []
