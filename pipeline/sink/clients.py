"""Where the sink's Kafka consumer and dead-letter producer come from: a factory passed in.

The default factory builds the real confluent-kafka clients with
`pipeline.kafka.clients.client_config`, the one place connection settings (bootstrap
servers, security) come from; this module only adds what is the sink's own (group,
commit and isolation settings). Unit tests pass a factory of in-memory fakes. The
protocols list exactly the methods the sink calls, so a fake implements those and
nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pipeline.kafka.clients import client_config
from pipeline.runtime.settings import KafkaSettings
from pipeline.sink.config import SinkConfig, SinkError

RebalanceCallback = Callable[[Any, list[TopicPartition]], None]
DeliveryCallback = Callable[[KafkaError | None, Message], None]
Headers = list[tuple[str, str | bytes | None]]


class SinkConsumer(Protocol):
    """The consumer methods the sink uses (confluent_kafka.Consumer has them)."""

    def subscribe(self, topics: list[str], on_assign: RebalanceCallback | None = None,
                  on_revoke: RebalanceCallback | None = None,
                  on_lost: RebalanceCallback | None = None) -> None: ...
    def poll(self, timeout: float = -1) -> Message | None: ...
    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]: ...
    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any: ...
    def assignment(self) -> list[TopicPartition]: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def commit(self, *, offsets: list[TopicPartition],
               asynchronous: Literal[False]) -> list[TopicPartition]: ...
    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...
    def committed(self, partitions: list[TopicPartition],
                  timeout: float = -1) -> list[TopicPartition]: ...
    def get_watermark_offsets(self, partition: TopicPartition, timeout: float = -1,
                              cached: bool = False) -> tuple[int, int]: ...
    def close(self) -> None: ...


class SinkProducer(Protocol):
    """The producer methods the dead-letter writer uses."""

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None, *,
                headers: Headers | None = None,
                on_delivery: DeliveryCallback | None = None) -> None: ...
    def poll(self, timeout: float = -1) -> int: ...
    def flush(self, timeout: float = -1) -> int: ...


class ClientFactory(Protocol):
    """Makes the sink's clients for a cluster; `conf` holds the sink's own librdkafka
    keys, the connection settings come from `kafka`."""

    def consumer(self, kafka: KafkaSettings, conf: dict[str, Any]) -> SinkConsumer: ...
    def producer(self, kafka: KafkaSettings, conf: dict[str, Any]) -> SinkProducer: ...


class ConfluentClients:
    """The real clients, configured by `client_config` from the `[kafka]` settings."""

    def consumer(self, kafka: KafkaSettings, conf: dict[str, Any]) -> SinkConsumer:
        return Consumer(client_config(kafka, **conf))

    def producer(self, kafka: KafkaSettings, conf: dict[str, Any]) -> SinkProducer:
        return Producer(client_config(kafka, **conf))


def consumer_conf(cfg: SinkConfig) -> dict[str, Any]:
    """The sink's consumer keys: manual commits, committed reads only, from the start
    of the topic for a new group, fetches that wait for a batch's worth of records;
    `cfg.consumer_config` on top."""
    conf: dict[str, Any] = {
        "group.id": cfg.group,
        "client.id": f"{cfg.group}-consumer",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "isolation.level": "read_committed",
        "max.poll.interval.ms": cfg.max_poll_interval_ms,
        "session.timeout.ms": cfg.session_timeout_ms,
        "fetch.min.bytes": cfg.fetch_min_bytes,
        "fetch.wait.max.ms": cfg.fetch_max_wait_ms,
    }
    conf.update(cfg.consumer_config)
    return conf


def producer_conf(cfg: SinkConfig) -> dict[str, Any]:
    """The dead-letter producer's keys: idempotent, acks=all (a dead letter's offset is
    committed once it is delivered, so it must be durable)."""
    return {
        "client.id": f"{cfg.group}-dlq",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": int(cfg.dlq_delivery_timeout_s * 1000),
    }


def check_topics(consumer: SinkConsumer, cfg: SinkConfig) -> None:
    """Fail fast, naming the topic, when the source or dead-letter topic is missing
    (brokers do not auto-create topics)."""
    for topic in (cfg.topic, cfg.dlq_topic):
        try:
            md = consumer.list_topics(topic=topic, timeout=15)
        except KafkaException as exc:
            raise SinkError(f"cannot read metadata of topic {topic}: {exc}") from exc
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None or not tmd.partitions:
            why = tmd.error.str() if tmd is not None and tmd.error is not None else "missing"
            raise SinkError(
                f"topic {topic} is not usable on {cfg.kafka.bootstrap} ({why}); create it "
                "first (brokers do not auto-create topics)"
            )
