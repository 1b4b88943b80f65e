"""Where every Kafka client of the project gets its connection settings.

Each client (publisher, worker, sink, re-rating, ingest, admin) builds its
configuration here from the `[kafka]` settings, so that a connection setting
(bootstrap servers today; security protocol and credentials as they come) is
written once and reaches every client.
"""

from __future__ import annotations

from typing import Any

from pipeline.runtime.settings import KafkaSettings


def client_config(kafka: KafkaSettings, **extra: Any) -> dict[str, Any]:
    """A confluent-kafka (librdkafka) configuration for a client of `kafka`'s
    cluster, with `extra` (dotted librdkafka keys) on top."""
    return {"bootstrap.servers": kafka.bootstrap, **extra}


def faust_broker_urls(kafka: KafkaSettings) -> list[str]:
    """The broker URLs a Faust app is given for `kafka`'s cluster."""
    return [f"kafka://{host.strip()}" for host in kafka.bootstrap.split(",") if host.strip()]


def faust_app_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection keyword arguments for `faust.App` beyond the broker URLs (e.g.
    `broker_credentials`); none while the cluster takes plaintext connections."""
    return {}
