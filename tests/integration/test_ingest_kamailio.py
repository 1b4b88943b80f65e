"""`cdr-pipeline ingest kamailio` against the real broker, with a local TCP server
playing Kamailio's evapi (netstrings) and a file playing its journal.

The adapter runs as its own process (as in production): frames in, events on the
topic (decoded with the codec), bad frames on the dead-letter topic with reasons, a
reconnect when evapi closes, the journal replayed after an outage (once with the
checkpoint, again with the same ids without it), and a SIGKILL mid-stream followed
by a restart losing no event.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.avro import codec
from pipeline.core.events import parse_event
from pipeline.ingest.kamailio import event_id
from pipeline.ingest.netstring import encode
from pipeline.kafka.admin import default_topic_specs, delete_topics, ensure_topics
from tests.integration.kafka_fixtures import wait_until
from tests.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 3
NODE = "kam-it"


class FakeEvapi:
    """Kamailio's evapi end: one client at a time; what is sent with no client is lost."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.connections = 0
        self._conn: socket.socket | None = None
        self._cond = threading.Condition()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self._cond:
                if self._conn is not None:
                    self._conn.close()
                self._conn = conn
                self.connections += 1
                self._cond.notify_all()

    def wait_connections(self, count: int, timeout: float = 15) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.connections >= count, timeout):
                pytest.fail(f"the adapter did not open connection #{count} to evapi")

    def send(self, data: bytes) -> bool:
        with self._cond:
            if self._conn is None:
                return False
            try:
                self._conn.sendall(data)
            except OSError:
                self._conn.close()
                self._conn = None
                return False
            return True

    def drop(self) -> None:
        with self._cond:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def close(self) -> None:
        self.drop()
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        except OSError:
            pass
        self.server.close()


def call(n: int, prefix: str = "c") -> list[dict[str, Any]]:
    """A whole answered call as Kamailio emits it."""
    cid, ts = f"{prefix}{n}@it", 1_764_750_000 + n
    common = {"call_id": cid, "node": NODE}
    return [
        {**common, "kind": "SETUP", "ts": f"{ts}.000100", "caller": "4930111", "callee":
         f"49892{n:05d}", "src": "192.0.2.7:5060", "account": "acme" if n % 2 else "",
         "ingress_gw": "", "illegal": "" if n % 2 else "UNAUTHORIZED_SOURCE"},
        {**common, "kind": "RINGING", "ts": f"{ts}.200000", "code": 180, "egress_gw": "gw-a"},
        {**common, "kind": "ANSWER", "ts": f"{ts + 1}.000000", "egress_gw": "gw-a",
         "callee_gw": "99#4989"},
        {**common, "kind": "HANGUP", "ts": f"{ts + 31}.500000", "answered": True, "by":
         "CALLER", "server_reason": "", "sip_code": 200, "reason":
         'Q.850;cause=16;text="Normal"', "egress_gw": "gw-a"},
    ]


def payload(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def ids(events: list[dict[str, Any]]) -> set[str]:
    return {event_id(e["node"], e["call_id"], e["kind"]) for e in events}


def journal_line(event: dict[str, Any]) -> bytes:
    return b"0(4242) NOTICE: <script>: CDR-EVENT " + payload(event) + b"\n"


@pytest.fixture
def prefix(kafka_bootstrap: str) -> Iterator[str]:
    name = f"ingest{uuid.uuid4().hex[:8]}-"
    specs = default_topic_specs(name, PARTITIONS, 1)
    ensure_topics(kafka_bootstrap, specs)
    yield name
    delete_topics(kafka_bootstrap, [s.name for s in specs])


@pytest.fixture
def evapi() -> Iterator[FakeEvapi]:
    server = FakeEvapi()
    yield server
    server.close()


class Adapter:
    """The adapter process; stopped (SIGTERM, then SIGKILL) when the test ends."""

    def __init__(self, bootstrap: str, prefix: str, evapi_port: int, tmp: Path,
                 *extra: str, **env_extra: str) -> None:
        self.log = tmp / f"adapter-{uuid.uuid4().hex[:6]}.log"
        env = dict(os.environ, CDR_KAFKA_BOOTSTRAP=bootstrap, CDR_KAFKA_TOPIC_PREFIX=prefix,
                   CDR_INGEST_CHECKPOINT_INTERVAL_S="0.2", CDR_INGEST_RECONNECT_INITIAL_S="0.05",
                   CDR_INGEST_RECONNECT_MAX_S="0.5", **env_extra)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "ingest", "kamailio",
                 "--evapi", f"127.0.0.1:{evapi_port}", *extra],
                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        assert code == 0, self.text()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def adapters() -> Iterator[list[Adapter]]:
    started: list[Adapter] = []
    yield started
    for adapter in started:
        if adapter.proc.poll() is None:
            adapter.kill()


class TopicReader:
    """Everything on a topic from its start, decoded as it is read."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                              for p in range(PARTITIONS)])
        self.records: list[Any] = []

    def poll(self) -> None:
        for msg in self.consumer.consume(500, timeout=0.2):
            assert msg.error() is None, msg.error()
            self.records.append(msg)

    def event_ids(self) -> list[str]:
        return [parse_event(codec.decode_event_dict(m.value())).event_id for m in self.records]

    def wait_for(self, wanted: set[str], timeout: float = 20) -> None:
        def have() -> bool:
            self.poll()
            return wanted <= set(self.event_ids())
        wait_until(have, timeout, f"event ids {sorted(wanted - set(self.event_ids()))[:5]}...",
                   interval_s=0)

    def read_to_end(self) -> None:
        """Everything published so far (the producer has exited, flushed)."""
        ends = {p: self.consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                       timeout=10)[1]
                for p in range(PARTITIONS)}

        def done() -> bool:
            self.poll()
            seen = Counter(m.partition() for m in self.records)
            return all(seen[p] >= ends[p] for p in ends)
        wait_until(done, 20, f"the end of {self.topic}", interval_s=0)

    def close(self) -> None:
        self.consumer.close()


def test_frames_to_events_bad_frames_to_dead_letters_and_reconnects(
    kafka_bootstrap: str, prefix: str, evapi: FakeEvapi, adapters: list[Adapter], tmp_path: Path,
) -> None:
    metrics_port, health_port = free_port(), free_port()
    adapter = Adapter(kafka_bootstrap, prefix, evapi.port, tmp_path, "--metrics-port",
                      str(metrics_port), "--health-port", str(health_port))
    adapters.append(adapter)
    events = reader = dlq = None
    try:
        reader = TopicReader(kafka_bootstrap, f"{prefix}call-events")
        dlq = TopicReader(kafka_bootstrap, f"{prefix}call-events.dlq")
        evapi.wait_connections(1)
        events = call(0)  # an even call: from an unidentified source
        stream = b"".join(encode(payload(e)) for e in events)
        assert evapi.send(stream[:37]) and evapi.send(stream[37:])  # split and merged
        bad = [b"not json", payload({**events[0], "kind": "REFER"}),
               payload({**events[0], "x_new": "1"})]
        assert evapi.send(b"".join(encode(b) for b in bad))
        reader.wait_for(ids(events))
        got = {parse_event(codec.decode_event_dict(m.value())).event_type:
               parse_event(codec.decode_event_dict(m.value())) for m in reader.records}
        assert got["SETUP"].account_id == "UNIDENTIFIED"
        assert got["SETUP"].illegal_reason == "UNAUTHORIZED_SOURCE"
        assert got["SETUP"].ts_ms == 1_764_750_000_000
        assert got["HANGUP"].q850_cause == 16 and got["HANGUP"].sip_code == 200
        assert {m.key() for m in reader.records} == {b"c0@it"}

        wait_until(lambda: (dlq.poll(), len(dlq.records) >= 3)[1], 20, "3 dead letters",
                   interval_s=0)
        assert sorted(m.value() for m in dlq.records) == sorted(bad)
        for msg in dlq.records:
            headers = dict(msg.headers())
            assert headers["source-topic"] == f"evapi:127.0.0.1:{evapi.port}".encode()
            assert headers["dlq-reason"] and headers["dlq-category"]
        categories = sorted(dict(m.headers())["dlq-category"] for m in dlq.records)
        assert categories == [b"bad kind", b"undecodable", b"unknown field"]

        evapi.drop()  # Kamailio restarts
        evapi.wait_connections(2)
        assert evapi.send(encode(payload(call(2)[0])))
        reader.wait_for(ids(call(2)[:1]))

        assert evapi.send(b"3:abc")  # a framing error: the adapter must reconnect
        assert evapi.send(b"X")
        evapi.wait_connections(3)
        assert evapi.send(encode(payload(call(3)[0])))
        reader.wait_for(ids(call(3)[:1]))

        ready = urllib.request.urlopen(f"http://127.0.0.1:{health_port}/ready", timeout=5)
        assert ready.status == 200
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                      timeout=5).read().decode()
        for line in ("cdr_ingest_reconnects_total 2.0", "cdr_ingest_connected 1.0",
                     'cdr_ingest_events_published_total{source="evapi"} 6.0',
                     'cdr_ingest_dead_letters_total{category="undecodable"} 1.0'):
            assert line in text, text
    finally:
        for r in (reader, dlq):
            if r is not None:
                r.close()
    adapter.terminate()
    log = adapter.text()
    assert "Traceback" not in log
    assert "framing error" in log and "connection closed by Kamailio" in log


def test_journal_replay_after_an_outage_and_again_without_checkpoint(
    kafka_bootstrap: str, prefix: str, evapi: FakeEvapi, adapters: list[Adapter], tmp_path: Path,
) -> None:
    journal, state = tmp_path / "kamailio.log", tmp_path / "state"
    state.mkdir()
    before, during = call(1, "j") + call(2, "j"), call(3, "j") + call(4, "j")
    journal.write_bytes(b"0(1) INFO: kamailio starting\n"
                        + b"".join(journal_line(e) for e in before)
                        + b"0(1) NOTICE: <script>: CDR-EVENT {broken\n")
    args = ("--journal", str(journal), "--state-dir", str(state))
    reader = TopicReader(kafka_bootstrap, f"{prefix}call-events")
    try:
        first = Adapter(kafka_bootstrap, prefix, evapi.port, tmp_path, *args)
        adapters.append(first)
        reader.wait_for(ids(before))
        first.terminate()
        assert (state / "kamailio.log.cdr-ingest").is_file()

        with journal.open("ab") as f:  # Kamailio logs calls while no adapter runs
            f.write(b"".join(journal_line(e) for e in during))
        second = Adapter(kafka_bootstrap, prefix, evapi.port, tmp_path, *args)
        adapters.append(second)
        reader.wait_for(ids(during))
        second.terminate()
        reader.read_to_end()
        assert Counter(reader.event_ids()) == Counter(ids(before) | ids(during)), \
            "the checkpoint should have kept the first calls from being published again"

        (state / "kamailio.log.cdr-ingest").unlink()  # run it again from the start
        third = Adapter(kafka_bootstrap, prefix, evapi.port, tmp_path, *args)
        adapters.append(third)
        evapi.wait_connections(3)
        third.terminate()  # the final sync reads the journal to its end and flushes
        reader.read_to_end()
        counts = Counter(reader.event_ids())
        assert set(counts) == ids(before) | ids(during)
        assert set(counts.values()) == {2}
        assert "journal:" in first.text() and "Traceback" not in first.text()
    finally:
        reader.close()
    dlq = TopicReader(kafka_bootstrap, f"{prefix}call-events.dlq")
    try:
        dlq.read_to_end()
        assert [m.value() for m in dlq.records] == [b"{broken", b"{broken"]
        assert dict(dlq.records[0].headers())["source-topic"] == f"journal:{journal}".encode()
    finally:
        dlq.close()


def test_sigkill_mid_stream_then_restart_loses_nothing(
    kafka_bootstrap: str, prefix: str, evapi: FakeEvapi, adapters: list[Adapter], tmp_path: Path,
) -> None:
    journal = tmp_path / "kamailio.log"
    journal.touch()
    events = [e for n in range(100) for e in call(n, "k")]
    out = journal.open("ab", buffering=0)

    def emit(batch: list[dict[str, Any]]) -> None:
        """Kamailio: journal first, then evapi (lost when no client is connected)."""
        for e in batch:
            out.write(b"0(7) INFO: some other log line\n" + journal_line(e))
            evapi.send(encode(payload(e)))

    args = ("--journal", str(journal))
    first = Adapter(kafka_bootstrap, prefix, evapi.port, tmp_path, *args)
    adapters.append(first)
    evapi.wait_connections(1)
    emit(events[:150])
    first.kill()  # mid-stream: some events unpublished, some unacknowledged
    emit(events[150:300])  # while no adapter runs: journal only
    second = Adapter(kafka_bootstrap, prefix, evapi.port, tmp_path, *args)
    adapters.append(second)
    evapi.wait_connections(2)
    emit(events[300:])
    out.close()
    reader = TopicReader(kafka_bootstrap, f"{prefix}call-events")
    try:
        reader.wait_for(ids(events), timeout=30)
        assert set(reader.event_ids()) == ids(events)
    finally:
        reader.close()
    second.terminate()
    assert "Traceback" not in second.text()


def test_a_bad_evapi_address_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "ingest", "kamailio", "--evapi", "nohost"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "--evapi: 'nohost' is not HOST:PORT" in done.stderr
    assert "Traceback" not in done.stderr


def test_health_is_not_ready_while_evapi_is_down(
    kafka_bootstrap: str, prefix: str, adapters: list[Adapter], tmp_path: Path,
) -> None:
    health_port = free_port()
    adapter = Adapter(kafka_bootstrap, prefix, free_port(), tmp_path,  # nothing listens there
                      "--health-port", str(health_port))
    adapters.append(adapter)

    def answer() -> int | None:
        try:
            return int(urllib.request.urlopen(f"http://127.0.0.1:{health_port}/health",
                                              timeout=2).status)
        except (urllib.error.URLError, ConnectionError):
            return None
    wait_until(lambda: answer() == 200, 20, "/health")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{health_port}/ready", timeout=2)
    assert info.value.code == 503
    adapter.terminate()
    log = adapter.text()
    assert log.count("cannot connect to evapi") == 1, log


def test_kafka_down_keeps_the_checkpoint_and_logs_the_outage_once(
    evapi: FakeEvapi, adapters: list[Adapter], tmp_path: Path,
) -> None:
    journal, metrics_port = tmp_path / "kamailio.log", free_port()
    journal.write_bytes(b"".join(journal_line(e) for e in call(1, "down")))
    adapter = Adapter(f"127.0.0.1:{free_port()}", "x-", evapi.port, tmp_path,  # no broker
                      "--journal", str(journal), "--metrics-port", str(metrics_port),
                      CDR_INGEST_DELIVERY_TIMEOUT_S="0.5")
    adapters.append(adapter)

    def outages() -> float:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                          timeout=2).read().decode()
        except (urllib.error.URLError, ConnectionError):
            return 0
        line = next((x for x in text.splitlines()
                     if x.startswith("cdr_ingest_kafka_outages_total ")), "x 0")
        return float(line.split()[1])
    wait_until(lambda: outages() >= 2, 30, "two delivery time-outs")
    adapter.terminate()
    log = adapter.text()
    assert log.count("Kafka did not take the events") == 1, log
    assert "published again on the next start" in log
    assert not (tmp_path / "kamailio.log.cdr-ingest").exists(), "checkpoint without an ack"
    assert "Traceback" not in log
