"""The cost of TLS: the worker and the sink on the secured stack beside the plaintext one,
in one run (not a test).

    .venv/bin/python bench/secure_bench.py [--calls 12000] [--rate 5000] [--seconds 30]
        [--order plain,secure]

For each stack, the same work:
  1. worker throughput: events/s through one worker from a prefilled call-events topic
     (over the span of its output's timestamps, as bench/stream_bench.py times it);
  2. sink throughput: CDR rows/s through `cdr-pipeline sink` from the CDRs it made
     (from its first committed batch to its last);
  3. latency at --rate events/s with a worker and a sink running: per HANGUP, the time
     until its call's first CDR is on the cdrs topic (p50, p99) and until it is
     queryable in ClickHouse (p50, p99).
Plaintext: the local stack (deploy/local/stack.sh up, 19092/19000). Secured: SASL_SSL
SCRAM-SHA-512 and ACLs on 39092, ClickHouse TLS on 39440 (deploy/local/secure.sh up),
each process under its own identity. Both must be running. Topics, ACLs and the
databases it makes are removed at the end. The machine is shared by both stacks and
everything else running on it: compare figures of the same run only.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_bench import (  # noqa: E402
    CONFIG,
    PARTITIONS,
    POLL_S,
    _stop,
    _wait_quiet,
    first_record_times,
    proc_cpu_s,
    timestamps_span,
)

from pipeline.avro import codec  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.kafka.acls import apply_grants, pipeline_grants, remove_grants  # noqa: E402
from pipeline.kafka.admin import (  # noqa: E402
    default_topic_specs,
    delete_topics,
    ensure_topics,
    worker_topics,  # noqa: E402
)
from pipeline.kafka.clients import client_config  # noqa: E402
from pipeline.offline.rate_file import rate_lines  # noqa: E402
from pipeline.runtime.settings import KafkaSettings, load_settings, read_env_file  # noqa: E402
from pipeline.storage.migrate import migrate  # noqa: E402
from pipeline.storage.url import open_clickhouse  # noqa: E402
from pipeline.switch.simulator import FaultMix, Tick, generate, jsonl_line  # noqa: E402

IDENTITIES = ROOT / ".stack" / "secure" / "identities"
SECURE_CA = ROOT / ".stack" / "secure" / "tls" / "ca.pem"


@dataclass
class Stack:
    """One stack and how each component logs in to it."""

    name: str
    env_of: Callable[[str], dict[str, str]]  # component -> its CDR_* settings
    ch_url: Callable[[str], str]  # database -> the URL its processes get
    secured: bool

    def kafka(self, component: str) -> KafkaSettings:
        return load_settings(env=self.env_of(component)).kafka

    def backend(self, component: str, database: str) -> Any:
        backend, _ = open_clickhouse(load_settings(env=self.env_of(component)).clickhouse,
                                     self.ch_url(database))
        return backend


def plain_stack() -> Stack:
    env = {"CDR_KAFKA_BOOTSTRAP": "127.0.0.1:19092"}
    return Stack("plaintext", lambda _component: dict(env),
                 lambda db: f"native://127.0.0.1:19000/{db}", secured=False)


def secure_stack() -> Stack:
    if not (IDENTITIES / "broker.env").is_file():
        raise SystemExit("the secured stack is not set up: bash deploy/local/secure.sh up")
    return Stack("secured", lambda component: read_env_file(IDENTITIES / f"{component}.env"),
                 lambda db: f"native://127.0.0.1:39440/{db}?secure=1&ca_file={SECURE_CA}",
                 secured=True)


@dataclass
class Deployment:
    """A run's topics, consumer groups, ACLs (secured) and database on one stack."""

    stack: Stack
    prefix: str
    database: str
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def app_id(self) -> str:
        return f"{self.prefix}corr"

    @property
    def sink_group(self) -> str:
        return f"{self.prefix}sink"

    def spawn(self, component: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = dict(os.environ, **self.stack.env_of(component), CDR_KAFKA_TOPIC_PREFIX=self.prefix,
                   CDR_KAFKA_PARTITIONS=str(PARTITIONS))
        log = (self.workdir / f"{self.prefix}{component}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def worker(self) -> subprocess.Popen[bytes]:
        return self.spawn("worker", ["worker", "--config", str(CONFIG), "--app-id", self.app_id,
                                     "--data-dir", str(self.workdir / f"faust-{self.prefix}")])

    def sink(self) -> subprocess.Popen[bytes]:
        return self.spawn("sink", ["sink", "--config", str(CONFIG), "--group", self.sink_group,
                                   "--topic", f"{self.prefix}cdrs", "--batch-seconds", "0.5",
                                   "--clickhouse", self.stack.ch_url(self.database)])

    def consumer(self, component: str, group: str) -> Consumer:
        return Consumer(client_config(self.stack.kafka(component), **{
            "group.id": group, "enable.auto.commit": False, "auto.offset.reset": "earliest"}))

    def end_offsets(self, topic: str) -> int:
        c = self.consumer("admin" if self.stack.secured else "sink", f"{self.prefix}probe")
        try:
            return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=15)[1]
                       for p in range(PARTITIONS))
        finally:
            c.close()


@contextmanager
def deployment(stack: Stack, workdir: Path) -> Iterator[Deployment]:
    prefix = f"secbench{uuid.uuid4().hex[:6]}-"
    database = "cdr_test" if stack.secured else f"secbench_{uuid.uuid4().hex[:6]}"
    dep = Deployment(stack, prefix, database, workdir)
    admin = stack.kafka("admin")
    grants = pipeline_grants(prefix, dep.app_id, dep.sink_group)
    if stack.secured:
        apply_grants(stack.kafka("broker"), grants)
    ensure_topics(admin, default_topic_specs(prefix, PARTITIONS, 1))
    ddl = stack.backend("migrate", database)
    ddl.execute(f"DROP DATABASE IF EXISTS {database}")
    migrate(ddl, database)
    try:
        yield dep
    finally:
        for proc in dep.procs:
            if proc.poll() is None:
                _stop(proc)
        delete_topics(admin, [s.name for s in default_topic_specs(prefix, PARTITIONS, 1)]
                      + worker_topics(dep.app_id))
        if stack.secured:
            remove_grants(stack.kafka("broker"), grants)
        ddl.execute(f"DROP DATABASE IF EXISTS {database}")
        ddl.close()


def _traffic(calls: int, rate_cps: float, seed: int) -> list[Any]:
    return list(generate(load_config(CONFIG), calls=calls, switches=4, rate_cps=rate_cps,
                         seed=seed, start_ms=int(time.time() * 1000) - 3_600_000,
                         faults=FaultMix.none(), final_tick=True))


def _produce(dep: Deployment, records: list[tuple[str, bool, bytes]], rate: float | None,
             hangup_at: dict[str, float] | None = None) -> float:
    """Publish as the publisher (at `rate` events/s, or flat out); the achieved rate."""
    producer = Producer(client_config(dep.stack.kafka("publisher"), **{
        "enable.idempotence": True, "acks": "all", "linger.ms": 5,
        "partitioner": "murmur2_random"}))
    topic = f"{dep.prefix}call-events"
    started = time.perf_counter()
    sent = 0
    while sent < len(records):
        due = len(records) if rate is None else min(
            len(records), int((time.perf_counter() - started) * rate) + 1)
        for key, is_hangup, value in records[sent:due]:
            while True:
                try:
                    producer.produce(topic, key=key.encode(), value=value)
                    break
                except BufferError:
                    producer.poll(0.05)
            if is_hangup and hangup_at is not None:
                hangup_at.setdefault(key, time.time())
        sent = due
        producer.poll(0.001)
    achieved = len(records) / (time.perf_counter() - started)
    if producer.flush(60):
        raise SystemExit(f"{dep.stack.name}: events not acknowledged within 60 s")
    return achieved


def _records(items: list[Any], dep: Deployment) -> list[tuple[str, bool, bytes]]:
    """(key, is HANGUP, value) of the events; ticks (to every partition) are published
    apart, by `_publish_ticks`."""
    return [(i["call_id"], i["event_type"] == "HANGUP", codec.encode_event_dict(i))
            for i in items if not isinstance(i, Tick)]


def _publish_ticks(dep: Deployment, items: list[Any]) -> None:
    from pipeline.switch.publisher import SwitchPublisher

    with SwitchPublisher(dep.stack.kafka("publisher"), f"{dep.prefix}call-events") as pub:
        for item in items:
            if isinstance(item, Tick):
                pub.publish_tick(item.ts_ms)


def _span_s(dep: Deployment, topic: str, expected: int) -> float:
    """Seconds between the first and last record timestamps of `topic` (read by the sink)."""
    c = dep.consumer("sink", dep.sink_group)
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    return timestamps_span(c, expected, timeout_s=120)


@dataclass
class Rate:
    per_s: float  # records per second of wall clock
    cpu_us: float  # CPU microseconds of the process per record (all threads)


def worker_throughput(dep: Deployment, items: list[Any], expected_cdrs: int) -> Rate:
    """Events/s over the span of the output's timestamps; CPU per event from the first
    output seen to the last (start-up left out)."""
    records = _records(items, dep)
    _produce(dep, records, None)
    _publish_ticks(dep, items)
    proc = dep.worker()
    deadline = time.monotonic() + 900
    cpu_first: tuple[float, int] | None = None
    while (done := dep.end_offsets(f"{dep.prefix}cdrs")) < expected_cdrs:
        if done and cpu_first is None:
            cpu_first = (proc_cpu_s(proc.pid), done)
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"{dep.stack.name}: the worker did not finish; see {dep.workdir}")
        time.sleep(0.5)  # polling the output topic's end offsets
    cpu = proc_cpu_s(proc.pid)
    _stop(proc)
    span = _span_s(dep, f"{dep.prefix}cdrs", expected_cdrs)
    first_cpu, first_done = cpu_first or (0.0, 0)
    share = (expected_cdrs - first_done) / expected_cdrs  # of the events, after the first look
    cpu_us = (cpu - first_cpu) / max(len(records) * share, 1) * 1e6
    return Rate(len(records) / span if span > 0 else float("inf"), cpu_us)


def sink_throughput(dep: Deployment) -> Rate:
    topic = f"{dep.prefix}cdrs"
    total = dep.end_offsets(topic)
    proc = dep.sink()
    probe = dep.consumer("sink", dep.sink_group)  # the sink's own group: its committed offsets
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    first = None
    deadline = time.monotonic() + 900
    try:
        while True:
            count = sum(max(0, tp.offset) for tp in probe.committed(tps, timeout=15))
            now = time.perf_counter()
            if count and first is None:
                first = (now, count, proc_cpu_s(proc.pid))
            if count >= total:
                cpu = proc_cpu_s(proc.pid)
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"{dep.stack.name}: the sink did not finish; see {dep.workdir}")
            time.sleep(0.05)  # polling the group's committed offsets
    finally:
        probe.close()
        _stop(proc)
    assert first is not None
    if first[1] >= total:
        raise SystemExit("all CDRs came in one sink batch: use more --calls")
    rows = total - first[1]
    return Rate(rows / max(now - first[0], 1e-9), (cpu - first[2]) / rows * 1e6)


@dataclass
class Latency:
    achieved: float
    to_topic: list[float]
    to_clickhouse: list[float]


def latency(dep: Deployment, rate: float, seconds: float) -> Latency:
    items = _traffic(int(rate * seconds / 3.7), rate / 3.7, seed=78)
    records = _records(items, dep)
    worker, sink = dep.worker(), dep.sink()
    _wait_started(dep, [worker, sink])
    _wait_quiet()
    hangup_at: dict[str, float] = {}
    stored_at: dict[str, float] = {}
    stop = threading.Event()
    reader = "report" if dep.stack.secured else "migrate"
    poller = threading.Thread(target=_poll_stored, args=(dep, reader, stored_at, stop),
                              daemon=True)
    poller.start()
    achieved = _produce(dep, records, rate, hangup_at)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(stored_at) < len(hangup_at):
        time.sleep(0.1)  # waiting for the poller to see the last calls
    stop.set()
    poller.join()
    _stop(worker)
    _stop(sink)
    on_topic = _first_cdr_times(dep, set(hangup_at))
    return Latency(achieved,
                   sorted(on_topic[c] - t for c, t in hangup_at.items() if c in on_topic),
                   sorted(stored_at[c] - t for c, t in hangup_at.items() if c in stored_at))


def _wait_started(dep: Deployment, procs: list[subprocess.Popen[bytes]]) -> None:
    """Until the worker's and the sink's groups are stable with every partition assigned
    (each asked by its own principal: a group's description needs DESCRIBE on it)."""
    for component, group, topic in (("worker", dep.app_id, f"{dep.prefix}call-events"),
                                    ("sink", dep.sink_group, f"{dep.prefix}cdrs")):
        admin = AdminClient(client_config(dep.stack.kafka(component)))
        deadline = time.monotonic() + 180
        while True:
            if any(proc.poll() is not None for proc in procs):
                raise SystemExit(f"{dep.stack.name}: a process exited; see {dep.workdir}")
            (described,) = admin.describe_consumer_groups([group], request_timeout=10).values()
            try:
                info = described.result()
            except KafkaException:
                info = None  # not there yet
            if info is not None and info.state == ConsumerGroupState.STABLE:
                owned = {tp.partition for m in info.members
                         for tp in m.assignment.topic_partitions if tp.topic == topic}
                if owned == set(range(PARTITIONS)):
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{dep.stack.name}: {group} not assigned {topic} within 180 s")
            time.sleep(0.2)  # polling the group coordinator


def _poll_stored(dep: Deployment, reader: str, stored_at: dict[str, float],
                 stop: threading.Event) -> None:
    """Every POLL_S, the calls whose CDR is newly queryable (parts not seen before)."""
    backend = dep.stack.backend(reader, dep.database)
    known: set[str] = set()
    try:
        while not stop.is_set():
            parts = [name for (name,) in backend.execute(
                "SELECT name FROM system.parts WHERE database = {db:String} AND table = 'cdr' "
                "AND active", {"db": dep.database}) if name not in known]
            now = time.time()
            if parts:
                known.update(parts)
                names = ", ".join(f"'{n}'" for n in parts)
                for (call_id,) in backend.execute(
                        f"SELECT call_id FROM {dep.database}.cdr WHERE _part IN ({names})"):
                    stored_at.setdefault(call_id, now)
            stop.wait(POLL_S)
    finally:
        backend.close()


def _first_cdr_times(dep: Deployment, calls: set[str]) -> dict[str, float]:
    c = dep.consumer("sink", dep.sink_group)
    c.assign([TopicPartition(f"{dep.prefix}cdrs", p, 0) for p in range(PARTITIONS)])
    return first_record_times(c, calls)


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    return f"{statistics.quantiles(values, n=100)[q - 1] * 1000:.0f}" if len(values) > 1 else \
        f"{values[0] * 1000:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=12000, help="calls of the throughput runs")
    parser.add_argument("--rate", type=float, default=5000.0, help="events/s of the latency run")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the latency run")
    parser.add_argument("--order", default="plain,secure,secure,plain",
                        help="the stacks in the order run (default ABBA: background load "
                             "that drifts during the run hits both alike)")
    args = parser.parse_args()
    stacks = {"plain": plain_stack, "secure": secure_stack}
    workdir = ROOT / "out" / f"secure-bench-{time.strftime('%Y%m%d%H%M%S')}"
    workdir.mkdir(parents=True, exist_ok=True)
    items = _traffic(args.calls, 400.0, seed=77)
    expected_cdrs = sum(1 for _ in rate_lines(io.StringIO("".join(jsonl_line(i) for i in items)),
                                              load_config(CONFIG)))
    events = sum(1 for i in items if not isinstance(i, Tick))
    print(f"secure_bench: {args.calls} calls ({events} events, {expected_cdrs} CDRs) for "
          f"throughput; {args.rate:.0f} events/s for {args.seconds:.0f} s for latency; order "
          f"{args.order}. Logs: {workdir}")
    rows: list[tuple[str, Rate, Rate, Latency]] = []
    for name in args.order.split(","):
        stack = stacks[name.strip()]()
        with deployment(stack, workdir) as dep:
            w = worker_throughput(dep, items, expected_cdrs)
            s = sink_throughput(dep)
        with deployment(stack, workdir) as dep:
            lat = latency(dep, args.rate, args.seconds)
        rows.append((stack.name, w, s, lat))
        print(f"  {stack.name}: done")
    print()
    print("| stack | worker events/s | worker CPU µs/event | sink rows/s | sink CPU µs/row "
          "| achieved events/s | worker p50 / p99 ms | end-to-end p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for name, w, s, lat in rows:
        print(f"| {name} | {w.per_s:,.0f} | {w.cpu_us:.0f} | {s.per_s:,.0f} | {s.cpu_us:.0f} | "
              f"{lat.achieved:,.0f} | {_pct(lat.to_topic, 50)} / {_pct(lat.to_topic, 99)} | "
              f"{_pct(lat.to_clickhouse, 50)} / {_pct(lat.to_clickhouse, 99)} |")
    by = {name: [r for r in rows if r[0] == name] for name in ("plaintext", "secured")}
    if all(by.values()):
        def med(name: str, pick: Callable[[Any], float]) -> float:
            return statistics.median(pick(r) for r in by[name])

        for what, pick in (("worker events/s", lambda r: r[1].per_s),
                           ("worker CPU/event", lambda r: r[1].cpu_us),
                           ("sink rows/s", lambda r: r[2].per_s),
                           ("sink CPU/row", lambda r: r[2].cpu_us)):
            base, sec = med("plaintext", pick), med("secured", pick)
            print(f"secured vs plaintext, {what} (medians): {sec / base - 1:+.1%}")
    print("The machine is shared (2 cores, other work running): compare figures of one run.")


if __name__ == "__main__":
    main()
