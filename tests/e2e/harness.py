"""Run the real pipeline processes (worker, sink) against the local stack for e2e tests."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig, load_config
from pipeline.core.summary import newest_versions
from pipeline.kafka.admin import default_topic_specs, delete_topics, ensure_topics, worker_topics
from pipeline.kafka.clients import client_config, settings_of
from pipeline.offline.rate_file import rate_lines
from pipeline.storage.cdr_store import fetch_newest
from pipeline.storage.migrate import migrate
from pipeline.switch.simulator import FaultMix, SimStats, generate, jsonl_line
from tests.kafka_partition import java_partition

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "demo" / "demo.toml"
PARTITIONS = 3


@dataclass
class Pipeline:
    """One isolated pipeline: its own topics, consumer groups and ClickHouse database."""

    bootstrap: str
    backend: Any
    workdir: Path
    name: str = field(default_factory=lambda: f"e2e{uuid.uuid4().hex[:8]}")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # The secured stack (tests/integration/secure_fixtures.py, which also makes and drops
    # the topics and database): the Kafka settings of the harness's own clients (offsets:
    # the admin principal), each process's environment by component ("worker", "sink":
    # its identity), the database its users may use, the ClickHouse URL's TLS options and
    # arguments put before every subcommand (e.g. -v).
    kafka: Any = None  # KafkaSettings; None: plaintext to `bootstrap`
    component_env: Callable[[str], dict[str, str]] | None = None
    database_name: str | None = None
    url_options: str = ""
    cli_args: tuple[str, ...] = ()

    @property
    def kafka_settings(self) -> Any:
        return self.kafka if self.kafka is not None else settings_of(self.bootstrap)
    # A ClickHouse cluster to migrate the database on (None: one server), and the
    # replication factor of the topics (the worker's own ones too).
    cluster: str | None = None
    replication_factor: int = 1

    @property
    def prefix(self) -> str:
        return f"{self.name}-"

    @property
    def app_id(self) -> str:
        return f"{self.prefix}corr"

    @property
    def database(self) -> str:
        return self.database_name or self.name

    def setup(self) -> None:
        ensure_topics(self.bootstrap,
                      default_topic_specs(self.prefix, PARTITIONS, self.replication_factor))
        migrate(self.backend, self.database, cluster=self.cluster)

    def teardown(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        delete_topics(self.bootstrap, [s.name for s in default_topic_specs(self.prefix, PARTITIONS, 1)]
                      + worker_topics(self.app_id))
        on_cluster = f" ON CLUSTER {self.cluster}" if self.cluster else ""
        self.backend.execute(f"DROP DATABASE IF EXISTS {self.database}{on_cluster}")

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = dict(os.environ, CDR_KAFKA_TOPIC_PREFIX=self.prefix, CDR_KAFKA_BOOTSTRAP=self.bootstrap,
                   CDR_KAFKA_PARTITIONS=str(PARTITIONS))
        if self.replication_factor != 1:
            env["CDR_KAFKA_REPLICATION_FACTOR"] = str(self.replication_factor)
        if self.component_env is not None:
            env.update(self.component_env(name))
        log = (self.workdir / f"{name}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *self.cli_args, *args],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def start_worker(self, metrics_port: int | None = None,
                     config: Path = CONFIG) -> subprocess.Popen[bytes]:
        metrics = ["--metrics-port", str(metrics_port)] if metrics_port else []
        return self._spawn("worker", ["worker", "--config", str(config), "--app-id", self.app_id,
                                      "--data-dir", str(self.workdir / "faust"), "--faust-loglevel", "info",
                                      *metrics])

    def topic_records(self, topic: str) -> int:
        """How many records `topic` (without the prefix) holds: the sum of its partitions'
        end offsets (no transactions, no compaction: one offset per record)."""
        client = Consumer(client_config(self.kafka_settings, **{"group.id": f"{self.prefix}count"}))
        try:
            return sum(client.get_watermark_offsets(TopicPartition(f"{self.prefix}{topic}", p),
                                                    timeout=30)[1] for p in range(PARTITIONS))
        finally:
            client.close()

    def start_sink(self, config: Path = CONFIG) -> subprocess.Popen[bytes]:
        url = f"native://{self.backend.host}:{self.backend.port}/{self.database}{self.url_options}"
        return self._spawn("sink", ["sink", "--config", str(config), "--group", f"{self.prefix}sink",
                                    "--clickhouse", url, "--topic", f"{self.prefix}cdrs",
                                    "--batch-rows", "500", "--batch-seconds", "0.5"])

    def stored_versions(self) -> dict[str, int]:
        rows = self.backend.execute(
            f"SELECT call_id, max(version) FROM {self.database}.cdr GROUP BY call_id")
        return {str(c): int(v) for c, v in rows}

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            for proc in self.procs:
                if proc.poll() not in (None, -signal.SIGKILL, -signal.SIGTERM, 0):
                    raise AssertionError(f"{proc.args} died with {proc.returncode}; logs in {self.workdir}")
            time.sleep(0.5)  # polling ClickHouse for a condition, bounded by the deadline
        raise AssertionError(f"timed out waiting for {what}; logs in {self.workdir}")

    def diagnose(self, want: dict[str, int], expected: dict[str, Any] | None = None) -> str:
        """What is missing after a timeout: calls per partition, and the consumer groups' offsets."""
        from confluent_kafka import Consumer, TopicPartition

        stored = self.stored_versions()
        behind: dict[int, int] = {}
        for call_id, version in want.items():
            if stored.get(call_id) != version:
                part = java_partition(call_id.encode(), PARTITIONS)
                behind[part] = behind.get(part, 0) + 1
        lines = [f"calls missing or behind, by partition: {behind}; extra: {len(set(stored) - set(want))}"]
        for call_id in [c for c in want if stored.get(c) != want[c]][:5]:
            rows = self.backend.execute(
                f"SELECT version, record_decision, decision_reason, status, hold_ms, end_ts_ms, flags FROM {self.database}.cdr "
                f"WHERE call_id = '{call_id}' ORDER BY version")
            lines.append(f"{call_id}: want version {want[call_id]}, stored {rows}")
            if expected is not None:
                lines.append(f"  expected {expected[call_id]}")
        for group, topic in ((f"{self.prefix}corr", f"{self.prefix}call-events"),
                             (f"{self.prefix}sink", f"{self.prefix}cdrs")):
            consumer = Consumer(client_config(self.kafka_settings, **{"group.id": group}))
            try:
                tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
                committed = consumer.committed(tps, timeout=10)
                for tp in committed:
                    _low, high = consumer.get_watermark_offsets(tp, timeout=10)
                    lines.append(f"{group} {topic}[{tp.partition}]: committed {tp.offset}, end {high}")
            except Exception as exc:  # noqa: BLE001 - a diagnosis; the admin may not read groups
                lines.append(f"{group}: offsets not readable here: {exc}")
            finally:
                consumer.close()
        return "\n".join(lines)

    def newest_cdrs(self) -> dict[str, RatedCdr]:
        out = {}
        for row in fetch_newest(self.backend, self.database):
            row["flags"] = tuple(row["flags"])
            out[row["call_id"]] = RatedCdr(**{k: row[k] for k in RatedCdr._fields})
        return out


def traffic(calls: int, seed: int, faults: FaultMix | None = None,
            start_ms: int = 1_764_000_000_000) -> tuple[list[Any], BillingConfig, SimStats]:
    config = load_config(CONFIG)
    stats = SimStats()
    items = list(generate(config, calls=calls, switches=4, rate_cps=40.0, seed=seed,
                          start_ms=start_ms, faults=faults or FaultMix(), stats=stats))
    return items, config, stats


def offline_final(items: list[Any], config: BillingConfig) -> dict[str, RatedCdr]:
    lines = io.StringIO("".join(jsonl_line(i) for i in items))
    return newest_versions(rate_lines(lines, config))
