"""One re-rating run, end to end: plan, re-rate, compare, write, report, record.

For every call the source yields (its newest stored version, and the CDR the new
configuration gives), the run decides:

- same billing (compare.same_billing): untouched, counted in the totals;
- changed: written as version max(stored, replayed) + 1, after its superseded
  version went to `cdr_history`;
- replayed from fewer events than the stored version was built from (the Kafka
  topic no longer holds all of them): untouched, counted as `older_than_stored`;
- replayed but never stored (Kafka only): written as replayed version + 1.

Re-running the same command is safe: changed calls were written, so they compare
equal now and are skipped; an interrupted run is resumed under its run id (runs.py)
and its delta report covers the calls the interrupted attempt already wrote.

The calls are split into shares (call-id ranges from ClickHouse, partitions from
Kafka), one per worker: with `workers` > 1 and a server to connect to, each share
runs in a process of its own (workers.py); otherwise in this process. Each share
writes through a writer thread, so that ClickHouse stores one batch while the next
is being rated.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.core.cdr import VERSION_STRIDE, RatedCdr
from pipeline.core.config import BillingConfig
from pipeline.errors import PipelineError
from pipeline.rerate import runs, store
from pipeline.rerate.compare import changed_fields, same_billing
from pipeline.rerate.connect import Connector
from pipeline.rerate.delta import DeltaReport
from pipeline.rerate.facts import (
    I_CALL_ID,
    I_DECISION,
    I_RUN_ID,
    I_VERSION,
    STORED_COLUMNS,
    StoredRow,
    cdr_of,
)
from pipeline.rerate.progress import Progress
from pipeline.rerate.store import Change
from pipeline.storage.backend import ClickHouseBackend

if TYPE_CHECKING:
    from pipeline.rerate.kafka_source import KafkaReplayOptions, PartitionPlan, ReplayStats

log = logging.getLogger(__name__)

SOURCES = ("clickhouse", "kafka")
GC_THRESHOLD = 50_000
NEW_CALL = "new_call"
# The "before" of a call the replay found and ClickHouse never stored: nothing billed.
_ABSENT: tuple[Any, ...] = tuple(
    "" if i == I_DECISION else None for i in range(len(STORED_COLUMNS))
)
Report = Callable[[int, int], None]  # (records or calls done, calls changed) of one share


class Source(Protocol):
    unit: str
    total: int | None
    done: int
    on_read: Callable[[int], None] | None

    def plan(self) -> Any: ...

    def items(self) -> Iterator[tuple[StoredRow | None, RatedCdr]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RerateRequest:
    config: BillingConfig
    from_ms: int
    to_ms: int
    source: str = "clickhouse"
    accounts: tuple[str, ...] = ()
    dry_run: bool = False
    user: str = "unknown"
    database: str = "cdr"
    batch_rows: int = 5000
    samples: int = 20
    workers: int = 1

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise PipelineError(
                f"--source must be one of {', '.join(SOURCES)}, got {self.source!r}"
            )
        if self.to_ms <= self.from_ms:
            raise PipelineError("--to must be after --from")
        if self.batch_rows < 1:
            raise PipelineError("--batch-rows must be >= 1")
        if self.workers < 1:
            raise PipelineError("--workers must be >= 1")


@dataclass(frozen=True)
class Shard:
    """One worker's share of the calls."""

    index: int
    lo_id: str | None = None  # clickhouse: call_id >= lo_id
    hi_id: str | None = None  # clickhouse: call_id < hi_id
    plans: tuple[PartitionPlan, ...] | None = None  # kafka: the partitions to replay


@dataclass
class RerateResult:
    run_id: str | None = None
    resumed: bool = False
    status: str = runs.RUNNING
    calls_read: int = 0
    calls_rerated: int = 0
    calls_changed: int = 0
    calls_new: int = 0
    older_than_stored: int = 0
    cdrs_written: int = 0
    errors: int = 0
    delta: DeltaReport = field(default_factory=DeltaReport)
    samples: list[Change] = field(default_factory=list)
    elapsed_s: float = 0.0
    workers: int = 1
    replay: ReplayStats | None = None

    @property
    def rate(self) -> float:
        return self.calls_read / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def merge(self, part: RerateResult, samples: int) -> None:
        for name in (
            "calls_read",
            "calls_rerated",
            "calls_changed",
            "calls_new",
            "older_than_stored",
            "cdrs_written",
            "errors",
        ):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        self.delta.merge(part.delta)
        self.samples.extend(part.samples[: max(0, samples - len(self.samples))])
        if part.replay is not None:
            if self.replay is None:
                self.replay = part.replay
            else:
                for name, value in vars(part.replay).items():
                    setattr(self.replay, name, getattr(self.replay, name) + value)

    def summary(self) -> dict[str, Any]:
        """What `rerate_runs.delta_summary` keeps: the delta report and the run's counts."""
        out: dict[str, Any] = dict(self.delta.as_dict())
        out.update(
            calls_new=self.calls_new,
            older_than_stored=self.older_than_stored,
            resumed=self.resumed,
            workers=self.workers,
            elapsed_s=round(self.elapsed_s, 3),
        )
        if self.replay is not None:
            out["replay"] = dict(vars(self.replay))
        return out


def _versioned(cdr: RatedCdr, version: int) -> RatedCdr:
    """cdr._replace(version=version), without _replace's keyword handling (hot path)."""
    return tuple.__new__(RatedCdr, (cdr[0], version, *cdr[2:]))


def new_run_id() -> str:
    return f"rr-{runs.now().strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


# -- one share ------------------------------------------------------------------------------


class _Writer:
    """Writes batches of changes on a thread of its own, in order; the first error is
    raised in the submitting thread."""

    def __init__(self, backend: ClickHouseBackend, db: str, run_id: str) -> None:
        self._backend, self._db, self._run_id = backend, db, run_id
        self._queue: queue.Queue[list[Change] | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self.written = 0
        self._thread = threading.Thread(target=self._loop, name="rerate-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if self._error is not None:
                continue
            try:
                self.written += store.write_changes(self._backend, self._db, self._run_id, batch)
            except BaseException as exc:  # noqa: BLE001 - handed to the submitting thread
                self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, batch: list[Change]) -> None:
        self._check()
        self._queue.put(batch)

    def close(self) -> None:
        """Wait for every submitted batch; raise the first error."""
        self._queue.put(None)
        self._thread.join()
        self._check()

    def abort(self) -> None:
        """Stop after the batch being written (a half-written run is resumed later)."""
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._queue.put(None)
        self._thread.join()


class _Share:
    """The decisions for the calls of one share, and their writes."""

    def __init__(
        self,
        request: RerateRequest,
        backend: ClickHouseBackend,
        run_id: str | None,
        previous: dict[str, tuple[Any, ...]],
    ) -> None:
        self.request = request
        self.run_id = run_id
        self.previous = previous  # the history of this run, when it is resumed
        self.result = RerateResult(run_id=run_id)
        self.pending: list[Change] = []
        self.already_written = 0
        self.writer = None if request.dry_run else _Writer(backend, request.database, run_id or "")

    def take(self, old: StoredRow | None, new: RatedCdr) -> None:
        r = self.result
        r.calls_read += 1
        if old is None:
            r.calls_rerated += 1
            r.calls_new += 1
            self._change(None, _versioned(new, new.version + 1), (NEW_CALL,), _ABSENT)
            return
        old_version = old[I_VERSION]
        if new.version < old_version - old_version % VERSION_STRIDE:
            r.older_than_stored += 1  # the replay saw fewer events than the live pipeline
            r.delta.add(old, cdr_of(old), None)
            return
        r.calls_rerated += 1
        before = old
        if old[I_RUN_ID] and old[I_RUN_ID] == self.run_id:
            before = self.previous.get(old[I_CALL_ID], old)  # written by an earlier attempt
        if same_billing(old, new):
            if before is old:
                r.delta.add(old, new, None)
            else:
                r.calls_changed += 1
                self.already_written += 1
                r.delta.add(before, new, changed_fields(before, new))
            return
        version = max(old_version, new.version) + 1
        if version % VERSION_STRIDE == 0:
            r.errors += 1
            log.error(
                "call %s: %s re-ratings of one version; not written",
                old[I_CALL_ID],
                VERSION_STRIDE - 1,
            )
            r.delta.add(old, cdr_of(old), None)
            return
        self._change(old, _versioned(new, version), changed_fields(old, new), before)

    def _change(
        self, old: StoredRow | None, new: RatedCdr, changed: tuple[str, ...], before: StoredRow
    ) -> None:
        r = self.result
        r.calls_changed += 1
        r.delta.add(before, new, changed)
        change = Change(old, new, changed)
        if len(r.samples) < self.request.samples:
            r.samples.append(change)
        if self.writer is not None:
            self.pending.append(change)
            if len(self.pending) >= self.request.batch_rows:
                self.writer.submit(self.pending)
                self.pending = []

    def finish(self) -> RerateResult:
        if self.writer is not None:
            if self.pending:
                self.writer.submit(self.pending)
                self.pending = []
            self.writer.close()
            self.result.cdrs_written = self.writer.written + self.already_written
        return self.result

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _source(
    request: RerateRequest,
    connector: Connector,
    backend: ClickHouseBackend,
    shard: Shard,
    kafka: KafkaReplayOptions | None,
    stored: dict[str, tuple[Any, ...]] | None = None,
) -> Source:
    if request.source == "clickhouse":
        from pipeline.rerate.clickhouse_source import ClickHouseSource

        return ClickHouseSource(
            connector.stream(),
            backend,
            request.database,
            request.config,
            request.from_ms,
            request.to_ms,
            request.accounts,
            shard.lo_id,
            shard.hi_id,
        )
    from pipeline.rerate.kafka_source import KafkaSource

    if kafka is None:
        raise PipelineError("--source kafka needs Kafka settings (bootstrap, topic)")
    return KafkaSource(
        kafka,
        request.config,
        request.from_ms,
        request.to_ms,
        request.accounts,
        backend,
        request.database,
        f"cdr-rerate-{uuid.uuid4().hex[:12]}",
        plans=shard.plans,
        stored=stored,
    )


def run_share(
    request: RerateRequest,
    connector: Connector,
    shard: Shard,
    run_id: str | None,
    previous: dict[str, tuple[Any, ...]],
    kafka: KafkaReplayOptions | None,
    report: Report,
    stored: dict[str, tuple[Any, ...]] | None = None,
) -> RerateResult:
    """Re-rate one share of the calls; `report` gets progress now and then. `stored`:
    the preloaded stored calls of the range (Kafka source)."""
    write_backend = connector.backend()
    read_backend = connector.backend()
    source = _source(request, connector, read_backend, shard, kafka, stored)
    share = _Share(request, write_backend, run_id, previous)
    thresholds = gc.get_threshold()
    # Rating allocates many short-lived tuples; collecting the young generation every
    # 700 allocations costs about a fifth of the run. Fewer, larger collections for
    # the duration of the share (restored afterwards).
    gc.set_threshold(GC_THRESHOLD, *thresholds[1:])
    try:
        source.on_read = lambda done: report(done, share.result.calls_changed)
        count = 0
        for old, new in source.items():
            share.take(old, new)
            count += 1
            if count % 1000 == 0:
                report(source.done, share.result.calls_changed)
        result = share.finish()
        report(source.done, result.calls_changed)
        result.replay = getattr(source, "stats", None)
        return result
    except BaseException:
        share.abort()
        raise
    finally:
        gc.set_threshold(*thresholds)
        source.close()
        write_backend.close()
        read_backend.close()


# -- the run --------------------------------------------------------------------------------


def _plan(
    request: RerateRequest,
    connector: Connector,
    backend: ClickHouseBackend,
    kafka: KafkaReplayOptions | None,
    workers: int,
) -> tuple[list[Shard], int | None, str]:
    """The shares, the total to show progress against, and its unit."""
    if request.source == "clickhouse":
        total = store.estimate_calls(
            backend, request.database, request.from_ms, request.to_ms, request.accounts
        )
        bounds = (
            store.call_id_bounds(
                backend, request.database, request.from_ms, request.to_ms, request.accounts, workers
            )
            if workers > 1
            else []
        )
        edges: list[str | None] = [None, *bounds, None]
        shards = [Shard(i, edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
        return shards, total, "calls"
    planner = _source(request, connector, backend, Shard(0), kafka)
    try:
        plans = planner.plan()
    finally:
        planner.close()
    groups: list[list[PartitionPlan]] = [[] for _ in range(max(1, min(workers, len(plans))))]
    sizes = [0] * len(groups)
    for plan in sorted(plans, key=lambda p: p.end - p.start, reverse=True):
        k = sizes.index(min(sizes))
        groups[k].append(plan)
        sizes[k] += max(0, plan.end - plan.start)
    shards = [
        Shard(i, plans=tuple(sorted(g, key=lambda p: p.partition))) for i, g in enumerate(groups)
    ]
    return shards, sum(sizes), "records"


def _preload(request: RerateRequest, connector: Connector) -> dict[str, tuple[Any, ...]]:
    from pipeline.rerate.kafka_source import load_stored

    started = time.monotonic()
    stream = connector.stream()
    try:
        stored = load_stored(
            stream, request.database, request.from_ms, request.to_ms, request.accounts
        )
    finally:
        stream.close()
    log.info("%s stored calls in range loaded in %.1fs", len(stored), time.monotonic() - started)
    return stored


class _Run:
    """The run record and progress of one attempt."""

    def __init__(
        self, request: RerateRequest, backend: ClickHouseBackend, progress: Progress
    ) -> None:
        self.request = request
        self.backend = backend
        self.progress = progress
        self.result = RerateResult()
        self.record: runs.RunRecord | None = None
        self.previous: dict[str, tuple[Any, ...]] = {}
        self.next_heartbeat = time.monotonic() + runs.HEARTBEAT_S
        self.done: dict[int, tuple[int, int]] = {}

    def open(self) -> None:
        req, db = self.request, self.request.database
        if req.dry_run:
            return
        fingerprint = req.config.tariff_version
        prior = runs.find_resumable(
            self.backend, db, fingerprint, req.from_ms, req.to_ms, req.accounts, req.source
        )
        runs.check_no_active_overlap(
            self.backend, db, req.from_ms, req.to_ms, prior.run_id if prior else None
        )
        run_id = prior.run_id if prior else new_run_id()
        self.result.run_id = run_id
        self.record = runs.RunRecord(
            run_id=run_id,
            user=req.user,
            config_fingerprint=fingerprint,
            from_ms=req.from_ms,
            to_ms=req.to_ms,
            accounts=list(req.accounts),
            source=req.source,
            started_at=prior.started_at if prior else runs.now(),
            revision=prior.revision if prior else 0,
        )
        if prior is not None:
            self.result.resumed = True
            self.previous = store.history_of_run(self.backend, db, run_id)
            log.info(
                "resuming run %s (%s; %s calls already changed)",
                run_id,
                prior.status,
                len(self.previous),
            )
        runs.write(self.backend, db, self.record)

    def report(self, shard: int, done: int, changed: int) -> None:
        self.done[shard] = (done, changed)
        self.progress.update(
            sum(d for d, _ in self.done.values()), sum(c for _, c in self.done.values())
        )
        if self.record is not None and time.monotonic() >= self.next_heartbeat:
            self.next_heartbeat = time.monotonic() + runs.HEARTBEAT_S
            self.record.calls_changed = sum(c for _, c in self.done.values())
            runs.write(self.backend, self.request.database, self.record)

    def close(self, status: str, error: str = "") -> None:
        self.result.status = status
        if self.record is None:
            return
        r, record = self.result, self.record
        record.calls_read, record.calls_rerated = r.calls_read, r.calls_rerated
        record.calls_changed, record.cdrs_written, record.errors = (
            r.calls_changed,
            r.cdrs_written,
            r.errors,
        )
        record.status, record.error_message, record.finished_at = status, error, runs.now()
        record.delta_summary = r.summary()
        runs.write(self.backend, self.request.database, record)


def rerate(
    request: RerateRequest,
    connector: Connector,
    kafka: KafkaReplayOptions | None = None,
    progress: Progress | None = None,
) -> RerateResult:
    """Run one re-rating (or a dry run) and return its result. The run record in
    ClickHouse is written at start, every heartbeat, and at the end (DONE/FAILED)."""
    started = time.monotonic()
    progress = progress if progress is not None else Progress(None, enabled=False)
    backend = connector.backend()
    try:
        if not request.dry_run and not store.has_history_table(backend, request.database):
            raise PipelineError(
                f"database {request.database} has no cdr_history table: apply the migrations "
                "(cdr-pipeline rerate --migrate, or pipeline.storage.migrate)"
            )
        workers = request.workers if connector.forkable else 1
        run = _Run(request, backend, progress)
        try:
            run.open()
            shards, progress.total, progress.unit = _plan(
                request, connector, backend, kafka, workers
            )
            run.result.workers = len(shards)
            run_id = run.result.run_id
            stored = _preload(request, connector) if request.source == "kafka" else None
            if len(shards) == 1:
                parts = [
                    run_share(
                        request,
                        connector,
                        shards[0],
                        run_id,
                        run.previous,
                        kafka,
                        lambda done, changed: run.report(0, done, changed),
                        stored,
                    )
                ]
            else:
                from pipeline.rerate.workers import run_in_processes

                # forked after the preload: the workers share its pages (copy-on-write)
                parts = run_in_processes(
                    run_share, request, connector, shards, run_id, run.previous, kafka,
                    run.report, stored,
                )
            for part in parts:
                run.result.merge(part, request.samples)
            run.result.elapsed_s = time.monotonic() - started
            progress.finish()
            run.close(runs.DONE)
        except BaseException as exc:
            run.result.elapsed_s = time.monotonic() - started
            message = "interrupted" if isinstance(exc, KeyboardInterrupt) else store.error_text(exc)
            try:
                run.close(runs.FAILED, message)
            except Exception:  # noqa: BLE001 - the original error matters more
                log.warning(
                    "could not record the failure of run %s", run.result.run_id, exc_info=True
                )
            raise
        return run.result
    finally:
        backend.close()


def shares_summary(shards: Sequence[Shard]) -> str:
    return ", ".join(
        f"[{s.lo_id or ''}..{s.hi_id or ''})"
        if s.plans is None
        else "partitions " + "/".join(str(p.partition) for p in s.plans)
        for s in shards
    )
