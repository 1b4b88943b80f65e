"""Streaming benchmark on the real broker and ClickHouse server (not a test).

    .venv/bin/python bench/stream_bench.py [--calls 20000] [--rate 5000] [--latency-s 30]
        [--latency-only] [--latency-workers 1] [--sink-batch-seconds 0.5] [--repeat 1]

Prints, in one run:
  1. the correlator: events/s through one Faust worker, beside the bare chain
     (confluent-kafka batch consume + fastavro decode + billing core + fastavro
     encode + produce, no Faust) on the same events;
  2. the sink: CDR rows/s through `cdr-pipeline sink`, beside the bare chain
     (consume + fastavro decode + clickhouse-driver columnar insert) on the same CDRs;
  3. latency from HANGUP published to CDR queryable in ClickHouse (p50, p99) at a
     steady event rate, with worker and sink running, and the worker's share of it
     (HANGUP published to CDR appended to the cdrs topic), and the CPU each part
     of the machine used meanwhile. --latency-only runs just this part.
Needs the local stack (deploy/local/stack.sh up). Topics and databases it
creates are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
    default_topic_specs,
    delete_topics,
    ensure_topics,
    worker_topics,
)
from pipeline.storage.url import open_backend  # noqa: E402
from pipeline.storage.cdr_store import cdr_row, insert_cdr_rows, row_digest  # noqa: E402
from pipeline.storage.migrate import migrate  # noqa: E402
from pipeline.switch.publisher import SwitchPublisher  # noqa: E402
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


def _spawn(args: list[str], prefix: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, CDR_KAFKA_TOPIC_PREFIX=prefix, CDR_KAFKA_BOOTSTRAP=BOOTSTRAP,
               CDR_KAFKA_PARTITIONS=str(PARTITIONS))
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env, cwd=ROOT,
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


def bare_correlator(src: str, dst: str, total: int) -> tuple[float, int]:
    """consume + decode + core + encode + produce; returns (events/s, CDRs)."""
    config = load_config(CONFIG)
    consumer = _consumer(f"bench-bare-{uuid.uuid4().hex[:6]}")
    _assign_all(consumer, src)
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 20, "compression.type": "lz4"})
    correlators: dict[int, Correlator] = {}
    seen = cdrs = 0
    started = time.perf_counter()
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
    consumer.close()
    return total / elapsed, cdrs


def _timestamps_span(topic: str, expected: int) -> float:
    """Seconds between the first and last record's broker timestamps of a topic."""
    consumer = _consumer(f"bench-ts-{uuid.uuid4().hex[:6]}")
    _assign_all(consumer, topic)
    first, last, seen = None, None, 0
    while seen < expected:
        for msg in consumer.consume(num_messages=5000, timeout=1.0):
            if msg.error():
                continue
            seen += 1
            ts = msg.timestamp()[1]
            first = ts if first is None else min(first, ts)
            last = ts if last is None else max(last, ts)
    consumer.close()
    return ((last or 0) - (first or 0)) / 1000


def faust_correlator(prefix: str, total_events: int, expected_cdrs: int, workdir: Path) -> float:
    """events/s through one worker: all events over the span of its output timestamps."""
    proc = _spawn(["worker", "--config", str(CONFIG), "--app-id", f"{prefix}corr",
                   "--data-dir", str(workdir / "faust")], prefix, workdir / "worker.log")
    try:
        deadline = time.monotonic() + 600
        while _end_offsets(f"{prefix}cdrs") < expected_cdrs:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"worker did not finish; see {workdir / 'worker.log'}")
            time.sleep(0.5)  # polling the output topic's end offsets
    finally:
        _stop(proc)
    span = _timestamps_span(f"{prefix}cdrs", expected_cdrs)
    return total_events / span if span > 0 else float("inf")


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


def latency(prefix: str, rate: float, seconds: float, database: str, workdir: Path,
            workers: int = 1, sink_batch_s: float = 0.5) -> LatencyRun:
    """Publish at `rate` events/s with a worker and a sink running; per HANGUP, the time
    until its call's first CDR is on the cdrs topic and until it is in ClickHouse."""
    config = load_config(CONFIG)
    calls = int(rate * seconds / 3.7)
    # Encoded before the clock starts, so the publisher can hold the rate.
    records = [(i["call_id"], i["event_type"] == "HANGUP", codec.encode_event_dict(i))
               for i in generate(config, calls=calls, switches=4, rate_cps=rate / 3.7, seed=77,
                                 start_ms=int(time.time() * 1000), faults=FaultMix.none(),
                                 final_tick=False)
               if not isinstance(i, Tick)]
    procs = [_spawn(["worker", "--config", str(CONFIG), "--app-id", f"{prefix}lat",
                     "--data-dir", str(workdir / f"faust-lat-{n}")], prefix, workdir / f"worker-lat-{n}.log")
             for n in range(workers)]
    sink = _spawn(["sink", "--config", str(CONFIG), "--group", f"{prefix}lat-sink", "--topic", f"{prefix}cdrs",
                   "--clickhouse", f"{CH_URL}{database}", "--batch-seconds", str(sink_batch_s)], prefix,
                  workdir / "sink-lat.log")
    # Traffic starts once both have their partitions: a backlog from start-up is not latency.
    _wait_assigned(f"{prefix}lat", f"{prefix}call-events", procs)
    _wait_assigned(f"{prefix}lat-sink", f"{prefix}cdrs", [sink])
    _wait_quiet()
    hangup_at: dict[str, float] = {}  # wall clock (epoch s) when each HANGUP was handed to the producer
    stored_at: dict[str, float] = {}
    stop = threading.Event()
    poller = threading.Thread(target=_poll_stored, args=(database, stored_at, stop), daemon=True)
    poller.start()
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 5, "partitioner": "murmur2_random"})
    topic = f"{prefix}call-events"
    started = time.perf_counter()
    cpu_at_start = _cpu_seconds()
    sent = 0
    while sent < len(records):
        # Every millisecond or so, whatever is due by then: a steady rate without a
        # busy loop (a poll shorter than librdkafka's 1 ms resolution returns at once).
        due = min(len(records), int((time.perf_counter() - started) * rate) + 1)
        for call_id, is_hangup, value in records[sent:due]:
            producer.produce(topic, key=call_id.encode(), value=value)
            if is_hangup:
                hangup_at.setdefault(call_id, time.time())
        sent = due
        producer.poll(0.001)
    achieved = len(records) / (time.perf_counter() - started)
    cpu = {name: used - cpu_at_start.get(name, 0.0) for name, used in _cpu_seconds().items()}
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
    with (workdir / "latency.json").open("w") as out:  # for a closer look: per call, in publish order
        json.dump([{"call_id": c, "hangup_at": t, "on_topic": on_topic.get(c), "stored": stored_at.get(c)}
                   for c, t in sorted(hangup_at.items(), key=lambda kv: kv[1])], out)
    return LatencyRun(
        published=len(records), achieved_rate=achieved,
        to_topic=sorted(on_topic[c] - t for c, t in hangup_at.items() if c in on_topic),
        to_clickhouse=sorted(stored_at[c] - t for c, t in hangup_at.items() if c in stored_at),
        calls=len(hangup_at), cpu_s=cpu, seconds=len(records) / achieved,
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


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far, summed per kind of process on this
    machine: the worker(s), the sink, the broker, ClickHouse, this benchmark."""
    kinds = {"pipeline.cli worker": "worker", "pipeline.cli sink": "sink",
             "kafka.Kafka": "broker", "clickhouse-server": "clickhouse",
             "stream_bench.py": "publisher (this benchmark)"}
    out: dict[str, float] = {}
    for pid, cmdline in _cmdlines():
        kind = next((k for marker, k in kinds.items() if marker in cmdline), None)
        if kind is not None:
            out[kind] = out.get(kind, 0.0) + proc_cpu_s(pid)
    return out


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=5000.0, help="events/s for the latency run")
    ap.add_argument("--latency-s", type=float, default=30.0)
    ap.add_argument("--latency-only", action="store_true", help="skip the two throughput runs")
    ap.add_argument("--latency-workers", type=int, default=1,
                    help="workers (one consumer group) in the latency run")
    ap.add_argument("--sink-batch-seconds", type=float, default=0.5,
                    help="the sink's --batch-seconds in the latency run")
    ap.add_argument("--repeat", type=int, default=1,
                    help="latency runs, each with fresh topics, processes and database; "
                         "p99 moves from run to run")
    args = ap.parse_args()
    run = uuid.uuid4().hex[:6]
    prefix = f"bench{run}-"
    workdir = ROOT / "out" / f"bench-{run}"
    workdir.mkdir(parents=True, exist_ok=True)
    specs = default_topic_specs(prefix, PARTITIONS, 1)
    ensure_topics(BOOTSTRAP, specs)
    bare_dst = f"{prefix}bare-cdrs"
    ensure_topics(BOOTSTRAP, [specs[1].__class__(bare_dst, PARTITIONS, 1, {})])
    backend, _ = open_backend(CH_URL + "default")
    dbs = [f"bench{run}_bare", f"bench{run}_sink"] + [f"bench{run}_lat{i}" for i in range(args.repeat)]
    lat_prefixes = [f"{prefix}l{i}-" for i in range(args.repeat)]
    for db in dbs:
        migrate(backend, db)
    try:
        if not args.latency_only:
            config = load_config(CONFIG)
            items = list(generate(config, calls=args.calls, switches=8, rate_cps=200, seed=5,
                                  start_ms=1_764_000_000_000, faults=FaultMix()))
            with SwitchPublisher(BOOTSTRAP, f"{prefix}call-events") as pub:
                publish(items, pub)
            total = _end_offsets(f"{prefix}call-events")
            print(f"input: {args.calls} calls, {total} records (events + ticks) on {PARTITIONS} partitions")

            bare_rate, cdrs = bare_correlator(f"{prefix}call-events", bare_dst, total)
            faust_rate = faust_correlator(prefix, total, cdrs, workdir)
            print("correlator (one process):")
            print(f"  bare chain (consume+decode+core+encode+produce) {bare_rate:>10,.0f} events/s")
            print(f"  Faust worker                                    {faust_rate:>10,.0f} events/s"
                  f"   = {faust_rate / bare_rate:.2f} x bare (goal >= 0.33)")

            bare_sink_rate = bare_sink(f"{prefix}cdrs", cdrs, backend, dbs[0])
            sink_rate = service_sink(prefix, f"{prefix}cdrs", dbs[1], workdir)
            print(f"sink ({cdrs} CDR versions):")
            print(f"  bare chain (consume+decode+columnar insert)     {bare_sink_rate:>10,.0f} rows/s")
            print(f"  cdr-pipeline sink                               {sink_rate:>10,.0f} rows/s"
                  f"   = {sink_rate / bare_sink_rate:.2f} x bare (goal >= 0.70)")

        p99s: list[float] = []
        for lat_prefix, database in zip(lat_prefixes, dbs[2:], strict=True):
            ensure_topics(BOOTSTRAP, default_topic_specs(lat_prefix, PARTITIONS, 1))
            lat = latency(lat_prefix, args.rate, args.latency_s, database, workdir,
                          args.latency_workers, args.sink_batch_seconds)
            print(f"latency at {args.rate:,.0f} events/s, {args.latency_workers} worker(s): "
                  f"published {lat.published} events at {lat.achieved_rate:,.0f}/s, {lat.calls} calls")
            print("  CPU while publishing, in cores (2 on this machine): " + ", ".join(
                f"{kind} {used / lat.seconds:.2f}" for kind, used in
                sorted(lat.cpu_s.items(), key=lambda kv: -kv[1])))
            for label, values in (("HANGUP published -> CDR on the cdrs topic", lat.to_topic),
                                  ("HANGUP published -> CDR in ClickHouse   ", lat.to_clickhouse)):
                if values:
                    p50 = statistics.median(values)
                    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
                    print(f"  {label}: p50 {p50 * 1000:,.0f} ms, p99 {p99 * 1000:,.0f} ms, "
                          f"{len(values)} of {lat.calls} calls (goal p99 < 2000 ms)")
            if lat.to_clickhouse:
                values = lat.to_clickhouse
                p99s.append(values[min(len(values) - 1, int(len(values) * 0.99))])
        if len(p99s) > 1:
            p99s.sort()
            print(f"p99 HANGUP -> CDR in ClickHouse over {len(p99s)} runs: min {p99s[0] * 1000:,.0f} ms, "
                  f"median {statistics.median(p99s) * 1000:,.0f} ms, max {p99s[-1] * 1000:,.0f} ms; "
                  f"{sum(p < 2.0 for p in p99s)} of {len(p99s)} under 2000 ms")
    finally:
        for db in dbs:
            backend.execute(f"DROP DATABASE IF EXISTS {db}")
        leftovers = [s.name for s in specs] + [bare_dst] + worker_topics(f"{prefix}corr")
        for lat_prefix in lat_prefixes:
            leftovers += [s.name for s in default_topic_specs(lat_prefix, PARTITIONS, 1)]
            leftovers += worker_topics(f"{lat_prefix}lat")
        delete_topics(BOOTSTRAP, leftovers)
        print(f"logs: {workdir}")


if __name__ == "__main__":
    main()
