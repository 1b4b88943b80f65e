"""The sink's dead-letter writer: undecodable records to `cdrs.dlq`, then a durable wait.

A record the sink cannot decode is produced unchanged (key and value) with the
headers every dead-letter topic carries (`pipeline.kafka.dead_letters`: dlq-reason,
dlq-category, source-topic, source-partition, source-offset). Its offset is
committed with the batch it belongs to, so before any commit `flush` waits until
the producer has confirmed every dead letter; one that cannot be delivered stops
the sink without committing, so nothing is lost.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, Message

from pipeline.kafka.dead_letters import dead_letter_headers
from pipeline.sink import metrics
from pipeline.sink.clients import DeliveryCallback, Headers, SinkProducer
from pipeline.sink.config import SinkError, SinkStats

log = logging.getLogger(__name__)


def where(msg: Message) -> str:
    """`topic[partition]@offset`, how log lines name a record."""
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"


class DeadLetters:
    """Produces dead letters and tracks their delivery until `flush`."""

    def __init__(self, producer: SinkProducer, topic: str, delivery_timeout_s: float,
                 stats: SinkStats, source_topic: str) -> None:
        self.topic = topic
        self._producer = producer
        self._timeout_s = delivery_timeout_s
        self._stats = stats
        self._labels = {"topic": source_topic}
        self._pending = 0
        self._failures: list[str] = []

    def send(self, msg: Message, reason: str, category: str) -> None:
        """Send `msg` unchanged with why and where from; counted and logged."""
        log.warning("%s: not a decodable RatedCdr (%s), sent to %s", where(msg), reason,
                    self.topic)
        headers: Headers = list(dead_letter_headers(
            reason, category, str(msg.topic()), msg.partition(), msg.offset()))
        origin = where(msg)

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            self._pending -= 1
            if err is not None:
                self._failures.append(f"{origin}: {err.str()}")

        self._produce(msg, headers, delivered)
        self._stats.dead_lettered += 1
        metrics.DLQ.labels(**self._labels).inc()

    def flush(self, raise_on_failure: bool) -> None:
        """Wait until every dead letter is delivered; if one is not, raise SinkError
        (before a commit) or log it (closing)."""
        if self._pending == 0 and not self._failures:
            return
        remaining = self._producer.flush(self._timeout_s + 5)
        failures, self._failures = self._failures, []
        if remaining or failures:
            detail = "; ".join(failures[:5]) or f"{remaining} records not delivered in time"
            message = (f"dead-letter records could not be written to {self.topic} "
                       f"({detail}); offsets not committed")
            if raise_on_failure:
                raise SinkError(message)
            log.error("%s", message)

    def _produce(self, msg: Message, headers: Headers, on_delivery: DeliveryCallback) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=msg.value(), key=msg.key(),
                                       headers=headers, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: serve delivery reports, then retry
                self._producer.poll(0.1)
        self._pending += 1
        self._producer.poll(0)
