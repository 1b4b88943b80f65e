"""Where every Kafka client of the project gets its connection settings.

Each client (publisher, worker, sink, re-rating, ingest, admin) builds its
configuration here from the `[kafka]` settings, so that a connection setting
(bootstrap servers, security protocol, SASL credentials, TLS files) is written
once and reaches every client: confluent-kafka clients through `client_config`,
the Faust worker (aiokafka) through `faust_broker_urls` and `faust_app_kwargs`.

`connection_problem` turns the errors a client reports when it cannot get in
(wrong password, untrusted certificate, a plaintext client on a TLS port) into
one line naming the cause, so that a component can stop with it instead of
retrying a connection that cannot succeed. See docs/security.md.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from confluent_kafka import KafkaError

from pipeline.errors import ConfigError
from pipeline.runtime.settings import KafkaSettings

Target = KafkaSettings | str


def settings_of(target: Target) -> KafkaSettings:
    """`target` as settings: a bare bootstrap string (tests, benches, old callers)
    means a plaintext cluster with the default settings."""
    return target if isinstance(target, KafkaSettings) else KafkaSettings(bootstrap=target)


def client_config(kafka: KafkaSettings, **extra: Any) -> dict[str, Any]:
    """A confluent-kafka (librdkafka) configuration for a client of `kafka`'s
    cluster, with `extra` (dotted librdkafka keys) on top.

    The password is put in as a plain string (librdkafka needs it so): never log
    the returned dict; `redacted` gives a copy fit for a log line."""
    config: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap}
    if kafka.security_protocol != "PLAINTEXT":
        config["security.protocol"] = kafka.security_protocol.lower()
    if kafka.sasl:
        config["sasl.mechanism"] = kafka.sasl_mechanism
        config["sasl.username"] = kafka.username
        config["sasl.password"] = kafka.password.reveal()
    if kafka.tls:
        # Hostname checking is librdkafka's default (https); the CA is the given
        # bundle, else the system's store.
        config["ssl.endpoint.identification.algorithm"] = "https"
        if kafka.ca_file:
            config["ssl.ca.location"] = kafka.ca_file
        if kafka.cert_file:
            config["ssl.certificate.location"] = kafka.cert_file
            config["ssl.key.location"] = kafka.key_file
    config.update(extra)
    return config


_SECRET_KEYS = ("sasl.password", "ssl.key.password", "ssl.keystore.password")


def redacted(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with its secrets replaced by ***, for a log line."""
    return {k: ("***" if k in _SECRET_KEYS else v) for k, v in config.items()}


def describe(kafka: KafkaSettings) -> str:
    """Where and as whom a client connects, for log and error lines (no secret)."""
    who = f" as {kafka.username}" if kafka.sasl else ""
    if kafka.cert_file:
        who += f" (client certificate {kafka.cert_file})"
    return f"{kafka.bootstrap} ({kafka.security_protocol}{who})"


def faust_broker_urls(kafka: KafkaSettings) -> list[str]:
    """The broker URLs a Faust app is given for `kafka`'s cluster."""
    return [f"kafka://{host.strip()}" for host in kafka.bootstrap.split(",") if host.strip()]


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    """The TLS context aiokafka (the Faust worker) connects with: the broker's
    certificate checked against `ca_file` (else the system store), hostname
    included; the client certificate loaded for mTLS."""
    try:
        context = ssl.create_default_context(cafile=kafka.ca_file or None)
        if kafka.cert_file:
            context.load_cert_chain(kafka.cert_file, kafka.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"kafka TLS files (ca_file {kafka.ca_file or '-'}, cert_file "
                          f"{kafka.cert_file or '-'}): cannot be loaded: {exc}") from None
    return context


def faust_app_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection keyword arguments for `faust.App` beyond the broker URLs:
    `broker_credentials` (SASL user over TLS, or TLS alone); none for a plaintext
    cluster. Faust's credentials objects show the user name only in their repr."""
    if kafka.security_protocol == "PLAINTEXT":
        return {}
    import faust

    context = ssl_context(kafka) if kafka.tls else None
    if kafka.sasl:
        credentials: Any = faust.SASLCredentials(
            username=kafka.username,
            password=kafka.password.reveal(),
            ssl_context=context,
            mechanism=kafka.sasl_mechanism,
        )
        return {"broker_credentials": credentials}
    return {"broker_credentials": faust.SSLCredentials(context)}


# -- why a client cannot get in -------------------------------------------------------------

_FATAL_CODES = {
    KafkaError._AUTHENTICATION: "authentication failed",
    KafkaError.SASL_AUTHENTICATION_FAILED: "authentication failed",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "not authorized for the topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "not authorized for the consumer group",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "not authorized for the cluster operation",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "not authorized for the transactional id",
}


class ClientLog:
    """The `logger` of a librdkafka client: forwards its lines to `logger` and notes
    the one sign librdkafka gives only there of a plaintext client on a TLS listener:
    the broker closing the connection at the client's very first request (ApiVersion),
    which librdkafka reports to the error callback as "all brokers down" only."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self.closed_at_handshake: str | None = None

    def log(self, level: int, msg: str, *args: Any) -> None:
        text = msg % args if args else msg
        if "APIVERSION_QUERY" in text and "closed" in text:
            self.closed_at_handshake = text
        self._logger.log(level, "%s", text)


def connection_problem(err: KafkaError, kafka: KafkaSettings,
                       client_log: ClientLog | None = None) -> str | None:
    """One line naming why a client of `kafka` cannot work, if `err` says it never
    will without a configuration change (credentials, TLS trust, protocol, ACLs);
    None for errors that retrying may cure (a broker restarting)."""
    code, text = err.code(), err.str()
    lowered = text.lower()
    if (code == KafkaError._ALL_BROKERS_DOWN and not kafka.tls and client_log is not None
            and client_log.closed_at_handshake is not None):
        return (f"the broker closed the connection at the first request: a "
                f"{kafka.security_protocol} client on a TLS listener? (kafka.security_protocol) "
                f"on {kafka.bootstrap}")
    if code in _FATAL_CODES:
        return f"{_FATAL_CODES[code]} on {describe(kafka)}: {_first_line(text)}"
    if "certificate verify failed" in lowered or "certificate_verify_failed" in lowered:
        return (f"TLS: the broker's certificate is not trusted (kafka.ca_file "
                f"{kafka.ca_file or '(system store)'}) on {describe(kafka)}: {_first_line(text)}")
    if code == KafkaError._SSL or "ssl handshake failed" in lowered:
        return f"TLS handshake failed on {describe(kafka)}: {_first_line(text)}"
    if "incorrect security.protocol" in lowered or "connecting to a ssl listener" in lowered:
        return (f"the broker closed the connection during the handshake: a "
                f"{kafka.security_protocol} client on a listener that wants another protocol "
                f"(kafka.security_protocol?) on {kafka.bootstrap}: {_first_line(text)}")
    return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
