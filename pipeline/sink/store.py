"""Storing one batch in ClickHouse: what the insert thread runs for every attempt.

Each attempt at a batch sends the same rows with the same deduplication token (its
offset ranges and its (call_id, version) pairs), so a retry of an insert that did
reach the server is dropped where the server deduplicates (docs/sink.md). Only the
public functions of `pipeline.storage.cdr_store` are used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from pipeline.sink import metrics
from pipeline.sink.batcher import Batch
from pipeline.sink.config import CdrRow, SinkStats
from pipeline.storage.backend import ClickHouseBackend
from pipeline.storage.cdr_store import insert_cdr_rows, row_digest

log = logging.getLogger(__name__)


class InsertRows(Protocol):
    """How rows reach ClickHouse: `cdr_store.insert_cdr_rows`, or a unit test's fake."""

    def __call__(self, backend: ClickHouseBackend, rows: Sequence[CdrRow],
                 dedup_token: str | None, database: str = ...) -> None: ...


class BatchWriter:
    """Inserts a batch's rows into `<database>.cdr` and counts what went in. Raises the
    storage errors as they come: telling an outage from a rejection is the caller's."""

    def __init__(self, backend: ClickHouseBackend, database: str, topic: str,
                 stats: SinkStats, insert: InsertRows = insert_cdr_rows) -> None:
        self.backend = backend
        self.database = database
        self.stats = stats
        self._insert = insert
        self._labels = {"topic": topic}

    def __call__(self, batch: Batch[CdrRow]) -> None:
        rows = batch.rows
        if not rows:
            return  # only dead-lettered records or tombstones: nothing to store
        token = batch.token(row_digest(rows))
        started = time.perf_counter()
        self._insert(self.backend, rows, token, database=self.database)
        elapsed = time.perf_counter() - started
        self.stats.rows_inserted += len(rows)
        self.stats.batches += 1
        self.stats.insert_seconds += elapsed
        metrics.ROWS.labels(**self._labels).inc(len(rows))
        metrics.BATCHES.labels(**self._labels).inc()
        metrics.INSERT_SECONDS.labels(**self._labels).observe(elapsed)
        metrics.BATCH_ROWS.labels(**self._labels).observe(len(rows))
        log.debug("inserted %s rows from %s in %.3fs (token %s)",
                  len(rows), batch.describe(), elapsed, token[:12])
