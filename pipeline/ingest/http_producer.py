"""The HTTP endpoint's Kafka producer: one future per request, resolved by delivery reports.

The endpoint may answer 2xx only once Kafka acknowledged every event of the request,
and must not block its event loop doing so. So each request's records share one
``_Pending`` counter; the delivery callbacks, served by a dedicated poll thread,
count it down and resolve the request's asyncio future on the loop when the last
report is in.

``message.timeout.ms`` is the request deadline: librdkafka reports every record as
delivered or failed within it, so an answered request leaves nothing in flight
behind it (a 503 means "not stored", except for a record that had reached a broker
that then failed; a retry of it is a duplicate event id, which the correlator drops).

Producer settings are SwitchPublisher's (idempotent, acks=all, murmur2_random), so
records land exactly where a switch's own publisher would put them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from pipeline.avro import codec
from pipeline.core.events import CallEvent
from pipeline.errors import PipelineError
from pipeline.kafka.clients import (
    ClientLog,
    Target,
    client_config,
    connection_problem,
    settings_of,
)
from pipeline.switch.publisher import PRODUCER_DEFAULTS

log = logging.getLogger(__name__)

_POLL_S = 0.05
_READY_CACHE_S = 1.0


class QueueFull(PipelineError):
    """The producer holds as many unacknowledged records as it may (answer 429)."""


class ProducerUnusable(PipelineError):
    """The producer hit a fatal error and publishes nothing more (answer 503, restart)."""


@dataclass(frozen=True)
class Acks:
    """How one request's records fared: all reported, ``failed`` of them not stored."""

    delivered: int
    failed: int
    first_error: str | None
    latency_s: float


class _Pending:
    """The delivery reports one request still waits for. Callbacks come from the poll
    thread while the loop may still be producing, hence the lock; one extra count
    (released by ``sealed``) keeps the future from resolving before the last produce."""

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[Acks] = loop.create_future()
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._remaining = count + 1
        self._delivered = 0
        self._failed = 0
        self._error: str | None = None

    def on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        with self._lock:
            if err is None:
                self._delivered += 1
            else:
                self._failed += 1
                if self._error is None:
                    self._error = f"{err.name()}: {err.str()}"
            self._remaining -= 1
            done = self._remaining == 0
        if done:
            self.loop.call_soon_threadsafe(self._resolve)

    def sealed(self, not_produced: int = 0) -> None:
        """All records that will be produced are; ``not_produced`` of the count never were."""
        with self._lock:
            self._remaining -= 1 + not_produced
            done = self._remaining == 0
        if done:
            self._resolve()

    def _resolve(self) -> None:
        if not self.future.done():
            latency = time.monotonic() - self.started
            self.future.set_result(Acks(self._delivered, self._failed, self._error, latency))


class AckingProducer:
    """An idempotent acks=all producer to one topic with a poll thread; see the module."""

    def __init__(
        self,
        kafka: Target,
        topic: str,
        *,
        timeout_s: float = 10.0,
        queue_max_messages: int = 200_000,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        self.kafka = settings_of(kafka)
        self._fatal: str | None = None
        self._client_log = ClientLog(logging.getLogger(f"{__name__}.librdkafka"))
        self._ready: tuple[float, bool, str] = (0.0, False, "not checked yet")
        timeout_ms = int(timeout_s * 1000)
        config = client_config(self.kafka, **{
            **PRODUCER_DEFAULTS,
            "message.timeout.ms": timeout_ms,
            "request.timeout.ms": min(30_000, timeout_ms),
            "queue.buffering.max.messages": queue_max_messages,
            "error_cb": self._on_error,
            "logger": self._client_log,
        })
        config.update(extra or {})
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise PipelineError(f"invalid Kafka producer configuration: {exc.args[0]}") from None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="ingest-http-poll",
                                        daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(_POLL_S)

    def _on_error(self, err: KafkaError) -> None:
        problem = connection_problem(err, self.kafka, self._client_log)
        if err.fatal() or problem is not None:
            # A producer that cannot get in (credentials, TLS, ACLs) is as useless as one
            # with a fatal error: requests get 503 at once instead of waiting it out.
            self._fatal = problem or f"{err.name()}: {err.str()}"
            log.error("kafka producer for %s cannot publish, publishing stops: %s",
                      self.topic, self._fatal)
        else:  # librdkafka retries these itself (a broker restarting, ...)
            log.warning("kafka client error on topic %s: %s", self.topic, err.str())

    @property
    def fatal(self) -> str | None:
        """The fatal error, if the producer hit one (it is then of no further use)."""
        return self._fatal

    def send(self, events: Sequence[CallEvent],
             loop: asyncio.AbstractEventLoop) -> asyncio.Future[Acks]:
        """Produce ``events`` in order, key ``call_id``; the future resolves once every
        record is acknowledged or failed. QueueFull when the producer's queue is full:
        records produced before that may still be stored (a retry is harmless)."""
        if self._fatal is not None:
            raise ProducerUnusable(f"the Kafka producer hit a fatal error: {self._fatal}")
        pending = _Pending(loop, len(events))
        produce, topic, report = self._producer.produce, self.topic, pending.on_delivery
        for done, event in enumerate(events):
            try:
                produce(topic, codec.encode_event(event), event.call_id.encode("utf-8"),
                        on_delivery=report)
            except BufferError:
                pending.sealed(len(events) - done)
                raise QueueFull(
                    f"producer queue full after {done} of {len(events)} events"
                ) from None
        pending.sealed()
        return pending.future

    def ready(self, timeout_s: float = 2.0) -> tuple[bool, str]:
        """Whether the topic's metadata comes back from a broker within ``timeout_s``
        (blocking; cached for a second so probes do not hammer the broker)."""
        checked, ok, why = self._ready
        if time.monotonic() - checked < _READY_CACHE_S:
            return ok, why
        ok, why = self._check(timeout_s)
        self._ready = (time.monotonic(), ok, why)
        return ok, why

    def _check(self, timeout_s: float) -> tuple[bool, str]:
        if self._fatal is not None:
            return False, f"producer fatal error: {self._fatal}"
        try:
            metadata = self._producer.list_topics(self.topic, timeout=timeout_s)
        except KafkaException as exc:
            return False, f"kafka unreachable: {exc.args[0]}"
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            why = topic.error.str() if topic is not None and topic.error else "no partitions"
            return False, f"topic {self.topic} not usable: {why}"
        return True, f"ok: topic {self.topic} has {len(topic.partitions)} partitions"

    def queued(self) -> int:
        """Records produced and not yet reported."""
        return len(self._producer)

    def close(self, timeout_s: float = 10.0) -> int:
        """Wait (up to ``timeout_s``) for what is queued, stop the poll thread; returns how
        many records were still unreported."""
        left = int(self._producer.flush(timeout_s))
        self._stop.set()
        self._thread.join(timeout=1.0)
        return left
