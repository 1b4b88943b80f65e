"""Where the consumer group resumes a partition of call-events, asked of Kafka.

The record path starts a newly assigned partition at that offset: from it on records
are folded in order, and the CDRs emitted from it on are sent again (record_path.py).
Faust's consumer has no public way to ask, so this is a confluent-kafka client of
its own, configured like every other client (pipeline/kafka/clients.py).
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, TopicPartition

from pipeline.kafka.clients import client_config
from pipeline.runtime.settings import KafkaSettings

TIMEOUT_S = 30


class GroupOffsets:
    def __init__(self, kafka: KafkaSettings, group: str, topic: str) -> None:
        self._kafka = kafka
        self._group = group
        self._topic = topic
        self._client: Any = None  # created at the first question, then kept

    def resume_offset(self, partition: int) -> int:
        """The group's committed offset of `partition`, else (or if retention already
        deleted it) the log start, as auto_offset_reset=earliest does. Blocking: run it
        in an executor."""
        if self._client is None:
            self._client = Consumer(client_config(
                self._kafka, **{"group.id": self._group, "enable.auto.commit": False}))
        tp = TopicPartition(self._topic, partition)
        committed = self._client.committed([tp], timeout=TIMEOUT_S)[0].offset
        low, _high = self._client.get_watermark_offsets(tp, timeout=TIMEOUT_S)
        return int(max(committed, low))
