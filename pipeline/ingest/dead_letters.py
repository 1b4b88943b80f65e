"""The adapter's dead letters: frames it cannot map, raw, on ``call-events.dlq``.

The worker's dead-letter records carry the undecodable record; the adapter's carry
the frame exactly as Kamailio sent it, with the same headers (pipeline.kafka.
dead_letters) so one query reads both. ``source-topic`` names where the frame came
from (``evapi:HOST:PORT`` or ``journal:PATH``) since it never was on a topic.
Same delivery guarantees as the events: idempotent, acks=all.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from pipeline.kafka.clients import Target, client_config, settings_of
from pipeline.kafka.dead_letters import dead_letter_headers
from pipeline.switch.publisher import PRODUCER_DEFAULTS, PublishError

log = logging.getLogger(__name__)


class DeadLetters:
    """Send rejected frames to the dead-letter topic; failures raise on the next call."""

    def __init__(self, kafka: Target, topic: str, extra: dict[str, Any] | None = None) -> None:
        self.topic = topic
        self._failed: list[str] = []
        config = client_config(
            settings_of(kafka),
            **PRODUCER_DEFAULTS,
            on_delivery=self._on_delivery,
            logger=logging.getLogger(f"{__name__}.librdkafka"),
            **(extra or {}),
        )
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise PublishError(f"invalid producer configuration: {exc.args[0]}", topic) from None

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._failed.append(f"{err.name()}: {err.str()}")

    def _raise_failures(self) -> None:
        if self._failed:
            count, first = len(self._failed), self._failed[0]
            self._failed.clear()
            raise PublishError(
                f"{count} dead letter(s) failed delivery to topic {self.topic!r}; first: {first}",
                self.topic,
                failed=count,
            )

    def send(self, payload: bytes, reason: str, category: str, source: str) -> None:
        """Queue one dead letter: the raw frame, why, and where it was read."""
        self._raise_failures()
        headers: list[tuple[str, str | bytes | None]] = list(
            dead_letter_headers(reason, category, source))
        try:
            self._producer.produce(self.topic, value=payload, headers=headers)
        except BufferError:
            raise PublishError(
                f"local producer queue for {self.topic!r} is full (broker unreachable?)",
                self.topic, code="QUEUE_FULL",
            ) from None
        except KafkaException as exc:
            raise PublishError(f"cannot publish to {self.topic!r}: {exc.args[0]}",
                               self.topic) from None
        self._producer.poll(0)

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout: float) -> None:
        """Wait for every queued dead letter; PublishError if any failed or some remain."""
        remaining = int(self._producer.flush(timeout))
        self._raise_failures()
        if remaining:
            raise PublishError(
                f"{remaining} dead letter(s) not delivered to {self.topic!r} within {timeout}s",
                self.topic, code="FLUSH_TIMEOUT",
            )
