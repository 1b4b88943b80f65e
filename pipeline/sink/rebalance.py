"""Rebalances: what the sink does when partitions are assigned, revoked or lost.

On a revocation the sink first lets an insert under way finish and commits it, then
stores and commits what it has batched for the revoked partitions if ClickHouse
takes it at once; if ClickHouse is unavailable it drops those rows uncommitted and
the partitions' next owner reads them again. Lost partitions (membership expired)
are dropped without a commit attempt. Either way nothing is lost; at worst rows
are stored twice and collapse (ReplacingMergeTree, docs/sink.md).
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import TopicPartition

from pipeline.sink.batcher import Batch, Batcher, PartitionKey
from pipeline.sink.committer import Committer
from pipeline.sink.config import CdrRow, SinkStats
from pipeline.sink.inserter import InsertThread
from pipeline.sink.lifecycle import Lifecycle
from pipeline.sink.progress import Progress
from pipeline.sink.reader import Reader

log = logging.getLogger(__name__)


def _keys(partitions: list[TopicPartition]) -> set[PartitionKey]:
    return {(tp.topic, tp.partition) for tp in partitions}


def _names(keys: set[PartitionKey]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(keys))


class Rebalance:
    """The consumer's rebalance callbacks (they run inside `consume`, on the loop's
    thread)."""

    def __init__(self, *, lifecycle: Lifecycle, progress: Progress, reader: Reader,
                 batcher: Batcher[CdrRow], inserter: InsertThread, committer: Committer,
                 stats: SinkStats) -> None:
        self._lifecycle = lifecycle
        self._progress = progress
        self._reader = reader
        self._batcher = batcher
        self._inserter = inserter
        self._committer = committer
        self._stats = stats

    def on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = _keys(partitions)
        self._progress.assign(keys)
        self._lifecycle.assigned()
        log.info("assigned %s", _names(keys) or "nothing")

    def on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = _keys(partitions)
        log.info("revoking %s", _names(keys) or "nothing")
        try:
            self._flush_revoked(keys)
        except BaseException as exc:  # noqa: BLE001 - re-raised from the consume() caller
            self._reader.fail(exc)
        finally:
            self._forget(keys)

    def on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        keys = _keys(partitions)
        log.warning("lost %s (membership expired): pending rows dropped uncommitted",
                    _names(keys))
        self._forget(keys)

    def _flush_revoked(self, keys: set[PartitionKey]) -> None:
        """Store and commit what is pending for revoked partitions, if ClickHouse takes
        it at once; otherwise leave it uncommitted for the next owner."""
        if self._lifecycle.stopping:
            return
        inserter = self._inserter
        if inserter.batch is not None and (inserter.busy or inserter.batch.partitions & keys):
            # An insert under way is finished first, so the revoked partitions' batched
            # rows can still be stored and committed by this sink.
            self._commit(inserter.finish_now("rebalance"))
        if inserter.batch is None:
            batch = self._batcher.take(keys)
            if batch is not None:
                self._commit(inserter.store_now(batch, "rebalance"))
            self._committer.retry_failed()

    def _commit(self, stored: Batch[CdrRow] | None) -> None:
        if stored is not None:
            self._committer.commit_stored(stored)

    def _forget(self, keys: set[PartitionKey]) -> None:
        dropped = self._inserter.without(keys) + self._batcher.drop(keys)
        self._stats.rows_dropped_on_revoke += dropped
        self._reader.drop(keys)
        self._committer.forget(keys)
        self._progress.revoke(keys)
        if self._inserter.batch is None:
            self._lifecycle.batch_gone()
