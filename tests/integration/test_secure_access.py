# ruff: noqa: F811 - the fixtures are imported by name
"""The secured stack refuses what a component may not do, in one line, losing nothing.

Each test runs a real component (its `cdr-pipeline` command, or the class the command
uses) against deploy/local/secure.sh's Kafka (SASL_SSL, mTLS, ACLs) and ClickHouse (TLS,
a user per component), and checks the refusal names the component and the cause, and
that nothing was written.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from pipeline.core.events import CallEvent
from pipeline.kafka.admin import default_topic_specs, delete_topics, ensure_topics
from pipeline.kafka.clients import client_config
from pipeline.storage.errors import StorageError
from pipeline.switch.publisher import PublishError, SwitchPublisher
from tests.integration.kafka_fixtures import wait_until
from tests.integration.secure_fixtures import (  # noqa: F401 - fixtures
    CA_FILE,
    KAFKA_MTLS,
    KAFKA_SASL,
    PARTITIONS,
    REPO_ROOT,
    TEST_DATABASE,
    SecureStack,
    secure_stack,
)
from tests.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.secure]

CONFIG = REPO_ROOT / "deploy" / "demo" / "demo.toml"
_NO_LEADER_YET = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                  KafkaError.UNKNOWN_TOPIC_OR_PART}


class Run:
    """One deployment's names (topic prefix, worker app id, sink group), its ACLs and
    topics, made for a test and removed after it."""

    def __init__(self, stack: SecureStack) -> None:
        self.stack = stack
        self.prefix = f"acc{uuid.uuid4().hex[:8]}-"
        self.app_id, self.sink_group = f"{self.prefix}corr", f"{self.prefix}sink"

    @property
    def events(self) -> str:
        return f"{self.prefix}call-events"

    @property
    def cdrs(self) -> str:
        return f"{self.prefix}cdrs"

    def end_offsets(self, topic: str) -> int:
        """Records in `topic` (sum of its partitions' end offsets), read by the admin."""
        consumer = Consumer(client_config(self.stack.kafka("admin"),
                                          **{"group.id": f"{self.prefix}probe"}))
        offsets: list[int] = []

        def read() -> bool:
            try:
                offsets[:] = [consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                             timeout=15)[1]
                              for p in range(PARTITIONS)]
            except KafkaException as exc:
                # A topic made moments ago may not have its leaders in the broker's
                # metadata yet (seen in CI): ask again; any other error is the answer.
                if exc.args[0].code() not in _NO_LEADER_YET:
                    raise
                return False
            return True

        try:
            wait_until(read, 30, f"the end offsets of {topic}")
            return sum(offsets)
        finally:
            consumer.close()


@pytest.fixture
def run(secure_stack: SecureStack) -> Iterator[Run]:
    r = Run(secure_stack)
    admin = secure_stack.kafka("admin")
    specs = default_topic_specs(r.prefix, PARTITIONS, 1)
    with secure_stack.grants(r.prefix, r.app_id, r.sink_group):
        ensure_topics(admin, specs)
        try:
            yield r
        finally:
            delete_topics(admin, [s.name for s in specs])


def _event(call_id: str = "c1") -> CallEvent:
    return CallEvent(event_id=f"{call_id}-setup", call_id=call_id, switch_id="sw1",
                     event_type="SETUP", ts_ms=int(time.time() * 1000), account_id="acme",
                     caller="15550001111", callee="442071234567")


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`cdr-pipeline ARGS` with only `env`'s CDR_* settings (none inherited)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDR_")}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env={**clean, **env},
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False, stdin=subprocess.DEVNULL)


def one_line_error(proc: subprocess.CompletedProcess[str], command: str) -> str:
    """The error a refused command printed: exit 2, one line naming the command."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"cdr-pipeline {command}: error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secure") / "events.jsonl"
    now = int(time.time() * 1000)
    path.write_text(
        '{"event_id": "e1", "call_id": "k1", "type": "SETUP", "ts_ms": %d, "switch_id": "sw1", '
        '"account_id": "acme", "caller": "15550001111", "callee": "442071234567"}\n' % now,
        encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that signed nothing of the stack's: a client trusting only it must refuse."""
    folder = tmp_path_factory.mktemp("other-ca")
    subprocess.run([str(REPO_ROOT / "deploy" / "local" / "tls.sh"), "ensure", str(folder)],
                   check=True, capture_output=True, timeout=60)
    return folder / "ca.pem"


# -- who may connect at all --------------------------------------------------------------------


def test_each_principal_does_its_job_over_sasl_and_mtls(secure_stack: SecureStack,
                                                        run: Run) -> None:
    for identity in ("publisher", "publisher-mtls"):
        kafka = secure_stack.kafka(identity)
        assert kafka.bootstrap == (KAFKA_MTLS if identity.endswith("mtls") else KAFKA_SASL)
        with SwitchPublisher(kafka, run.events) as publisher:
            publisher.publish(_event(f"{identity}-1"))
    assert run.end_offsets(run.events) == 2
    # the rerate principal reads call-events (its consumer, assign() and no commit)
    consumer = Consumer(client_config(secure_stack.kafka("rerate"), **{
        "group.id": f"cdr-rerate-{uuid.uuid4().hex[:8]}", "enable.partition.eof": True}))
    try:
        consumer.assign([TopicPartition(run.events, p, 0) for p in range(PARTITIONS)])
        read, eof, deadline = 0, 0, time.monotonic() + 30
        while eof < PARTITIONS and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error() is None:
                read += 1
            elif msg.error().code() == KafkaError._PARTITION_EOF:
                eof += 1
            else:
                pytest.fail(f"rerate cannot read {run.events}: {msg.error()}")
        assert read == 2
    finally:
        consumer.close()


def test_a_wrong_password_stops_the_publisher_at_once(secure_stack: SecureStack, run: Run,
                                                      events_file: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n", encoding="utf-8")
    env = {**secure_stack.env("publisher"), "CDR_KAFKA_PASSWORD_FILE": str(wrong),
           "CDR_KAFKA_TOPIC_PREFIX": run.prefix}
    started = time.monotonic()
    proc = cli(env, "publish", "--config", str(CONFIG), "--events", str(events_file),
               "--timeout", "30")
    error = one_line_error(proc, "publish")
    assert "authentication failed" in error and "as publisher" in error, error
    assert time.monotonic() - started < 25, "the publisher waited for the delivery time-out"
    assert run.end_offsets(run.events) == 0  # nothing half-written


def test_a_wrong_clickhouse_password_is_refused(secure_stack: SecureStack,
                                                tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n", encoding="utf-8")
    env = {**secure_stack.env("report"), "CDR_CLICKHOUSE_PASSWORD_FILE": str(wrong)}
    error = one_line_error(cli(env, "report", "--no-refresh", "--clickhouse",
                               secure_stack.url()), "report")
    assert "Wrong password for user cdr_report" in error, error


def test_a_plaintext_client_on_the_tls_ports(secure_stack: SecureStack, run: Run,
                                             events_file: Path) -> None:
    env = {"CDR_KAFKA_BOOTSTRAP": KAFKA_SASL, "CDR_KAFKA_TOPIC_PREFIX": run.prefix}
    error = one_line_error(cli(env, "publish", "--config", str(CONFIG), "--events",
                               str(events_file), "--timeout", "30"), "publish")
    assert "a PLAINTEXT client on a TLS listener" in error, error
    assert run.end_offsets(run.events) == 0

    report = secure_stack.env("report")
    url = secure_stack.url().split("?")[0]  # no TLS options in the URL either
    env = {**report, "CDR_CLICKHOUSE_SECURE": "false", "CDR_CLICKHOUSE_CA_FILE": ""}
    error = one_line_error(cli(env, "report", "--no-refresh", "--clickhouse", url), "report")
    assert "127.0.0.1:39440" in error and "secure" in error, error


def test_an_untrusted_server_certificate_is_refused(secure_stack: SecureStack, run: Run,
                                                    events_file: Path, other_ca: Path) -> None:
    env = {**secure_stack.env("publisher"), "CDR_KAFKA_CA_FILE": str(other_ca),
           "CDR_KAFKA_TOPIC_PREFIX": run.prefix}
    error = one_line_error(cli(env, "publish", "--config", str(CONFIG), "--events",
                               str(events_file), "--timeout", "30"), "publish")
    assert "certificate is not trusted" in error and str(other_ca) in error, error
    assert run.end_offsets(run.events) == 0

    url = secure_stack.url().replace(str(CA_FILE), str(other_ca))
    error = one_line_error(cli(secure_stack.env("report"), "report", "--no-refresh",
                               "--clickhouse", url), "report")
    assert "CERTIFICATE_VERIFY_FAILED" in error and "not signed by" in error, error


# -- who may do what ---------------------------------------------------------------------------


def test_the_sink_principal_cannot_write_call_events(secure_stack: SecureStack,
                                                     run: Run) -> None:
    with pytest.raises(PublishError) as refused:  # noqa: PT012 - publish, then flush
        with SwitchPublisher(secure_stack.kafka("sink"), run.events) as publisher:
            publisher.publish(_event())
            publisher.flush(20)
    assert refused.value.code == "TOPIC_AUTHORIZATION_FAILED", str(refused.value)
    assert "not authorized for the topic" in str(refused.value)
    assert "as sink" in str(refused.value)
    assert run.end_offsets(run.events) == 0


def test_the_publisher_principal_cannot_read_cdrs(secure_stack: SecureStack, run: Run) -> None:
    env = {**secure_stack.env("rerate"), **{k: v for k, v in secure_stack.env("publisher").items()
                                             if k.startswith("CDR_KAFKA_")}}
    env["CDR_CLICKHOUSE_URL"] = secure_stack.url()
    proc = cli(env, "rerate", "--config", str(CONFIG), "--source", "kafka", "--topic", run.cdrs,
               "--from", "2025-01-01", "--to", "2030-01-01", "--workers", "1", "--no-progress")
    error = one_line_error(proc, "rerate")
    assert "authoriz" in error.lower() and run.cdrs in error, error


def test_the_dashboard_user_writes_nothing_even_with_a_crafted_filter(
        secure_stack: SecureStack, tmp_path: Path) -> None:
    from pipeline.dashboard.db import Target, open_backend

    secure_stack.reset_database()
    ddl = secure_stack.backend("migrate")
    tables_before = ddl.execute(f"SELECT name FROM system.tables WHERE database = '{TEST_DATABASE}'")
    dashboard = secure_stack.clickhouse("dashboard")
    reader = open_backend(Target(secure_stack.url(), dashboard.user, dashboard.password),
                          reader=True)
    try:
        for sql in (f"INSERT INTO {TEST_DATABASE}.cdr_agg_refresh SELECT * FROM "
                    f"{TEST_DATABASE}.cdr_agg_refresh", f"DROP TABLE {TEST_DATABASE}.cdr",
                    f"ALTER TABLE {TEST_DATABASE}.cdr DELETE WHERE 1"):
            with pytest.raises(StorageError) as refused:
                reader.execute(sql)
            assert refused.value.code == 164, refused.value  # READONLY
    finally:
        reader.close()

    port = free_port()
    token = (secure_stack.env("dashboard")["CDR_DASHBOARD_TOKEN_FILE"])
    log = (tmp_path / "dashboard.log").open("wb")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDR_")}
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "dashboard", "--clickhouse", secure_stack.url(),
         "--port", str(port), "--refresh-interval", "0", "--readers", "1"],
        env={**clean, **secure_stack.env("dashboard")}, cwd=REPO_ROOT, stdout=log,
        stderr=subprocess.STDOUT)
    try:
        secret = Path(token).read_text(encoding="utf-8").strip()
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(server, base, tmp_path)
        crafted = ["x') ; DROP TABLE cdr_test.cdr ; --", "x' OR 1=1 FORMAT Native; INSERT INTO "
                   "cdr_test.cdr_agg_refresh SELECT * FROM cdr_test.cdr_agg_refresh --"]
        for value in crafted:
            for key in ("account", "gateway"):
                query = urllib.parse.urlencode({key: value, "from": "2024-01-01",
                                                "to": "2030-01-01"})
                status = _get(f"{base}/api/report?{query}", secret)
                assert status in (200, 400), (key, value, status)
    finally:
        server.terminate()
        server.wait(30)
    assert ddl.execute(f"SELECT name FROM system.tables WHERE database = '{TEST_DATABASE}'") \
        == tables_before
    assert ddl.execute(f"SELECT count() FROM {TEST_DATABASE}.cdr_agg_refresh") == [(0,)]
    ddl.close()


def _get(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - http://
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _wait_healthy(server: subprocess.Popen[bytes], base: str, tmp_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"dashboard exited {server.returncode}: "
                        f"{(tmp_path / 'dashboard.log').read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2):  # noqa: S310
                return
        except OSError:
            time.sleep(0.2)  # polling the port until the server listens, bounded
    pytest.fail("dashboard did not answer /healthz within 60 s")
