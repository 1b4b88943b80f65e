"""Where the worker's time goes, on a prefilled topic (not a test).

    .venv/bin/python bench/worker_bench.py [--calls 20000] [--top 25] [--no-worker]
        [--no-path] [--no-profile] [--env CDR_WORKER_CHANGELOG_FORMAT=json ...]
    .venv/bin/python bench/worker_bench.py --writes-per-window 10000

Publishes the stream benchmark's input (bench/stream_bench.py: the same simulation,
seed and partitions) to a fresh topic, then:
  1. the record path alone (pipeline/worker/record_path.py) in this process: the
     topic's records read into memory first, then folded in the driver's batches (up to
     driver.BATCH_MAX records), with the CDR encode and the changelog values: the CPU
     of each stage on its own, records per CPU-second (best of 3), and a cProfile of it
     (own time, the `--top` first);
  2. the worker (`cdr-pipeline worker`, its settings from `--env`) on the topic, under
     cProfile timed by its main thread's CPU clock (CDR_WORKER_PROFILE; not with
     --no-profile): records per CPU-second of its process while it worked, the CPU of
     each of its threads (/proc; cProfile sees the main thread only), the profile of
     its main thread and the share of the worker's parts in it.
--writes-per-window RATE only counts the changelog writes per event of the latency
benchmark's real-time traffic with batches of 50 ms to 5 s (no Kafka needed).
Needs the local Kafka (deploy/local/stack.sh up); its topics are deleted at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import os
import pstats
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.record.default_records import DefaultRecordBatchBuilder
from confluent_kafka import TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from stream_bench import (  # noqa: E402
    BOOTSTRAP,
    CONFIG,
    PARTITIONS,
    _consumer,
    _end_offsets,
    _free_port,
    _spawn,
    _stop,
    watch_worker,
)

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
from pipeline.runtime.gctune import tune_gc  # noqa: E402
from pipeline.runtime.settings import load_settings  # noqa: E402
from pipeline.switch.publisher import SwitchPublisher  # noqa: E402
from pipeline.switch.simulator import FaultMix, Tick, generate, publish  # noqa: E402
from pipeline.worker import changelog, driver  # noqa: E402
from pipeline.worker.produce import CODECS  # noqa: E402
from pipeline.worker.record_path import RecordPath  # noqa: E402


@dataclass
class Rec:
    """A consumed record as the record path reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def read_all(topic: str, total: int) -> list[Rec]:
    """Every record of `topic`, partitions interleaved as fetches deliver them."""
    consumer = _consumer(f"bench-read-{uuid.uuid4().hex[:6]}")
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    out: list[Rec] = []
    while len(out) < total:
        for msg in consumer.consume(num_messages=5000, timeout=2.0):
            if msg.error() is None:
                out.append(Rec(topic, msg.partition(), msg.offset(), msg.key(), msg.value(),
                               list(msg.headers() or [])))
    consumer.close()
    return out


def batches(records: list[Any], size: int) -> list[list[Any]]:
    return [records[i:i + size] for i in range(0, len(records), size)]


def by_partition(records: list[Rec]) -> dict[int, list[Rec]]:
    """A batch's records per partition, each partition's in offset order."""
    parts: dict[int, list[Rec]] = {}
    for record in records:
        parts.setdefault(record.partition, []).append(record)
    return parts


def run_path(records: list[Rec], changelog: Callable[[Any], Any] | None) -> tuple[int, int]:
    """The record path over `records` in driver-sized batches, each partition's share
    of a batch at a time, as the driver does; returns (CDRs, changelog writes)."""
    config = load_config(CONFIG)
    table: dict[str, Any] = {}
    path = RecordPath(config, table.values, load_settings(CONFIG).worker.changelog_format)
    for partition in range(PARTITIONS):
        path.start(partition, 0)
    cdrs = writes = 0
    for batch in batches(records, driver.BATCH_MAX):
        for partition, recs in by_partition(batch).items():
            out = path.process(partition, recs)
            cdrs += len(out.cdrs)
            writes += len(out.changelog)
            if changelog is not None:
                changelog(out.changelog)
    return cdrs, writes


def stages(records: list[Rec]) -> None:
    """CPU per record of each stage on its own, over the same records: the decode
    (Avro body, then parse_event), the core (Correlator.on_event/advance, parsed events
    in), the CDR encode with its header, and the changelog values of the changed calls
    (once per call and batch, as the record path drains them)."""
    config = load_config(CONFIG)
    is_tick, decode_tick = codec.is_tick, codec.decode_tick
    decode, parse = codec.decode_event_dict, parse_event
    n = len(records)
    started = time.process_time()
    parsed = [(r.partition, r.offset, decode_tick(r.value or b"") if is_tick(r.headers)
               else parse(decode(r.value or b""))) for r in records]
    t_decode = time.process_time() - started
    stores: dict[int, dict[str, Any]] = {p: {} for p in range(PARTITIONS)}
    correlators = {p: Correlator(config, stores[p]) for p in range(PARTITIONS)}
    changed: list[list[Any]] = []
    cdrs: list[tuple[Any, Any]] = []
    started = time.process_time()
    for batch in batches(parsed, driver.BATCH_MAX):  # type: ignore[arg-type]
        touched: dict[int, dict[str, None]] = {}
        for partition, offset, item in batch:
            correlator = correlators[partition]
            if type(item) is int:
                out = correlator.advance(item, offset)
            else:
                out = correlator.on_event(item, offset)
                touched.setdefault(partition, {})[item.call_id] = None
            for cdr in out:
                cdrs.append((cdr, correlator))
                touched.setdefault(partition, {})[cdr.call_id] = None
        changed.append([stores[p][c] for p, ids in touched.items() for c in ids
                        if c in stores[p]])
    t_core = time.process_time() - started
    started = time.process_time()
    for cdr, correlator in cdrs:
        start = correlator.call_start_ms(cdr.call_id)
        _ = [] if start is None else [codec.call_start_header(start)]
        codec.encode_cdr(cdr)
    t_encode = time.process_time() - started
    encode, label = state_encoder()
    writes = sum(len(c) for c in changed)
    started = time.process_time()
    for states in changed:
        for state in states:
            encode(state)
    t_state = time.process_time() - started
    print(f"stages on their own, CPU per record ({n:,} records; {len(cdrs):,} CDRs, "
          f"{writes:,} changed calls):")
    for name, used in (("decode (Avro body + parse_event)", t_decode),
                       ("core (on_event, advance)", t_core),
                       ("CDR encode + header", t_encode),
                       (f"changelog values ({label})", t_state)):
        print(f"  {name:<40} {used / n * 1e6:6.2f} µs")


def state_encoder() -> tuple[Callable[[Any], bytes], str]:
    """The changelog value encoder of the worker's configured format."""
    changelog_format = load_settings(CONFIG).worker.changelog_format
    return functools.partial(changelog.encoder(changelog_format), 0), changelog_format


def profile_path(records: list[Rec], top: int) -> None:
    tune_gc()
    run_path(records[: len(records) // 5], None)  # warm-up: imports, caches
    stages(records)
    best = None
    for _ in range(3):
        started = time.process_time()
        cdrs, writes = run_path(records, None)
        used = time.process_time() - started
        best = used if best is None else min(best, used)
    assert best is not None
    print(f"record path alone, best of 3: {len(records):,} records in {best:.2f} CPU-s = "
          f"{len(records) / best:,.0f} records per CPU-second ({cdrs:,} CDRs, "
          f"{writes:,} changelog writes, {writes / len(records):.2f} a record)")
    profile = cProfile.Profile()
    profile.enable()
    run_path(records, None)
    profile.disable()
    print_profile(profile, top, "record path, by own time")


def print_profile(profile: Any, top: int, title: str) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    print(f"--- {title}")
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    print("\n".join(line[:150] for line in lines[start:] if line.strip()))


def profile_worker(prefix: str, total: int, workdir: Path, top: int,
                   env: dict[str, str], profiled: bool, n: int = 0) -> None:
    port = _free_port()
    profile = workdir / f"worker-{n}.prof"
    app = f"{prefix}wb{n}"
    proc = _spawn(["worker", "--config", str(CONFIG), "--app-id", app,
                   "--data-dir", str(workdir / "faust"), "--metrics-port", str(port)],
                  prefix, workdir / "worker.log",
                  env={"CDR_WORKER_PROFILE": str(profile), **env} if profiled else env)
    try:
        run = watch_worker(proc, port, total, workdir / "worker.log")
    finally:
        _stop(proc)
    how = "under cProfile, which slows its main thread" if profiled else "not profiled"
    print(f"worker ({how}): {run.events:,} records in "
          f"{run.cpu_s:.2f} CPU-s over {run.wall_s:.2f} s = {run.per_cpu_s:,.0f} records per "
          f"CPU-second")
    print("  CPU by thread: " + ", ".join(f"{name} {sec:.2f} s ({sec / run.cpu_s:.0%})"
                                         for name, sec in run.threads.items()))
    if profiled and profile.exists():
        print_profile(str(profile), top, "worker's main thread, by own time")
        print_parts(str(profile))


# The worker's parts, by where their code is: (label, file suffix, function name).
PARTS = (
    ("driver: a partition's batch, all of it", "worker/driver.py", "process"),
    ("  record path (decode, core, encode, changelog values)", "worker/record_path.py",
     "process"),
    ("  CDR send (record batches)", "worker/produce.py", "send"),
    ("  table write (store + changelog send)", "worker/table_store.py", "write"),
    ("handoff: take", "worker/handoff.py", "take"),
    ("handoff: acknowledge", "worker/handoff.py", "ack"),
    ("Faust's fetch loop, all of it", "faust/transport/consumer.py", "_drain_messages"),
    ("  the fetch, handoff delivery included", "worker/faust_compat.py", "_getmany"),
    ("Faust's commits", "faust/transport/consumer.py", "commit"),
)


def print_parts(profile: str) -> None:
    """Cumulative time of the worker's parts in a profile of its main thread."""
    stats = pstats.Stats(profile)
    total = sum(tt for (_, _, tt, _, _) in stats.stats.values())  # type: ignore[attr-defined]
    print(f"--- worker's parts, cumulative (profiled; {total:.2f} s in all)")
    for label, path, name in PARTS:
        cum = sum(ct for (file, _, func), (_, _, _, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
                  if file.endswith(path) and func == name)
        print(f"  {label:<58} {cum:6.2f} s {cum / total:5.0%}")


def writes_per_window(rate: float, seconds: float = 20.0) -> None:
    """Would fewer, larger changelog writes pay? The latency benchmark's traffic
    (stream_bench.latency: the same simulation at `rate` events/s, in real time) through
    the record path, with batches of what arrives within each window: changelog writes
    per event (a call's state is written once per batch that changed it)."""
    config = load_config(CONFIG)
    changelog_format = load_settings(CONFIG).worker.changelog_format
    items = [i for i in generate(config, calls=int(rate * seconds / 3.7), switches=4,
                                 rate_cps=rate / 3.7, seed=77, start_ms=int(time.time() * 1000),
                                 faults=FaultMix.none(), final_tick=False)
             if not isinstance(i, Tick)]
    records = [Rec("call-events", 0, n, i["call_id"].encode(), codec.encode_event_dict(i))
               for n, i in enumerate(items)]
    print(f"changelog writes per event at {rate:,.0f} events/s in real time "
          f"({len(records):,} events), batches by arrival window:")
    for window in (0.05, 0.2, 0.5, 1.0, 2.0, 5.0):
        path = RecordPath(config, {}.values, changelog_format)
        path.start(0, 0)
        writes = sum(len(path.process(0, batch).changelog)
                     for batch in batches(records, max(1, int(rate * window))))
        print(f"  {window:4.2f} s: {writes / len(records):.3f}")
    on_the_wire(config, records, max(1, int(rate * 0.05 / PARTITIONS)))


def on_the_wire(config: Any, records: list[Rec], per_batch: int) -> None:
    """Each changelog format's values, and what each codec makes of their record batches
    (aiokafka's batch builder, as the worker sends them): bytes a value, CPU a value."""
    for changelog_format in changelog.FORMATS:
        path = RecordPath(config, {}.values, changelog_format)
        path.start(0, 0)
        sent = [[w.record for w in path.process(0, batch).changelog]
                for batch in batches(records, per_batch)]
        values = [len(r[1]) for b in sent for r in b if r[1]]
        print(f"{changelog_format} values: {sum(values) / len(values):.0f} bytes on average, "
              f"largest {max(values)}; record batches of {per_batch} events' writes:")
        for codec_name in ("none", "snappy", "lz4", "zstd"):
            size = count = 0
            started = time.process_time()
            for batch in sent:
                builder = DefaultRecordBatchBuilder(2, CODECS[codec_name], 0, -1, -1, 0, 1 << 20)
                for offset, (key, value, headers) in enumerate(batch):
                    builder.append(offset, None, key, value, headers)
                count += len(batch)
                size += len(builder.build())
            used = time.process_time() - started
            print(f"  {codec_name:<7} {size / count:6.1f} bytes a value on the wire, "
                  f"{used / count * 1e6:5.2f} µs a value to build")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--no-path", action="store_true", help="skip the record path alone")
    ap.add_argument("--no-worker", action="store_true", help="skip the worker")
    ap.add_argument("--no-profile", action="store_true",
                    help="run the worker without cProfile (its CPU figures undistorted)")
    ap.add_argument("--writes-per-window", type=float, metavar="RATE",
                    help="only: changelog writes per event by batch window at RATE events/s")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="environment of the worker (e.g. CDR_WORKER_CHANGELOG_FORMAT=json)")
    args = ap.parse_args()
    if args.writes_per_window:
        writes_per_window(args.writes_per_window)
        return
    run = uuid.uuid4().hex[:6]
    prefix = f"bench{run}-"
    workdir = ROOT / "out" / f"bench-{run}"
    workdir.mkdir(parents=True, exist_ok=True)
    specs = default_topic_specs(prefix, PARTITIONS, 1)
    ensure_topics(BOOTSTRAP, specs)
    try:
        config = load_config(CONFIG)
        items = list(generate(config, calls=args.calls, switches=8, rate_cps=200, seed=5,
                              start_ms=1_764_000_000_000, faults=FaultMix()))
        with SwitchPublisher(BOOTSTRAP, f"{prefix}call-events") as pub:
            publish(items, pub)
        total = _end_offsets(f"{prefix}call-events")
        print(f"input: {args.calls} calls, {total:,} records on {PARTITIONS} partitions "
              f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        if not args.no_path:
            profile_path(read_all(f"{prefix}call-events", total), args.top)
        if not args.no_worker:
            env = dict(pair.split("=", 1) for pair in args.env)
            profile_worker(prefix, total, workdir, args.top, env, not args.no_profile)
    finally:
        delete_topics(BOOTSTRAP, [s.name for s in specs] + worker_topics(f"{prefix}wb0"))
        print(f"logs: {workdir}")


if __name__ == "__main__":
    main()
