"""The ClickHouse sink against a real Kafka broker and real ClickHouse.

Run with the fixture plugins:
    pytest tests/integration/test_sink.py -p tests.integration.kafka_fixtures \
        -p tests.integration.clickhouse_fixtures

Every test uses its own topics, consumer group and database. The outage tests use
a real clickhouse-driver backend talking to the real server through a TCP relay
that the test takes down (connection refused, live connections reset) and brings
back, so the sink sees genuine network failures without stopping the shared
server other test sessions use. `test_sink_survives_a_clickhouse_server_restart`
stops and restarts the server itself (`deploy/local/clickhouse.sh down` / `up`, or
the commands in CDR_TEST_CLICKHOUSE_DOWN / CDR_TEST_CLICKHOUSE_UP, e.g. for a
private server named by CDR_CLICKHOUSE_HOST/PORT); it only runs with
CDR_TEST_RESTART_CLICKHOUSE=1.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import REGISTRY

from pipeline.avro.codec import encode_cdr
from pipeline.core.cdr import RatedCdr
from pipeline.runtime.settings import KafkaSettings
from pipeline.sink.service import SinkConfig, SinkError, SinkService, SinkStats
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.cdr_store import fetch_newest
from pipeline.storage.errors import StorageError, StorageUnavailable
from pipeline.storage.migrate import migrate
from tests.ports import free_port

pytestmark = pytest.mark.integration

T0 = 1_764_000_000_000
RUN_TIMEOUT_S = 120.0


# ---------------------------------------------------------------- data


def make_cdr(call_id: str, version: int, fee: Decimal) -> RatedCdr:
    """A complete, recorded call; `fee` and the other money fields exact Decimals."""
    return RatedCdr(
        call_id=call_id, version=version, status="COMPLETE", record_decision="RECORDED",
        decision_reason=None, billing_mode="NORMAL", account_id="acme",
        caller="15550001111", callee="442071234567", callee_gateway=None,
        ingress_gateway="in", egress_gateway="out", switch_id="sw1",
        setup_ts_ms=T0, answer_ts_ms=T0 + 2_000, end_ts_ms=T0 + 63_000, pdd_ms=2_000,
        answered=True, hold_ms=61_000, hold_s=61, rated_s=120, billable_s=120,
        hangup_source="CALLER", sip_code=200, q850_cause=16, server_reason=None,
        illegal_reason=None, rate_table="retail", rate_prefix="44",
        rate_per_min=Decimal("0.06000001"), currency="USD", fee=fee,
        cost_rate_table="vendor", cost_prefix="44", cost=Decimal("0.030500"),
        cost_currency="USD", tariff_version=f"t{version}",
        flags=("RERATED",) if version > 1 else (),
    )


def make_calls(n_calls: int, prefix: str) -> tuple[list[RatedCdr], dict[str, RatedCdr]]:
    """Versions of `n_calls` calls (every 3rd call has 3 versions, every 5th 2), in
    production order, and the newest version of each call."""
    produced: list[RatedCdr] = []
    newest: dict[str, RatedCdr] = {}
    for i in range(n_calls):
        call_id = f"{prefix}-{i:05d}"
        versions = 3 if i % 3 == 0 else 2 if i % 5 == 0 else 1
        for v in range(1, versions + 1):
            cdr = make_cdr(call_id, v, Decimal(i) / 1000 + Decimal(v) / 1_000_000)
            produced.append(cdr)
            newest[call_id] = cdr
    return produced, newest


def produce(bootstrap: str, topic: str, values: Sequence[tuple[str, bytes]],
            headers: Sequence[list[tuple[str, bytes]]] | None = None) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
         "linger.ms": 5}
    )
    for n, (key, value) in enumerate(values):
        while True:
            try:
                producer.produce(topic, key=key.encode(), value=value,
                                 headers=headers[n] if headers else None)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(30) == 0


def produce_cdrs(bootstrap: str, topic: str, cdrs: Sequence[RatedCdr]) -> None:
    produce(bootstrap, topic, [(c.call_id, encode_cdr(c)) for c in cdrs])


# ---------------------------------------------------------------- kafka checks


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"})
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        c.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (negative: nothing committed)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def read_all(bootstrap: str, topic: str, partitions: int, expected: int) -> list[Any]:
    """Read `expected` records from the start of `topic` (fails after 30 s)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[Any] = []
    deadline = time.monotonic() + 30
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for m in c.consume(num_messages=100, timeout=0.5):
                if m.error() is None:
                    out.append(m)
    finally:
        c.close()
    return out


def metric(name: str, topic: str) -> float:
    return REGISTRY.get_sample_value(name, {"topic": topic}) or 0.0


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def database(clickhouse_native: ClickHouseBackend) -> Iterator[str]:
    name = f"sink_test_{uuid.uuid4().hex[:12]}"
    migrate(clickhouse_native, name)
    yield name
    try:
        clickhouse_native.execute(f"DROP DATABASE IF EXISTS {name}")
    except StorageError:
        pass


@pytest.fixture
def topics(unique_topic: Callable[..., str]) -> tuple[str, str]:
    """A 3-partition CDR topic and its dead-letter topic."""
    cdrs = unique_topic("cdrs", partitions=3)
    dlq = unique_topic("cdrs-dlq", partitions=1)
    return cdrs, dlq


def sink_config(bootstrap: str, topic: str, dlq: str, database: str, **kw: Any) -> SinkConfig:
    values: dict[str, Any] = {
        "kafka": KafkaSettings(bootstrap=bootstrap), "topic": topic, "dlq_topic": dlq,
        "database": database,
        "group": f"sink-{uuid.uuid4().hex[:10]}", "batch_rows": 500, "batch_seconds": 0.3,
        "backoff_initial_s": 0.1, "backoff_max_s": 0.5, "lag_interval_s": 1.0,
    }
    values.update(kw)
    return SinkConfig(**values)


def assert_newest_stored(
    backend: ClickHouseBackend, database: str, newest: dict[str, RatedCdr]
) -> None:
    """FINAL holds exactly the newest version of every call, money exact."""
    rows = fetch_newest(backend, database)
    assert len(rows) == len(newest)
    for row in rows:
        want = newest[row["call_id"]]
        assert row["version"] == want.version
        assert row["fee"] == want.fee and isinstance(row["fee"], Decimal)
        assert row["rate_per_min"] == Decimal("0.06000001")
        assert row["cost"] == Decimal("0.030500")
        assert row["tariff_version"] == want.tariff_version
        assert row["flags"] == list(want.flags)


def assert_committed_to_end(bootstrap: str, group: str, topic: str, partitions: int) -> None:
    ends = end_offsets(bootstrap, topic, partitions)
    assert committed_offsets(bootstrap, group, topic, partitions) == ends
    assert sum(ends.values()) > 0


# ---------------------------------------------------------------- happy path


@pytest.mark.parametrize("engine", ["native", "embedded"])
def test_sink_stores_the_newest_version_of_each_call_and_commits_to_the_end(
    engine: str,
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    topics: tuple[str, str],
) -> None:
    topic, dlq = topics
    if engine == "native":
        backend: ClickHouseBackend = request.getfixturevalue("clickhouse_native")
        db = request.getfixturevalue("database")
    else:
        backend = request.getfixturevalue("chdb_backend")
        db = "cdr"
        migrate(backend, db)
    produced, newest = make_calls(3000, f"happy-{engine}")
    produce_cdrs(kafka_bootstrap, topic, produced)
    config = sink_config(kafka_bootstrap, topic, dlq, db)

    started = time.monotonic()
    stats = SinkService(config, backend).run_until_idle(idle_s=0.5, timeout_s=RUN_TIMEOUT_S)
    elapsed = time.monotonic() - started

    assert stats.rows_inserted == len(produced)  # every version once: no retry, no rebalance
    assert stats.batches >= len(produced) // config.batch_rows
    assert stats.dead_lettered == 0 and stats.insert_retries == 0
    assert_newest_stored(backend, db, newest)
    assert_committed_to_end(kafka_bootstrap, config.group, topic, 3)
    assert metric("cdr_sink_rows_total", topic) == len(produced)
    assert metric("cdr_sink_batches_total", topic) == stats.batches
    print(f"\n[{engine}] {stats.rows_inserted} rows, {stats.batches} batches, "
          f"{stats.rows_inserted / stats.insert_seconds:.0f} rows/s inside inserts, "
          f"{stats.rows_inserted / elapsed:.0f} rows/s end to end incl. start-up")


def test_redelivery_is_harmless_under_final(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
    database: str,
) -> None:
    """A second group reading the same topic re-inserts every row: FINAL is unchanged."""
    topic, dlq = topics
    produced, newest = make_calls(400, "redeliver")
    produce_cdrs(kafka_bootstrap, topic, produced)
    for _ in range(2):
        config = sink_config(kafka_bootstrap, topic, dlq, database)  # a fresh group each time
        SinkService(config, clickhouse_native).run_until_idle(0.5, RUN_TIMEOUT_S)
    assert_newest_stored(clickhouse_native, database, newest)
    (raw,) = clickhouse_native.execute(f"SELECT count() FROM {database}.cdr")
    assert len(produced) <= raw[0] <= 2 * len(produced)


# ---------------------------------------------------------------- dead letters


def test_undecodable_records_go_to_the_dlq_and_the_sink_keeps_going(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
    database: str,
) -> None:
    topic, dlq = topics
    before, newest_before = make_calls(100, "dlq-a")
    after, newest_after = make_calls(100, "dlq-b")
    garbage = [("bad-1", b"not avro at all"), ("bad-2", b"\xc3\x01" + b"\x00" * 8 + b"xx")]
    produce_cdrs(kafka_bootstrap, topic, before)
    produce(kafka_bootstrap, topic, garbage)
    produce_cdrs(kafka_bootstrap, topic, after)
    config = sink_config(kafka_bootstrap, topic, dlq, database)

    stats = SinkService(config, clickhouse_native).run_until_idle(0.5, RUN_TIMEOUT_S)

    assert stats.dead_lettered == 2
    assert metric("cdr_sink_dlq_total", topic) == 2
    assert_newest_stored(clickhouse_native, database, {**newest_before, **newest_after})
    assert_committed_to_end(kafka_bootstrap, config.group, topic, 3)
    letters = read_all(kafka_bootstrap, dlq, 1, expected=2)
    assert sorted(m.value() for m in letters) == sorted(v for _, v in garbage)
    for m in letters:
        headers = dict(m.headers())
        assert headers["dlq-reason"]
        assert headers["source-topic"] == topic.encode()
        assert int(headers["source-partition"]) in range(3)
        assert int(headers["source-offset"]) >= 0
    reasons = {dict(m.headers())["dlq-reason"].decode() for m in letters}
    assert any("magic" in r for r in reasons), reasons
    assert any("fingerprint" in r for r in reasons), reasons


# ---------------------------------------------------------------- the call's start


def test_every_version_is_filed_under_the_start_the_worker_pinned(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
    database: str,
) -> None:
    """A call's first CDR had no SETUP (filed at its answer, just after midnight); a late
    SETUP from the day before gave the next version an earlier start. The worker sends
    both with the first start in a header, so they share one sort key and FINAL keeps
    one row. A CDR without the header is filed at its own start; a header that is not
    epoch milliseconds is dead-lettered."""
    topic, dlq = topics
    midnight = 1_764_201_600_000  # 2025-11-27 00:00 UTC
    answer, setup = midnight + 5_000, midnight - 3_000
    first = make_cdr("late-setup", 3000, Decimal("0.01"))._replace(
        status="SETUP_MISSING", setup_ts_ms=None, answer_ts_ms=answer, end_ts_ms=answer + 60_000)
    second = first._replace(version=4000, status="COMPLETE", setup_ts_ms=setup)
    plain = make_cdr("no-header", 4000, Decimal("0.02"))
    bad = make_cdr("bad-header", 4000, Decimal("0.03"))
    pinned = [("cdr-call-start-ms", str(answer).encode())]
    produce(kafka_bootstrap, topic,
            [(c.call_id, encode_cdr(c)) for c in (first, second, plain, bad)],
            headers=[pinned, pinned, [], [("cdr-call-start-ms", b"yesterday")]])

    stats = SinkService(sink_config(kafka_bootstrap, topic, dlq, database),
                        clickhouse_native).run_until_idle(0.5, RUN_TIMEOUT_S)

    assert stats.dead_lettered == 1
    rows = clickhouse_native.execute(
        f"SELECT call_id, version, call_start_ms FROM {database}.cdr ORDER BY call_id, version")
    assert [tuple(r) for r in rows] == [
        ("late-setup", 3000, answer), ("late-setup", 4000, answer),
        ("no-header", 4000, plain.setup_ts_ms)]
    final = clickhouse_native.execute(
        f"SELECT version FROM {database}.cdr FINAL WHERE call_id = 'late-setup'")
    assert [tuple(r) for r in final] == [(4000,)]
    (letter,) = read_all(kafka_bootstrap, dlq, 1, expected=1)
    assert "cdr-call-start-ms" in dict(letter.headers())["dlq-reason"].decode()


# ---------------------------------------------------------------- outages


class WrappedBackend:
    """The real backend (the caller closes it); subclasses change insert_columns."""

    def __init__(self, inner: ClickHouseBackend) -> None:
        self.inner = inner

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return self.inner.execute(sql, params)

    def insert_columns(self, table: str, columns: Sequence[str], data: Sequence[Sequence[Any]],
                       dedup_token: str | None) -> None:
        self.inner.insert_columns(table, columns, data, dedup_token)

    def server_version(self) -> tuple[int, int]:
        return self.inner.server_version()

    def close(self) -> None:
        pass


class FlakyInserts(WrappedBackend):
    """The real backend, except that the first `failures` inserts raise
    StorageUnavailable; records the group's committed offsets at every failed call."""

    def __init__(self, inner: ClickHouseBackend, failures: int, probe: Callable[[], Any]):
        super().__init__(inner)
        self.failures = failures
        self.calls = 0
        self.tokens: list[str | None] = []
        self.committed_during_outage: list[Any] = []
        self._probe = probe

    def insert_columns(self, table: str, columns: Sequence[str], data: Sequence[Sequence[Any]],
                       dedup_token: str | None) -> None:
        self.calls += 1
        self.tokens.append(dedup_token)
        if self.calls <= self.failures:
            self.committed_during_outage.append(self._probe())
            raise StorageUnavailable("injected: connection refused", 210)
        self.inner.insert_columns(table, columns, data, dedup_token)


def test_injected_outage_retries_the_same_batch_and_commits_only_after_success(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
    database: str,
) -> None:
    topic, dlq = topics
    produced, newest = make_calls(300, "flaky")
    produce_cdrs(kafka_bootstrap, topic, produced)
    config = sink_config(kafka_bootstrap, topic, dlq, database, batch_rows=10_000,
                         batch_seconds=1.0)
    flaky = FlakyInserts(
        clickhouse_native, failures=4,
        probe=lambda: committed_offsets(kafka_bootstrap, config.group, topic, 3),
    )

    stats = SinkService(config, flaky).run_until_idle(0.5, RUN_TIMEOUT_S)

    assert stats.insert_retries == 4
    assert metric("cdr_sink_insert_retries_total", topic) == 4
    # nothing committed while the inserts failed
    assert all(all(o < 0 for o in c.values()) for c in flaky.committed_during_outage)
    # the retried batch is the same batch: same token for the failures and the success
    assert len(set(flaky.tokens[:5])) == 1
    assert stats.rows_inserted == len(produced)
    assert_newest_stored(clickhouse_native, database, newest)
    (raw,) = clickhouse_native.execute(f"SELECT count() FROM {database}.cdr")
    assert raw[0] == len(produced)  # nothing lost, nothing stored twice
    assert_committed_to_end(kafka_bootstrap, config.group, topic, 3)


class Relay:
    """A TCP relay 127.0.0.1:<port> -> target. `down()` closes the listener and resets
    every live connection (clients then get connection refused); `up()` listens again
    on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._listener is not listener:  # went down meanwhile
                client.close()
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}", pytrace=False)
        time.sleep(0.1)


class SinkThread:
    """`SinkService.run` in a thread, stopped by an Event; re-raises its error."""

    def __init__(self, service: SinkService) -> None:
        self.service = service
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.service.run(self.stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def __enter__(self) -> SinkThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "sink did not stop within 60s"

    def result(self) -> SinkStats:
        self.stop.set()
        self.thread.join(60)
        if self.error is not None:
            raise self.error
        return self.service.stats


def test_real_connection_outage_pauses_retries_and_recovers(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
    database: str,
) -> None:
    from pipeline.storage.native import NativeBackend

    topic, dlq = topics
    relay = Relay((clickhouse_native.host, clickhouse_native.port))  # type: ignore[attr-defined]
    relay.up()
    backend = NativeBackend("127.0.0.1", relay.port, connect_timeout=1,
                            send_receive_timeout=10)
    first, newest_first = make_calls(200, "outage-a")
    second, newest_second = make_calls(200, "outage-b")
    config = sink_config(kafka_bootstrap, topic, dlq, database, batch_seconds=0.2)
    retries_before = metric("cdr_sink_insert_retries_total", topic)
    try:
        with SinkThread(SinkService(config, backend)) as sink:
            produce_cdrs(kafka_bootstrap, topic, first)
            wait_for(lambda: sink.service.stats.rows_inserted >= len(first), 60,
                     "the first records stored")
            committed_before = committed_offsets(kafka_bootstrap, config.group, topic, 3)

            relay.down()  # ClickHouse unreachable: connection reset / refused
            produce_cdrs(kafka_bootstrap, topic, second)
            wait_for(lambda: sink.service.stats.insert_retries >= 3, 60, "3 failed attempts")
            assert metric("cdr_sink_insert_retries_total", topic) - retries_before >= 3
            assert metric("cdr_sink_paused", topic) == 1
            assert sink.service.stats.rows_inserted == len(first)
            assert committed_offsets(kafka_bootstrap, config.group, topic, 3) == committed_before

            relay.up()
            wait_for(lambda: sink.service.stats.rows_inserted >= len(first) + len(second), 60,
                     "the batch retried after the outage")
            wait_for(sink.service.is_idle, 30, "the sink to catch up")
            stats = sink.result()
    finally:
        relay.down()
        backend.close()
    assert stats.rows_inserted == len(first) + len(second)
    assert metric("cdr_sink_paused", topic) == 0
    assert_newest_stored(clickhouse_native, database, {**newest_first, **newest_second})
    assert_committed_to_end(kafka_bootstrap, config.group, topic, 3)


@pytest.mark.skipif(os.environ.get("CDR_TEST_RESTART_CLICKHOUSE") != "1",
                    reason="stops the shared ClickHouse server; set CDR_TEST_RESTART_CLICKHOUSE=1")
def test_sink_survives_a_clickhouse_server_restart(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
    database: str,
) -> None:
    from pipeline.storage.native import NativeBackend

    script = Path(__file__).resolve().parents[2] / "deploy" / "local" / "clickhouse.sh"
    down = os.environ.get("CDR_TEST_CLICKHOUSE_DOWN", f"{shlex.quote(str(script))} down")
    up = os.environ.get("CDR_TEST_CLICKHOUSE_UP", f"{shlex.quote(str(script))} up")
    topic, dlq = topics
    produced, newest = make_calls(300, "restart")
    config = sink_config(kafka_bootstrap, topic, dlq, database)
    backend = NativeBackend(clickhouse_native.host, clickhouse_native.port,  # type: ignore[attr-defined]
                            connect_timeout=1, send_receive_timeout=10)
    try:
        with SinkThread(SinkService(config, backend)) as sink:
            subprocess.run(shlex.split(down), check=True, capture_output=True, timeout=120)
            try:
                produce_cdrs(kafka_bootstrap, topic, produced)
                wait_for(lambda: sink.service.stats.insert_retries >= 2, 60, "failed attempts")
                assert committed_offsets(kafka_bootstrap, config.group, topic, 3) == {
                    0: -1001, 1: -1001, 2: -1001}
            finally:
                subprocess.run(shlex.split(up), check=True, capture_output=True, timeout=300)
            wait_for(lambda: sink.service.stats.rows_inserted >= len(produced), 90,
                     "the batch stored after the restart")
            wait_for(sink.service.is_idle, 30, "the sink to catch up")
            sink.result()
    finally:
        backend.close()
    wait_for(clickhouse_native.ping, 30, "the session backend to reconnect")  # type: ignore[attr-defined]
    assert_newest_stored(clickhouse_native, database, newest)
    assert_committed_to_end(kafka_bootstrap, config.group, topic, 3)


def test_stopping_flushes_and_commits_what_is_batched(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
    database: str,
) -> None:
    topic, dlq = topics
    warmup, newest = make_calls(5, "shutdown-warmup")
    produced, newest_batched = make_calls(200, "shutdown")
    newest.update(newest_batched)
    produce_cdrs(kafka_bootstrap, topic, warmup)
    before = end_offsets(kafka_bootstrap, topic, 3)
    # Nothing is due by rows or age before the stop, and no partial insert may follow the
    # first within insert_gap_s.
    config = sink_config(kafka_bootstrap, topic, dlq, database, batch_rows=100_000,
                         batch_seconds=3600, insert_gap_s=3600)
    with SinkThread(SinkService(config, clickhouse_native)) as sink:
        # Caught up, the warm-up rows go in at once; the next partial batch has to wait
        # insert_gap_s for its turn, so it is still batched when the sink stops.
        wait_for(lambda: sink.service.stats.rows_inserted == len(warmup), 60, "warm-up stored")
        produce_cdrs(kafka_bootstrap, topic, produced)
        wait_for(lambda: sink.service.pending_rows == len(produced), 60, "all rows batched")
        assert sink.service.stats.rows_inserted == len(warmup)
        committed = committed_offsets(kafka_bootstrap, config.group, topic, 3)
        assert {p: o for p, o in committed.items() if o >= 0} == {
            p: o for p, o in before.items() if o > 0}
        stats = sink.result()
    assert stats.rows_inserted == len(warmup) + len(produced) and stats.batches == 2
    assert_newest_stored(clickhouse_native, database, newest)
    assert_committed_to_end(kafka_bootstrap, config.group, topic, 3)


# ---------------------------------------------------------------- operator errors


def test_a_non_transient_clickhouse_error_stops_the_sink_without_committing(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
    database: str,
) -> None:
    topic, dlq = topics
    produce_cdrs(kafka_bootstrap, topic, make_calls(50, "broken")[0])
    clickhouse_native.execute(f"DROP TABLE {database}.cdr")  # schema mismatch: no table
    config = sink_config(kafka_bootstrap, topic, dlq, database)

    with pytest.raises(SinkError, match=r"code 60") as info:
        SinkService(config, clickhouse_native).run_until_idle(0.5, RUN_TIMEOUT_S)

    assert "restart the sink" in str(info.value)
    committed = committed_offsets(kafka_bootstrap, config.group, topic, 3)
    assert all(o < 0 for o in committed.values())


def test_missing_dlq_topic_is_reported_at_start(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
    database: str,
) -> None:
    topic, _ = topics
    config = sink_config(kafka_bootstrap, topic, f"no-such-{uuid.uuid4().hex}", database)
    with pytest.raises(SinkError, match="no-such-.*not usable"):
        SinkService(config, clickhouse_native).run_until_idle(0.5, 30)


# ---------------------------------------------------------------- rebalance


def test_a_second_sink_joining_the_group_loses_and_duplicates_nothing(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
    database: str,
) -> None:
    topic, dlq = topics
    first, newest_first = make_calls(1500, "rebal-a")
    second, newest_second = make_calls(1500, "rebal-b")
    config = sink_config(kafka_bootstrap, topic, dlq, database, batch_rows=200)
    produce_cdrs(kafka_bootstrap, topic, first)
    with SinkThread(SinkService(config, clickhouse_native)) as one:
        wait_for(lambda: one.service.stats.rows_inserted > 0, 60, "the first sink to insert")
        from pipeline.storage.native import NativeBackend

        other_backend = NativeBackend(clickhouse_native.host,  # type: ignore[attr-defined]
                                      clickhouse_native.port)  # type: ignore[attr-defined]
        try:
            with SinkThread(SinkService(config, other_backend)) as two:
                produce_cdrs(kafka_bootstrap, topic, second)
                wait_for(lambda: bool(two.service.assigned), 60, "the second sink's partitions")
                wait_for(lambda: one.service.is_idle() and two.service.is_idle(), 90,
                         "both sinks to catch up")
                stats_two = two.result()
        finally:
            other_backend.close()
        stats_one = one.result()
    assert stats_one.rows_inserted + stats_two.rows_inserted >= len(first) + len(second)
    assert_newest_stored(clickhouse_native, database, {**newest_first, **newest_second})
    assert_committed_to_end(kafka_bootstrap, config.group, topic, 3)


# ---------------------------------------------------------------- command line


def test_cli_sink_migrates_stores_serves_metrics_and_stops_cleanly_on_sigterm(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
) -> None:
    import signal
    import sys
    import urllib.request

    topic, dlq = topics
    db = f"sink_cli_{uuid.uuid4().hex[:12]}"  # created by --migrate
    group = f"sink-cli-{uuid.uuid4().hex[:8]}"
    produced, newest = make_calls(300, "cli")
    produce_cdrs(kafka_bootstrap, topic, produced)
    port = free_port()
    host, ch_port = clickhouse_native.host, clickhouse_native.port  # type: ignore[attr-defined]
    env = {**os.environ, "CDR_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "CDR_CLICKHOUSE_URL": f"native://{host}:{ch_port}/{db}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "sink", "--topic", topic, "--dlq-topic", dlq,
         "--group", group, "--batch-rows", "100", "--batch-seconds", "0.2",
         "--metrics-port", str(port), "--migrate"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        def stored() -> bool:
            try:
                (n,) = clickhouse_native.execute(f"SELECT count() FROM {db}.cdr FINAL")
            except StorageError:
                return False
            return int(n[0]) == len(newest)

        wait_for(lambda: proc.poll() is None and stored(), 60, "the CLI sink to store the rows")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert f'cdr_sink_rows_total{{topic="{topic}"}}' in text
        assert "cdr_sink_insert_seconds_bucket" in text
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, topic, 3)
                 == end_offsets(kafka_bootstrap, topic, 3), 30, "the final commit")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        clickhouse_native.execute(f"DROP DATABASE IF EXISTS {db}")
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err
    assert f"{len(produced)} rows" in err


# ---------------------------------------------------------------- batching


def stored_count(backend: ClickHouseBackend, database: str) -> int:
    (row,) = backend.execute(f"SELECT count() FROM {database}.cdr")
    return int(row[0])


def test_caught_up_sink_stores_a_partial_batch_at_once_but_at_most_once_per_insert_gap(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
    database: str,
) -> None:
    """Once everything on the topic is read, a partial batch is stored without waiting
    for --batch-seconds; the next partial batch within insert_gap_s waits (here until
    the stop), so small inserts stay at most one per insert_gap_s."""
    topic, dlq = topics
    first, _ = make_calls(30, "early-a")
    second, _ = make_calls(30, "early-b")
    produce_cdrs(kafka_bootstrap, topic, first)
    config = sink_config(kafka_bootstrap, topic, dlq, database, batch_rows=100_000,
                         batch_seconds=3600,  # never due by rows or age in this test
                         insert_gap_s=3600)
    with SinkThread(SinkService(config, clickhouse_native)) as sink:
        wait_for(lambda: stored_count(clickhouse_native, database) == len(first), 30,
                 "the first burst stored long before its batch is due by age")
        assert sink.service.stats.batches == 1
        # the commit follows the insert: wait for it rather than race it
        ends = end_offsets(kafka_bootstrap, topic, 3)
        wait_for(lambda: committed_offsets(kafka_bootstrap, config.group, topic, 3) == ends, 30,
                 "the first burst committed")
        assert_committed_to_end(kafka_bootstrap, config.group, topic, 3)
        produce_cdrs(kafka_bootstrap, topic, second)
        wait_for(lambda: sink.service.pending_rows == len(second), 30, "the second burst read")
        time.sleep(1.0)  # caught up again, but a partial batch went in less than 3600 s ago
        assert sink.service.stats.batches == 1 and sink.service.pending_rows == len(second)
        stats = sink.result()
    assert stats.batches == 2 and stats.rows_inserted == len(first) + len(second)
    assert stored_count(clickhouse_native, database) == len(first) + len(second)
    assert_committed_to_end(kafka_bootstrap, config.group, topic, 3)


def test_caught_up_sink_stores_the_next_partial_batch_once_the_gap_has_passed(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
    database: str,
) -> None:
    """With a short insert_gap_s, a second burst goes in as soon as the gap after the
    first insert has passed, long before --batch-seconds."""
    topic, dlq = topics
    first, _ = make_calls(30, "next-a")
    second, _ = make_calls(30, "next-b")
    produce_cdrs(kafka_bootstrap, topic, first)
    config = sink_config(kafka_bootstrap, topic, dlq, database, batch_rows=100_000,
                         batch_seconds=3600, insert_gap_s=0.2)
    with SinkThread(SinkService(config, clickhouse_native)) as sink:
        wait_for(lambda: stored_count(clickhouse_native, database) == len(first), 30,
                 "the first burst stored")
        produce_cdrs(kafka_bootstrap, topic, second)
        wait_for(lambda: stored_count(clickhouse_native, database) == len(first) + len(second),
                 30, "the second burst stored long before its batch is due by age")
        stats = sink.result()
    assert stats.rows_inserted == len(first) + len(second)
    assert_committed_to_end(kafka_bootstrap, config.group, topic, 3)


class GatedInserts(WrappedBackend):
    """Inserts that wait for the test to open a gate: the first insert is held while
    the test looks at what the sink does meanwhile. Records what was committed when
    each insert began."""

    def __init__(self, inner: ClickHouseBackend, probe: Callable[[], Any]) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.holding = threading.Event()  # set while an insert waits at the gate
        self.inserted_rows: list[int] = []
        self.committed_at_start: list[Any] = []
        self._probe = probe

    def insert_columns(self, table: str, columns: Sequence[str], data: Sequence[Sequence[Any]],
                       dedup_token: str | None) -> None:
        self.committed_at_start.append(self._probe())
        self.holding.set()
        assert self.gate.wait(60), "the test never opened the gate"
        self.holding.clear()
        self.inner.insert_columns(table, columns, data, dedup_token)
        self.inserted_rows.append(len(data[0]))


def test_the_next_batch_is_read_while_an_insert_is_under_way_and_commits_stay_in_order(
    kafka_bootstrap: str, topics: tuple[str, str], clickhouse_native: ClickHouseBackend,
    database: str,
) -> None:
    """One insert at a time runs on its own thread: while it waits, the sink reads and
    decodes the next batch (up to batch_rows) but starts no second insert, and commits
    nothing past the stored batch. Opened, every row is stored once, committed to the end."""
    topic, dlq = topics
    produced, newest = make_calls(240, "overlap")  # 352 CDR versions
    produce_cdrs(kafka_bootstrap, topic, produced)
    config = sink_config(kafka_bootstrap, topic, dlq, database, batch_rows=100,
                         batch_seconds=3600)
    gated = GatedInserts(
        clickhouse_native, probe=lambda: committed_offsets(kafka_bootstrap, config.group, topic, 3))
    with SinkThread(SinkService(config, gated)) as sink:
        wait_for(gated.holding.is_set, 30, "the first insert to start")
        # Meanwhile the next batch is read, and reading stops at batch_rows.
        wait_for(lambda: sink.service.pending_rows == 200, 30,
                 "the next 100 rows read behind the 100 being inserted")
        assert len(gated.committed_at_start) == 1  # no second insert while one is under way
        assert all(o < 0 for o in committed_offsets(
            kafka_bootstrap, config.group, topic, 3).values())  # nothing stored, nothing committed
        gated.gate.set()
        wait_for(lambda: sum(gated.inserted_rows) == len(produced), 60, "every row stored")
        stats = sink.result()
    assert gated.inserted_rows[:3] == [100, 100, 100]
    # Each insert began after the previous batch was committed, never before.
    committed_before = [sum(max(o, 0) for o in c.values()) for c in gated.committed_at_start]
    assert committed_before[:4] == [0, 100, 200, 300]
    assert stats.rows_inserted == len(produced) and stats.batches == len(gated.inserted_rows)
    assert stored_count(clickhouse_native, database) == len(produced)
    assert_newest_stored(clickhouse_native, database, newest)
    assert_committed_to_end(kafka_bootstrap, config.group, topic, 3)
