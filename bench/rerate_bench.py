"""Benchmark of re-rating from each source, beside the raw ClickHouse read and insert
rates of the same rows, measured in the same run (not a test).

    .venv/bin/python bench/rerate_bench.py [--calls 1000000] [--base-calls 100000]
        [--kafka-calls N | --no-kafka] [--clickhouse native://127.0.0.1:19000]
        [--bootstrap 127.0.0.1:19092] [--keep]

What it does:
1. Simulates `--base-calls` calls (simulator, with faults) and rates them with the
   old configuration (`rate_lines`, the core `rate-file` uses); the final CDRs are
   replicated under new call ids up to `--calls` and stored in a fresh database
   (one row per call, `insert_cdrs`, batches of 10,000).
2. Raw read: the rows a re-rating reads (`cdr FINAL` over the range, the columns a
   re-rating selects), streamed into Python tuples. Raw insert: the same rows
   inserted into a second `cdr` table, columnar (`insert_columns`, the fastest
   path the driver has) and, for reference, through `insert_cdrs` (the sink's
   path, with its checks). Both in batches of 5,000.
3. Re-rating from ClickHouse with a new tariff that changes every rated call (the
   worst case: every call written, with its history row), timed end to end.
4. Re-rating from Kafka (unless --no-kafka): the events of `--kafka-calls` calls
   (default all) published to a fresh topic with record timestamp = event time, then
   replayed with a third tariff (so that every rated call changes again), timed end
   to end; beside it the raw consume + decode rate of the same records.

Goal: the ClickHouse source re-rates at no less than half the raw read+insert rate,
where raw read+insert = rows / (read seconds + insert seconds).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig, load_config
from pipeline.core.summary import newest_versions
from pipeline.offline.rate_file import rate_lines
from pipeline.rerate.connect import NativeConnector
from pipeline.rerate.facts import STORED_COLUMNS, row_of
from pipeline.rerate.progress import Progress
from pipeline.rerate.runner import RerateRequest, rerate
from pipeline.rerate.store import CDR_INSERT_COLUMNS, NativeRowStream, iter_stored
from pipeline.storage import dedup_token_for, insert_cdrs, migrate
from pipeline.storage.native import NativeBackend
from pipeline.switch.simulator import FaultMix, Tick, generate, jsonl_line

HEADER = (
    "prefix,description,rate_per_min,first_increment_s,next_increment_s,connect_fee,"
    "effective_from,effective_to\n"
)
COUNTRIES = ("1", "44", "447", "49", "33", "39", "34", "31", "61", "81", "86", "91", "52", "55")
HOUR_MS = 3_600_000


def _deck(path: Path, factor: int, vendor: bool) -> None:
    lines = [HEADER]
    for n, prefix in enumerate(COUNTRIES):
        rate = (n + 1) * (3 if vendor else 5) * factor
        inc = "1,1" if vendor else "30,6"
        lines.append(f"{prefix},dest {prefix},0.{rate:04d},{inc},0,,\n")
    path.write_text("".join(lines))


def write_config(directory: Path, name: str, factor: int) -> Path:
    """A billing TOML whose every rate is scaled by `factor` (a new factor changes every
    rated call)."""
    decks = directory / f"decks-{name}"
    decks.mkdir(parents=True, exist_ok=True)
    _deck(decks / "retail.csv", factor, vendor=False)
    _deck(decks / "vendor.csv", factor, vendor=True)
    path = directory / f"{name}.toml"
    path.write_text(
        '[policy]\nfee_precision = 4\nfree_e164s = ["800*"]\nno_cdr_e164s = ["999*"]\n\n'
        f'[rate_tables.retail]\ncurrency = "USD"\ndeck = "{decks.name}/retail.csv"\n\n'
        f'[rate_tables.vendor]\ncurrency = "USD"\ndeck = "{decks.name}/vendor.csv"\n\n'
        '[accounts.acme]\nrate_table = "retail"\n\n[accounts.beta]\nrate_table = "retail"\n\n'
        '[gateways.in-1]\nroute_prefix = "777"\n\n'
        '[gateways.out-a]\nroute_prefix = "0011"\nrate_table = "vendor"\n\n'
        '[gateways.out-b]\nrate_table = "vendor"\n'
    )
    return path


def say(text: str) -> None:
    print(text, flush=True)


def timed(label: str, rows: int, seconds: float) -> float:
    rate = rows / seconds if seconds > 0 else 0.0
    say(f"  {label:<44} {rows:>10,} rows {seconds:>9.1f} s {rate:>11,.0f} rows/s")
    return rate


# -- data -------------------------------------------------------------------------------------


def base_traffic(
    config: BillingConfig, calls: int, start_ms: int
) -> tuple[list[Any], list[RatedCdr]]:
    items = list(
        generate(
            config,
            calls=calls,
            seed=11,
            start_ms=start_ms,
            rate_cps=100.0,
            faults=FaultMix(),
            switches=4,
        )
    )
    final = newest_versions(rate_lines([jsonl_line(i) for i in items], config))
    return items, sorted(final.values(), key=lambda c: c.call_id)


def replicas(final: list[RatedCdr], copies: int) -> Iterator[tuple[Any, ...]]:
    """Stored rows: every final CDR `copies` times under new call ids (same facts)."""
    for k in range(copies):
        for cdr in final:
            yield row_of(cdr._replace(call_id=f"{cdr.call_id}-{k}"))


def store_rows(backend: NativeBackend, db: str, rows: Iterator[tuple[Any, ...]], limit: int) -> int:
    count = 0
    batch: list[dict[str, Any]] = []
    for row in rows:
        if count >= limit:
            break
        batch.append(dict(zip(STORED_COLUMNS, row, strict=True)))
        count += 1
        if len(batch) == 10_000:
            insert_cdrs(backend, batch, dedup_token_for(batch), db)
            batch = []
    if batch:
        insert_cdrs(backend, batch, dedup_token_for(batch), db)
    return count


def columnar(rows: list[tuple[Any, ...]]) -> list[Any]:
    index = {name: i for i, name in enumerate(STORED_COLUMNS)}
    by_position = list(zip(*rows, strict=True))
    return [by_position[index[name]] for name in CDR_INSERT_COLUMNS]


# -- phases -------------------------------------------------------------------------------------


def wait_for_merges(backend: NativeBackend, prefix: str, timeout_s: float = 600) -> None:
    """Let the background merges of earlier phases finish, so that they do not slow
    down the next measured phase (merges after an insert are not in its timing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ((busy,),) = backend.execute(
            "SELECT count() FROM system.merges WHERE startsWith(database, {p:String})",
            {"p": prefix},
        )
        if not busy:
            return
        time.sleep(1)


def _chunks(
    rows: Iterator[tuple[Any, ...]], size: int
) -> Iterator[tuple[list[tuple[Any, ...]], float]]:
    """Chunks of the stream, each with the seconds spent reading it."""
    while True:
        started = time.perf_counter()
        chunk = list(islice(rows, size))
        seconds = time.perf_counter() - started
        if not chunk:
            return
        yield chunk, seconds


def raw_rates(
    backend: NativeBackend,
    host: str,
    port: int,
    db: str,
    raw_db: str,
    from_ms: int,
    to_ms: int,
    prefix: str,
) -> dict[str, float]:
    """Raw read and raw insert of the rows a re-rating reads, streamed the same way:
    5,000 rows read, then inserted (columnar), and so on; each side timed."""
    wait_for_merges(backend, prefix)
    backend.execute(f"TRUNCATE TABLE {raw_db}.cdr")
    stream = NativeRowStream(host, port)
    n, read_s, insert_s = 0, 0.0, 0.0
    server = server_cpu_s()
    for chunk, seconds in _chunks(iter_stored(stream, db, from_ms, to_ms), 5000):
        read_s += seconds
        started = time.perf_counter()
        backend.insert_columns(f"{raw_db}.cdr", CDR_INSERT_COLUMNS, columnar(chunk), None)
        insert_s += time.perf_counter() - started
        n += len(chunk)
    stream.close()
    server_after = server_cpu_s()
    started = time.perf_counter()
    wait_for_merges(backend, prefix)
    merge_s = time.perf_counter() - started
    out = {"rows": float(n), "read_s": read_s, "insert_s": insert_s}
    out["read"] = timed("raw read (cdr FINAL -> Python tuples)", n, read_s)
    out["insert"] = timed("raw insert (columnar, batches of 5,000)", n, insert_s)
    out["read_insert"] = timed("raw read + insert", n, read_s + insert_s)
    out["read_insert_merged"] = timed(
        "raw read + insert + its background merges", n, read_s + insert_s + merge_s
    )
    if server is not None and server_after is not None:
        say(f"  (ClickHouse server CPU during raw read + insert: {server_after - server:.0f} s)")

    wait_for_merges(backend, prefix)
    backend.execute(f"TRUNCATE TABLE {raw_db}.cdr")
    stream = NativeRowStream(host, port)
    sink_s = 0.0
    for chunk, _ in _chunks(iter_stored(stream, db, from_ms, to_ms), 5000):
        batch = [dict(zip(STORED_COLUMNS, r, strict=True)) for r in chunk]
        started = time.perf_counter()
        insert_cdrs(backend, batch, None, raw_db)
        sink_s += time.perf_counter() - started
    stream.close()
    out["insert_cdrs"] = timed("insert_cdrs (the sink's checked path, reference)", n, sink_s)
    backend.execute(f"TRUNCATE TABLE {raw_db}.cdr")
    return out


BATCH_ROWS = 5000


def run(
    host: str,
    port: int,
    db: str,
    config: BillingConfig,
    from_ms: int,
    to_ms: int,
    source_name: str,
    workers: int,
    kafka: Any = None,
) -> Any:
    request = RerateRequest(
        config=config,
        from_ms=from_ms,
        to_ms=to_ms,
        source=source_name,
        database=db,
        user="bench",
        batch_rows=BATCH_ROWS,
        workers=workers,
    )
    gc.collect()
    cpu, server = _cpu_s(), server_cpu_s()
    result = rerate(request, NativeConnector(host, port), kafka, Progress(None, interval_s=15.0))
    cpu = _cpu_s() - cpu
    server_text = ""
    if server is not None and (after := server_cpu_s()) is not None:
        server_text = f", ClickHouse server CPU {after - server:.0f} s"
    plural = "s" if result.workers > 1 else ""
    say(
        f"  re-rate from {source_name:<10} ({result.workers} worker{plural}):"
        f" {result.calls_read:,} calls in {result.elapsed_s:.1f} s = {result.rate:,.0f} calls/s;"
        f" {result.calls_changed:,} changed, {result.cdrs_written:,} versions written"
        f" ({result.cdrs_written / result.elapsed_s:,.0f}/s) + as many history rows;"
        f" Python CPU {cpu:.0f} s ({cpu / max(1, result.calls_read) * 1e6:.0f} us/call)"
        f"{server_text}"
    )
    return result


SERVER_PID_FILE = (
    Path(__file__).resolve().parents[1] / ".stack" / "clickhouse" / "clickhouse-server.pid"
)


def server_cpu_s() -> float | None:
    """CPU seconds the local ClickHouse server has used (all its work, other users'
    queries included), or None when it is not the local deploy/local server."""
    try:
        pid = int(Path(SERVER_PID_FILE).read_text().strip())
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def publish_events(
    bootstrap: str, topic: str, items: list[Any], copies: int, partitions: int
) -> int:
    from confluent_kafka import Producer

    from pipeline.avro import codec

    failed: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(err.name())

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": 50,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 500_000,
            "on_delivery": report,
        }
    )
    count = 0
    for item in items:
        if isinstance(item, Tick):
            value = codec.encode_tick(item.ts_ms)
            for p in range(partitions):
                _produce(producer, topic, value, None, item.ts_ms, p)
                count += 1
            continue
        for k in range(copies):
            event = dict(item, call_id=f"{item['call_id']}-{k}", event_id=f"{item['event_id']}-{k}")
            _produce(
                producer,
                topic,
                codec.encode_event_dict(event),
                event["call_id"].encode(),
                item["ts_ms"],
                None,
            )
            count += 1
    producer.flush(120)
    if failed:
        raise SystemExit(f"{len(failed)} records not delivered: {sorted(set(failed))}")
    return count


def _produce(
    producer: Any, topic: str, value: bytes, key: bytes | None, ts: int, partition: int | None
) -> None:
    from pipeline.avro import codec

    kwargs: dict[str, Any] = {"timestamp": ts}
    if partition is not None:
        kwargs.update(partition=partition, headers=[(codec.RECORD_HEADER, codec.TICK)])
    while True:
        try:
            producer.produce(topic, value, key=key, **kwargs)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)


def raw_kafka(bootstrap: str, topic: str, total: int) -> float:
    from confluent_kafka import Consumer, TopicPartition

    from pipeline.avro import codec
    from pipeline.core.events import parse_event

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
    started = time.perf_counter()
    n = 0
    while n < total:
        for msg in consumer.consume(5000, 1.0):
            if msg.error():
                continue
            n += 1
            headers: Any = msg.headers()
            if not codec.is_tick(headers):
                parse_event(codec.decode_event_dict(msg.value() or b""))
    seconds = time.perf_counter() - started
    consumer.close()
    return timed("raw Kafka consume + decode (same records)", n, seconds)


def copy_of(backend: NativeBackend, db: str, name: str) -> str:
    """A fresh database holding the stored CDRs (server-side copy, merged), so that
    every re-rating starts from the same table."""
    target = f"{db}_{name}"
    migrate(backend, target)
    backend.execute(f"INSERT INTO {target}.cdr SELECT * FROM {db}.cdr")
    backend.execute(f"OPTIMIZE TABLE {target}.cdr FINAL")
    return target


def one_prefix_config(directory: Path) -> BillingConfig:
    """The old tariff with one destination (prefix 44) dearer: the typical correction."""
    path = write_config(directory, "one", 1)
    deck = directory / "decks-one" / "retail.csv"
    lines = deck.read_text().splitlines(keepends=True)
    lines = [ln.replace("0.0010", "0.0011") if ln.startswith("44,") else ln for ln in lines]
    deck.write_text("".join(lines))
    return load_config(path)


def main(argv: list[str] | None = None) -> int:
    global BATCH_ROWS, SERVER_PID_FILE
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--base-calls", type=int, default=100_000)
    parser.add_argument(
        "--workers",
        default="1,2",
        help="worker counts to run the ClickHouse re-rating with (default 1,2)",
    )
    parser.add_argument("--kafka-calls", type=int, default=None)
    parser.add_argument("--kafka-workers", type=int, default=2)
    parser.add_argument("--no-kafka", action="store_true")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19000)
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=5000,
        help="changed calls per insert in the re-ratings (default 5000)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases and topic")
    parser.add_argument(
        "--server-pid-file",
        type=Path,
        default=SERVER_PID_FILE,
        help="pid file of the ClickHouse server, to report its CPU time",
    )
    args = parser.parse_args(argv)
    BATCH_ROWS = args.batch_rows
    SERVER_PID_FILE = args.server_pid_file
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]

    tmp = Path(tempfile.mkdtemp(prefix="rerate-bench-"))
    old = load_config(write_config(tmp, "old", 1))
    new = load_config(write_config(tmp, "new", 2))
    third = load_config(write_config(tmp, "third", 3))
    one = one_prefix_config(tmp)
    base = min(args.base_calls, args.calls)
    copies = -(-args.calls // base)
    start_ms = (int(time.time() * 1000) - 48 * HOUR_MS) // HOUR_MS * HOUR_MS
    backend = NativeBackend(args.host, args.port, send_receive_timeout=600)
    suffix = uuid.uuid4().hex[:8]
    db, raw_db = f"rerate_bench_{suffix}", f"rerate_bench_raw_{suffix}"
    made = [db, raw_db]
    topic = f"rerate-bench-events-{suffix}"
    say(
        f"ClickHouse {'.'.join(map(str, backend.server_version()))} on {args.host}:{args.port}, "
        f"database {db}"
    )
    try:
        migrate(backend, db)
        migrate(backend, raw_db)
        say(f"simulating and rating {base:,} base calls ...")
        t = time.perf_counter()
        items, final = base_traffic(old, base, start_ms)
        say(
            f"  {len(final):,} calls, {sum(1 for i in items if not isinstance(i, Tick)):,} events "
            f"in {time.perf_counter() - t:.1f} s"
        )
        say(f"storing {args.calls:,} CDRs ({copies} copies of each base call) ...")
        t = time.perf_counter()
        stored = store_rows(backend, db, replicas(final, copies), args.calls)
        backend.execute(f"OPTIMIZE TABLE {db}.cdr FINAL")
        say(f"  {stored:,} rows in {time.perf_counter() - t:.1f} s")
        last = max(c.setup_ts_ms or c.answer_ts_ms or c.end_ts_ms or 0 for c in final)
        from_ms, to_ms = start_ms, last + 1

        say("raw ClickHouse rates of the same rows (before the re-ratings):")
        prefix = "rerate_bench_"
        raw = [raw_rates(backend, args.host, args.port, db, raw_db, from_ms, to_ms, prefix)]
        say("re-rating from ClickHouse, new tariff (every rated call changes):")
        results = {}
        for w in worker_counts:
            target = copy_of(backend, db, f"w{w}")
            made.append(target)
            wait_for_merges(backend, prefix)
            results[w] = run(args.host, args.port, target, new, from_ms, to_ms, "clickhouse", w)
        say("re-rating from ClickHouse, one destination's rate corrected:")
        typical = {}
        for w in worker_counts:
            target = copy_of(backend, db, f"one{w}")
            made.append(target)
            wait_for_merges(backend, prefix)
            typical[w] = run(args.host, args.port, target, one, from_ms, to_ms, "clickhouse", w)
        say("raw ClickHouse rates of the same rows (after):")
        raw.append(raw_rates(backend, args.host, args.port, db, raw_db, from_ms, to_ms, prefix))
        read_insert = sum(r["read_insert"] for r in raw) / len(raw)
        merged = sum(r["read_insert_merged"] for r in raw) / len(raw)
        say(
            f"summary: raw read+insert {read_insert:,.0f} rows/s, {merged:,.0f} rows/s counting "
            "the merges the insert causes (means of before and after)"
        )
        for label, runs_ in (("all calls change", results), ("one rate corrected", typical)):
            for w, result in runs_.items():
                say(
                    f"  clickhouse source, {w} worker(s), {label}: {result.rate:,.0f} calls/s"
                    f" = {result.rate / read_insert:.2f} x raw read+insert"
                    f" ({result.rate / merged:.2f} x with merges; goal >= 0.50),"
                    f" {result.calls_changed:,} changed"
                )

        if not args.no_kafka:
            from pipeline.kafka.admin import TopicSpec, ensure_topics
            from pipeline.rerate.kafka_source import KafkaReplayOptions

            kcopies = copies if args.kafka_calls is None else max(1, -(-args.kafka_calls // base))
            ensure_topics(args.bootstrap, [TopicSpec(topic, args.partitions, 1)])
            say(f"publishing the events of {kcopies * base:,} calls to {topic} ...")
            t = time.perf_counter()
            records = publish_events(args.bootstrap, topic, items, kcopies, args.partitions)
            say(f"  {records:,} records in {time.perf_counter() - t:.1f} s")
            raw_kafka(args.bootstrap, topic, records)
            options = KafkaReplayOptions(bootstrap=args.bootstrap, topic=topic)
            target = copy_of(backend, db, "kafka")
            made.append(target)
            wait_for_merges(backend, prefix)
            run(
                args.host,
                args.port,
                target,
                third,
                from_ms,
                to_ms,
                "kafka",
                args.kafka_workers,
                options,
            )
    finally:
        if not args.keep:
            for name in made:
                backend.execute(f"DROP DATABASE IF EXISTS {name}")
            if not args.no_kafka:
                from pipeline.kafka.admin import delete_topics

                try:
                    delete_topics(args.bootstrap, [topic])
                except Exception as exc:  # noqa: BLE001 - cleanup
                    say(f"could not delete topic {topic}: {exc}")
        backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
