"""The `clickhouse` source of re-rating: the stored CDR facts, rated again.

Each newest stored version in range is turned back into its call's events
(`facts.view_of`) and rated with the new configuration at its stored status. Much
faster than a Kafka replay (one row per call, no correlation), and exact for
changes of tariffs and of the recording/rating policy; corrections of correlation
(events the live pipeline missed, new grace or staleness rules) need `kafka`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from pipeline.core.cdr import RatedCdr
from pipeline.core.config import BillingConfig
from pipeline.core.rating import rate_call
from pipeline.rerate.facts import I_VERSION, StoredRow, view_of
from pipeline.rerate.store import RowStream, estimate_calls, iter_stored
from pipeline.storage.backend import ClickHouseBackend


class ClickHouseSource:
    unit = "calls"

    def __init__(
        self,
        stream: RowStream,
        backend: ClickHouseBackend,
        db: str,
        config: BillingConfig,
        from_ms: int,
        to_ms: int,
        accounts: Sequence[str],
        lo_id: str | None = None,
        hi_id: str | None = None,
    ) -> None:
        self.stream = stream
        self.backend = backend
        self.db = db
        self.config = config
        self.from_ms, self.to_ms = from_ms, to_ms
        self.accounts = tuple(accounts)
        self.lo_id, self.hi_id = lo_id, hi_id
        self.total: int | None = None
        self.done = 0
        self.on_read: Callable[[int], None] | None = None

    def plan(self) -> None:
        if self.total is None:
            self.total = estimate_calls(
                self.backend, self.db, self.from_ms, self.to_ms, self.accounts
            )

    def items(self) -> Iterator[tuple[StoredRow | None, RatedCdr]]:
        config = self.config
        for row in iter_stored(
            self.stream, self.db, self.from_ms, self.to_ms, self.accounts, self.lo_id, self.hi_id
        ):
            view, status = view_of(row)
            self.done += 1
            yield row, rate_call(view, status, row[I_VERSION], config)

    def close(self) -> None:
        self.stream.close()
