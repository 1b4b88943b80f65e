"""The offset committer: commit only what is stored.

Offsets are committed synchronously, per partition the last offset of a stored
batch + 1, only after ClickHouse accepted the batch and the batch's dead letters
are delivered. A commit that fails is kept and sent again with the next one;
meanwhile a crash or rebalance only redelivers rows that are already stored, which
is harmless (ReplacingMergeTree, docs/sink.md). Offsets of partitions no longer
assigned are never committed: their next owner decides.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable

from confluent_kafka import KafkaException, TopicPartition

from pipeline.sink.batcher import Batch, PartitionKey
from pipeline.sink.clients import SinkConsumer
from pipeline.sink.config import CdrRow, SinkStats
from pipeline.sink.dlq import DeadLetters

log = logging.getLogger(__name__)


def describe_offsets(offsets: dict[PartitionKey, int]) -> str:
    return ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(offsets.items()))


class Committer:
    """Commits stored batches' offsets; remembers a failed commit (`uncommitted`)."""

    def __init__(self, consumer: SinkConsumer, dead_letters: DeadLetters,
                 assigned: Callable[[], Collection[PartitionKey]], stats: SinkStats) -> None:
        self.uncommitted: dict[PartitionKey, int] = {}  # stored, commit failed: retried
        self._consumer = consumer
        self._dead_letters = dead_letters
        self._assigned = assigned
        self._stats = stats

    def commit_stored(self, batch: Batch[CdrRow]) -> None:
        """Commit after a successful insert; the batch's dead letters must be durably
        on the DLQ before their offsets are committed (SinkError if they cannot be)."""
        self._dead_letters.flush(raise_on_failure=True)
        offsets = dict(self.uncommitted)
        offsets.update(batch.commit_offsets)
        self.commit(offsets)

    def retry_failed(self) -> None:
        if self.uncommitted:
            self.commit(dict(self.uncommitted))

    def forget(self, keys: Iterable[PartitionKey]) -> None:
        gone = set(keys)
        self.uncommitted = {k: v for k, v in self.uncommitted.items() if k not in gone}

    def commit(self, offsets: dict[PartitionKey, int]) -> bool:
        assigned = self._assigned()
        offsets = {k: v for k, v in offsets.items() if k in assigned}
        if not offsets:
            return True
        tps = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
        try:
            result = self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as exc:
            self.uncommitted = offsets
            log.warning("commit of %s failed (stored rows will be redelivered if this "
                        "persists; harmless): %s", describe_offsets(offsets), exc)
            return False
        failed = {(tp.topic, tp.partition) for tp in result or [] if tp.error is not None}
        if failed:
            self.uncommitted = {k: offsets[k] for k in failed}
            log.warning("commit failed for %s", describe_offsets(self.uncommitted))
            return False
        self.uncommitted = {}
        self._stats.commits += 1
        log.debug("committed %s", describe_offsets(offsets))
        return True
