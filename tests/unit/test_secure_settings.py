"""Security settings: secrets from files, never shown; client configurations built from
[kafka] and [clickhouse]; the errors a client gets when it cannot get in; the ACL table.

Pure logic only: the secured servers are exercised in tests/integration/test_secure_access.py
and tests/e2e/test_secure_pipeline.py.
"""

from __future__ import annotations

import logging
import pickle
import ssl
from pathlib import Path

import pytest
from confluent_kafka import KafkaError

from pipeline.errors import ConfigError
from pipeline.kafka.acls import grants_table, pipeline_grants
from pipeline.kafka.clients import (
    ClientLog,
    client_config,
    connection_problem,
    describe,
    faust_app_kwargs,
    redacted,
)
from pipeline.runtime.settings import KafkaSettings, Secret, load_settings, read_env_file
from pipeline.storage.errors import StorageError, StorageUnavailable
from pipeline.storage.native import ClickHouseTls, translate_error
from pipeline.storage.url import parse_clickhouse_url, settings_tls, tls_of

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cr3t-Pa55word-xyz"  # noqa: S105 - a test secret


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name in ("ca.pem", "client.pem", "client.key"):
        files[name] = tmp_path / name
        files[name].write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    return files


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _sasl_env(ca: Path, **more: str) -> dict[str, str]:
    return {"CDR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CDR_KAFKA_USERNAME": "worker",
            "CDR_KAFKA_PASSWORD": PASSWORD, "CDR_KAFKA_CA_FILE": str(ca), **more}


# -- secrets -------------------------------------------------------------------------------


def test_a_secret_never_shows_itself() -> None:
    secret = Secret(PASSWORD)
    shown = [repr(secret), str(secret), f"{secret}", "%s" % secret, "{}".format(secret),
             f"{secret:>30}", repr([secret]), repr(KafkaSettings(password=secret))]
    assert all(PASSWORD not in text for text in shown), shown
    assert secret.reveal() == PASSWORD
    assert pickle.loads(pickle.dumps(secret)).reveal() == PASSWORD  # to worker processes


def test_secrets_come_from_files_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "kafka.password").write_text(PASSWORD + "\n", encoding="utf-8")
    (tmp_path / "ch.password").write_text("ch-" + PASSWORD, encoding="utf-8")
    path = _write(tmp_path, '[kafka]\nsecurity_protocol = "SASL_SSL"\nusername = "sink"\n'
                            'password_file = "secrets/kafka.password"\n'
                            '[clickhouse]\npassword_file = "ch.password"\n'
                            '[dashboard]\ntoken = "from-the-file"\n')
    settings = load_settings(path, env={})
    assert settings.kafka.password.reveal() == PASSWORD  # one trailing newline dropped
    assert settings.clickhouse.password.reveal() == "ch-" + PASSWORD
    # the environment wins over the file, a value or a file of its own
    other = tmp_path / "other"
    other.write_text("from-env-file", encoding="utf-8")
    env = {"CDR_KAFKA_PASSWORD_FILE": str(other), "CDR_DASHBOARD_TOKEN_FILE": str(other)}
    settings = load_settings(path, env=env)
    assert settings.kafka.password.reveal() == "from-env-file"
    assert settings.dashboard.token.reveal() == "from-env-file"


@pytest.mark.parametrize(("text", "env", "message"), [
    ('[kafka]\npassword = "x"\npassword_file = "y"\n', {},
     "kafka.password and kafka.password_file: give one of them, not both"),
    ("", {"CDR_CLICKHOUSE_PASSWORD": "x", "CDR_CLICKHOUSE_PASSWORD_FILE": "y"},
     "CDR_CLICKHOUSE_PASSWORD and CDR_CLICKHOUSE_PASSWORD_FILE: give one of them"),
    ('[clickhouse]\npassword_file = "missing.password"\n', {},
     "clickhouse.password_file: cannot read secret file"),
    ("", {"CDR_KAFKA_PASSWORD_FILE": "/nonexistent/kafka.password"},
     "CDR_KAFKA_PASSWORD_FILE: cannot read secret file /nonexistent/kafka.password"),
    ("[clickhouse]\npassword = 1234567\n", {}, "clickhouse.password: expected a string, got int"),
    ("[kafka]\nuser_file = 'x'\n", {}, "kafka.user_file: unknown key"),
])
def test_a_bad_secret_fails_naming_the_key_never_the_value(
        tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(_write(tmp_path, text), env=env)
    assert message in str(raised.value)
    assert "1234567" not in str(raised.value)


def test_an_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="secret file .*empty is empty"):
        load_settings(env={"CDR_CLICKHOUSE_PASSWORD_FILE": str(tmp_path / "empty")})


# -- [kafka] security --------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "message"), [
    ({"CDR_KAFKA_SECURITY_PROTOCOL": "TLS"}, "kafka.security_protocol: must be one of"),
    ({"CDR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "kafka.username: needed with"),
    ({"CDR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CDR_KAFKA_USERNAME": "w"},
     "kafka.password (or kafka.password_file, CDR_KAFKA_PASSWORD_FILE): needed"),
    ({"CDR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CDR_KAFKA_USERNAME": "w",
      "CDR_KAFKA_PASSWORD": "p", "CDR_KAFKA_SASL_MECHANISM": "GSSAPI"},
     "kafka.sasl_mechanism: must be one of"),
    ({"CDR_KAFKA_USERNAME": "w", "CDR_KAFKA_PASSWORD": "p"},
     "kafka.username/password: given, but security_protocol PLAINTEXT does not use them"),
    ({"CDR_KAFKA_CA_FILE": "/etc/hostname"}, "kafka.ca_file: given, but security_protocol "
                                              "PLAINTEXT has no TLS"),
    ({"CDR_KAFKA_SECURITY_PROTOCOL": "SSL", "CDR_KAFKA_CA_FILE": "/nonexistent/ca.pem"},
     "kafka.ca_file: no such file /nonexistent/ca.pem"),
    ({"CDR_KAFKA_SECURITY_PROTOCOL": "SSL", "CDR_KAFKA_CERT_FILE": "/etc/hostname"},
     "kafka.cert_file and kafka.key_file: give both"),
    ({"CDR_CLICKHOUSE_CA_FILE": "/etc/hostname"}, "clickhouse.ca_file: given, but "
                                                   "clickhouse.secure is false"),
    ({"CDR_CLICKHOUSE_SECURE": "maybe"}, "CDR_CLICKHOUSE_SECURE: expected bool, got 'maybe'"),
])
def test_a_connection_that_cannot_work_fails_at_load(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(env=env)
    assert message in str(raised.value)


def test_client_config_for_each_security_protocol(tls_files: dict[str, Path]) -> None:
    assert client_config(load_settings(env={}).kafka, **{"group.id": "g"}) == {
        "bootstrap.servers": "127.0.0.1:19092", "group.id": "g"}

    kafka = load_settings(env=_sasl_env(tls_files["ca.pem"])).kafka
    config = client_config(kafka, **{"client.id": "c"})
    assert config == {
        "bootstrap.servers": "127.0.0.1:19092", "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "worker", "sasl.password": PASSWORD,
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.ca.location": str(tls_files["ca.pem"]), "client.id": "c"}
    assert PASSWORD not in repr(redacted(config)) and redacted(config)["sasl.password"] == "***"
    assert PASSWORD not in describe(kafka) and "as worker" in describe(kafka)

    mtls = load_settings(env={
        "CDR_KAFKA_SECURITY_PROTOCOL": "SSL", "CDR_KAFKA_CA_FILE": str(tls_files["ca.pem"]),
        "CDR_KAFKA_CERT_FILE": str(tls_files["client.pem"]),
        "CDR_KAFKA_KEY_FILE": str(tls_files["client.key"])}).kafka
    config = client_config(mtls)
    assert config["security.protocol"] == "ssl" and "sasl.username" not in config
    assert config["ssl.certificate.location"] == str(tls_files["client.pem"])
    assert config["ssl.key.location"] == str(tls_files["client.key"])


def test_faust_gets_credentials_with_a_verifying_tls_context() -> None:
    not_pem = ROOT / "tests" / "unit" / "test_secure_settings.py"
    assert faust_app_kwargs(load_settings(env={}).kafka) == {}
    kafka = KafkaSettings(security_protocol="SASL_SSL", username="worker",
                          password=Secret(PASSWORD))
    credentials = faust_app_kwargs(kafka)["broker_credentials"]
    assert credentials.username == "worker" and credentials.password == PASSWORD
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.protocol.value == "SASL_SSL"
    context = credentials.ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert PASSWORD not in repr(credentials)
    with pytest.raises(ConfigError, match="kafka TLS files .* cannot be loaded"):
        faust_app_kwargs(KafkaSettings(security_protocol="SSL", ca_file=str(not_pem)))


# -- why a client cannot get in ---------------------------------------------------------------


@pytest.mark.parametrize(("code", "text", "expect"), [
    (KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed",
     "authentication failed on 127.0.0.1:39092 (SASL_SSL as sink)"),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, "Broker: Topic authorization failed",
     "not authorized for the topic on 127.0.0.1:39092 (SASL_SSL as sink)"),
    (KafkaError.GROUP_AUTHORIZATION_FAILED, "Broker: Group authorization failed",
     "not authorized for the consumer group"),
    (KafkaError._SSL, "SSL handshake failed: error:0A000086:SSL routines::certificate verify "
     "failed", "TLS: the broker's certificate is not trusted (kafka.ca_file /x/ca.pem)"),
    (KafkaError._TRANSPORT, "SSL handshake failed: Disconnected: SSL connection closed by peer",
     "TLS handshake failed on 127.0.0.1:39092"),
    (KafkaError._TRANSPORT, "Connection refused", None),
    (KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down", None),
])
def test_connection_problems_are_named(code: int, text: str, expect: str | None) -> None:
    kafka = KafkaSettings(bootstrap="127.0.0.1:39092", security_protocol="SASL_SSL",
                          username="sink", password=Secret(PASSWORD), ca_file="/x/ca.pem")
    why = connection_problem(KafkaError(code, text), kafka)
    assert why is None if expect is None else expect in (why or ""), why


def test_a_plaintext_client_on_a_tls_listener_is_told_so() -> None:
    plain = KafkaSettings(bootstrap="127.0.0.1:39092")
    log = ClientLog(logging.getLogger("test.librdkafka"))
    down = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")
    assert connection_problem(down, plain, log) is None  # a broker that is simply down
    log.log(6, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "127.0.0.1:39092/bootstrap: "
            "Disconnected: connection closed by peer: receive 0 after POLLIN (after 1ms in "
            "state APIVERSION_QUERY)")
    assert "a PLAINTEXT client on a TLS listener" in (connection_problem(down, plain, log) or "")


def test_producer_options_never_carry_connection_secrets() -> None:
    from pipeline.switch.cli import _producer_options
    from pipeline.switch.simulator import SimulationError

    assert _producer_options(["linger.ms=5"]) == {"linger.ms": "5"}
    for pair in (f"sasl.password={PASSWORD}", "ssl.key.location=/k", "security.protocol=ssl"):
        with pytest.raises(SimulationError, match="never on the command line") as raised:
            _producer_options([pair])
        assert PASSWORD not in str(raised.value)


# -- [clickhouse] TLS --------------------------------------------------------------------------


def test_clickhouse_tls_from_the_url_or_the_settings() -> None:
    plain = parse_clickhouse_url("native://h:9000/cdr")
    assert plain.secure is None and tls_of(plain) is None
    given = ClickHouseTls("/settings/ca.pem")
    assert tls_of(plain, given) == given  # the URL does not say: the settings decide
    url = parse_clickhouse_url("native://h:9440/cdr?secure=1&ca_file=/url/ca.pem")
    assert tls_of(url, given) == ClickHouseTls("/url/ca.pem")
    assert url.redacted() == "native://h:9440/cdr?secure=1"
    assert tls_of(parse_clickhouse_url("native://h:9000/cdr?secure=0"), given) is None
    assert tls_of(parse_clickhouse_url("native://h:9440/cdr?secure=1&verify=0")) \
        == ClickHouseTls("", verify=False)
    assert ClickHouseTls("/ca.pem").client_kwargs() == {"secure": True, "verify": True,
                                                        "ca_certs": "/ca.pem"}
    settings = load_settings(env={"CDR_CLICKHOUSE_SECURE": "yes",
                                  "CDR_CLICKHOUSE_CA_FILE": "/etc/hostname"}).clickhouse
    assert settings_tls(settings) == ClickHouseTls("/etc/hostname")
    assert settings_tls(load_settings(env={}).clickhouse) is None


@pytest.mark.parametrize(("url", "message"), [
    ("native://h:9440/cdr?secure=perhaps", "secure must be 1 or 0"),
    ("native://h:9440/cdr?password=x", "unknown option 'password'"),
])
def test_bad_clickhouse_tls_options(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_clickhouse_url(url)


@pytest.mark.parametrize(("text", "expect"), [
    ("Code: 210. [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get "
     "local issuer certificate (_ssl.c:1006) (127.0.0.1:39440)",
     "TLS handshake failed: certificate verify failed: unable to get local issuer certificate "
     "(CERTIFICATE_VERIFY_FAILED): the server's certificate is not signed by clickhouse.ca_file"),
    ("Code: 210. [SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006) (h:9000)",
     "the port does not speak TLS (clickhouse.secure on a plaintext port?)"),
])
def test_a_failed_tls_handshake_is_an_error_not_an_outage(text: str, expect: str) -> None:
    from clickhouse_driver import errors

    error = translate_error(errors.NetworkError(text), "query on h failed")
    assert type(error) is StorageError and not isinstance(error, StorageUnavailable)
    assert expect in str(error), str(error)


def test_the_rerate_connector_keeps_its_password_out_of_its_repr() -> None:
    from pipeline.rerate.connect import NativeConnector

    connector = NativeConnector("h", 9440, "cdr_rerate", PASSWORD, tls=ClickHouseTls("/ca.pem"))
    assert PASSWORD not in repr(connector)
    assert pickle.loads(pickle.dumps(connector)).password == PASSWORD


# -- identity files and the ACL table -------------------------------------------------------------


def test_identity_files_are_read_like_env_files(tmp_path: Path) -> None:
    path = tmp_path / "worker.env"
    path.write_text("# comment\n\nCDR_KAFKA_USERNAME='worker'\n"
                    "CDR_CLICKHOUSE_URL=\"native://h:1/cdr?secure=1&ca_file=/c\"\nA_B=c=d\n",
                    encoding="utf-8")
    assert read_env_file(path) == {"CDR_KAFKA_USERNAME": "worker", "A_B": "c=d",
                                   "CDR_CLICKHOUSE_URL": "native://h:1/cdr?secure=1&ca_file=/c"}
    path.write_text(f"export {PASSWORD}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="worker.env:1: expected KEY=VALUE") as raised:
        read_env_file(path)
    assert PASSWORD not in str(raised.value)


def test_the_docs_carry_the_acl_table_of_the_code() -> None:
    table = grants_table(pipeline_grants())
    assert table in (ROOT / "docs" / "security.md").read_text(encoding="utf-8")


def test_each_principal_may_do_only_its_job() -> None:
    grants = pipeline_grants("p-", "p-corr", "p-sink")
    may = {(g.principal, g.resource, g.name, op) for g in grants for op in g.operations}
    assert ("publisher", "topic", "p-call-events", "WRITE") in may
    assert not {m for m in may if m[0] == "publisher" and m[3] == "READ"}
    assert not {m for m in may if m[0] == "sink" and m[3] == "WRITE" and m[2] != "p-cdrs.dlq"}
    assert not {m for m in may if m[0] in ("admin",) and m[3] in ("READ", "WRITE")}
    writers = {m[0] for m in may if m[2] == "p-cdrs" and m[3] == "WRITE"}
    assert writers == {"worker"}
    readers = {m[0] for m in may if m[2] == "p-call-events" and m[3] == "READ"}
    assert readers == {"worker", "rerate"}
    assert {g.principal for g in grants if g.resource == "group"} == {"worker", "sink", "rerate"}
