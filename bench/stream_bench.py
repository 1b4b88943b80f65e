"""Streaming benchmark on the real broker and ClickHouse server (not a test).

    .venv/bin/python bench/stream_bench.py [--calls 20000] [--rate 5000] [--latency-s 30]
        [--latency-only | --throughput-only] [--latency-workers 1]
        [--sink-batch-seconds 0.5] [--repeat 1] [--publisher-linger-ms MS]
        [--stop-worker-at S] [--throughput-runs N] [--baseline-tree DIR]
        [--variant-env K=V[,K=V]]...

Prints, in one run:
  1. the correlator on a prefilled topic: events/s through one worker, beside the bare
     chain (confluent-kafka batch consume + fastavro decode + billing core + fastavro
     encode + produce, no Faust) on the same events; and, robust to other jobs on the
     machine, events per CPU-second of each one's process (/proc, every thread; the
     worker's from its counters' first move to its last); the worker's changelog:
     writes, bytes a value;
  2. the sink: CDR rows/s through `cdr-pipeline sink`, beside the bare chain
     (consume + fastavro decode + clickhouse-driver columnar insert) on the same CDRs;
  3. latency from HANGUP published to CDR queryable in ClickHouse (p50, p99) at a
     steady event rate, with worker(s) and sink running, and the worker's share of it
     (HANGUP published to CDR appended to the cdrs topic), and the CPU each part used
     meanwhile: the worker(s), the sink, this process, and the broker and ClickHouse
     this benchmark uses (found by their ports: other stacks may run beside them),
     also above their idle level just before. The publisher sends as the switch
     publisher does (its producer keys; --publisher-linger-ms to change its linger), and
     what the broker spends on it alone is measured first, so that the broker's CPU of
     the pipeline itself is the rest. --stop-worker-at S stops the first worker S
     seconds into the traffic (a rolling restart) and reports the calls after it.
     --latency-only runs just this part, --throughput-only the first two.
--throughput-runs N repeats part 1 N times (fresh topics each time, every worker in each
run, the first one rotating; part 2 in the first run only) and prints each worker's
events per CPU-second over the runs and this worker's against each other run by run.
--baseline-tree DIR also measures the worker of another source tree (a checkout of the
code before a change, with its own .venv if it has one: see python_of) in the same run,
and each --variant-env this tree's worker with those settings (CDR_WORKER_*), in both
parts. Which builds each one runs (compiled core, compiled Avro codec) is printed first.
Needs the local stack (deploy/local/stack.sh up). Topics and databases it
creates are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.avro import codec  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.core.correlator import Correlator  # noqa: E402
from pipeline.core.events import parse_event  # noqa: E402
from pipeline.kafka.admin import (  # noqa: E402
    TopicSpec,
    default_topic_specs,
    delete_topics,
    ensure_topics,
    worker_topics,
)
from pipeline.storage.url import open_backend  # noqa: E402
from pipeline.storage.cdr_store import cdr_row, insert_cdr_rows, row_digest  # noqa: E402
from pipeline.storage.migrate import migrate  # noqa: E402
from pipeline.switch.publisher import PRODUCER_DEFAULTS, SwitchPublisher  # noqa: E402
from pipeline.switch.simulator import FaultMix, Tick, generate, publish  # noqa: E402

CONFIG = ROOT / "deploy" / "demo" / "demo.toml"
BOOTSTRAP = os.environ.get("CDR_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
CH_URL = "native://127.0.0.1:19000/"
PARTITIONS = 3
# How often the latency run looks for new CDRs in ClickHouse. A call is timed when it is
# first seen, so this adds 0 to POLL_S to each latency (the figures err on the high
# side). Polling every 20 ms cost ClickHouse 18.16 about a quarter of a core (even
# `SELECT 1` takes it 0.7 ms of CPU), taken from the pipeline being measured.
POLL_S = 0.1


def python_of(tree: Path) -> str:
    """The interpreter that runs `tree`'s code: the tree's own .venv's when it has one
    (its mypyc builds of the core and the codec were made from its sources; this venv's
    are used only while they match this tree's), else this one's."""
    own = tree / ".venv" / "bin" / "python"
    return str(own) if tree.resolve() != ROOT.resolve() and own.exists() else sys.executable


def compiled_parts(tree: Path) -> str:
    """Which of the tree's compiled builds its interpreter uses (the core's, the Avro
    codec's): a baseline that silently ran pure Python would not be a baseline."""
    code = ("import pipeline.core as c, pipeline.avro.codec as a\n"
            "print(c.COMPILED, getattr(a, 'GENERATED_BUILT', None))")
    done = subprocess.run([python_of(tree), "-c", code], cwd=tree, capture_output=True,
                          text=True, check=True)
    core, avro = done.stdout.split()
    return f"core compiled {core}, Avro codec compiled {avro}"


def _spawn(args: list[str], prefix: str, log: Path, tree: Path = ROOT,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`cdr-pipeline ARGS` from the source tree `tree` (another tree: a baseline, e.g.
    a checkout of the code before a change; `python -m` puts its folder first on the
    path) with its interpreter (`python_of`), with `env` added to the environment."""
    full = dict(os.environ, CDR_KAFKA_TOPIC_PREFIX=prefix, CDR_KAFKA_BOOTSTRAP=BOOTSTRAP,
                CDR_KAFKA_PARTITIONS=str(PARTITIONS), **(env or {}))
    return subprocess.Popen([python_of(tree), "-m", "pipeline.cli", *args], env=full, cwd=tree,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _consumer(group: str) -> Consumer:
    return Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group, "enable.auto.commit": False,
                     "auto.offset.reset": "earliest", "enable.partition.eof": False})


def _assign_all(consumer: Consumer, topic: str) -> None:
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])


def _end_offsets(topic: str) -> int:
    c = _consumer(f"bench-probe-{uuid.uuid4().hex[:6]}")
    total = sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTITIONS))
    c.close()
    return total


# The bare chains decode and encode with plain fastavro (codec.fastavro_decode and
# fastavro_encode), as issue 4 defines them; the worker and the sink use the compiled
# codec (pipeline/avro/compiled.py), several times faster (bench/codec_bench.py).


@dataclass
class Throughput:
    """One correlator's run through the prefilled topic."""

    rate: float  # events/s, wall clock
    per_cpu_s: float  # events per CPU-second of its process (all its threads)
    cdrs: int = 0


def bare_correlator(src: str, dst: str, total: int) -> Throughput:
    """consume + decode + core + encode + produce, in this process (its CPU from /proc:
    librdkafka's threads included)."""
    config = load_config(CONFIG)
    consumer = _consumer(f"bench-bare-{uuid.uuid4().hex[:6]}")
    _assign_all(consumer, src)
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 20, "compression.type": "lz4"})
    correlators: dict[int, Correlator] = {}
    seen = cdrs = 0
    started = time.perf_counter()
    cpu_started = proc_cpu_s(os.getpid())
    while seen < total:
        for msg in consumer.consume(num_messages=2000, timeout=1.0):
            if msg.error():
                continue
            seen += 1
            part = msg.partition()
            corr = correlators.setdefault(part, Correlator(config))
            headers = msg.headers()
            if codec.is_tick(headers):
                out = corr.advance(codec.decode_tick(msg.value()), msg.offset())
            else:
                event = parse_event(codec.fastavro_decode(codec.CALL_EVENT, msg.value()))
                out = corr.on_event(event, msg.offset())
            for cdr in out:
                value = codec.fastavro_encode(codec.RATED_CDR, codec.cdr_record(cdr))
                producer.produce(dst, key=cdr.call_id.encode(), value=value, partition=part)
                cdrs += 1
            producer.poll(0)
    producer.flush(60)
    elapsed = time.perf_counter() - started
    cpu = proc_cpu_s(os.getpid()) - cpu_started
    consumer.close()
    return Throughput(total / elapsed, total / max(cpu, 1e-9), cdrs)


def _timestamps_span(topic: str, expected: int) -> float:
    """Seconds between the first and last record's broker timestamps of a topic."""
    consumer = _consumer(f"bench-ts-{uuid.uuid4().hex[:6]}")
    _assign_all(consumer, topic)
    return timestamps_span(consumer, expected)


def timestamps_span(consumer: Consumer, expected: int, timeout_s: float | None = None) -> float:
    """Seconds between the first and last broker timestamps of the `expected` records an
    assigned consumer reads (all there are by `timeout_s`, if given); closes it."""
    first, last, seen = None, None, 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while seen < expected and (deadline is None or time.monotonic() < deadline):
        for msg in consumer.consume(num_messages=5000, timeout=1.0):
            if msg.error():
                continue
            seen += 1
            ts = msg.timestamp()[1]
            first = ts if first is None else min(first, ts)
            last = ts if last is None else max(last, ts)
    consumer.close()
    return ((last or 0) - (first or 0)) / 1000


def faust_correlator(prefix: str, total_events: int, expected_cdrs: int, workdir: Path,
                     app_id: str = "corr", tree: Path = ROOT,
                     env: dict[str, str] | None = None) -> WorkerRun:
    """One worker through the prefilled topic: events/s over the span of its output
    timestamps, and events per CPU-second of its process while it worked (/proc, all
    threads; from the last look at its counters before its first record to the first
    after its last)."""
    port = _free_port()
    proc = _spawn(["worker", "--config", str(CONFIG), "--app-id", f"{prefix}{app_id}",
                   "--data-dir", str(workdir / f"faust-{app_id}"), "--metrics-port", str(port)],
                  prefix, workdir / f"worker-{app_id}.log", tree, env)
    try:
        run = watch_worker(proc, port, total_events, workdir / f"worker-{app_id}.log")
        deadline = time.monotonic() + 600
        while _end_offsets(f"{prefix}cdrs") < expected_cdrs:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"worker did not finish; see {workdir / f'worker-{app_id}.log'}")
            time.sleep(0.5)  # polling the output topic's end offsets
    finally:
        _stop(proc)
    span = _timestamps_span(f"{prefix}cdrs", expected_cdrs)
    run.rate = total_events / span if span > 0 else float("inf")
    return run


@dataclass
class WorkerRun:
    """A worker's run through `events` records of a prefilled topic."""

    events: int
    cpu_s: float  # CPU seconds of the process (all threads) while it worked
    wall_s: float  # seconds between the two looks at its counters
    threads: dict[str, float]  # CPU seconds per thread name while it worked
    rate: float = 0.0  # events/s over the span of its output (set by faust_correlator)

    @property
    def per_cpu_s(self) -> float:
        return self.events / max(self.cpu_s, 1e-9)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_records(port: int) -> int | None:
    """Records the worker has folded so far (its cdr_worker_events_total, every kind);
    None while its metrics endpoint does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("cdr_worker_events_total{")))


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds per thread of a process, by "name/tid" (Python names no OS thread:
    the main thread is the one whose tid is the pid)."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        name = "main" if tid == str(pid) else f"{head.split('(', 1)[1]}/{tid}"
        fields = rest.split()
        out[name] = (int(fields[11]) + int(fields[12])) / TICK
    return out


WATCH_S = 0.1  # how often a worker's counters and CPU are looked at


def watch_worker(proc: subprocess.Popen[bytes], port: int, total: int, log: Path,
                 timeout_s: float = 600) -> WorkerRun:
    """Until the worker has folded `total` records: its CPU (/proc) and time from the
    last look before its first record to the first look after its last. Its start-up
    (imports, joining the group) is not in it; a look every WATCH_S costs it a metrics
    request (well under a millisecond)."""
    deadline = time.monotonic() + timeout_s
    before: tuple[float, float, dict[str, float]] | None = None
    started = False
    while True:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"worker did not fold {total} records; see {log}")
        now, cpu, threads = time.perf_counter(), proc_cpu_s(proc.pid), thread_cpu_s(proc.pid)
        done = worker_records(port)
        if done is not None and done >= total:
            break
        if not started and not done:
            before = (now, cpu, threads)
        started = started or bool(done)
        time.sleep(WATCH_S)  # polling the worker's counters
    assert before is not None
    used = {name: sec - before[2].get(name, 0.0) for name, sec in threads.items()}
    return WorkerRun(done, cpu - before[1], now - before[0],
                     {k: v for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v > 0})


def bare_sink(topic: str, total: int, backend: Any, database: str) -> float:
    """consume + decode + columnar insert, the sink's own decode and insert functions
    without its machinery; it knows the total, so it never waits for more."""
    consumer = _consumer(f"bench-bare-sink-{uuid.uuid4().hex[:6]}")
    _assign_all(consumer, topic)
    seen = 0
    batch: list[Any] = []
    started = time.perf_counter()
    while seen < total:
        for msg in consumer.consume(num_messages=min(5000, total - seen), timeout=1.0):
            if msg.error():
                continue
            seen += 1
            batch.append(cdr_row(codec.fastavro_decode(codec.RATED_CDR, msg.value())))
            if len(batch) >= 5000:
                insert_cdr_rows(backend, batch, row_digest(batch), database)
                batch = []
    if batch:
        insert_cdr_rows(backend, batch, row_digest(batch), database)
    elapsed = time.perf_counter() - started
    consumer.close()
    return total / elapsed


def service_sink(prefix: str, topic: str, database: str, workdir: Path) -> float:
    """rows/s through `cdr-pipeline sink`, from its first stored batch to its last."""
    total = _end_offsets(topic)
    proc = _spawn(["sink", "--config", str(CONFIG), "--group", f"{prefix}sink", "--topic", topic,
                   "--clickhouse", f"{CH_URL}{database}"], prefix, workdir / "sink.log")
    # Progress is the group's committed offsets (the sink commits after each insert):
    # counting rows in ClickHouse undercounts once merges collapse a call's versions.
    probe = _consumer(f"{prefix}sink")
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    first = None
    try:
        deadline = time.monotonic() + 600
        while True:
            count = sum(max(0, tp.offset) for tp in probe.committed(tps, timeout=10))
            now = time.perf_counter()
            if count and first is None:
                first = (now, count)
            if count >= total:
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"sink did not finish; see {workdir / 'sink.log'}")
            time.sleep(0.05)  # polling the group's committed offsets
    finally:
        probe.close()
        _stop(proc)
    assert first is not None
    if first[1] >= total:
        # Timed from the first batch seen to the last: with one batch there is nothing to time.
        raise SystemExit(f"all {total} CDRs arrived in one sink batch; use more --calls to time the sink")
    return (total - first[1]) / max(now - first[0], 1e-9)


Traffic = list[tuple[str, bool, bytes]]  # (call_id, is a HANGUP, encoded event) in order

# The latency runs' publisher before they sent as the switch publisher does.
EARLIER_PUBLISHER = {"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                     "partitioner": "murmur2_random"}


def latency_traffic(rate: float, seconds: float) -> Traffic:
    """The latency run's events: calls starting at a steady rate from now, no faults,
    encoded before the clock starts so that the publisher can hold the rate."""
    config = load_config(CONFIG)
    calls = int(rate * seconds / 3.7)
    return [(i["call_id"], i["event_type"] == "HANGUP", codec.encode_event_dict(i))
            for i in generate(config, calls=calls, switches=4, rate_cps=rate / 3.7, seed=77,
                              start_ms=int(time.time() * 1000), faults=FaultMix.none(),
                              final_tick=False)
            if not isinstance(i, Tick)]


def publish_steady(producer: Producer, topic: str, records: Traffic, rate: float,
                   hangup_at: dict[str, float] | None = None) -> float:
    """Publish `records` at `rate` a second, noting when each HANGUP was handed to the
    producer (wall clock, epoch s) in `hangup_at`; returns the rate achieved."""
    started = time.perf_counter()
    sent = 0
    while sent < len(records):
        # Every millisecond or so, whatever is due by then: a steady rate without a
        # busy loop (a poll shorter than librdkafka's 1 ms resolution returns at once).
        due = min(len(records), int((time.perf_counter() - started) * rate) + 1)
        for call_id, is_hangup, value in records[sent:due]:
            producer.produce(topic, key=call_id.encode(), value=value)
            if is_hangup and hangup_at is not None:
                hangup_at.setdefault(call_id, time.time())
        sent = due
        producer.poll(0.001)
    return len(records) / (time.perf_counter() - started)


def publisher_alone(prefix: str, rate: float, seconds: float,
                    publisher: dict[str, Any] | None) -> float:
    """The broker's CPU (cores above its idle just before) while the latency run's
    publisher sends the same traffic to a topic nobody reads: the part of the broker's
    CPU in a latency run that is the publisher's, not the pipeline's."""
    topic = f"{prefix}publisher-alone"
    ensure_topics(BOOTSTRAP, [TopicSpec(topic, PARTITIONS, 1, {})])
    try:
        records = latency_traffic(rate, seconds)
        _wait_quiet()
        before = _cpu_seconds()
        time.sleep(IDLE_S)  # sampling the broker's idle CPU
        idle = (_cpu_seconds().get("broker", 0.0) - before.get("broker", 0.0)) / IDLE_S
        producer = Producer({"bootstrap.servers": BOOTSTRAP, **(publisher or PRODUCER_DEFAULTS)})
        before = _cpu_seconds()
        started = time.perf_counter()
        publish_steady(producer, topic, records, rate)
        used = _cpu_seconds().get("broker", 0.0) - before.get("broker", 0.0)
        cores = used / (time.perf_counter() - started) - idle
        producer.flush(30)
    finally:
        delete_topics(BOOTSTRAP, [topic])
    return cores


def latency(prefix: str, rate: float, seconds: float, database: str, workdir: Path,
            workers: int = 1, sink_batch_s: float = 0.5, tree: Path = ROOT,
            env: dict[str, str] | None = None,
            publisher: dict[str, Any] | None = None,
            stop_worker_at: float | None = None) -> LatencyRun:
    """Publish at `rate` events/s with a worker and a sink running; per HANGUP, the time
    until its call's first CDR is on the cdrs topic and until it is in ClickHouse. The
    publisher's keys are the switch publisher's (PRODUCER_DEFAULTS) unless `publisher`
    gives others. With `stop_worker_at`, the first worker is stopped (SIGTERM, as in a
    rolling restart) that many seconds into the traffic: its partitions move to the
    others, which shows what standby replicas buy."""
    records = latency_traffic(rate, seconds)
    procs = [_spawn(["worker", "--config", str(CONFIG), "--app-id", f"{prefix}lat",
                     "--data-dir", str(workdir / f"faust-{prefix}lat-{n}")], prefix,
                    workdir / f"worker-{prefix}lat-{n}.log", tree, env)
             for n in range(workers)]
    # The variant's sink too; a variant setting CDR_SINK_BATCH_SECONDS overrides --sink-batch-seconds.
    batch = [] if "CDR_SINK_BATCH_SECONDS" in (env or {}) else ["--batch-seconds", str(sink_batch_s)]
    sink = _spawn(["sink", "--config", str(CONFIG), "--group", f"{prefix}lat-sink", "--topic",
                   f"{prefix}cdrs", "--clickhouse", f"{CH_URL}{database}", *batch], prefix,
                  workdir / f"sink-{prefix}lat.log", tree, env)
    # Traffic starts once both have their partitions: a backlog from start-up is not latency.
    _wait_assigned(f"{prefix}lat", f"{prefix}call-events", procs)
    _wait_assigned(f"{prefix}lat-sink", f"{prefix}cdrs", [sink])
    _wait_quiet()
    parts = {"worker": [p.pid for p in procs], "sink": [sink.pid],
             "publisher (this benchmark)": [os.getpid()]}
    # What the servers use with the pipeline connected and idle (and whatever else runs on
    # the machine): the share of the run above it is the traffic's.
    idle_at = _cpu_seconds(parts)
    time.sleep(IDLE_S)  # sampling the servers' idle CPU
    idle = {k: (v - idle_at.get(k, 0.0)) / IDLE_S for k, v in _cpu_seconds(parts).items()}
    hangup_at: dict[str, float] = {}  # wall clock (epoch s) when each HANGUP was handed to the producer
    stored_at: dict[str, float] = {}
    stop = threading.Event()
    poller = threading.Thread(target=_poll_stored, args=(database, stored_at, stop), daemon=True)
    poller.start()
    producer = Producer({"bootstrap.servers": BOOTSTRAP, **(publisher or PRODUCER_DEFAULTS)})
    stopped_at: list[float] = []
    if stop_worker_at is not None:
        def stop_first() -> None:
            stopped_at.append(time.time())
            procs[0].send_signal(signal.SIGTERM)
        threading.Timer(stop_worker_at, stop_first).start()
    cpu_at_start = _cpu_seconds(parts)
    achieved = publish_steady(producer, f"{prefix}call-events", records, rate, hangup_at)
    cpu = {name: used - cpu_at_start.get(name, 0.0) for name, used in _cpu_seconds(parts).items()}
    producer.flush(30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(stored_at) < len(hangup_at):
        time.sleep(0.1)  # waiting for the poller thread to see the last calls
    stop.set()
    poller.join()
    for worker in procs:
        _stop(worker)
    _stop(sink)
    on_topic = _first_cdr_times(f"{prefix}cdrs", set(hangup_at))
    with (workdir / f"latency-{prefix}.json").open("w") as out:  # for a closer look: per call, in publish order
        json.dump([{"call_id": c, "hangup_at": t, "on_topic": on_topic.get(c), "stored": stored_at.get(c)}
                   for c, t in sorted(hangup_at.items(), key=lambda kv: kv[1])], out)
    return LatencyRun(
        published=len(records), achieved_rate=achieved,
        to_topic=sorted(on_topic[c] - t for c, t in hangup_at.items() if c in on_topic),
        to_clickhouse=sorted(stored_at[c] - t for c, t in hangup_at.items() if c in stored_at),
        calls=len(hangup_at), cpu_s=cpu, seconds=len(records) / achieved, idle_cores=idle,
        after_stop=None if not stopped_at else sorted(
            on_topic[c] - t for c, t in hangup_at.items() if c in on_topic and t >= stopped_at[0]),
    )


def _wait_assigned(group: str, topic: str, procs: list[subprocess.Popen[bytes]],
                   timeout_s: float = 120) -> None:
    """Until the consumer group is stable, one member per process, with every partition
    of `topic` assigned."""
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"{group}: a process exited ({proc.returncode}) before it was assigned")
        (described,) = admin.describe_consumer_groups([group], request_timeout=10).values()
        try:
            info = described.result()
        except KafkaException:
            info = None  # the group does not exist yet
        if (info is not None and info.state == ConsumerGroupState.STABLE
                and len(info.members) == len(procs)):
            owned = {tp.partition for m in info.members for tp in m.assignment.topic_partitions
                     if tp.topic == topic}
            if owned == set(range(PARTITIONS)):
                return
        time.sleep(0.2)  # polling the group coordinator
    raise SystemExit(f"{group}: not assigned all of {topic} within {timeout_s:.0f} s")


@dataclass
class LatencyRun:
    published: int
    achieved_rate: float
    calls: int
    to_topic: list[float]  # seconds, HANGUP handed to the producer -> CDR appended by the worker
    to_clickhouse: list[float]  # seconds, HANGUP handed to the producer -> CDR seen in ClickHouse
    cpu_s: dict[str, float]  # CPU seconds per process kind while the traffic was published
    seconds: float  # how long publishing took
    idle_cores: dict[str, float]  # cores per process kind just before, the pipeline idle
    # with --stop-worker-at: seconds to the cdrs topic of the calls hung up after the stop
    after_stop: list[float] | None = None


IDLE_S = 5.0  # how long the servers' idle CPU is sampled before a latency run

TICK = os.sysconf("SC_CLK_TCK")


def _cmdlines() -> Iterator[tuple[int, str]]:
    """(pid, command line) of every process on this machine."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                yield int(pid), f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile


def pids_matching(marker: str) -> list[int]:
    """The processes whose command line contains `marker`."""
    return [pid for pid, cmdline in _cmdlines() if marker in cmdline]


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of one process; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def listening_pid(port: int) -> int | None:
    """The process listening on 127.0.0.1/0.0.0.0:`port` (TCP), None if none is seen.
    Other stacks may run beside this one (a secured broker, a ClickHouse cluster): only
    the servers this benchmark talks to are measured."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return int(pid)
        except OSError:
            continue
    return None


def _servers() -> dict[str, list[int]]:
    """The broker and the ClickHouse server this benchmark uses, by their ports."""
    ports = {"broker": int(BOOTSTRAP.rsplit(":", 1)[1]),
             "clickhouse": int(CH_URL.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])}
    found = {kind: listening_pid(port) for kind, port in ports.items()}
    return {kind: [pid] for kind, pid in found.items() if pid is not None}


def _cpu_seconds(parts: dict[str, list[int]] | None = None) -> dict[str, float]:
    """CPU seconds (user + system) used so far per part: the broker and ClickHouse (by
    their ports), and the processes of `parts` (kind -> pids)."""
    every = {**_servers(), **(parts or {})}
    return {kind: sum(proc_cpu_s(pid) for pid in pids) for kind, pids in every.items()}


# Background work the servers do after earlier runs (the broker compacting the changelogs
# they wrote, ClickHouse merging) took up to 0.7 of a core into the next latency run.
QUIET_CORES = 0.15  # each of the broker and ClickHouse, over a second
QUIET_WAIT_S = 120.0


def _wait_quiet() -> None:
    """Until the broker and ClickHouse each use less than QUIET_CORES (at most
    QUIET_WAIT_S), so that a latency run does not measure what earlier runs left to do."""
    started = time.monotonic()
    before = _cpu_seconds()
    busy: dict[str, float] = {}
    while time.monotonic() - started < QUIET_WAIT_S:
        time.sleep(1.0)  # sampling CPU over one second
        now = _cpu_seconds()
        busy = {k: now.get(k, 0.0) - before.get(k, 0.0) for k in ("broker", "clickhouse")}
        before = now
        if all(used < QUIET_CORES for used in busy.values()):
            break
    waited = time.monotonic() - started
    if waited > 1.5:
        state = ", ".join(f"{k} {v:.2f}" for k, v in busy.items())
        print(f"  waited {waited:.0f} s for the servers to settle (now in cores: {state})")


def _poll_stored(database: str, stored_at: dict[str, float], stop: threading.Event) -> None:
    """Every POLL_S, note the calls whose CDR is newly queryable (own connection: a thread).

    Reads only rows it has not seen: the table's active parts are listed, and call ids
    are read from parts holding a block number not seen before (a fresh insert, or a
    merge that covered one before this poll saw it). Re-reading a time window of rows
    on every poll cost this process more CPU than the sink and slowed what it measured.
    """
    backend, _ = open_backend(CH_URL + database)
    seen_blocks: set[tuple[str, int]] = set()
    known: set[str] = set()  # part names already looked at
    while not stop.is_set():
        parts = backend.execute("SELECT name FROM system.parts WHERE database = {db:String}"
                                " AND table = 'cdr' AND active", {"db": database})
        now = time.time()  # what these parts hold was queryable by now
        fresh: dict[str, set[tuple[str, int]]] = {}
        for (name,) in parts:
            if name in known:
                continue
            known.add(name)
            partition, low, high, _ = name.rsplit("_", 3)
            blocks = {(partition, b) for b in range(int(low), int(high) + 1)}
            if not blocks <= seen_blocks:
                fresh[name] = blocks
        if fresh:
            names = ", ".join(f"'{n}'" for n in fresh)
            query = f"SELECT _part, call_id FROM {database}.cdr WHERE _part IN ({names})"
            for part, call_id in backend.execute(query):
                stored_at.setdefault(call_id, now)
                # Only a part that was read counts as seen: one merged away between the
                # listing and the read leaves its blocks to the part that replaced it.
                seen_blocks |= fresh.pop(part, set())
        stop.wait(POLL_S)


def _first_cdr_times(topic: str, calls: set[str]) -> dict[str, float]:
    """Per call, the record timestamp (epoch s) of its first CDR on `topic`."""
    consumer = _consumer(f"bench-lat-{uuid.uuid4().hex[:6]}")
    _assign_all(consumer, topic)
    return first_record_times(consumer, calls)


def first_record_times(consumer: Any, calls: set[str]) -> dict[str, float]:
    """Per key, the timestamp (epoch s) of its first record on the topic `consumer` is
    assigned to, read until every key in `calls` is seen or 3 s pass without a record;
    closes `consumer`."""
    first: dict[str, float] = {}
    idle = 0
    while idle < 3 and len(first) < len(calls):
        msgs = consumer.consume(num_messages=5000, timeout=1.0)
        idle = 0 if msgs else idle + 1
        for msg in msgs:
            if msg.error() is None:
                first.setdefault(msg.key().decode(), msg.timestamp()[1] / 1000)
    consumer.close()
    return first


@dataclass
class Variant:
    """A worker to measure: its source tree and environment (settings as CDR_WORKER_*)."""

    label: str
    tree: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)


def variants(args: argparse.Namespace) -> list[Variant]:
    """This tree's worker, then a baseline tree's (--baseline-tree), then this tree's with
    each --variant-env."""
    out = [Variant("worker")]
    if args.baseline_tree:
        out.append(Variant(f"baseline {args.baseline_tree}", Path(args.baseline_tree).resolve()))
    for spec in args.variant_env:
        env = dict(pair.split("=", 1) for pair in spec.split(","))
        out.append(Variant(f"worker {spec}", ROOT, env))
    return out


def changelog_stats(topic: str) -> tuple[int, int, int, int]:
    """(records, tombstones, value bytes, largest value) of a changelog topic."""
    consumer = _consumer(f"bench-changelog-{uuid.uuid4().hex[:6]}")
    end = sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
              for p in range(PARTITIONS))
    _assign_all(consumer, topic)
    records = tombstones = size = largest = 0
    while records < end:
        msgs = consumer.consume(num_messages=5000, timeout=2.0)
        if not msgs:
            break
        for msg in msgs:
            if msg.error() is not None:
                continue
            records += 1
            value = msg.value()
            if value is None:
                tombstones += 1
            else:
                size += len(value)
                largest = max(largest, len(value))
    consumer.close()
    return records, tombstones, size, largest


def throughput(args: argparse.Namespace, prefix: str, workdir: Path, runs: list[Variant],
               backend: Any, dbs: list[str], sink: bool = True,
               figures: dict[str, list[float]] | None = None) -> list[str]:
    """The correlators (in the order of `runs`) and, with `sink`, the sinks on a
    prefilled topic; returns the topics it made. Each worker's events per CPU-second,
    and the bare chain's (label "bare chain"), are added to `figures` by label."""
    config = load_config(CONFIG)
    items = list(generate(config, calls=args.calls, switches=8, rate_cps=200, seed=5,
                          start_ms=1_764_000_000_000, faults=FaultMix()))
    made = [f"{prefix}bare-cdrs"]
    ensure_topics(BOOTSTRAP, [TopicSpec(made[0], PARTITIONS, 1, {})])
    with SwitchPublisher(BOOTSTRAP, f"{prefix}call-events") as pub:
        publish(items, pub)
    total = _end_offsets(f"{prefix}call-events")
    print(f"input: {args.calls} calls, {total} records (events + ticks) on {PARTITIONS} partitions")
    bare = bare_correlator(f"{prefix}call-events", made[0], total)
    if figures is not None:
        figures.setdefault("bare chain", []).append(bare.per_cpu_s)
    print("correlator (one process; CPU: /proc, the process's every thread):")
    print(f"  bare chain (consume+decode+core+encode+produce) {bare.rate:>10,.0f} events/s"
          f" {bare.per_cpu_s:>10,.0f} events per CPU-second")
    for n, variant in enumerate(runs):
        # The first worker reads the topic the bare chain read; each further one a copy of
        # it under a prefix of its own (same records, same partitions), so its output
        # topics are its own.
        vprefix = prefix if n == 0 else f"{prefix}v{n}-"
        if n:
            specs = default_topic_specs(vprefix, PARTITIONS, 1)
            ensure_topics(BOOTSTRAP, specs)
            made += [s.name for s in specs]
            with SwitchPublisher(BOOTSTRAP, f"{vprefix}call-events") as pub:
                publish(items, pub)
        app = f"corr{n}"
        made += worker_topics(f"{vprefix}{app}")
        run = faust_correlator(vprefix, total, bare.cdrs, workdir, app, variant.tree, variant.env)
        if figures is not None:
            figures.setdefault(variant.label, []).append(run.per_cpu_s)
        writes, tombs, size, largest = changelog_stats(f"{vprefix}{app}-calls-changelog")
        threads = ", ".join(f"{name} {sec / run.cpu_s:.0%}" for name, sec in
                            list(run.threads.items())[:4])
        print(f"  {variant.label:<48}{run.rate:>10,.0f} events/s"
              f" {run.per_cpu_s:>10,.0f} events per CPU-second"
              f"   = {run.rate / bare.rate:.2f} x bare wall, {run.per_cpu_s / bare.per_cpu_s:.2f}"
              f" x bare per CPU-second")
        print(f"      {run.cpu_s:.2f} CPU-s over {run.wall_s:.2f} s ({run.cpu_s / run.wall_s:.2f}"
              f" cores; threads: {threads}); changelog {writes} writes"
              f" ({writes / total:.2f} a record, {tombs} tombstones),"
              f" {size / max(1, writes - tombs):,.0f} bytes a value, largest {largest:,}")
    if not sink:
        return made
    bare_sink_rate = bare_sink(f"{prefix}cdrs", bare.cdrs, backend, dbs[0])
    sink_rate = service_sink(prefix, f"{prefix}cdrs", dbs[1], workdir)
    print(f"sink ({bare.cdrs} CDR versions):")
    print(f"  bare chain (consume+decode+columnar insert)     {bare_sink_rate:>10,.0f} rows/s")
    print(f"  cdr-pipeline sink                               {sink_rate:>10,.0f} rows/s"
          f"   = {sink_rate / bare_sink_rate:.2f} x bare (goal >= 0.70)")
    return made


def report_runs(figures: dict[str, list[float]]) -> None:
    """Events per CPU-second of each correlator over the throughput runs, and each
    worker's against the first one's (this tree's) run by run."""
    print("events per CPU-second over the runs (min / median / max; each run's figures):")
    for label, values in figures.items():
        ordered = sorted(values)
        print(f"  {label:<48} {ordered[0]:>9,.0f} / {statistics.median(values):>9,.0f} / "
              f"{ordered[-1]:>9,.0f}   ({', '.join(f'{v:,.0f}' for v in values)})")
    mine = figures.get("worker", [])
    for label, values in figures.items():
        if label not in ("worker", "bare chain") and len(values) == len(mine):
            ratios = [m / v for m, v in zip(mine, values, strict=True)]
            print(f"  worker / {label}, run by run: {', '.join(f'{r:.2f}' for r in ratios)}"
                  f" (median {statistics.median(ratios):.2f})")


def report_latency(args: argparse.Namespace, variant: Variant, lat: LatencyRun,
                   alone: float | None = None) -> float | None:
    """Print one latency run (`alone`: the broker's cores above idle for the publisher
    alone, publisher_alone); returns its p99 to ClickHouse (None: no CDR got there)."""
    print(f"latency at {args.rate:,.0f} events/s, {args.latency_workers} worker(s), "
          f"{variant.label}: published {lat.published} events at {lat.achieved_rate:,.0f}/s, "
          f"{lat.calls} calls")
    print("  CPU while publishing, in cores (2 on this machine): " + ", ".join(
        f"{kind} {used / lat.seconds:.2f}" for kind, used in
        sorted(lat.cpu_s.items(), key=lambda kv: -kv[1])))
    per_k = lat.achieved_rate / 1000
    print("  per 1,000 events/s, in cores: " + ", ".join(
        f"{kind} {lat.cpu_s.get(kind, 0.0) / lat.seconds / per_k:.3f}"
        for kind in ("broker", "worker", "clickhouse", "sink")))
    above = {kind: lat.cpu_s.get(kind, 0.0) / lat.seconds - lat.idle_cores.get(kind, 0.0)
             for kind in ("broker", "clickhouse")}
    print("  above their idle just before (" + ", ".join(
        f"{kind} {lat.idle_cores.get(kind, 0.0):.2f}" for kind in above) + " cores), per "
        "1,000 events/s: " + ", ".join(f"{kind} {v / per_k:.3f}" for kind, v in above.items()))
    if alone is not None:
        print(f"  the broker above idle, per 1,000 events/s: publisher alone {alone / per_k:.3f}"
              f" (measured before the runs), so the pipeline's part "
              f"{(above['broker'] - alone) / per_k:.3f}")
    for label, values in (("HANGUP published -> CDR on the cdrs topic", lat.to_topic),
                          ("HANGUP published -> CDR in ClickHouse   ", lat.to_clickhouse)):
        if values:
            p50 = statistics.median(values)
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            print(f"  {label}: p50 {p50 * 1000:,.0f} ms, p99 {p99 * 1000:,.0f} ms, "
                  f"{len(values)} of {lat.calls} calls")
    if lat.after_stop:
        after = lat.after_stop
        print(f"  calls hung up after the first worker was stopped: to the cdrs topic p50 "
              f"{statistics.median(after) * 1000:,.0f} ms, p99 "
              f"{after[min(len(after) - 1, int(len(after) * 0.99))] * 1000:,.0f} ms, max "
              f"{after[-1] * 1000:,.0f} ms ({len(after)} calls)")
    values = lat.to_clickhouse
    return values[min(len(values) - 1, int(len(values) * 0.99))] if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=5000.0, help="events/s for the latency run")
    ap.add_argument("--latency-s", type=float, default=30.0)
    ap.add_argument("--latency-only", action="store_true", help="skip the throughput runs")
    ap.add_argument("--throughput-only", action="store_true", help="skip the latency runs")
    ap.add_argument("--latency-workers", type=int, default=1,
                    help="workers (one consumer group) in the latency run")
    ap.add_argument("--sink-batch-seconds", type=float, default=0.5,
                    help="the sink's --batch-seconds in the latency run")
    ap.add_argument("--publisher-linger-ms", type=int, metavar="MS",
                    help="the latency runs' publisher lingers this long (default: as the "
                         "switch publisher, pipeline/switch/publisher.py PRODUCER_DEFAULTS)")
    ap.add_argument("--stop-worker-at", type=float, metavar="S",
                    help="stop the first worker (SIGTERM) S seconds into each latency run's "
                         "traffic, and report the calls hung up after it")
    ap.add_argument("--repeat", type=int, default=1,
                    help="latency runs, each with fresh topics, processes and database; "
                         "p99 moves from run to run")
    ap.add_argument("--throughput-runs", type=int, default=1, metavar="N",
                    help="throughput runs, each with a fresh topic and every worker (their "
                         "order rotated from run to run; the sinks in the first only), then "
                         "each one's events per CPU-second over the runs (min, median, max)")
    ap.add_argument("--baseline-tree", type=Path,
                    help="also measure the worker of this source tree (e.g. `git archive HEAD`"
                         " unpacked), in the same run: the before of a change")
    ap.add_argument("--variant-env", action="append", default=[], metavar="K=V[,K=V]",
                    help="also measure this tree's worker with these environment variables "
                         "(e.g. CDR_WORKER_CHANGELOG_FORMAT=json); repeatable")
    args = ap.parse_args()
    runs = variants(args)
    for variant in runs:
        print(f"{variant.label}: {python_of(variant.tree)} ({compiled_parts(variant.tree)})")
    run = uuid.uuid4().hex[:6]
    prefix = f"bench{run}-"
    workdir = ROOT / "out" / f"bench-{run}"
    workdir.mkdir(parents=True, exist_ok=True)
    specs = default_topic_specs(prefix, PARTITIONS, 1)
    ensure_topics(BOOTSTRAP, specs)
    leftovers = [s.name for s in specs]
    backend, _ = open_backend(CH_URL + "default")
    # Each repeat runs every variant, interleaved: fresh topics, processes, database each.
    lat_runs = [] if args.throughput_only else [
        (n, variant, f"{prefix}l{i}v{n}-", f"bench{run}_lat{i}v{n}")
        for i in range(args.repeat) for n, variant in enumerate(runs)]
    dbs = [f"bench{run}_bare", f"bench{run}_sink"] + [db for _, _, _, db in lat_runs]
    for db in dbs:
        migrate(backend, db)
    try:
        if not args.latency_only:
            figures: dict[str, list[float]] = {}
            for i in range(args.throughput_runs):
                # Each worker first in turn: no order gets the quieter or busier moments.
                order = runs[i % len(runs):] + runs[:i % len(runs)]
                if args.throughput_runs > 1:
                    print(f"throughput run {i + 1} of {args.throughput_runs} "
                          f"(load average {os.getloadavg()[0]:.1f})")
                run_prefix = prefix if i == 0 else f"{prefix}t{i}-"
                if i:
                    run_specs = default_topic_specs(run_prefix, PARTITIONS, 1)
                    ensure_topics(BOOTSTRAP, run_specs)
                    leftovers += [s.name for s in run_specs]
                leftovers += throughput(args, run_prefix, workdir, order, backend, dbs,
                                        sink=i == 0, figures=figures)
            if args.throughput_runs > 1:
                report_runs(figures)
        p99s: dict[int, list[float]] = {}
        publisher = None if args.publisher_linger_ms is None else {
            **PRODUCER_DEFAULTS, "linger.ms": args.publisher_linger_ms}
        alone = None
        if lat_runs:
            per_k = args.rate / 1000
            earlier = publisher_alone(prefix, args.rate, min(args.latency_s, 10.0),
                                      EARLIER_PUBLISHER)
            alone = publisher_alone(prefix, args.rate, min(args.latency_s, 10.0), publisher)
            print(f"the broker above idle while a publisher alone sends the latency traffic: "
                  f"{alone:.3f} cores ({alone / per_k:.4f} per 1,000 events/s) with this "
                  f"run's ({(publisher or PRODUCER_DEFAULTS)['linger.ms']} ms linger), "
                  f"{earlier:.3f} ({earlier / per_k:.4f}) with the one the latency runs used "
                  f"before (5 ms linger, no compression)")
        for n, variant, lat_prefix, database in lat_runs:
            lat_specs = default_topic_specs(lat_prefix, PARTITIONS, 1)
            ensure_topics(BOOTSTRAP, lat_specs)
            leftovers += [s.name for s in lat_specs] + worker_topics(f"{lat_prefix}lat")
            lat = latency(lat_prefix, args.rate, args.latency_s, database, workdir,
                          args.latency_workers, args.sink_batch_seconds, variant.tree, variant.env,
                          publisher, args.stop_worker_at)
            p99 = report_latency(args, variant, lat, alone)
            if p99 is not None:
                p99s.setdefault(n, []).append(p99)
        for n, values in p99s.items():
            if len(values) > 1:
                values.sort()
                print(f"p99 HANGUP -> CDR in ClickHouse, {runs[n].label}, over {len(values)} runs: "
                      f"min {values[0] * 1000:,.0f} ms, median {statistics.median(values) * 1000:,.0f}"
                      f" ms, max {values[-1] * 1000:,.0f} ms; {sum(p < 1.0 for p in values)} of "
                      f"{len(values)} under 1000 ms")
    finally:
        for db in dbs:
            backend.execute(f"DROP DATABASE IF EXISTS {db}")
        delete_topics(BOOTSTRAP, leftovers)
        print(f"logs: {workdir}")


if __name__ == "__main__":
    main()
