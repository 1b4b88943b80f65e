"""SwitchPublisher: how a switch integration publishes CallEvents to Kafka.

One record per event on the call-events topic, key ``call_id`` (UTF-8), value the
Avro single-object encoding of the event (``pipeline.avro.codec.encode_event``). Tick
records (watermark control records, see ``pipeline.avro.codec``) go to every partition.

Producer settings that matter for billing:
- ``enable.idempotence`` and ``acks=all``: a retried send is not stored twice and
  per-partition order is kept, so the events of a call arrive in publish order;
- ``partitioner=murmur2_random``: keys map to the same partitions as the Java client
  (and aiokafka/Faust), so the correlator workers and any Java producer agree.

Delivery is asynchronous: a record that finally fails (broker unreachable for
``message.timeout.ms``, unknown topic, ...) is recorded by the delivery callback and
raised as ``PublishError`` by the next ``publish``, ``publish_tick``, ``flush`` or
``close``. Nothing fails silently.

The connection comes from the ``[kafka]`` settings (``pipeline.kafka.clients``): on a
secured cluster, TLS and the SCRAM user or client certificate. A producer that cannot
get in (wrong password, untrusted certificate, a plaintext client on a TLS port, no
right to write the topic) stops at once with a ``PublishError`` naming the cause,
instead of retrying until ``message.timeout.ms``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from types import TracebackType
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

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "call-events"
PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "partitioner": "murmur2_random",
    "linger.ms": 20,
    "compression.type": "lz4",
}
_MAX_KEPT_FAILURES = 10


class PublishError(PipelineError):
    """Records could not be published or delivered; the message names topic, key and Kafka error.

    ``topic``, ``key`` (the first failed record's key, None for ticks) and ``code`` (the
    Kafka error name, e.g. ``UNKNOWN_TOPIC_OR_PART``) are there for programs; ``failed``
    is how many records failed since the last report.
    """

    def __init__(
        self,
        message: str,
        topic: str,
        key: str | None = None,
        code: str | None = None,
        failed: int = 0,
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.key = key
        self.code = code
        self.failed = failed


@dataclass
class PublisherStats:
    events: int = 0  # event records handed to the producer
    ticks: int = 0  # publish_tick calls
    tick_records: int = 0  # tick records (one per partition per tick)
    delivered: int = 0  # records the broker acknowledged
    failed: int = 0  # records that finally failed delivery


@dataclass(frozen=True)
class _Failure:
    key: str | None
    partition: int | None
    error: KafkaError


class SwitchPublisher:
    """Publish CallEvents and tick records to one topic; use as a context manager."""

    def __init__(
        self,
        kafka: Target,
        topic: str = DEFAULT_TOPIC,
        extra: dict[str, Any] | None = None,
        *,
        queue_timeout_s: float = 30.0,
        metadata_timeout_s: float = 10.0,
    ) -> None:
        """`kafka`: the [kafka] settings (a bare bootstrap string means plaintext)."""
        self.kafka = settings_of(kafka)
        if not self.kafka.bootstrap:
            raise PublishError("no Kafka bootstrap servers given", topic)
        self.topic = topic
        self.stats = PublisherStats()
        self._queue_timeout_s = queue_timeout_s
        self._metadata_timeout_s = metadata_timeout_s
        self._failures: list[_Failure] = []
        self._failed_since_report = 0
        self._partitions: int | None = None
        self._closed = False
        self._blocked: tuple[str, str] | None = None  # (code, why) it cannot get in
        self._client_log = ClientLog(logging.getLogger(f"{__name__}.librdkafka"))
        config = client_config(
            self.kafka,
            **PRODUCER_DEFAULTS,
            on_delivery=self._on_delivery,
            error_cb=self._on_error,
            logger=self._client_log,
        )
        config.update(extra or {})
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise PublishError(f"invalid producer configuration: {exc.args[0]}", topic) from None
        log.debug("publisher for topic %s on %s created", topic, self.kafka.bootstrap)

    # -- callbacks (run inside poll/flush) ---------------------------------------------

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            self.stats.delivered += 1
            return
        key = msg.key()
        text = key.decode("utf-8", "replace") if key is not None else None
        self._record(_Failure(text, msg.partition(), err))
        self._check_access(err)

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._record(_Failure(None, None, err))
        elif not self._check_access(err):  # librdkafka retries these (a broker restarting)
            log.warning("kafka client error on topic %s: %s", self.topic, err.str())

    def _check_access(self, err: KafkaError) -> bool:
        """Remember that the producer cannot get in (credentials, TLS, ACLs): waiting
        for the delivery time-out would only delay the same answer."""
        why = connection_problem(err, self.kafka, self._client_log)
        if why is not None and self._blocked is None:
            self._blocked = (err.name(), why)
        return why is not None

    def _raise_blocked(self) -> None:
        if self._blocked is not None:
            code, why = self._blocked
            raise PublishError(f"cannot publish to topic {self.topic!r}: {why}", self.topic,
                               code=code, failed=len(self._producer))

    def _record(self, failure: _Failure) -> None:
        self.stats.failed += 1
        self._failed_since_report += 1
        if len(self._failures) < _MAX_KEPT_FAILURES:
            self._failures.append(failure)
        log.debug("delivery to %s failed for key %s: %s", self.topic, failure.key, failure.error)

    def _raise_failures(self) -> None:
        if not self._failures:
            return
        first, count = self._failures[0], self._failed_since_report
        self._failures.clear()
        self._failed_since_report = 0
        if first.key is not None:
            where = f"key {first.key!r}"
        elif first.partition is not None:
            where = "a tick record (no key)"
        else:
            where = "the producer (fatal error, no record published after it)"
        if first.partition is not None and first.partition >= 0:
            where += f" (partition {first.partition})"
        raise PublishError(
            f"{count} record(s) failed delivery to topic {self.topic!r}; first: {where}: "
            f"{first.error.name()}: {first.error.str()}",
            self.topic,
            first.key,
            first.error.name(),
            count,
        )

    # -- producing ---------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise PublishError(f"publisher for topic {self.topic!r} is closed", self.topic)
        self._raise_blocked()
        self._raise_failures()

    def _produce(self, key: bytes | None, value: bytes, **kwargs: Any) -> None:
        """Hand one record to the producer; wait (polling) while its local queue is full."""
        deadline: float | None = None
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, **kwargs)
                break
            except BufferError:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._queue_timeout_s
                    log.debug("producer queue full for topic %s; waiting", self.topic)
                elif now >= deadline:
                    self._queue_full(key)
                self._producer.poll(0.1)
                self._raise_blocked()
            except KafkaException as exc:
                text = key.decode("utf-8", "replace") if key is not None else None
                error = exc.args[0]
                raise PublishError(
                    f"cannot publish to topic {self.topic!r} (key {text!r}): {error}",
                    self.topic,
                    text,
                    error.name() if isinstance(error, KafkaError) else None,
                ) from None
        self._producer.poll(0)

    def _queue_full(self, key: bytes | None) -> None:
        self._raise_failures()  # a recorded failure explains it better than a timeout
        text = key.decode("utf-8", "replace") if key is not None else None
        raise PublishError(
            f"local producer queue for topic {self.topic!r} still full after "
            f"{self._queue_timeout_s}s (broker unreachable or too slow); record with key "
            f"{text!r} not published",
            self.topic,
            text,
            "QUEUE_FULL",
        )

    def publish(self, event: CallEvent) -> None:
        """Queue one event, key ``call_id``; raises PublishError for earlier failed deliveries."""
        self._check_usable()
        self._produce(event.call_id.encode("utf-8"), codec.encode_event(event))
        self.stats.events += 1

    def partitions(self) -> int:
        """The topic's partition count, read from the cluster metadata once."""
        if self._partitions is None:
            self._partitions = self._read_partitions()
        return self._partitions

    def _read_partitions(self) -> int:
        deadline = time.monotonic() + self._metadata_timeout_s
        while True:  # in slices: a producer that cannot get in says so within a second
            try:
                metadata = self._producer.list_topics(
                    self.topic, timeout=min(1.0, max(0.1, deadline - time.monotonic())))
                break
            except KafkaException as exc:
                self._producer.poll(0)  # the error callback may know why
                self._raise_blocked()
                if time.monotonic() >= deadline:
                    raise PublishError(
                        f"cannot read metadata of topic {self.topic!r}: {exc.args[0]}",
                        self.topic,
                    ) from None
        topic = metadata.topics.get(self.topic)
        error = topic.error if topic is not None else None
        if error is not None:
            self._check_access(error)
            self._raise_blocked()
        if topic is None or error is not None or not topic.partitions:
            reason = f"{error.name()}: {error.str()}" if error is not None else "no partitions"
            raise PublishError(
                f"topic {self.topic!r} is not usable: {reason}",
                self.topic,
                code=error.name() if error is not None else None,
            )
        return len(topic.partitions)

    def publish_tick(self, ts_ms: int) -> int:
        """Queue a tick record (event time ``ts_ms``) to every partition; returns how many."""
        self._check_usable()
        count = self.partitions()
        value = codec.encode_tick(ts_ms)
        headers = [(codec.RECORD_HEADER, codec.TICK)]
        for partition in range(count):
            self._produce(None, value, partition=partition, headers=headers)
        self.stats.ticks += 1
        self.stats.tick_records += count
        return count

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports (at most ``timeout`` seconds); returns how many were served."""
        return int(self._producer.poll(timeout))

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every queued record; PublishError if any failed or some remain, or at
        once if the producer cannot get in (then nothing queued was delivered)."""
        if self._closed:
            raise PublishError(f"publisher for topic {self.topic!r} is closed", self.topic)
        deadline = time.monotonic() + timeout
        remaining = int(self._producer.flush(0))
        while remaining and self._blocked is None and time.monotonic() < deadline:
            remaining = int(self._producer.flush(min(0.5, max(0.0, deadline - time.monotonic()))))
        self._raise_blocked()
        self._raise_failures()
        if remaining:
            raise PublishError(
                f"{remaining} record(s) not delivered to topic {self.topic!r} within {timeout}s",
                self.topic,
                code="FLUSH_TIMEOUT",
            )

    def close(self, timeout: float = 30.0) -> None:
        """Flush, then release the producer. Idempotent."""
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            log.debug("publisher for topic %s closed: %s", self.topic, self.stats)

    def __enter__(self) -> SwitchPublisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # do not mask the exception already on its way out
            self.close()
        except PublishError as err:
            log.error("while closing after %s: %s", exc_type.__name__, err)
